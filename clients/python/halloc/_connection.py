"""A Client's connection (the Python side of clients/cpp/halloc/client_impl.h):
its broker socket and gRPC stub, and the one reader at a time that files what
comes on the socket (replies, and the fds gRPC calls sent ahead of theirs)
for every call waiting on it. client.py builds the public calls on it.
"""

import ctypes
import itertools
import os
import select
import socket
import threading
import time

import grpc

from . import _broker, _scm, errors
from .v1 import allocator_pb2, allocator_pb2_grpc, broker_pb2

_libc = ctypes.CDLL(None)

# What _receive returns for a record it read and dropped (nothing to file):
# unlike None (nothing was queued), a late reader goes on to the next one.
_DROPPED = object()


def _cpu_hint():
    """BrokerRequest.cpu: the CPU this thread runs on, plus one (0: unknown).
    A placement hint only: hallocd answers a lone client from that CPU."""
    cpu = _libc.sched_getcpu()
    return cpu + 1 if cpu >= 0 else 0


class _Pending:
    """An fd a gRPC call's frame brought (or why it did not come), and the
    hold generation its BufferFd named (an Import's; else 0)."""

    __slots__ = ("fd", "error", "since", "generation")

    def __init__(self, fd, error, since, generation=0):
        self.fd, self.error, self.since, self.generation = fd, error, since, generation

    def close(self):
        if self.fd is not None:
            self.fd.close()


