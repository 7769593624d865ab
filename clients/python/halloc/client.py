"""The Python client of hallocd: Client (one session) and Buffer (one fd).

    import halloc

    with halloc.Client.connect() as client:
        with client.allocate(halloc.blob(1 << 20)) as buf:   # released on exit
            with buf.map(halloc.Access.READ_WRITE) as m:    # an mmap.mmap
                m[:4] = b"halo"
            grant = client.share(buf, uid=peer_uid,
                                 cpu_access=halloc.CpuAccess.CPU_ACCESS_READ)
            send_to_peer(grant.token)  # peer: its_client.import_buffer(token)

A Client is one session, as in libhalloc (clients/cpp/halloc/client.h): it
connects to the broker socket and answers the daemon's challenge (hallocd
learns who we are from the kernel), then makes gRPC calls carrying the
session token. Allocate, Import, Share, Revoke, Release, Describe,
SetMetadata and IsSupported travel on the broker socket, the reply and the
fds in one record (the fast path, libhalloc's default; all but Allocate and
Release so where hallocd says it serves them, Welcome.broker_import,
broker_share, broker_revoke, broker_metadata and broker_is_supported); the
fds of gRPC calls (Allocate
and Import with broker_fast_path=False) arrive on the broker socket before
the gRPC reply. Closing the Client ends the session:
the daemon drops every hold it had; fds already in this process stay valid
until their Buffer is closed.

Every failure is a halloc.HallocError carrying a grpc.StatusCode (errors.py).
A Client may be used from several threads (each call waits for its own
answer only, and at most its timeout); Buffers are plain objects. A Client
belongs to the process that connected it: in a forked child its calls are
FAILED_PRECONDITION (the two would take each other's replies); the child
connects a Client of its own.
"""

import ctypes
import itertools
import os
import socket
import threading
import time

import grpc

from . import _broker, _scm, errors, mapping
from .v1 import allocator_pb2, allocator_pb2_grpc, broker_pb2, types_pb2

_libc = ctypes.CDLL(None)


def _cpu_hint():
    """BrokerRequest.cpu: the CPU this thread runs on, plus one (0: unknown).
    A placement hint only: hallocd answers a lone client from that CPU."""
    cpu = _libc.sched_getcpu()
    return cpu + 1 if cpu >= 0 else 0


# The API's value types callers name (halloc.CpuAccess.CPU_ACCESS_READ).
BufferDescriptor = types_pb2.BufferDescriptor
CpuAccess = types_pb2.CpuAccess


def blob(size, usage=0, name=""):
    """A descriptor for a blob of `size` bytes."""
    return types_pb2.BufferDescriptor(
        name=name.encode() if isinstance(name, str) else name, usage=usage, size=size)


def image(width, height, fourcc, usage=0, name=""):
    """A descriptor for a width x height image in DRM format `fourcc`."""
    desc = types_pb2.BufferDescriptor(
        name=name.encode() if isinstance(name, str) else name, usage=usage)
    desc.image.width = width
    desc.image.height = height
    desc.image.format = fourcc
    return desc


def fourcc(code):
    """The DRM fourcc of a 4-character code: fourcc("NV12")."""
    a, b, c, d = code.encode()
    return a | b << 8 | c << 16 | d << 24


