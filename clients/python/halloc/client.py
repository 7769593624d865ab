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

import os
import time

import grpc

from . import _broker, _connection, _scm, errors, mapping
from .v1 import allocator_pb2, broker_pb2, types_pb2


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
    """(control, broker): the arguments, else the environment; one named
    alone brings the other's file from its own directory; neither, both
    files in _socket_dir(). Always one hallocd's pair (libhalloc's
    ClientSocketPaths)."""
    control = control or os.environ.get("HALLOC_CONTROL_SOCKET")
    broker = broker or os.environ.get("HALLOC_BROKER_SOCKET")
    if not control and not broker:
        where = _socket_dir()
        return os.path.join(where, "control.sock"), os.path.join(where, "broker.sock")
    control = control or os.path.join(os.path.dirname(broker), "control.sock")
    broker = broker or os.path.join(os.path.dirname(control), "broker.sock")
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


class _Pages:
    """The pages of one paged call (list, dump): all of them within the
    call's timeout, as any call; each reply's next_page_token the next
    request's. A daemon, or something posing as one, must not keep us
    asking, and gathering, forever (nor for as long as an infinite timeout
    lasts): a token given twice (in a row or in a cycle), or more rows than
    any hallocd holds (each page counting one at least), is DATA_LOSS (as
    libhalloc's Pages). Tokens are remembered by hash: a page may bring one
    of megabytes."""

    # Twice 2**20, the fds a process may have under the kernel's default
    # fs.nr_open, one a buffer (hallocd.service's LimitNOFILE: 262144).
    _MOST_ROWS = 1 << 21

    def __init__(self, rpc, timeout):
        self._rpc = rpc
        self._deadline = time.monotonic() + timeout
        self._seen = set()
        self._rows = 0

    def left(self):
        """Seconds left of the call's timeout, for the next page."""
        return max(0.0, self._deadline - time.monotonic())

    def next(self, got, rows):
        """`got`, the next page's token, after a page of `rows` rows."""
        self._rows += max(rows, 1)
        if self._rows > self._MOST_ROWS:
            raise errors.DataLossError("%s: hallocd's pages hold more than %d rows "
                                       "(pages would never end)" % (self._rpc, self._MOST_ROWS))
        if got:
            seen = hash(got)
            if seen in self._seen:
                raise errors.DataLossError(
                    "%s: hallocd gave a page token twice (pages would never end)" % self._rpc)
            self._seen.add(seen)
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