class Connection:
    """A verified broker socket and the gRPC channel beside it, for one
    session. Thread-safe; belongs to the process that connected it."""

    def __init__(self, conn, channel, timeout):
        # Reentrant only to tell whether this thread holds it (_hold_again);
        # never taken twice.
        self._lock = threading.RLock()
        self._filed = threading.Condition(self._lock)  # a reader filed a record
        self._reading = False  # a waiter reads the broker socket now
        self._pid = os.getpid()
        self._fork_generation = _fork_generation
        self._broker = conn.sock
        self._channel = channel
        self.stub = allocator_pb2_grpc.AllocatorStub(channel)
        self._metadata = ((_broker.SESSION_METADATA_KEY, conn.welcome.session_token),)
        self._timeout = timeout
        self._closing = False  # close() has begun (see close)
        self._request_ids = itertools.count(1)  # 0 was the handshake's Verify
        # (buffer id, call id) -> _Pending (gRPC calls' fds; the call id
        # the request carried, 0 where hallocd echoes none)
        self._pending = {}
        self._replies = {}    # request id -> (BrokerReply, [OwnedFd]) | HallocError
        # Requests whose caller stopped waiting -> since when (hallocd
        # answers every request: each goes with its reply), and gRPC calls
        # that gave up -> (give back?, since when) (_forget_abandoned).
        self._abandoned = {}
        self._abandoned_calls = {}
        # Call ids of gRPC Imports in flight (those without one counted
        # apart): a cut record of their fds gives nothing back whole.
        self._imports_in_flight = set()
        self._imports_without_call_id = 0
        self._welcome = conn.welcome
        self._waiting = set()  # request ids whose broker call waits now

    @property
    def closed(self):
        return self._broker.fileno() < 0

    def close(self):
        """Ends the session: hallocd drops every hold and grant it had.
        In a forked child it only closes the child's copy of the broker
        socket: the session is the parent's."""
        if self.forked():
            # Not self._lock: a thread of the parent may have held it at the
            # fork, and no thread of this process would ever let it go. Nor
            # gRPC's channel, which belongs to the parent's threads.
            self._broker.close()
            return
        with self._lock:
            if self.closed:
                return
            self._channel.close()
            # Wakes a call of another thread waiting in poll on the socket
            # (a close alone would leave it waiting out its deadline); what
            # that reader then sees (the end of the socket) is this close.
            self._closing = True
            try:
                self._broker.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._broker.close()
            self._filed.notify_all()  # and those waiting for that reader
            for p in self._pending.values():
                p.close()
            for r in self._replies.values():
                if not isinstance(r, errors.HallocError):
                    _scm.close_all(r[1])
            self._pending.clear()
            self._replies.clear()

    def next_call_id(self):
        """A call id for AllocateRequest.call_id and ImportRequest.call_id:
        unique on this connection (it comes from the request ids' counter)."""
        return next(self._request_ids)

    def give_back(self, ids):
        """Releases buffers without waiting for the answer."""
        with self._lock:
            self._give_back(ids)

    # What goes back to hallocd with the fds of a call that gave up.
    GIVE_BACK_NOTHING = None        # (its caller gives back what it must)
    GIVE_BACK_BUFFERS = "buffers"   # an Allocate's
    GIVE_BACK_REFERENCES = "references"  # an Import's: the reference each fd
    # is (hallocd sends none once it sees the call gave up)

    def abandon_call(self, call_id, give_back):
        """The gRPC call `call_id` gave up: its fds, should they come (or
        have come), are closed at once instead of waiting for a taker, and
        `give_back` (GIVE_BACK_*) goes back with them."""
        with self._lock:
            came = []
            for key in [k for k in self._pending if k[1] == call_id]:
                p = self._pending.pop(key)
                p.close()
                came.append((key[0], p.generation))
            if not came:
                self._abandoned_calls[call_id] = (give_back, time.monotonic())  # come later
            else:
                self._give_back_with_fds(give_back, came)

    def _give_back_with_fds(self, give_back, came):
        """What abandon_call said goes back with the fds that `came`, each
        (buffer id, hold generation). Holds self._lock."""
        if give_back == self.GIVE_BACK_BUFFERS:
            self._give_back([buffer_id for buffer_id, _ in came])
        elif give_back == self.GIVE_BACK_REFERENCES:
            self._give_back_references(came)

    def forked(self):
        """Whether this process is a forked child of the one that connected."""
        return _fork_generation != self._fork_generation

    def usable(self, name):
        if self.closed:
            raise errors.FailedPreconditionError(f"{name}: the client is closed")
        if _fork_generation != self._fork_generation:
            raise errors.FailedPreconditionError(
                f"{name}: this Client was connected by process {self._pid}; after "
                "fork() a child connects a Client of its own")

    @property
    def timeout(self):
        """Each call's timeout, in seconds."""
        return self._timeout

    def call(self, method, req, name, timeout=None, deadline=None):
        """One gRPC call with our token and deadline (`req`: a request, or
        an iterator of them for a client stream; `timeout`, in seconds, when
        sooner than ours: a page of a paged call; or `deadline`, a
        time.monotonic() that the fds the call brings wait for too)."""
        self.usable(name)
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
        # A call waits for its channel up to its deadline (through a full
        # backlog, a restart), but not once hallocd ended the session (its
        # broker connection closed: it exited or cut it): then a call fails
        # at once where nothing listens, and one that needs no session
        # (stats) is answered by a hallocd started since (as libhalloc).
        ended = select.poll()
        ended.register(self._broker, select.POLLRDHUP)
        wait = not any(ev & (select.POLLHUP | select.POLLRDHUP | select.POLLERR)
                       for _, ev in ended.poll(0))
        try:
            # gRPC turns an infinite (or astronomically long) timeout into a
            # deadline already past: beyond ~3 years, none at all.
            if timeout is None or timeout > self._timeout:
                timeout = self._timeout
            if timeout > _MAX_GRPC_TIMEOUT:
                timeout = None
            # Through a connect that fails for a while (a backlog another
            # process keeps full, hallocd restarting), up to the deadline,
            # rather than UNAVAILABLE at once (as libhalloc).
            return method(req, timeout=timeout, metadata=self._metadata, wait_for_ready=wait)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, name) from None

    def broker_call(self, req, name):
        """One request on the broker socket and its reply, with the fds of
        the reply's record (owned by the caller)."""
        self.usable(name)
        deadline = time.monotonic() + self._timeout
        kind = req.WhichOneof("kind")
        req.request_id = rid = next(self._request_ids)
        req.cpu = _cpu_hint()
        data = req.SerializeToString()
        # As gRPC answers a request over hallocd's limit (the same on both
        # paths): RESOURCE_EXHAUSTED, not send_record's INVALID_ARGUMENT.
        if len(data) > _scm.MAX_RECORD_BYTES:
            raise errors.ResourceExhaustedError(
                f"{name}: the request ({len(data)} bytes) is over the "
                f"{_scm.MAX_RECORD_BYTES} hallocd reads of one")
        with self._lock:
            # Before the request goes: its reply may be filed by another
            # reader at once (one nobody waits for is dropped).
            self._waiting.add(rid)
        try:
            _prefixed(self._send, name, data, deadline)
        except BaseException:
            with self._lock:
                self._waiting.discard(rid)
            raise
        with self._lock:
            try:
                self._wait_for(lambda: rid in self._replies, deadline)
            except errors.HallocError as e:
                # Whatever the daemon answers later is given back.
                self._abandon(rid)
                raise errors.error_for(e.code, f"{name}: {e.message}") from None
            except BaseException:
                # Interrupted (KeyboardInterrupt, a signal handler's
                # exception): the same, or its reply would stay filed, its
                # fds open and its buffers charged until the session ends.
                self._abandon(rid)
                raise
            finally:
                self._waiting.discard(rid)
            r = self._replies.pop(rid)
        if isinstance(r, errors.HallocError):
            raise errors.error_for(r.code, f"{name}: {r.message}")
        reply, fds = r
        err = _broker.reply_error(reply)
        if err is not None:
            _scm.close_all(fds)
            raise errors.error_for(err.code, f"{name}: {err.message}")
        # A success answers the request's kind (hallocd's always does; what
        # poses as hallocd may not: an empty Describe read as buffer 0).
        if reply.WhichOneof("kind") != kind:
            _scm.close_all(fds)
            raise errors.DataLossError(f"{name}: hallocd's reply is not one to {name}")
        return reply, fds

    def _abandon(self, rid):
        """Gives back what request `rid` got or will get: its call has
        ended without it. Holds self._lock."""
        r = self._replies.pop(rid, None)
        if r is None:
            self._abandoned[rid] = time.monotonic()  # filed and given back when it comes
        elif not isinstance(r, errors.HallocError):
            reply, fds = r
            _scm.close_all(fds)
            self._give_back([b.id for b in reply.allocate.buffers])
            if reply.WhichOneof("kind") == "import_buffer":
                self._give_back_references([_reference(reply.import_buffer)])

    def deadline(self):
        """When a call starting now must be over (the client's timeout)."""
        return time.monotonic() + self._timeout

    def take_fd(self, buffer_id, call_id=0, deadline=None, name="take_fd"):
        """The fd a gRPC call's frame brought for `buffer_id` (normally
        queued before the reply), by the call's own `deadline` (the reply
        came first: its wait is not a new timeout). Frames for others are
        kept for them."""
        if deadline is None:
            deadline = self.deadline()
        key = (buffer_id, call_id)
        with self._lock:
            try:
                self._wait_for(lambda: key in self._pending, deadline)
            except errors.DeadlineExceededError as e:
                raise errors.DeadlineExceededError(f"{name}: {e}") from None
            p = self._pending.pop(key)
        if p.error is not None:
            raise p.error
        return p.fd

    def _send(self, data, deadline):
        """Sends one request, waiting while the socket is full (a daemon
        not reading it) until `deadline` at the most."""
        while True:
            try:
                _scm.send_record(self._broker, data, block=False)
                return
            except errors.ResourceExhaustedError:
                _scm.wait_writable(self._broker, deadline)

    def _wait_for(self, ready, deadline):
        """Waits until `ready()` or `deadline`. Holds self._lock, except
        while reading: one waiter at a time reads the socket, without the
        lock, and files what comes for everyone; the others sleep until it
        has, or until their own deadline."""
        late = False  # past the deadline: reading what is queued, no more
        while not ready():
            if self._closing or self.closed:
                raise errors.FailedPreconditionError("the client was closed")
            left = deadline - time.monotonic()
            if left <= 0:
                # Past the deadline, what is queued already (answers that
                # came in time, not yet read) is read before giving up, as
                # libhalloc does: a queued fd is never abandoned for being
                # read late. Another thread reading files it for us, or
                # closes it once given up.
                if late is None or self._reading:
                    raise errors.DeadlineExceededError("no answer from hallocd in time")
                late = True
                left = 0
            if self._reading:
                try:
                    self._filed.wait(min(left, threading.TIMEOUT_MAX))
                except BaseException:
                    self._hold_again()
                    raise
                continue
            self._reading = True
            self._lock.release()
            got = None
            try:
                got = self._receive(deadline)
            finally:
                try:
                    self._hold_again()
                except BaseException:
                    # Interrupted taking the lock back (held now): what was
                    # read may be another call's reply; filed before the
                    # interrupt goes on.
                    if got is not None:
                        self._file_received(got)
                    raise
                finally:
                    self._reading = False
                    # The others wake once the lock is free again: after the
                    # filing below (or at once, should reading have failed).
                    self._filed.notify_all()
            self._file_received(got)
            if late and got is None:
                late = None  # nothing more was queued (a dropped record: read on)

    def _hold_again(self):
        """Takes self._lock back if this thread does not hold it. An
        exception can come out of a wait for a lock (a signal handler's,
        KeyboardInterrupt: CPython runs them there), and that wait then
        never took it: the caller would go on without it (and release it
        under another thread, or leave _reading set for good, every call
        after waiting out its deadline). Such an exception is raised once
        the lock is held."""
        interrupted = None
        while not self._lock._is_owned():
            try:
                self._lock.acquire()
            except BaseException as e:  # pylint: disable=broad-except
                interrupted = interrupted or e
        if interrupted is not None:
            raise interrupted

    def _receive(self, deadline):
        """One record off the broker socket (waiting until `deadline` at the
        most), a TruncatedRecordError the kernel caused, _DROPPED for one
        read and dropped, or None (nothing came)."""
        try:
            record = _scm.receive_record(self._broker, block=False)
            if record is None:
                try:
                    _scm.wait_readable(self._broker, deadline)
                except errors.DeadlineExceededError:
                    return None
                record = _scm.receive_record(self._broker, block=False)
            return record
        except _scm.TruncatedRecordError as e:
            if e.payload is None:
                return _DROPPED  # its bytes were cut: nothing to file (as libhalloc)
            return e
        except errors.DataLossError:
            return _DROPPED  # more fds than a record may carry: closed, dropped
        except (errors.HallocError, OSError, ValueError):
            if self._closing or self.closed:  # by another thread, under this read
                raise errors.FailedPreconditionError("the client was closed") from None
            raise

    def _file_received(self, got):
        """Files what _receive got where its waiter looks. Holds self._lock."""
        if got is None or got is _DROPPED:
            return
        if self._closing and not isinstance(got, _scm.TruncatedRecordError):
            # close() ran while it was read (without the lock): what it
            # cleared is not filed again, its fds left open.
            _scm.close_all(got.fds)
            return
        if isinstance(got, _scm.TruncatedRecordError):
            # The kernel cut the fds (we are out of fds): tell whoever waits
            # for them, and give the buffers back.
            frame = _parse_frame(got.payload)
            if frame is not None:
                self._file(frame, [], truncated=True)
            return
        frame = _parse_frame(got.data)
        if frame is None:
            _scm.close_all(got.fds)
            raise errors.DataLossError("malformed frame on the broker socket")
        self._file(frame, got.fds, truncated=False)

    def _file(self, frame, fds, truncated):
        # fds no call claimed (its deadline passed before they came, from a
        # daemon that does not echo call ids) are dropped after a while,
        # looked at with whatever comes next, not only with the next fds.
        now = time.monotonic()
        for key in [k for k, p in self._pending.items()
                    if now - p.since > 2 * self._timeout]:
            self._pending.pop(key).close()
        self._forget_abandoned()
        lost = errors.ResourceExhaustedError(
            "the fds hallocd sent were cut on the way (this process is out of "
            "fds: RLIMIT_NOFILE); the buffers were given back")
        if frame.WhichOneof("kind") == "reply":
            reply = frame.reply
            # A reply no call waits for (nor gave up on), or a second one
            # for a call: dropped, its fds closed. Its buffers are not given
            # back: a repeated reply names buffers the session holds and uses.
            rid = reply.request_id
            if (rid not in self._waiting and rid not in self._abandoned) or rid in self._replies:
                _scm.close_all(fds)
                return
            ids = [b.id for b in reply.allocate.buffers]
            abandoned = self._abandoned.pop(reply.request_id, None) is not None
            kind = reply.WhichOneof("kind")
            bad = abandoned or truncated or (kind == "allocate" and len(ids) != len(fds)) or \
                (kind == "import_buffer" and len(fds) != 1)
            if bad:
                _scm.close_all(fds)
                self._give_back(ids)
                # An import's fd, if any came, closed here: the reference the
                # import is on the session's hold goes back (that import's
                # alone: the session may hold the buffer by others, or an
                # import in flight may rely on it). A refused one made none.
                if kind == "import_buffer":
                    self._give_back_references([_reference(reply.import_buffer)])
                # A grant its caller never learned of (it gave up): nobody
                # has its token, and it would count against the session's
                # grants, and keep the buffer importable, until the end.
                if abandoned and kind == "share":
                    self._withdraw(reply.share.grant.id)
                if not abandoned:
                    if truncated and kind == "import_buffer":
                        lost = errors.ResourceExhaustedError(
                            "the fd hallocd sent was cut on the way (this process is "
                            "out of fds: RLIMIT_NOFILE)")
                    self._replies[reply.request_id] = lost if truncated else \
                        errors.DataLossError("reply carries the wrong number of fds")
                return
            self._replies[reply.request_id] = (reply, fds)
            return
        described = ([frame.buffer] if frame.WhichOneof("kind") == "buffer" else
                     list(frame.buffers.buffers))
        # A call's fds come in one record; those of a call that gave up
        # close here (nobody takes them).
        call = described[0].call_id if described else 0
        if call and call in self._abandoned_calls:
            _scm.close_all(fds)
            self._give_back_with_fds(self._abandoned_calls.pop(call)[0],
                                     [(b.buffer_id, b.hold_generation) for b in described])
            return
        if truncated or len(described) != len(fds):
            # An Allocate's buffers go back now (its caller gives them back
            # too). An Import's do not: the session may hold that buffer by
            # other references, and its caller gives back the import's own
            # (give_back_reference). Where hallocd echoes no call ids, any
            # gRPC Import in flight may be the one.
            is_import = (call in self._imports_in_flight if call else
                         self._imports_without_call_id > 0)
            _scm.close_all(fds)
            if truncated and is_import:
                bad = errors.ResourceExhaustedError(
                    "the fd hallocd sent was cut on the way (this process is out of "
                    "fds: RLIMIT_NOFILE)")
            elif truncated:
                bad = lost
            else:
                bad = errors.DataLossError("malformed frame on the broker socket")
            for b in described:
                self._replace_pending((b.buffer_id, b.call_id),
                                      _Pending(None, bad, now, b.hold_generation))
            if not is_import:
                self._give_back([b.buffer_id for b in described])
            return
        for b, fd in zip(described, fds):
            self._replace_pending((b.buffer_id, b.call_id),
                                  _Pending(fd, None, now, b.hold_generation))

    # fds no call has claimed kept at most (libhalloc's kMostPendingFds):
    # a daemon sending fds no call claims (a buggy or foreign one) would
    # otherwise fill this process's fd table.
    MOST_PENDING_FDS = 1024

    def _replace_pending(self, key, pending):
        old = self._pending.get(key)
        if old is not None:
            old.close()
        self._pending[key] = pending
        while len(self._pending) > self.MOST_PENDING_FDS:
            oldest = min(self._pending, key=lambda k: self._pending[k].since)
            self._pending.pop(oldest).close()

    def import_begins(self, call_id):
        """A gRPC Import (`call_id`, 0 where hallocd echoes none) is in
        flight: should its fd be cut on the way, its buffer is not given
        back whole (the session may hold it by other references)."""
        with self._lock:
            if call_id:
                self._imports_in_flight.add(call_id)
            else:
                self._imports_without_call_id += 1

    def import_ends(self, call_id):
        with self._lock:
            if call_id:
                self._imports_in_flight.discard(call_id)
            else:
                self._imports_without_call_id -= 1

    def give_back_reference(self, buffer_id, hold_generation):
        """An import of `buffer_id` that hallocd delivered reached no
        caller: gives back the one reference it is on the session's hold,
        the hold of `hold_generation` (ImportResponse.hold_generation)."""
        with self._lock:
            self._give_back_references([(buffer_id, hold_generation)])

    def _give_back_references(self, refs):
        """The same for each of `refs`, (buffer id, hold generation) each,
        holding self._lock. Only where hallocd counts references: an older
        one's Release would drop the whole hold, which another import may
        rely on (it stays until the session ends). Each names the hold it
        is on where hallocd takes that: a hold dropped meanwhile (a Release
        on another thread) and made again by another import is not touched."""
        if refs and self._welcome.import_references:
            req = allocator_pb2.ReleaseRequest(
                buffer_ids=[buffer_id for buffer_id, _ in refs], import_references=True)
            if self._welcome.hold_generations:
                req.hold_generations.extend(generation for _, generation in refs)
            self._send_unanswered(release=req)

    _MOST_ABANDONED_CALLS = 1024

    def _forget_abandoned(self):
        """Calls whose fds never come (refused) are kept to
        _MOST_ABANDONED_CALLS, the oldest forgotten. Holds self._lock."""
        while len(self._abandoned_calls) > self._MOST_ABANDONED_CALLS:
            oldest = min(self._abandoned_calls, key=lambda c: self._abandoned_calls[c][1])
            del self._abandoned_calls[oldest]

    def _give_back(self, ids):
        """Releases buffers without waiting for the answer (their fds were
        lost on the way, or their call was abandoned). Holds self._lock."""
        if ids:
            self._send_unanswered(release=allocator_pb2.ReleaseRequest(buffer_ids=ids))

    def _withdraw(self, grant_id):
        """Revokes a grant without waiting for the answer (its call was
        abandoned). Holds self._lock."""
        self._send_unanswered(revoke=allocator_pb2.RevokeRequest(grant_id=grant_id))

    def _send_unanswered(self, **kind):
        """Sends a broker request whose answer is dropped when it comes; if
        it cannot be sent, the session's end does the same. Holds
        self._lock."""
        rid = next(self._request_ids)
        req = broker_pb2.BrokerRequest(request_id=rid, **kind)
        try:
            _scm.send_record(self._broker, req.SerializeToString(), block=False)
        except errors.HallocError:
            return
        self._abandoned[rid] = time.monotonic()


_MAX_GRPC_TIMEOUT = 1e8  # seconds

# A gRPC call that failed so may have sent its fds all the same (its
# deadline passed while hallocd worked).
MAY_STILL_DELIVER = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                      grpc.StatusCode.UNAVAILABLE)


# How many times this process has been forked into (a child counts one more
# than its parent): a Client made before a fork belongs to the parent.
_fork_generation = 0


def _count_fork():
    global _fork_generation  # pylint: disable=global-statement
    _fork_generation += 1


os.register_at_fork(after_in_child=_count_fork)


def _parse_frame(data):
    frame = broker_pb2.BrokerFrame()
    try:
        frame.ParseFromString(data)
    except Exception:  # google.protobuf.message.DecodeError
        return None
    return frame


def _reference(imported):
    """An ImportResponse's reference: (buffer id, hold generation)."""
    return imported.buffer.id, imported.hold_generation


def _prefixed(fn, name, *args):
    try:
        return fn(*args)
    except errors.HallocError as e:
        raise errors.error_for(e.code, f"{name}: {e.message}") from None
