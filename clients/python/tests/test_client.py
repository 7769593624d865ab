"""The Python client against a real hallocd: what libhalloc does, from Python."""

import fcntl
import mmap
import os
import resource
import threading
import time

import grpc
import pytest

import halloc
from halloc import _broker
from halloc.v1 import allocator_pb2, allocator_pb2_grpc, types_pb2
from conftest import open_fds, wait_for

PAGE = mmap.PAGESIZE
READ = halloc.CpuAccess.CPU_ACCESS_READ
READ_WRITE = halloc.CpuAccess.CPU_ACCESS_READ_WRITE
PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["broker", "grpc"])


def pattern(size):
    # A prime period: a mapping at the wrong offset cannot match it.
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def test_requests_carry_a_cpu_of_this_process():
    from halloc._connection import _cpu_hint
    hint = _cpu_hint()
    assert hint > 0
    assert hint - 1 in os.sched_getaffinity(0)


def test_default_sockets_are_the_users_hallocds_else_the_machines(tmp_path, monkeypatch):
    from halloc.client import _socket_paths
    monkeypatch.delenv("HALLOC_CONTROL_SOCKET", raising=False)
    monkeypatch.delenv("HALLOC_BROKER_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    own = tmp_path / "halloc"
    own.mkdir()
    (own / "broker.sock").write_text("")
    machine = ("/run/halloc/control.sock", "/run/halloc/broker.sock")
    # Root's clients (and hallocd) take no directory from the environment.
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert _socket_paths(None, None) == machine
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    # Both from the user's own directory, never one from each.
    assert _socket_paths(None, None) == (str(own / "control.sock"), str(own / "broker.sock"))
    (own / "broker.sock").unlink()
    (own / "control.sock").write_text("")
    assert _socket_paths(None, None) == (str(own / "control.sock"), str(own / "broker.sock"))
    # Nothing of this user's there: the machine's hallocd.
    (own / "control.sock").unlink()
    assert _socket_paths(None, None) == machine
    # Named ones stay as named; one named alone brings its pair from its
    # own directory, never from the default one.
    assert _socket_paths("/srv/t/c.sock", None) == ("/srv/t/c.sock", "/srv/t/broker.sock")
    assert _socket_paths(None, "/srv/t/b.sock") == ("/srv/t/control.sock", "/srv/t/b.sock")
    monkeypatch.setenv("HALLOC_BROKER_SOCKET", "/b")
    assert _socket_paths("/c", None) == ("/c", "/b")
    assert _socket_paths(None, None) == ("/control.sock", "/b")


def test_session_is_the_kernel_verified_process(client):
    assert client.session_id > 0
    assert client.uid == os.getuid()
    assert client.hello.pid == os.getpid()
    assert client.exe == os.readlink("/proc/self/exe")


@PATHS
@pytest.mark.parametrize("size", [1, PAGE + 1, 1 << 20])
def test_allocate_map_write_read(connect, size, fast_path):
    client = connect(broker_fast_path=fast_path)
    buf = client.allocate(halloc.blob(size, name="py.blob"))
    assert buf.size == -(-size // PAGE) * PAGE  # whole pages
    assert buf.info.owned and buf.info.owner_uid == os.getuid()
    assert buf.info.name == "py.blob"
    assert buf.cpu_access == READ_WRITE
    data = pattern(buf.size)
    with buf.map(halloc.Access.READ_WRITE) as m:
        assert isinstance(m, mmap.mmap) and len(m) == buf.size
        assert m[:] == bytes(buf.size)  # zero-filled
        m[:] = data
    with buf.map(halloc.Access.READ) as m:
        assert m[:] == data
        with pytest.raises(TypeError):  # a read-only mmap
            m[0] = 1
    client.release(buf)
    assert buf.closed


@PATHS
def test_a_request_over_what_hallocd_reads_is_resource_exhausted_on_both_paths(connect,
                                                                               fast_path):
    client = connect(broker_fast_path=fast_path)
    with pytest.raises(halloc.ResourceExhaustedError):
        client.allocate(halloc.blob(PAGE, name="n" * 70000))
    # Nothing taken, and the connection still serves.
    assert client.stats().live_buffers == 0
    client.release(client.allocate(halloc.blob(PAGE)))


@PATHS
def test_info_says_what_the_fd_is(connect, fast_path):
    # hallocd's reply says memfd or dma-buf (BufferInfo.fd_kind), so that
    # map() need not read /proc/self/fdinfo; it agrees with the kernel.
    client = connect(broker_fast_path=fast_path)
    buf = client.allocate(halloc.blob(PAGE))
    assert buf.info.fd_kind != types_pb2.FD_KIND_UNSPECIFIED
    assert buf.is_dmabuf() == halloc.mapping.is_dmabuf(buf.fileno())
    assert buf.is_dmabuf() == (buf.info.fd_kind == types_pb2.FD_KIND_DMA_BUF)
    client.release(buf)


def test_a_with_block_ends_the_sync_bracket_of_a_dmabuf_mapping(monkeypatch):
    # mmap's own __exit__ closes below Mapping.close(): the END ioctl and
    # the close of the bracket's fd must still come as the block ends.
    calls = []
    monkeypatch.setattr(halloc.mapping, "_sync",
                        lambda fd, flags: calls.append(flags & ~0x3))
    fd = os.memfd_create("py.bracket", os.MFD_CLOEXEC)
    os.ftruncate(fd, PAGE)
    before = len(open_fds())
    with halloc.mapping.map_fd(fd, PAGE, halloc.Access.READ_WRITE, "test", dmabuf=True) as m:
        m[:1] = b"x"
        assert len(calls) == 1  # START
        assert len(open_fds()) == before + 2  # mmap's own dup, and the bracket's
    assert len(calls) == 2, "no END at the end of the with block"
    assert len(open_fds()) == before, "the bracket's fd outlived the block"
    os.close(fd)


def test_a_kept_mapping_brackets_each_access_of_its_own(monkeypatch):
    # libcamera's MappedFrameBuffer: mapped once, read every frame. Each
    # end_access and begin_access is the dma-buf's END and START; out of
    # turn, or closed, is FailedPreconditionError; close ends only what is
    # begun.
    calls = []
    monkeypatch.setattr(halloc.mapping, "_sync",
                        lambda fd, flags: calls.append(flags & ~0x3))
    fd = os.memfd_create("py.frames", os.MFD_CLOEXEC)
    os.ftruncate(fd, PAGE)
    m = halloc.mapping.map_fd(fd, PAGE, halloc.Access.READ_WRITE, "test", dmabuf=True)
    start, end = 0 << 2, 1 << 2
    with pytest.raises(halloc.FailedPreconditionError, match="begun already"):
        m.begin_access()
    for frame in range(3):
        m.end_access()
        with pytest.raises(halloc.FailedPreconditionError, match="ended already"):
            m.end_access()
        m.begin_access()
        m[:1] = bytes([frame])
    m.end_access()
    m.close()
    assert calls == [start] + [end, start] * 3 + [end], "close ended what was ended"
    with pytest.raises(halloc.FailedPreconditionError, match="not mapped"):
        m.begin_access()
    os.close(fd)


def test_a_description_larger_than_its_memfd_is_data_loss():
    # Python's mmap refuses it with ValueError, which is no HallocError;
    # libhalloc would have mapped it and died of SIGBUS at the first touch.
    fd = os.memfd_create("py.short", os.MFD_CLOEXEC)
    os.ftruncate(fd, PAGE)
    before = len(open_fds())
    with pytest.raises(halloc.DataLossError, match=f"has {PAGE}"):
        halloc.mapping.map_fd(fd, 4 * PAGE, halloc.Access.READ_WRITE, "buffer 1", dmabuf=False)
    # Past mmap's C types (OverflowError before the size check): the same.
    for size in (1 << 63, (1 << 64) - PAGE):
        with pytest.raises(halloc.DataLossError, match=f"has {PAGE}"):
            halloc.mapping.map_fd(fd, size, halloc.Access.READ, "buffer 1", dmabuf=False)
    assert len(open_fds()) == before
    os.close(fd)


def test_a_refused_end_does_not_escape_the_with_block(monkeypatch):
    # A producer's revoke makes END fail (ENODEV) on the consumer's view:
    # leaving the with block unmaps and closes all the same, and raises
    # nothing of its own.
    import errno

    def sync(fd, flags):
        if flags & halloc.mapping._DMA_BUF_SYNC_END:
            raise OSError(errno.ENODEV, "revoked")

    monkeypatch.setattr(halloc.mapping, "_sync", sync)
    fd = os.memfd_create("py.revoked", os.MFD_CLOEXEC)
    os.ftruncate(fd, PAGE)
    before = len(open_fds())
    with halloc.mapping.map_fd(fd, PAGE, halloc.Access.READ, "test", dmabuf=True) as m:
        assert m[:1] == b"\0"
    assert len(open_fds()) == before, "the bracket's fd outlived the block"
    os.close(fd)


def test_leaving_a_with_block_of_a_buffer_released_elsewhere_raises_nothing(client):
    with client.allocate(halloc.blob(PAGE)) as buf:
        client.release(buf.id)  # by id: the Buffer does not know
    assert buf.closed, "the block's end closes the fd all the same"


@PATHS
@pytest.mark.parametrize("timeout", [3e6, float("inf")], ids=["35-days", "infinite"])
def test_a_very_long_timeout_is_a_long_wait_not_an_error(connect, timeout, fast_path):
    # poll takes an int of milliseconds, gRPC a finite deadline: libhalloc
    # clamps, and so do we.
    client = connect(timeout=timeout, broker_fast_path=fast_path)
    bufs = [client.allocate(halloc.blob(PAGE)) for _ in range(2)]
    assert client.describe(bufs[0].id).id == bufs[0].id  # a gRPC call with that timeout
    client.release(*bufs)


def test_mapping_a_closed_buffer_is_a_halloc_error(client):
    buf = client.allocate(halloc.blob(PAGE))
    buf.close()
    with pytest.raises(halloc.FailedPreconditionError):
        buf.map()
    client.release(buf.id)


def test_a_forked_child_leaves_a_with_block_and_closes_quietly(connect):
    # The hold and the session are the parent's: a child leaving a with
    # block, or closing the Client, closes its copies and raises nothing.
    client = connect()
    with client.allocate(halloc.blob(PAGE)) as buf:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                buf.__exit__(None, None, None)
                client.close()
                code = 0 if buf.closed and client.closed else 2
            except BaseException:  # pylint: disable=broad-except
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert client.describe(buf.id).id == buf.id  # the parent's hold is untouched


def test_a_forked_child_cannot_use_its_parents_client(connect):
    client = connect()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            client.allocate(halloc.blob(PAGE))
        except halloc.HallocError as e:
            code = 0 if e.code == grpc.StatusCode.FAILED_PRECONDITION else 2
        except BaseException:  # pylint: disable=broad-except
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    buf = client.allocate(halloc.blob(PAGE))  # the parent's works on
    client.release(buf)


def test_map_follows_fd_kind_and_asks_the_fd_when_unsaid(client):
    # A hand-made Buffer over a memfd: with the kind unsaid it is asked
    # (no bracket, maps); said to be a dma-buf, the info is believed: the
    # START ioctl fails on a memfd, a clear error and nothing kept open.
    fd = os.memfd_create("py.fd_kind", os.MFD_CLOEXEC)
    os.ftruncate(fd, PAGE)
    unsaid = halloc.Buffer(client, types_pb2.BufferInfo(id=1, size=PAGE),
                           halloc._scm.OwnedFd(os.dup(fd)))
    assert not unsaid.is_dmabuf()
    with unsaid.map() as m:
        m[0] = 7
    unsaid.close()
    lying = halloc.Buffer(
        client, types_pb2.BufferInfo(id=2, size=PAGE, fd_kind=types_pb2.FD_KIND_DMA_BUF),
        halloc._scm.OwnedFd(fd))
    assert lying.is_dmabuf()
    before = open_fds()
    with pytest.raises(halloc.HallocError, match="DMA_BUF_IOCTL_SYNC"):
        lying.map()
    assert open_fds() == before
    lying.close()


@PATHS
def test_allocate_many_gets_one_fd_each(connect, fast_path):
    client = connect(broker_fast_path=fast_path)
    bufs = client.allocate_many(halloc.blob(PAGE), 3)
    assert len({b.id for b in bufs}) == 3
    assert len({b.fileno() for b in bufs}) == 3
    for i, b in enumerate(bufs):
        with b.map() as m:
            m[0] = i + 1
    for i, b in enumerate(bufs):
        with b.map(halloc.Access.READ) as m:
            assert m[0] == i + 1
    client.release(*bufs)
    assert all(b.closed for b in bufs)


def test_a_grpc_allocate_whose_fds_never_come_gives_its_buffers_back(connect, monkeypatch):
    watcher = connect()
    live = watcher.stats().live_buffers
    client = connect(broker_fast_path=False)

    def lost(buffer_id, call_id=0, deadline=None, name=""):
        raise halloc.DeadlineExceededError("no fd for buffer %d" % buffer_id)

    monkeypatch.setattr(client._conn, "take_fd", lost)
    with pytest.raises(halloc.DeadlineExceededError):
        client.allocate_many(halloc.blob(PAGE), 3)
    assert wait_for(lambda: watcher.stats().live_buffers == live)
    monkeypatch.undo()
    assert len(client.allocate_many(halloc.blob(PAGE), 2)) == 2  # the client serves on


def test_image_has_the_layout_describe_reports(client):
    nv12 = halloc.fourcc("NV12")
    buf = client.allocate(halloc.image(640, 480, nv12, name="frame"))
    layout = buf.layout
    assert (layout.width, layout.height, layout.format) == (640, 480, nv12)
    assert len(layout.planes) == 2  # Y, then CbCr
    assert layout.planes[0].stride >= 640
    assert layout.planes[1].offset >= 640 * 480
    assert layout.planes[1].vertical_subsampling == 2
    assert buf.size >= layout.size
    described = client.describe(buf)
    assert described.id == buf.id
    assert described.layout == buf.layout
    assert (described.size, described.name, described.owned) == (buf.size, "frame", True)
    assert client.describe(buf.id) == described
    assert [b.id for b in client.list()] == [buf.id]


@PATHS
def test_a_release_of_more_ids_than_a_request_holds_is_one_release(connect, fast_path):
    client = connect(broker_fast_path=fast_path)
    bufs = client.allocate_many(halloc.blob(PAGE), 2)
    held = [b.id for b in bufs] * 20000  # named over and over: past 64 KiB
    # A ReleaseMany stream, released as one: an unknown id in its final
    # part, and nothing is, not even the ids of its first parts.
    with pytest.raises(halloc.NotFoundError):
        client.release(*(held + [(1 << 40) + i for i in range(40000)]))
    assert client.describe(bufs[0]).id == bufs[0].id
    assert client.describe(bufs[1]).id == bufs[1].id
    client.release(*held)
    with pytest.raises(halloc.NotFoundError):
        client.describe(bufs[0])


def test_a_listing_of_more_buffers_than_a_page_holds_comes_whole(client):
    # hallocd lists at most 1000 buffers a reply; list() asks page by page.
    ids = []
    for _ in range(17):
        bufs = client.allocate_many(halloc.blob(PAGE), 64)
        ids += [b.id for b in bufs]
        for b in bufs:
            b.close()
    assert [b.id for b in client.list()] == sorted(ids)
    client.release(*ids)
    assert client.list() == []


def test_a_page_token_given_twice_is_data_loss_not_a_loop(client, monkeypatch):
    # A daemon (or something posing as one) that repeats its page token
    # would keep list() and dump() asking, and gathering, forever.
    def same_page_again(method, req, name, timeout=None):
        if name == "List":
            return allocator_pb2.ListResponse(next_page_token=b"again")
        return allocator_pb2.DumpResponse(next_page_token=b"again")

    monkeypatch.setattr(client._conn, "call", same_page_again)
    with pytest.raises(halloc.DataLossError):
        client.list()
    with pytest.raises(halloc.DataLossError):
        client.dump()


def test_pages_that_never_end_are_cut_short(client, monkeypatch):
    # So is a cycle of tokens (b"a", b"b", b"a", ...); and tokens that never
    # repeat end with the call's timeout, all pages together (each page had
    # a timeout of its own, and the rows piled up for as long as pages came).
    pages = []

    def endless(method, req, name, timeout=None):
        if name == "List":
            return allocator_pb2.ListResponse(
                next_page_token=b"b" if req.page_token == b"a" else b"a")
        if timeout <= 0:  # as gRPC: a deadline already past
            raise halloc.DeadlineExceededError("Dump: Deadline Exceeded")
        time.sleep(0.01)
        pages.append(timeout)
        return allocator_pb2.DumpResponse(next_page_token=b"%d" % len(pages))

    monkeypatch.setattr(client._conn, "call", endless)
    monkeypatch.setattr(client._conn, "_timeout", 0.5)
    with pytest.raises(halloc.DataLossError):
        client.list()
    start = time.monotonic()
    with pytest.raises(halloc.DeadlineExceededError):
        client.dump()
    assert time.monotonic() - start < 5, "the pages outlasted the call's timeout"
    assert pages == sorted(pages, reverse=True), "each page asked within what was left"


@PATHS
def test_release_drops_the_hold_and_closes_the_fd(connect, fast_path):
    client = connect(broker_fast_path=fast_path)
    buf = client.allocate(halloc.blob(PAGE))
    client.release(buf)
    assert buf.closed
    with pytest.raises(halloc.NotFoundError) as err:
        client.describe(buf.id)
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(halloc.NotFoundError) as err:
        client.release(buf.id)
    assert str(err.value).startswith("NOT_FOUND: Release: ")


def test_with_block_releases_and_a_mapping_outlives_its_buffer(client):
    with client.allocate(halloc.blob(PAGE)) as buf:
        m = buf.map()
    assert buf.closed
    with pytest.raises(halloc.NotFoundError):
        client.describe(buf.id)
    m[:4] = b"halo"  # the memory lives while mapped
    assert m[:4] == b"halo"
    m.close()


def test_closing_the_client_ends_the_session(hallocd, connect):
    watcher = connect()
    live = watcher.stats().live_buffers
    owner = connect()
    bufs = owner.allocate_many(halloc.blob(PAGE), 2)
    assert watcher.stats().live_buffers == live + 2
    owner.close()
    assert wait_for(lambda: watcher.stats().live_buffers == live)
    with bufs[0].map() as m:  # fds in this process stay valid
        m[0] = 1
    with pytest.raises(halloc.FailedPreconditionError):
        owner.allocate(halloc.blob(PAGE))
    for b in bufs:
        b.close()


@PATHS
@pytest.mark.parametrize("desc,count", [
    (halloc.blob(0), 1),
    (halloc.blob(PAGE), 65),
    (halloc.blob(PAGE, usage=1 << 10), 1),  # a reserved usage bit
    (halloc.blob(PAGE, name="no spaces"), 1),
    (halloc.image(0, 480, halloc.fourcc("NV12")), 1),
], ids=["size0", "count65", "reserved_usage", "bad_name", "width0"])
def test_bad_descriptors_are_invalid_argument(connect, fast_path, desc, count):
    client = connect(broker_fast_path=fast_path)
    verdict = client.is_supported(desc, count)  # the same code path says so
    assert not verdict.supported
    assert verdict.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    with pytest.raises(halloc.InvalidArgumentError) as err:
        client.allocate_many(desc, count)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message.startswith("Allocate: ")
    assert client.list() == []


def test_tokens_and_names_longer_than_a_record_are_answered_too(client):
    # As gRPC calls (on the broker they would be refused with no request
    # id, and the call would wait for its deadline): RESOURCE_EXHAUSTED,
    # past what hallocd reads on either path (64 KiB).
    with pytest.raises(halloc.ResourceExhaustedError):
        client.import_buffer(b"x" * 70000)
    buf = client.allocate(halloc.blob(PAGE))
    with pytest.raises(halloc.ResourceExhaustedError):
        client.share(buf, client="n" * 70000)


def test_set_metadata_and_dump(client):
    buf = client.allocate(halloc.image(64, 64, halloc.fourcc("XR24")))
    assert client.is_supported(halloc.image(64, 64, halloc.fourcc("XR24"))).supported
    # Android JFIF: BT.601 625, SMPTE 170M transfer, full range.
    value = types_pb2.BufferMetadata(dataspace=0x8C20000)
    info = client.set_metadata(buf, types_pb2.METADATA_DATASPACE, value)
    assert info.metadata.dataspace == 0x8C20000
    assert client.describe(buf).metadata.dataspace == 0x8C20000
    with pytest.raises(halloc.InvalidArgumentError):  # immutable
        client.set_metadata(buf, types_pb2.METADATA_WIDTH, value)
    mine = [s for s in client.dump().sessions if s.session_id == client.session_id]
    assert len(mine) == 1 and mine[0].pid == os.getpid()
    assert (mine[0].owned_buffers, mine[0].owned_bytes) == (1, buf.size)


def test_unknown_grants_and_buffers_are_not_found(client):
    for token in ["0" * 32, b"\xff\x00"]:
        with pytest.raises(halloc.NotFoundError):
            client.import_buffer(token)
    with pytest.raises(halloc.NotFoundError):
        client.describe(1 << 60)
    with pytest.raises(halloc.NotFoundError):
        client.share(1 << 60, uid=os.getuid())
    with pytest.raises(TypeError):
        client.share(1, uid=os.getuid(), client="compositor")


def test_calls_without_a_valid_session_are_unauthenticated(hallocd):
    with grpc.insecure_channel(f"unix:{hallocd.control}") as channel:
        stub = allocator_pb2_grpc.AllocatorStub(channel)
        req = allocator_pb2.DescribeRequest(buffer_id=1)
        for metadata in [(), ((_broker.SESSION_METADATA_KEY, "0" * 32),)]:
            with pytest.raises(grpc.RpcError) as err:
                stub.Describe(req, timeout=10, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert isinstance(halloc.errors.from_rpc_error(err.value, "Describe"),
                              halloc.UnauthenticatedError)
        stub.Stats(allocator_pb2.StatsRequest(), timeout=10)  # needs none


@pytest.mark.parametrize("fast", [True, False], ids=["broker", "grpc"])
def test_share_read_only_reaches_the_peer_read_only(connect, fast):
    # Import on the broker (the reply and the fd in one record) and on
    # gRPC (the fd ahead of the reply) alike.
    # Share too, on the broker or on gRPC.
    producer, consumer = connect(broker_fast_path=fast), connect(broker_fast_path=fast)
    assert consumer.welcome.broker_import and producer.welcome.broker_share
    assert producer.welcome.broker_revoke
    buf = producer.allocate(halloc.blob(2 * PAGE))
    data = pattern(buf.size)
    with buf.map() as m:
        m[:] = data
    grant = producer.share(buf, uid=os.getuid(), cpu_access=READ)
    assert len(grant.token) == 32 and grant.buffer_id == buf.id
    assert grant.cpu_access == READ
    got = consumer.import_(grant.token)
    assert (got.id, got.size, got.cpu_access) == (buf.id, buf.size, READ)
    assert not got.info.owned
    assert fcntl.fcntl(got.fileno(), fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    with pytest.raises(halloc.PermissionDeniedError):
        got.map(halloc.Access.READ_WRITE)
    with got.map(halloc.Access.READ) as m:
        assert m[:] == data
        with buf.map() as w:  # one memory
            w[:3] = b"new"
        assert m[:3] == b"new"
    producer.revoke(grant.id)
    with pytest.raises(halloc.NotFoundError):
        consumer.import_buffer(grant.token)
    with pytest.raises(halloc.NotFoundError):  # revoked already
        producer.revoke(grant.id)
    # The consumer held it through that grant alone: its hold went with it
    # (on memfd its fd still reads; the halloc backend would cut it off).
    with pytest.raises(halloc.NotFoundError):
        consumer.describe(got)
    with got.map(halloc.Access.READ) as m:
        assert m[:3] == b"new"
    # Released already, as far as hallocd is concerned: a Release naming it
    # succeeds once (a batch with it releases the others).
    consumer.release(got)
    with pytest.raises(halloc.NotFoundError):
        consumer.release(got)


def test_share_revoke_and_metadata_need_no_control_socket_on_the_broker(hallocd, connect):
    # The session's gRPC channel leads nowhere: what works went on the
    # broker socket; what needs gRPC waits for the channel (a full backlog
    # or a restart passes) and gives up at its deadline.
    c = halloc.Client.connect("/nonexistent/control.sock", hallocd.broker)
    grpc_only = halloc.Client.connect("/nonexistent/control.sock", hallocd.broker,
                                      broker_fast_path=False, timeout=1.0)
    try:
        assert c.welcome.broker_revoke
        buf = c.allocate(halloc.blob(PAGE))
        grant = c.share(buf, uid=os.getuid(), cpu_access=READ)
        got = connect().import_buffer(grant.token)
        c.revoke(grant.id)
        with pytest.raises(halloc.NotFoundError):
            c.revoke(grant.id)
        with pytest.raises(halloc.NotFoundError):
            connect().import_buffer(grant.token)
        got.close()
        with pytest.raises(halloc.DeadlineExceededError):
            grpc_only.revoke(grant.id)
        # Describe and SetMetadata too (Welcome.broker_metadata).
        assert c.welcome.broker_metadata
        value = types_pb2.BufferMetadata(dataspace=0x8C20000)
        assert c.set_metadata(buf, types_pb2.METADATA_DATASPACE, value).metadata == value
        assert c.describe(buf).metadata.dataspace == 0x8C20000
        with pytest.raises(halloc.InvalidArgumentError):
            c.set_metadata(buf, types_pb2.METADATA_WIDTH, value)
        with pytest.raises(halloc.NotFoundError):
            c.describe(1 << 40)
        with pytest.raises(halloc.DeadlineExceededError):
            grpc_only.describe(buf.id)
        # IsSupported too (Welcome.broker_is_supported), yes and no.
        assert c.welcome.broker_is_supported
        assert c.is_supported(halloc.blob(PAGE)).supported
        refused = c.is_supported(halloc.blob(0))
        assert not refused.supported and refused.code != 0 and refused.reason
        with pytest.raises(halloc.DeadlineExceededError):
            grpc_only.is_supported(halloc.blob(PAGE))
    finally:
        c.close()
        grpc_only.close()


@pytest.mark.parametrize("fast", [True, False], ids=["broker", "grpc"])
def test_concurrent_imports_of_one_buffer_get_their_own_fds(connect, fast):
    # On gRPC their fds come ahead of the replies with the same buffer id
    # (the call id tells them apart); on the broker, each with its reply.
    producer, consumer = connect(), connect(broker_fast_path=fast)
    buf = producer.allocate(halloc.blob(PAGE))
    grants = [(producer.share(buf, uid=os.getuid(), cpu_access=access).token, mode)
              for access, mode in ((READ, os.O_RDONLY), (READ_WRITE, os.O_RDWR))]
    wrong = []

    def importer(token, mode):
        try:
            for _ in range(60):
                got = consumer.import_buffer(token)
                if fcntl.fcntl(got.fileno(), fcntl.F_GETFL) & os.O_ACCMODE != mode:
                    wrong.append(got.cpu_access)
                got.close()
        except halloc.HallocError as e:  # a call that timed out, say
            wrong.append(e)

    threads = [threading.Thread(target=importer, args=g) for g in grants]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_no_fd_leaks(hallocd):
    uid = os.getuid()

    def workload():
        with halloc.Client.connect(hallocd.control, hallocd.broker) as a, \
                halloc.Client.connect(hallocd.control, hallocd.broker,
                                      broker_fast_path=False) as b:
            bufs = a.allocate_many(halloc.blob(PAGE), 4)
            with bufs[0].map() as m:
                m[0] = 42
            grant = a.share(bufs[0], uid=uid, cpu_access=READ)
            got = b.import_buffer(grant.token)
            with got.map(halloc.Access.READ) as m:
                assert m[0] == 42
            a.import_buffer(grant.token).close()  # on the broker
            with pytest.raises(halloc.PermissionDeniedError):
                got.map(halloc.Access.READ_WRITE)
            for c in (a, b):
                with pytest.raises(halloc.InvalidArgumentError):
                    c.allocate(halloc.blob(0))
                with pytest.raises(halloc.NotFoundError):
                    c.import_buffer("0" * 32)
            with b.allocate(halloc.blob(PAGE)):
                pass
            a.release(*bufs)
            got.close()  # its hold ends with b's session
            a.allocate(halloc.blob(PAGE)).close()  # the session's end releases it

    def settled_daemon_fds():
        # hallocd closes a session's fds shortly after we close ours.
        counts = [hallocd.fd_count()]
        while (len(counts) < 6 or len(set(counts[-6:])) > 1) and len(counts) < 200:
            time.sleep(0.05)
            counts.append(hallocd.fd_count())
        return counts[-1]

    workload()  # first: gRPC's own lasting fds
    mine, theirs = open_fds(), settled_daemon_fds()
    for _ in range(3):
        workload()
    wait_for(lambda: open_fds() == mine and hallocd.fd_count() == theirs, timeout=30)
    after = open_fds()
    assert after == mine, {"leaked": {fd: t for fd, t in after.items() if fd not in mine}}
    assert hallocd.fd_count() == theirs


def test_a_cut_grpc_import_gives_back_only_the_hold_it_made(connect):
    # With no fd number left, the kernel cuts a gRPC Import's fd (sent on
    # the broker socket ahead of the reply). A hold the session had before
    # (a first import, in use) stays; a hold the cut import made goes back.
    # (As libhalloc's ACutGrpcImportGivesBackOnlyTheHoldItMade.)
    producer = connect()
    importer = connect(broker_fast_path=False)  # Import over gRPC
    buf = producer.allocate(halloc.blob(PAGE))
    token = producer.share(buf, uid=os.getuid()).token
    assert importer.list() == []  # the gRPC connection exists before the limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def cut_import():
        lowest_free = os.open("/dev/null", os.O_RDONLY)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            with pytest.raises(halloc.ResourceExhaustedError):
                importer.import_buffer(token)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    cut_import()  # the hold it made goes back
    assert wait_for(lambda: importer.list() == [])
    first = importer.import_buffer(token)
    cut_import()  # the session held it already
    importer.describe(first)  # a round trip after any give-back
    assert [b.id for b in importer.list()] == [buf.id], "the first import's hold was given back"
    first.close()


@PATHS
def test_fds_cut_on_the_way_are_given_back(connect, fast_path):
    # With no fd number left, the kernel cuts the fds of the Allocate reply
    # or frame (MSG_CTRUNC): the client says so and gives the buffer back.
    client = connect(broker_fast_path=fast_path)
    assert client.list() == []  # the gRPC connection exists before the limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open("/dev/null", os.O_RDONLY)
    os.close(lowest_free)
    before = open_fds()
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        with pytest.raises(halloc.ResourceExhaustedError) as err:
            client.allocate(halloc.blob(PAGE))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "RLIMIT_NOFILE" in err.value.message
    assert open_fds() == before
    assert wait_for(lambda: client.list() == [])
    with client.allocate(halloc.blob(PAGE)) as buf:  # the session still works
        assert buf.size == PAGE