def _socket_dir():
    """Where the sockets nobody named are (as libhalloc's ClientSocketDir).

    A hallocd of this user's own where either socket is in
    $XDG_RUNTIME_DIR/halloc, else the machine's in /run/halloc. One
    directory for both: a session's token never goes to a control socket
    found elsewhere than the broker socket that gave it.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.geteuid() != 0:
        own = os.path.join(xdg, "halloc")
        if any(os.path.lexists(os.path.join(own, name))
               for name in ("control.sock", "broker.sock")):
            return own
    return "/run/halloc"


def _socket_paths(control, broker):
    """(control, broker): the arguments, else the environment, else the
    files in _socket_dir()."""
    control = control or os.environ.get("HALLOC_CONTROL_SOCKET")
    broker = broker or os.environ.get("HALLOC_BROKER_SOCKET")
    if not control or not broker:
        where = _socket_dir()
        control = control or os.path.join(where, "control.sock")
        broker = broker or os.path.join(where, "broker.sock")
    return control, broker


# Largest request hallocd reads on either path (protocol.h), and the ids
# per ReleaseRequest of a ReleaseMany stream (10 bytes each at most).
MAX_REQUEST_BYTES = 64 * 1024
RELEASE_IDS_PER_REQUEST = 6000


def _release_parts(ids):
    """The ReleaseRequests of a ReleaseMany stream for `ids`, the final
    one marked `last`."""
    for i in range(0, len(ids), RELEASE_IDS_PER_REQUEST):
        part = ids[i:i + RELEASE_IDS_PER_REQUEST]
        yield allocator_pb2.ReleaseRequest(
            buffer_ids=part, last=i + RELEASE_IDS_PER_REQUEST >= len(ids))


def _next_page(sent, got, rpc):
    """The next page's token: `got`, unless it repeats the one just sent (a
    daemon, or something posing as one, that would keep us asking forever)."""
    if got and got == sent:
        raise errors.DataLossError(
            "%s: hallocd gave the same page token twice (pages would never end)" % rpc)
    return got


def _fits_in_a_record(req):
    """Whether `req`, put in a BrokerRequest (its kind's tag and length, and
    the request_id and cpu added on the way: at most 21 bytes more; 64 are
    kept), fits in one broker record. What does not (a token or peer name
    no real one is as long as) goes as a gRPC call instead, still one
    request, and gets its answer (RESOURCE_EXHAUSTED past
    MAX_REQUEST_BYTES there too); a Release of more ids than fit goes as a
    ReleaseMany stream (as in libhalloc)."""
    return req.ByteSize() + 64 <= MAX_REQUEST_BYTES


class Buffer:
    """One buffer this process holds an fd for.

    close() (or leaving a `with` block) closes the fd; the `with` block also
    releases the daemon's hold (Client.release). Client.release(buffer)
    releases the hold and closes the fd.
    """

    def __init__(self, client, info, fd):
        self._client = client
        self.info = info
        self._fd = fd  # an _scm.OwnedFd
        self._released = False  # the daemon's hold, by Client.release

    id = property(lambda self: self.info.id)
    size = property(lambda self: self.info.size)
    layout = property(lambda self: self.info.layout)
    cpu_access = property(lambda self: self.info.cpu_access)
    closed = property(lambda self: self._fd.closed)

    def fileno(self):
        return self._fd.fileno()

    def is_dmabuf(self):
        """What hallocd said the fd is (BufferInfo.fd_kind); when it did not
        say (an older hallocd), the kernel is asked."""
        kind = self.info.fd_kind
        if kind == types_pb2.FD_KIND_UNSPECIFIED:
            return mapping.is_dmabuf(self.fileno())
        return kind == types_pb2.FD_KIND_DMA_BUF

    def map(self, access=mapping.Access.READ_WRITE):
        """The whole buffer, mapped shared: a halloc.Mapping (an mmap.mmap).
        PermissionDeniedError if the fd does not carry `access` (e.g.
        READ_WRITE on a buffer shared read-only)."""
        if self.closed:
            raise errors.FailedPreconditionError(f"buffer {self.id} has no fd (closed)")
        return mapping.map_fd(self.fileno(), self.size, access, f"buffer {self.id}",
                              dmabuf=self.is_dmabuf())

    def detach(self):
        """Gives the fd up: the caller closes it."""
        return self._fd.detach()

    def close(self):
        """Closes the fd (the daemon's hold stays until released)."""
        self._fd.close()

    def release(self):
        """Drops the daemon's hold and closes the fd."""
        self._client.release(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            # A closed session holds nothing any more, and a forked child
            # holds only its copy of the fd (the hold is its parent's).
            if not self._released and not self._client.closed and not self._client._forked():
                self._client.release(self)
        except errors.NotFoundError:
            pass  # held no more: its grant was revoked, or released elsewhere
        finally:
            self.close()

    def __repr__(self):
        return (f"<halloc.Buffer id={self.id} size={self.size} "
                f"cpu={CpuAccess.Name(self.cpu_access)} fd={self._fd!r}>")


class _Pending:
    """An fd a gRPC call's frame brought (or why it did not come)."""

    __slots__ = ("fd", "error", "since")

    def __init__(self, fd, error, since):
        self.fd, self.error, self.since = fd, error, since

    def close(self):
        if self.fd is not None:
            self.fd.close()


class Client:
    """One session with hallocd. Use Client.connect(); close() ends it."""

    @classmethod
    def connect(cls, control_socket=None, broker_socket=None, timeout=10.0,
                broker_fast_path=True):
        """Connects and opens a session.

        Sockets: the arguments, else $HALLOC_CONTROL_SOCKET and
        $HALLOC_BROKER_SOCKET, else control.sock and broker.sock in
        $XDG_RUNTIME_DIR/halloc where either is there (a hallocd of this
        user's), else in /run/halloc (the machine's); never one from each.
        `timeout` (seconds) bounds each call and the wait for the hello.
        `broker_fast_path=False` makes Allocate, Import, Share, Revoke and
        Release gRPC calls, the way a gRPC-only client makes them.
        """
        control, broker = _socket_paths(control_socket, broker_socket)
        conn = _broker.connect_broker(broker, timeout)
        return cls(conn, grpc.insecure_channel(f"unix:{control}"), timeout,
                   broker_fast_path)

    def __init__(self, conn, channel, timeout, broker_fast_path):
        self._lock = threading.Lock()
        self._filed = threading.Condition(self._lock)  # a reader filed a record
        self._reading = False  # a waiter reads the broker socket now
        self._pid = os.getpid()
        self._fork_generation = _fork_generation
        self._broker = conn.sock
        self.hello = conn.hello
        self.welcome = conn.welcome
        self._channel = channel
        self._stub = allocator_pb2_grpc.AllocatorStub(channel)
        self._metadata = ((_broker.SESSION_METADATA_KEY, conn.welcome.session_token),)
        self._timeout = timeout
        self._closing = False  # close() has begun (see close)
        self._fast_path = broker_fast_path
        self._request_ids = itertools.count(1)  # 0 was the handshake's Verify
        # (buffer id, call id) -> _Pending (gRPC calls' fds; the call id
        # the request carried, 0 where hallocd echoes none)
        self._pending = {}
        self._replies = {}    # request id -> (BrokerReply, [OwnedFd]) | HallocError
        self._abandoned = set()  # requests whose caller stopped waiting
        self._abandoned_calls = {}  # gRPC calls that gave up: give back?
        # Request ids of broker Imports sent and not answered yet, and the
        # buffers whose hold only an Import nobody received made (given back
        # once none is in flight: _give_back_unclaimed_holds).
        self._imports_in_flight = set()
        self._unclaimed_holds = set()

    # --- the session ---------------------------------------------------------

    session_id = property(lambda self: self.welcome.session_id)
    uid = property(lambda self: self.hello.uid)
    exe = property(lambda self: self.welcome.exe)

    @property
    def closed(self):
        return self._broker.fileno() < 0

    def close(self):
        """Ends the session: hallocd drops every hold and grant it had.
        In a forked child it only closes the child's copy of the broker
        socket: the session is the parent's."""
        if self._forked():
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if hasattr(self, "_broker"):
            self.close()

    # --- buffers -------------------------------------------------------------

    def allocate(self, desc):
        """One buffer for `desc` (blob(), image() or a BufferDescriptor)."""
        return self.allocate_many(desc, 1)[0]

    def allocate_many(self, desc, count):
        """`count` (1..64) identical buffers: all or none."""
        req = allocator_pb2.AllocateRequest(desc=desc, count=count)
        if self._fast_path:
            breq = broker_pb2.BrokerRequest(allocate=req)
            reply, fds = self._broker_call(breq, "Allocate")
            out = [Buffer(self, info, fd) for info, fd in zip(reply.allocate.buffers, fds)]
        else:
            # The call id marks this call's fds, where hallocd echoes it
            # (Welcome.allocate_call_ids): those of a call that gave up are
            # closed as they come and the buffers given back.
            if self.welcome.allocate_call_ids:
                req.call_id = next(self._request_ids)
            try:
                resp = self._call(self._stub.Allocate, req, "Allocate")
            except errors.HallocError as e:
                if req.call_id and e.code in _MAY_STILL_DELIVER:
                    self._abandon_call(req.call_id, give_back=True)
                raise
            out = []
            try:
                for info in resp.buffers:
                    out.append(Buffer(self, info, self._take_fd(info.id, req.call_id)))
            except BaseException:
                for b in out:
                    b.close()
                # hallocd holds them all (its reply said so): given back
                # now, not left charged until the session ends.
                with self._lock:
                    self._give_back([info.id for info in resp.buffers])
                raise
        asked = max(count, 1)  # 0 asks for one
        if len(out) != asked:
            # Not what was asked for: given back, and said so.
            if out:
                try:
                    self.release(*out)
                except errors.HallocError:
                    pass
            raise errors.DataLossError(
                f"Allocate: hallocd answered {len(out)} buffers for {asked} asked")
        return out

    def release(self, *buffers):
        """Drops our holds on buffers (Buffer objects or ids); the Buffer
        objects' fds are closed too."""
        ids = [b.id if isinstance(b, Buffer) else int(b) for b in buffers]
        try:
            req = allocator_pb2.ReleaseRequest(buffer_ids=ids)
            if not _fits_in_a_record(req):
                # More ids than a request carries: a ReleaseMany stream,
                # released as one, all or nothing (as libhalloc does).
                self._call(self._stub.ReleaseMany, _release_parts(ids), "Release")
            elif self._fast_path:
                self._broker_call(broker_pb2.BrokerRequest(release=req), "Release")
            else:
                self._call(self._stub.Release, req, "Release")
            for b in buffers:
                if isinstance(b, Buffer):
                    b._released = True  # pylint: disable=protected-access
        finally:
            for b in buffers:
                if isinstance(b, Buffer):
                    b.close()

    def describe(self, buffer):
        """The BufferInfo of a buffer we hold (a Buffer or an id)."""
        req = allocator_pb2.DescribeRequest(buffer_id=_id(buffer))
        if self._fast_path and self.welcome.broker_metadata:
            reply, fds = self._broker_call(broker_pb2.BrokerRequest(describe=req), "Describe")
            _scm.close_all(fds)  # none is sent with a description
            return reply.describe.buffer
        return self._call(self._stub.Describe, req, "Describe").buffer

    def list(self, all=False):  # pylint: disable=redefined-builtin
        """Our buffers' BufferInfos (`all`: every live buffer's, for root
        and hallocd's uid), by id, asked page by page."""
        out, token = [], ""
        while True:
            req = allocator_pb2.ListRequest(all=all, page_token=token)
            resp = self._call(self._stub.List, req, "List")
            out.extend(resp.buffers)
            token = _next_page(token, resp.next_page_token, "List")
            if not token:
                return out

    def stats(self):
        return self._call(self._stub.Stats, allocator_pb2.StatsRequest(), "Stats")

    def is_supported(self, desc, count=1):
        req = allocator_pb2.IsSupportedRequest(desc=desc, count=count)
        if self._fast_path and self.welcome.broker_is_supported:
            reply, fds = self._broker_call(broker_pb2.BrokerRequest(is_supported=req),
                                           "IsSupported")
            _scm.close_all(fds)  # none is sent with an answer
            return reply.is_supported
        return self._call(self._stub.IsSupported, req, "IsSupported")

    def share(self, buffer, *, uid=None, client=None,
              cpu_access=CpuAccess.CPU_ACCESS_UNSPECIFIED):
        """Grants a peer access to a buffer we hold: the sessions of `uid`,
        or those the policy names `client`. CPU_ACCESS_UNSPECIFIED: our own
        rights. Returns the Grant; pass grant.token to the peer."""
        if (uid is None) == (client is None):
            raise TypeError("share() takes exactly one of uid= and client=")
        peer = (types_pb2.Peer(uid=uid) if uid is not None else
                types_pb2.Peer(name=client.encode() if isinstance(client, str) else client))
        req = allocator_pb2.ShareRequest(buffer_id=_id(buffer), peer=peer,
                                         cpu_access=cpu_access)
        if self._fast_path and self.welcome.broker_share and _fits_in_a_record(req):
            reply, fds = self._broker_call(broker_pb2.BrokerRequest(share=req), "Share")
            _scm.close_all(fds)  # none is sent with a grant
            if reply.WhichOneof("kind") != "share":
                raise errors.DataLossError("Share: hallocd's reply carries no grant")
            return reply.share.grant
        return self._call(self._stub.Share, req, "Share").grant

    def import_buffer(self, token):
        """Takes a buffer shared with us: a Buffer with its own fd, carrying
        the grant's rights."""
        req = allocator_pb2.ImportRequest(
            grant_token=token.encode() if isinstance(token, str) else token)
        if self._fast_path and self.welcome.broker_import and _fits_in_a_record(req):
            # The reply and the fd in one record: both or neither.
            reply, fds = self._broker_call(broker_pb2.BrokerRequest(import_buffer=req), "Import")
            if reply.WhichOneof("kind") != "import_buffer" or len(fds) != 1:
                _scm.close_all(fds)
                raise errors.DataLossError("Import: hallocd's reply carries no buffer")
            return Buffer(self, reply.import_buffer.buffer, fds[0])
        # Two imports of one buffer may be in flight: the call id tells
        # their fds apart (it comes from the request ids' counter), where
        # hallocd echoes it (Welcome.import_call_ids; else 0, as it sends).
        if self.welcome.import_call_ids:
            req.call_id = next(self._request_ids)
        try:
            info = self._call(self._stub.Import, req, "Import").buffer
        except errors.HallocError as e:
            # hallocd may deliver the fd all the same (the deadline passed
            # while it worked): nobody takes it, so it is closed, not kept.
            if req.call_id and e.code in _MAY_STILL_DELIVER:
                self._abandon_call(req.call_id, give_back=False)
            raise
        return Buffer(self, info, self._take_fd(info.id, req.call_id))

    def _abandon_call(self, call_id, give_back):
        """The gRPC call `call_id` gave up: its fds, should they come (or
        have come), are closed at once instead of waiting for a taker; an
        Allocate's buffers (`give_back`) go back to hallocd too (an Import's
        hold hallocd gives back itself)."""
        with self._lock:
            came = [k for k in self._pending if k[1] == call_id]
            for key in came:
                self._pending.pop(key).close()
            if not came:
                self._abandoned_calls[call_id] = give_back  # they come later
            elif give_back:
                self._give_back([k[0] for k in came])

    import_ = import_buffer

    def revoke(self, grant_id):
        """Withdraws a grant this session made; on hallocd's halloc backend,
        every fd imported through it is cut off, in every process, first."""
        req = allocator_pb2.RevokeRequest(grant_id=grant_id)
        if self._fast_path and self.welcome.broker_revoke:
            _, fds = self._broker_call(broker_pb2.BrokerRequest(revoke=req), "Revoke")
            _scm.close_all(fds)  # none is sent with a revoke
            return
        self._call(self._stub.Revoke, req, "Revoke")

    def set_metadata(self, buffer, metadata_type, value):
        req = allocator_pb2.SetMetadataRequest(buffer_id=_id(buffer), type=metadata_type,
                                               value=value)
        if self._fast_path and self.welcome.broker_metadata:
            reply, fds = self._broker_call(broker_pb2.BrokerRequest(set_metadata=req),
                                           "SetMetadata")
            _scm.close_all(fds)  # none is sent with metadata
            return reply.set_metadata.buffer
        return self._call(self._stub.SetMetadata, req, "SetMetadata").buffer

    def dump(self):
        """Per-client accounting (root and hallocd's uid): one
        DumpResponse, its rows asked page by page."""
        out, token = allocator_pb2.DumpResponse(), ""
        while True:
            resp = self._call(self._stub.Dump, allocator_pb2.DumpRequest(page_token=token),
                              "Dump")
            out.sessions.extend(resp.sessions)
            out.clients.extend(resp.clients)
            token = _next_page(token, resp.next_page_token, "Dump")
            if not token:
                return out

    # --- transport -----------------------------------------------------------

    def _forked(self):
        """Whether this process is a forked child of the one that connected."""
        return _fork_generation != self._fork_generation

    def _usable(self, name):
        if self.closed:
            raise errors.FailedPreconditionError(f"{name}: the client is closed")
        if _fork_generation != self._fork_generation:
            raise errors.FailedPreconditionError(
                f"{name}: this Client was connected by process {self._pid}; after "
                "fork() a child connects a Client of its own")

    def _call(self, method, req, name):
        """One gRPC call with our token and deadline (`req`: a request, or
        an iterator of them for a client stream)."""
        self._usable(name)
        try:
            # gRPC turns an infinite (or astronomically long) timeout into a
            # deadline already past: beyond ~3 years, none at all.
            timeout = self._timeout if self._timeout <= _MAX_GRPC_TIMEOUT else None
            return method(req, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, name) from None

    def _broker_call(self, req, name):
        """One request on the broker socket and its reply, with the fds of
        the reply's record (owned by the caller)."""
        self._usable(name)
        deadline = time.monotonic() + self._timeout
        req.request_id = rid = next(self._request_ids)
        req.cpu = _cpu_hint()
        is_import = req.HasField("import_buffer")
        if is_import:
            with self._lock:
                self._imports_in_flight.add(rid)
        try:
            _prefixed(self._send, name, req.SerializeToString(), deadline)
        except BaseException:
            if is_import:
                with self._lock:
                    self._imports_in_flight.discard(rid)
                    self._give_back_unclaimed_holds()
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
            r = self._replies.pop(rid)
        if isinstance(r, errors.HallocError):
            raise errors.error_for(r.code, f"{name}: {r.message}")
        reply, fds = r
        err = _broker.reply_error(reply)
        if err is not None:
            _scm.close_all(fds)
            raise errors.error_for(err.code, f"{name}: {err.message}")
        return reply, fds

    def _abandon(self, rid):
        """Gives back what request `rid` got or will get: its call has
        ended without it. Holds self._lock."""
        r = self._replies.pop(rid, None)
        if r is None:
            self._abandoned.add(rid)  # filed and given back when it comes
        elif not isinstance(r, errors.HallocError):
            reply, fds = r
            _scm.close_all(fds)
            self._give_back([b.id for b in reply.allocate.buffers])
            if reply.WhichOneof("kind") == "import_buffer" and reply.import_buffer.newly_held:
                self._unclaimed_holds.add(reply.import_buffer.buffer.id)
                self._give_back_unclaimed_holds()

    def _take_fd(self, buffer_id, call_id=0):
        """The fd a gRPC call's frame brought for `buffer_id` (normally
        queued before the reply). Frames for others are kept for them."""
        deadline = time.monotonic() + self._timeout
        key = (buffer_id, call_id)
        with self._lock:
            self._wait_for(lambda: key in self._pending, deadline)
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
        while not ready():
            if self._closing or self.closed:
                raise errors.FailedPreconditionError("the client was closed")
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.DeadlineExceededError("no answer from hallocd in time")
            if self._reading:
                self._filed.wait(min(left, threading.TIMEOUT_MAX))
                continue
            self._reading = True
            self._lock.release()
            try:
                got = self._receive(deadline)
            finally:
                self._lock.acquire()
                self._reading = False
                # The others wake once the lock is free again: after the
                # filing below (or at once, should reading have failed).
                self._filed.notify_all()
            self._file_received(got)

    def _receive(self, deadline):
        """One record off the broker socket (waiting until `deadline` at the
        most), a TruncatedRecordError the kernel caused, or None."""
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
                return None  # its bytes were cut: nothing to file (as libhalloc)
            return e
        except errors.DataLossError:
            return None  # more fds than a record may carry: closed, dropped
        except (errors.HallocError, OSError, ValueError):
            if self._closing or self.closed:  # by another thread, under this read
                raise errors.FailedPreconditionError("the client was closed") from None
            raise

    def _file_received(self, got):
        """Files what _receive got where its waiter looks. Holds self._lock."""
        if got is None:
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
        lost = errors.ResourceExhaustedError(
            "the fds hallocd sent were cut on the way (this process is out of "
            "fds: RLIMIT_NOFILE); the buffers were given back")
        if frame.WhichOneof("kind") == "reply":
            reply = frame.reply
            ids = [b.id for b in reply.allocate.buffers]
            abandoned = reply.request_id in self._abandoned
            self._abandoned.discard(reply.request_id)
            kind = reply.WhichOneof("kind")
            bad = abandoned or truncated or (kind == "allocate" and len(ids) != len(fds)) or \
                (kind == "import_buffer" and len(fds) != 1)
            if reply.request_id in self._imports_in_flight:
                # An import's fd, if any came, closes here when nobody takes
                # it. Its hold goes back only if this import made it
                # (ImportResponse.newly_held), and only once no other import
                # is in flight: one may bring the same buffer, held by that
                # same hold.
                self._imports_in_flight.discard(reply.request_id)
                if kind == "import_buffer":
                    buffer = reply.import_buffer.buffer.id
                    if not bad:
                        self._unclaimed_holds.discard(buffer)  # a caller holds it
                    elif reply.import_buffer.newly_held:
                        self._unclaimed_holds.add(buffer)
                self._give_back_unclaimed_holds()
            if bad:
                _scm.close_all(fds)
                self._give_back(ids)
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
        if truncated or len(described) != len(fds):
            _scm.close_all(fds)
            bad = lost if truncated else errors.DataLossError(
                "malformed frame on the broker socket")
            for b in described:
                self._replace_pending((b.buffer_id, b.call_id), _Pending(None, bad, now))
            self._give_back([b.buffer_id for b in described])
            return
        # A call's fds come in one record; those of a call that gave up
        # close here (nobody takes them).
        call = described[0].call_id if described else 0
        if call and call in self._abandoned_calls:
            _scm.close_all(fds)
            if self._abandoned_calls.pop(call):
                self._give_back([b.buffer_id for b in described])
            return
        for b, fd in zip(described, fds):
            self._replace_pending((b.buffer_id, b.call_id), _Pending(fd, None, now))

    def _replace_pending(self, key, pending):
        old = self._pending.get(key)
        if old is not None:
            old.close()
        self._pending[key] = pending

    def _give_back_unclaimed_holds(self):
        """Gives back the holds only imports nobody received made, once no
        import is in flight. Holds self._lock."""
        if self._imports_in_flight or not self._unclaimed_holds:
            return
        self._give_back(sorted(self._unclaimed_holds))
        self._unclaimed_holds.clear()

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
        self._abandoned.add(rid)


_MAX_GRPC_TIMEOUT = 1e8  # seconds

# A gRPC call that failed so may have sent its fds all the same (its
# deadline passed while hallocd worked).
_MAY_STILL_DELIVER = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                      grpc.StatusCode.UNAVAILABLE)


# How many times this process has been forked into (a child counts one more
# than its parent): a Client made before a fork belongs to the parent.
_fork_generation = 0


def _count_fork():
    global _fork_generation  # pylint: disable=global-statement
    _fork_generation += 1


os.register_at_fork(after_in_child=_count_fork)


def _id(buffer):
    return buffer.id if isinstance(buffer, Buffer) else int(buffer)


def _parse_frame(data):
    frame = broker_pb2.BrokerFrame()
    try:
        frame.ParseFromString(data)
    except Exception:  # google.protobuf.message.DecodeError
        return None
    return frame


def _prefixed(fn, name, *args):
    try:
        return fn(*args)
    except errors.HallocError as e:
        raise errors.error_for(e.code, f"{name}: {e.message}") from None