# A failed connect is tried again soon (gRPC's own backoff starts at 1 s
# and grows to 120 s): any local user can keep the control socket's
# backlog full for a while, and calls wait for the channel (as libhalloc's).
# (Not grpc.min_reconnect_backoff_ms: gRPC takes it for the time each
# connect may take, 20 s by default, which a connection queued behind a
# flood may need.)
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Connections of the channel's own, not from gRPC's process-wide pool,
    # which a forked child inherits (as libhalloc: its own Client's channel
    # took the parent's connection to the control socket).
    ("grpc.use_local_subchannel_pool", 1),
]


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
        `timeout` (seconds) bounds each call, and connecting: the wait for
        room in the broker socket's backlog and for the hello, together.
        `broker_fast_path=False` makes Allocate, Import, Share, Revoke and
        Release gRPC calls, the way a gRPC-only client makes them.
        """
        control, broker = _socket_paths(control_socket, broker_socket)
        conn = _broker.connect_broker(broker, timeout)
        return cls(conn, grpc.insecure_channel(f"unix:{control}", options=_CHANNEL_OPTIONS),
                   timeout, broker_fast_path)

    def __init__(self, conn, channel, timeout, broker_fast_path):
        self._conn = _connection.Connection(conn, channel, timeout)
        self.hello = conn.hello
        self.welcome = conn.welcome
        self._fast_path = broker_fast_path

    # --- the session ---------------------------------------------------------

    session_id = property(lambda self: self.welcome.session_id)
    uid = property(lambda self: self.hello.uid)
    exe = property(lambda self: self.welcome.exe)

    @property
    def closed(self):
        return self._conn.closed

    def close(self):
        """Ends the session: hallocd drops every hold and grant it had.
        In a forked child it only closes the child's copy of the broker
        socket: the session is the parent's."""
        self._conn.close()

    def _forked(self):
        """Whether this process is a forked child of the one that connected."""
        return self._conn.forked()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if hasattr(self, "_conn"):
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
            reply, fds = self._conn.broker_call(breq, "Allocate")
            out = [Buffer(self, info, fd) for info, fd in zip(reply.allocate.buffers, fds)]
        else:
            # The call id marks this call's fds, where hallocd echoes it
            # (Welcome.allocate_call_ids): those of a call that gave up are
            # closed as they come and the buffers given back.
            if self.welcome.allocate_call_ids:
                req.call_id = self._conn.next_call_id()
            # One deadline for the reply and the fds that come ahead of it.
            deadline = self._conn.deadline()
            try:
                resp = self._conn.call(self._conn.stub.Allocate, req, "Allocate", deadline=deadline)
            except BaseException as e:
                if req.call_id and _may_still_deliver(e):
                    self._conn.abandon_call(req.call_id, self._conn.GIVE_BACK_BUFFERS)
                raise
            out = []
            try:
                for info in resp.buffers:
                    fd = self._conn.take_fd(info.id, req.call_id, deadline, "Allocate")
                    out.append(Buffer(self, info, fd))
            except BaseException:
                for b in out:
                    b.close()
                # hallocd holds them all (its reply said so): given back
                # now, not left charged until the session ends; fds that
                # come later still are closed as they come.
                self._conn.give_back([info.id for info in resp.buffers])
                if req.call_id:
                    self._conn.abandon_call(req.call_id, self._conn.GIVE_BACK_NOTHING)
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
                self._conn.call(self._conn.stub.ReleaseMany, _release_parts(ids), "Release")
            elif self._fast_path:
                self._conn.broker_call(broker_pb2.BrokerRequest(release=req), "Release")
            else:
                self._conn.call(self._conn.stub.Release, req, "Release")
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
            try:
                reply, fds = self._conn.broker_call(broker_pb2.BrokerRequest(describe=req),
                                                    "Describe")
                _scm.close_all(fds)  # none is sent with a description
                return reply.describe.buffer
            except errors.ResourceExhaustedError:
                pass  # too large for a broker record: over gRPC (as libhalloc)
        return self._conn.call(self._conn.stub.Describe, req, "Describe").buffer

    def list(self, all=False):  # pylint: disable=redefined-builtin
        """Our buffers' BufferInfos (`all`: every live buffer's, for root
        and hallocd's uid), by id, asked page by page."""
        out, token = [], b""
        pages = _Pages("List", self._conn.timeout)
        while True:
            req = allocator_pb2.ListRequest(all=all, page_token=token)
            resp = self._conn.call(self._conn.stub.List, req, "List", timeout=pages.left())
            out.extend(resp.buffers)
            token = pages.next(resp.next_page_token, len(resp.buffers))
            if not token:
                return out

    def stats(self):
        return self._conn.call(self._conn.stub.Stats, allocator_pb2.StatsRequest(), "Stats")

    def is_supported(self, desc, count=1):
        req = allocator_pb2.IsSupportedRequest(desc=desc, count=count)
        if self._fast_path and self.welcome.broker_is_supported:
            reply, fds = self._conn.broker_call(broker_pb2.BrokerRequest(is_supported=req),
                                           "IsSupported")
            _scm.close_all(fds)  # none is sent with an answer
            return reply.is_supported
        return self._conn.call(self._conn.stub.IsSupported, req, "IsSupported")

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
            reply, fds = self._conn.broker_call(broker_pb2.BrokerRequest(share=req), "Share")
            _scm.close_all(fds)  # none is sent with a grant
            if reply.WhichOneof("kind") != "share":
                raise errors.DataLossError("Share: hallocd's reply carries no grant")
            return reply.share.grant
        return self._conn.call(self._conn.stub.Share, req, "Share").grant

    def import_buffer(self, token):
        """Takes a buffer shared with us: a Buffer with its own fd, carrying
        the grant's rights."""
        req = allocator_pb2.ImportRequest(
            grant_token=token.encode() if isinstance(token, str) else token)
        if self._fast_path and self.welcome.broker_import and _fits_in_a_record(req):
            # The reply and the fd in one record: both or neither.
            reply, fds = self._conn.broker_call(broker_pb2.BrokerRequest(import_buffer=req), "Import")
            if reply.WhichOneof("kind") != "import_buffer" or len(fds) != 1:
                _scm.close_all(fds)
                raise errors.DataLossError("Import: hallocd's reply carries no buffer")
            return Buffer(self, reply.import_buffer.buffer, fds[0])
        # Two imports of one buffer may be in flight: the call id tells
        # their fds apart (it comes from the request ids' counter), where
        # hallocd echoes it (Welcome.import_call_ids; else 0, as it sends).
        if self.welcome.import_call_ids:
            req.call_id = self._conn.next_call_id()
        # Before import_begins takes the lock, which in a forked child a
        # thread of the parent may have held at the fork, for good.
        self._conn.usable("Import")
        self._conn.import_begins(req.call_id)
        deadline = self._conn.deadline()  # the reply's and the fd's
        try:
            resp = self._conn.call(self._conn.stub.Import, req, "Import", deadline=deadline)
        except BaseException as e:
            # hallocd may have sent the fd all the same (the deadline
            # passed after it did): nobody takes it, so it is closed as it
            # comes and the reference the import is goes back with it
            # (hallocd sends no fd once it sees the call gave up: then
            # nothing comes, and nothing was imported).
            if req.call_id and _may_still_deliver(e):
                self._conn.abandon_call(req.call_id, self._conn.GIVE_BACK_REFERENCES)
            self._conn.import_ends(req.call_id)
            raise
        try:
            fd = self._conn.take_fd(resp.buffer.id, req.call_id, deadline, "Import")
            return Buffer(self, resp.buffer, fd)
        except BaseException:
            # hallocd delivered it (its reply came): the reference goes
            # back now; an fd that comes later still is closed as it comes.
            if req.call_id:
                self._conn.abandon_call(req.call_id, self._conn.GIVE_BACK_NOTHING)
            self._conn.give_back_reference(resp.buffer.id, resp.hold_generation)
            raise
        finally:
            self._conn.import_ends(req.call_id)

    import_ = import_buffer

    def revoke(self, grant_id):
        """Withdraws a grant this session made; on hallocd's halloc backend,
        every fd imported through it is cut off, in every process, first
        (`self.welcome.live_revoke` says whether it does)."""
        req = allocator_pb2.RevokeRequest(grant_id=grant_id)
        if self._fast_path and self.welcome.broker_revoke:
            _, fds = self._conn.broker_call(broker_pb2.BrokerRequest(revoke=req), "Revoke")
            _scm.close_all(fds)  # none is sent with a revoke
            return
        self._conn.call(self._conn.stub.Revoke, req, "Revoke")

    def set_metadata(self, buffer, metadata_type, value):
        req = allocator_pb2.SetMetadataRequest(buffer_id=_id(buffer), type=metadata_type,
                                               value=value)
        if self._fast_path and self.welcome.broker_metadata:
            reply, fds = self._conn.broker_call(broker_pb2.BrokerRequest(set_metadata=req),
                                                "SetMetadata")
            _scm.close_all(fds)  # none is sent with metadata
            return reply.set_metadata.buffer
        return self._conn.call(self._conn.stub.SetMetadata, req, "SetMetadata").buffer

    def dump(self):
        """Per-client accounting (root and hallocd's uid): one
        DumpResponse, its rows asked page by page."""
        out, token = allocator_pb2.DumpResponse(), b""
        pages = _Pages("Dump", self._conn.timeout)
        while True:
            resp = self._conn.call(self._conn.stub.Dump, allocator_pb2.DumpRequest(page_token=token),
                                   "Dump", timeout=pages.left())
            out.sessions.extend(resp.sessions)
            out.clients.extend(resp.clients)
            token = pages.next(resp.next_page_token, len(resp.sessions) + len(resp.clients))
            if not token:
                return out


def _may_still_deliver(e):
    """Whether a gRPC call that raised `e` may have been carried out all
    the same: its deadline passed, it was cancelled, the connection went,
    or it was interrupted here (KeyboardInterrupt, a signal handler's
    exception) while hallocd worked."""
    if isinstance(e, errors.HallocError):
        return e.code in _connection.MAY_STILL_DELIVER
    return True


def _id(buffer):
    return buffer.id if isinstance(buffer, Buffer) else int(buffer)
