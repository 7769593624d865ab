"""The Python client against a scripted broker (scripted_broker.py) or a
hallocd it is made to lose calls with: waiting for its own answer, answers
without what was asked, late replies and fds after a call gave up (given
back or closed), timeouts, interrupts and closing mid-call. Imports:
test_scripted_imports.py."""

import os
import threading
import time

import grpc
import pytest

import halloc
from halloc import _broker
from conftest import wait_for
from scripted_broker import (PAGE, ScriptedBroker, grpc_path_broker, interrupt_the_next_wait,
                             late_fd, open_on_inode, release_on_the_socket)


def test_a_call_waits_for_its_own_answer_only():
    first_sent = threading.Event()

    def answer(sock, req):
        if req.release.buffer_ids[0] == 1:
            first_sent.set()  # never answered
        else:
            broker.reply_release(req)

    broker = ScriptedBroker(answer, timeout=2.0)
    outcome = {}

    def first():
        try:
            broker.client.release(1)
        except halloc.HallocError as e:
            outcome["code"] = e.code
        outcome["done"] = True

    waiting = threading.Thread(target=first)
    waiting.start()
    first_sent.wait()
    time.sleep(0.05)  # the first call waits for its answer now
    broker.client.release(2)
    assert "done" not in outcome, "the answered call returned only after the other's timeout"
    waiting.join()
    assert outcome["code"] == grpc.StatusCode.DEADLINE_EXCEEDED
    broker.close()


def test_an_answer_without_the_buffers_asked_for_is_data_loss():
    broker = ScriptedBroker(lambda sock, req: broker.reply_release(req), timeout=2.0)
    with pytest.raises(halloc.DataLossError):
        broker.client.allocate(halloc.blob(PAGE))  # answered with no buffers
    broker.close()


def test_an_answer_of_another_kind_is_data_loss():
    # So is any success that is not an answer to what was asked (as
    # libhalloc): an empty reply to a Describe (read as buffer 0, of size
    # 0), or an Allocate's to a Release.
    from halloc.v1 import allocator_pb2, broker_pb2

    def answer(sock, req):
        frame = broker_pb2.BrokerFrame()
        frame.reply.request_id = req.request_id
        if req.WhichOneof("kind") == "release":
            frame.reply.allocate.SetInParent()
        sock.send(frame.SerializeToString())

    broker = ScriptedBroker(answer, timeout=2.0)
    with pytest.raises(halloc.DataLossError, match="Describe: hallocd's reply is not one to"):
        broker.client._conn.broker_call(broker_pb2.BrokerRequest(
            describe=allocator_pb2.DescribeRequest(buffer_id=7)), "Describe")
    with pytest.raises(halloc.DataLossError):
        broker.client.release(7)
    broker.close()


def test_calls_keep_their_timeout_when_the_daemon_stops_reading():
    resume = threading.Event()
    broker = ScriptedBroker(lambda sock, req: resume.wait(), timeout=0.005)
    codes = []
    done = threading.Event()

    def calls():
        for i in range(400):  # more than the socket holds
            try:
                broker.client.release(100 + i)
            except halloc.HallocError as e:
                codes.append(e.code)
        done.set()

    t = threading.Thread(target=calls, daemon=True)
    t.start()
    returned = done.wait(60)
    resume.set()
    assert returned, "a call blocked past its timeout"
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 400
    t.join()
    broker.close()


def test_the_fds_of_a_grpc_allocate_that_gave_up_are_closed_and_given_back(monkeypatch):
    import socket
    from halloc.v1 import allocator_pb2, broker_pb2, types_pb2
    released = []

    def answer(sock, req):
        released.extend(req.release.buffer_ids)
        broker.reply_release(req)

    broker = ScriptedBroker(answer, timeout=2.0)
    broker.client.welcome.allocate_call_ids = True
    monkeypatch.setattr(broker.client, "_fast_path", False)  # gRPC Allocate
    late = os.memfd_create("late-allocate")
    inode = os.fstat(late).st_ino
    call_ids = []

    def grpc_allocate(method, req, name, timeout=None, deadline=None):
        # The first call's fd comes as its deadline passes; the next one's
        # at once, with its reply.
        buffer_id = 42 + len(call_ids)
        call_ids.append(req.call_id)
        frame = broker_pb2.BrokerFrame()
        frame.buffer.buffer_id = buffer_id
        frame.buffer.call_id = req.call_id
        fd = late if buffer_id == 42 else os.memfd_create("next")
        socket.send_fds(broker.sock, [frame.SerializeToString()], [fd])
        os.close(fd)
        if buffer_id == 42:
            raise halloc.DeadlineExceededError("Allocate: deadline passed")
        return allocator_pb2.AllocateResponse(
            buffers=[types_pb2.BufferInfo(id=buffer_id, size=PAGE)])

    monkeypatch.setattr(broker.client._conn, "call", grpc_allocate)
    with pytest.raises(halloc.DeadlineExceededError):
        broker.client.allocate(halloc.blob(PAGE))
    assert call_ids[0] != 0, "the call carried no call id"
    # The next Allocate reads the late record off the socket before its own.
    b = broker.client.allocate(halloc.blob(PAGE))
    assert b.id == 43
    b.close()
    assert not open_on_inode(inode), "the late Allocate's fd is still open in the client"
    assert wait_for(lambda: 42 in released), f"buffer 42 was not given back: {released}"
    broker.close()


def test_a_grant_made_after_its_caller_gave_up_is_withdrawn(monkeypatch):
    from halloc.v1 import broker_pb2
    revoked = []

    def answer(sock, req):
        kind = req.WhichOneof("kind")
        if kind == "share":
            time.sleep(0.3)  # after the caller was interrupted
            frame = broker_pb2.BrokerFrame()
            frame.reply.request_id = req.request_id
            frame.reply.share.grant.id = 5
            sock.send(frame.SerializeToString())
        elif kind == "revoke":
            revoked.append(req.revoke.grant_id)
        else:
            broker.reply_release(req)

    broker = ScriptedBroker(answer, timeout=2.0)
    broker.client.welcome.broker_share = True
    interrupt_the_next_wait(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        broker.client.share(41, uid=1000)
    time.sleep(0.5)
    broker.client.release(7)  # takes the late reply off the socket first
    assert wait_for(lambda: revoked == [5]), f"grant 5 was not withdrawn: {revoked}"
    broker.close()


def test_an_interrupted_allocate_gives_its_late_reply_back(monkeypatch):
    # Ctrl-C (or any exception) while a fast-path Allocate waits: its reply,
    # when it comes, is given back (fds closed, buffers released), not
    # filed for nobody until the session ends.
    import socket
    from halloc.v1 import broker_pb2
    memfd = os.memfd_create("late-allocate")
    inode = os.fstat(memfd).st_ino
    released = []

    def answer(sock, req):
        if req.WhichOneof("kind") == "allocate":
            time.sleep(0.3)  # after the caller was interrupted
            frame = broker_pb2.BrokerFrame()
            frame.reply.request_id = req.request_id
            frame.reply.allocate.buffers.add(id=5, size=PAGE)
            socket.send_fds(sock, [frame.SerializeToString()], [memfd])
            return
        released.extend(req.release.buffer_ids)
        broker.reply_release(req)

    broker = ScriptedBroker(answer, timeout=2.0)
    interrupt_the_next_wait(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        broker.client.allocate(halloc.blob(PAGE))
    time.sleep(0.5)
    broker.client.release(7)  # takes the late reply off the socket first
    os.close(memfd)
    assert not open_on_inode(inode), "the interrupted Allocate's fd is still open"
    assert wait_for(lambda: 5 in released), f"buffer 5 was not given back: {released}"
    broker.close()


def test_a_record_with_too_many_fds_does_not_fail_another_call():
    # Dropped (its fds closed), as libhalloc drops it: the call that reads
    # the socket gets its own reply, not that record's DATA_LOSS.
    import socket
    memfd = os.memfd_create("too-many")
    inode = os.fstat(memfd).st_ino

    def answer(sock, req):
        socket.send_fds(sock, [b"x"], [memfd] * 65)
        broker.reply_release(req)

    broker = ScriptedBroker(answer, timeout=2.0)
    broker.client.release(3)
    os.close(memfd)
    assert not open_on_inode(inode), "the dropped record's fds are still open"
    broker.close()


def test_closing_a_client_ends_its_calls_in_flight():
    # Another thread's call, reading the socket or waiting for the reader,
    # ends at once with FAILED_PRECONDITION, not at its deadline.
    broker = ScriptedBroker(lambda sock, req: None, timeout=10.0)  # never answers
    outcomes = []

    def call():
        start = time.monotonic()
        try:
            broker.client.release(1)
            outcomes.append(("ok", 0))
        except halloc.HallocError as e:
            outcomes.append((e.code, time.monotonic() - start))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    broker.client.close()
    for t in threads:
        t.join(5)
    assert len(outcomes) == 2, outcomes
    for code, took in outcomes:
        assert code == grpc.StatusCode.FAILED_PRECONDITION, outcomes
        assert took < 3, outcomes
    broker.sock.close()


def test_a_default_socket_timeout_does_not_stretch_a_call(tmp_path):
    # socket.setdefaulttimeout() puts new sockets in timeout mode, where
    # CPython waits that long before each send or receive: the broker
    # socket must stay blocking (the client keeps its own deadlines).
    import socket
    from halloc import _scm
    path = str(tmp_path / "broker.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)
    socket.setdefaulttimeout(3.0)
    try:
        sock = _broker.connect_seqpacket(path)
    finally:
        socket.setdefaulttimeout(None)
    try:
        assert sock.gettimeout() is None
        start = time.monotonic()
        assert _scm.receive_record(sock, block=False) is None  # nothing queued
        assert time.monotonic() - start < 1.0, "a non-blocking receive waited"
    finally:
        sock.close()
        listener.close()


def test_connecting_to_a_full_backlog_times_out(tmp_path):
    # A Unix socket's connect waits for room in a full backlog for as long
    # as its send timeout says: for ever, before (a daemon not accepting,
    # or any local process filling its backlog, hung Client.connect).
    import socket
    path = str(tmp_path / "broker.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(0)  # never accepted from
    filler = _broker.connect_seqpacket(path)  # the backlog's one place
    outcome = []

    def connect():
        start = time.monotonic()
        try:
            halloc.Client.connect(control_socket=str(tmp_path / "control.sock"),
                                  broker_socket=path, timeout=0.3).close()
            outcome.append(("connected", time.monotonic() - start))
        except halloc.HallocError as e:
            outcome.append((type(e), time.monotonic() - start))

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(5)
    hung = t.is_alive()
    if hung:
        listener.accept()[0].close()  # room, so that it returns
        t.join(5)
    filler.close()
    listener.close()
    assert not hung, "Client.connect still waits for room in the backlog after 5 s"
    assert outcome[0][0] is halloc.DeadlineExceededError, outcome
    assert outcome[0][1] < 3, outcome


def _refusing_then_serving_broker(path, refusals, retry_after_ms):
    """A broker socket at `path` that refuses its first `refusals`
    connections for the uid's connect rate (as hallocd: RESOURCE_EXHAUSTED
    with retry_after_ms, before any Hello), then handshakes one; the
    times of the connections it accepted."""
    import socket
    from halloc.v1 import broker_pb2
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(8)
    accepted = []

    def serve():
        for i in range(refusals + 1):
            conn, _ = listener.accept()
            accepted.append(time.monotonic())
            frame = broker_pb2.BrokerFrame()
            if i < refusals:
                frame.reply.code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                frame.reply.message = "uid 1001 opens broker connections faster than 10 a second"
                frame.reply.retry_after_ms = retry_after_ms
                conn.send(frame.SerializeToString())
                conn.close()
                continue
            frame.hello.version = _broker.BROKER_PROTOCOL_VERSION
            frame.hello.challenge = b"c" * 16
            conn.send(frame.SerializeToString())
            conn.recv(65536)  # Verify
            welcome = broker_pb2.BrokerFrame()
            welcome.reply.welcome.session_id = 7
            conn.send(welcome.SerializeToString())
            time.sleep(0.5)
            conn.close()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return accepted


def test_connect_waits_out_the_uids_connect_rate(tmp_path):
    # Refused for connecting faster than its uid's rate, the client asks
    # again once the reply says there is room, within its timeout (before:
    # the refusal, at once, though it would pass by itself).
    path = str(tmp_path / "broker.sock")
    accepted = _refusing_then_serving_broker(path, refusals=2, retry_after_ms=100)
    conn = _broker.connect_broker(path, 5.0)
    assert conn.welcome.session_id == 7
    assert len(accepted) == 3
    assert accepted[1] - accepted[0] >= 0.09 and accepted[2] - accepted[1] >= 0.09, accepted
    conn.sock.close()


def test_connect_does_not_wait_past_its_timeout_for_the_connect_rate(tmp_path):
    path = str(tmp_path / "broker.sock")
    _refusing_then_serving_broker(path, refusals=1, retry_after_ms=2000)
    start = time.monotonic()
    with pytest.raises(halloc.ResourceExhaustedError, match="faster than 10 a second"):
        _broker.connect_broker(path, 0.5)
    assert time.monotonic() - start < 0.4


def test_a_grpc_call_waits_for_room_in_a_full_control_backlog(tmp_path):
    # Any local user can keep the control socket's backlog full (connecting
    # and closing in a loop); gRPC's connect is non-blocking and failed at
    # once, so Stats was UNAVAILABLE within milliseconds. It waits now, up
    # to its deadline. (As libhalloc's AGrpcCallWaitsForRoomInAFullBacklog.)
    import socket
    from concurrent import futures
    from halloc.v1 import allocator_pb2, allocator_pb2_grpc
    path = str(tmp_path / "control.sock")
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.bind(path)
    held.listen(0)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    filler.connect(path)  # the backlog's one place
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    with pytest.raises(BlockingIOError):
        probe.connect(path)  # full: the test shows something
    probe.close()

    class SevenLive(allocator_pb2_grpc.AllocatorServicer):
        def Stats(self, request, context):
            return allocator_pb2.StatsResponse(live_buffers=7)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    allocator_pb2_grpc.add_AllocatorServicer_to_server(SevenLive(), server)

    def serve_later():
        time.sleep(0.5)
        held.close()
        filler.close()
        os.unlink(path)
        server.add_insecure_port(f"unix:{path}")
        server.start()

    broker = ScriptedBroker(lambda sock, req: None, timeout=10.0, control=path)
    later = threading.Thread(target=serve_later)
    later.start()
    try:
        assert broker.client.stats().live_buffers == 7
    finally:
        later.join()
        broker.close()
        server.stop(None)


def test_a_grpc_call_of_a_session_hallocd_ended_fails_at_once():
    # A call waits for its channel up to its deadline; a session hallocd
    # ended (its broker connection closed) has nothing to wait for.
    # (As libhalloc's AGrpcCallOfASessionHallocdEndedFailsAtOnce.)
    import socket
    broker = ScriptedBroker(lambda sock, req: None, timeout=30.0)
    broker.sock.shutdown(socket.SHUT_RDWR)  # hallocd's end; no control socket either
    start = time.monotonic()
    with pytest.raises(halloc.UnavailableError):
        broker.client.stats()
    assert time.monotonic() - start < 10, "waited for the deadline"
    broker.client.close()


def test_a_reply_too_large_for_a_record_is_asked_for_over_grpc(monkeypatch):
    # hallocd could not fit a Describe's reply in one broker record (an
    # owner's BufferInfo listing thousands of holders): RESOURCE_EXHAUSTED
    # on the socket, and the call goes again over gRPC. Any other refusal
    # is the answer. (As libhalloc's AReplyTooLargeForARecordIsAskedForOverGrpc.)
    from halloc.v1 import allocator_pb2, broker_pb2, types_pb2

    def answer(sock, req):
        frame = broker_pb2.BrokerFrame()
        frame.reply.request_id = req.request_id
        kind = req.WhichOneof("kind")
        buffer_id = getattr(req, kind).buffer_id
        if buffer_id == 7:
            frame.reply.code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            frame.reply.message = "the reply does not fit in one broker record"
        elif buffer_id == 9:
            frame.reply.code = grpc.StatusCode.NOT_FOUND.value[0]
        else:
            getattr(frame.reply, kind).buffer.id = buffer_id
        sock.send(frame.SerializeToString())

    broker = ScriptedBroker(answer, timeout=5.0)
    broker.client.welcome.broker_metadata = True
    over_grpc = []

    def call(method, req, name, timeout=None, deadline=None):
        over_grpc.append(name)
        return allocator_pb2.DescribeResponse(buffer=types_pb2.BufferInfo(id=req.buffer_id))

    monkeypatch.setattr(broker.client._conn, "call", call)
    assert broker.client.describe(8).id == 8
    assert over_grpc == []
    assert broker.client.describe(7).id == 7
    assert over_grpc == ["Describe"]
    with pytest.raises(halloc.NotFoundError):
        broker.client.describe(9)
    assert over_grpc == ["Describe"], "a refusal is not asked again"
    broker.close()


def test_a_reply_no_call_waits_for_has_its_fds_closed():
    # A reply with an id nobody asked with, or a second reply to a call:
    # dropped, its fds closed at once (before, filed for good: open until
    # the client closed). Its buffers are not given back: a repeated reply
    # names buffers the session holds and uses. (As libhalloc's
    # AReplyNoCallWaitsForHasItsFdsClosed.)
    import socket
    from halloc.v1 import broker_pb2
    memfd = os.memfd_create("unasked")
    inode = os.fstat(memfd).st_ino
    releases = []

    def answer(sock, req):
        if req.WhichOneof("kind") != "release":
            return
        releases.extend(req.release.buffer_ids)
        if memfd_box:
            frame = broker_pb2.BrokerFrame()
            frame.reply.request_id = req.request_id + 1000
            frame.reply.allocate.buffers.add(id=55)
            socket.send_fds(sock, [frame.SerializeToString()], [memfd_box.pop()])
        broker.reply_release(req)
        broker.reply_release(req)  # and again

    memfd_box = [memfd]
    broker = ScriptedBroker(answer, timeout=5.0)
    for i in (7, 8, 9):
        broker.client.release(i)
    os.close(memfd)
    assert not open_on_inode(inode), "the unasked reply's fd is still open in the client"
    assert releases == [7, 8, 9]
    broker.close()


def test_an_interrupted_grpc_allocate_closes_its_late_fd_and_gives_it_back(monkeypatch):
    # Ctrl-C while the gRPC Allocate waited, hallocd having sent the fd: it
    # was filed for a taker that never came (open, and the buffer held,
    # until some record came twice the timeout later).
    broker, released = grpc_path_broker(monkeypatch, timeout=1.0)
    memfd = os.memfd_create("late-allocate")
    inode = os.fstat(memfd).st_ino

    def interrupted(method, req, name, timeout=None, deadline=None):
        late_fd(broker, req.call_id, memfd)
        raise KeyboardInterrupt

    monkeypatch.setattr(broker.client._conn, "call", interrupted)
    with pytest.raises(KeyboardInterrupt):
        broker.client.allocate(halloc.blob(PAGE))
    os.close(memfd)
    release_on_the_socket(broker, 7)  # files the fd's record first
    assert not open_on_inode(inode), "the interrupted Allocate's late fd is still open"
    assert wait_for(lambda: 42 in released, 2), released
    broker.close()


def test_an_fd_that_comes_after_take_fd_gave_up_is_closed_as_it_comes(monkeypatch):
    # gRPC answered the Allocate but its fd came only after the wait for it
    # ended: it was filed for a taker that never came.
    broker, released = grpc_path_broker(monkeypatch, timeout=0.3)
    from halloc.v1 import allocator_pb2, types_pb2
    calls = []

    def answered(method, req, name, timeout=None, deadline=None):
        calls.append(req.call_id)
        return allocator_pb2.AllocateResponse(buffers=[types_pb2.BufferInfo(id=42, size=PAGE)])

    monkeypatch.setattr(broker.client._conn, "call", answered)
    with pytest.raises(halloc.DeadlineExceededError):
        broker.client.allocate(halloc.blob(PAGE))
    memfd = os.memfd_create("late-fd")
    inode = os.fstat(memfd).st_ino
    late_fd(broker, calls[0], memfd)
    os.close(memfd)
    release_on_the_socket(broker, 7)  # files the fd's record first
    assert not open_on_inode(inode), "the fd that came late is still open"
    assert released[:2] == [42, 7], "given back once, when the wait ended"
    broker.close()


class _InterruptibleLock:
    """A lock whose next acquire, once armed, raises KeyboardInterrupt
    without taking it, as CPython's wait for a lock does when a signal
    handler raises (Ctrl-C while another thread holds it)."""

    def __init__(self, real):
        self._real = real
        self.armed = False

    def acquire(self, *args, **kwargs):
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        return self._real.acquire(*args, **kwargs)

    def release(self):
        self._real.release()

    def _is_owned(self):
        return self._real._is_owned()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def test_an_interrupt_while_the_reader_takes_the_lock_back_leaves_the_client_usable(
        monkeypatch):
    # The reader's wait to take the lock back after reading was interrupted:
    # it went on without the lock (released it unheld, or under another
    # thread) and left _reading set, so nobody read the socket again: every
    # later call waited out its deadline.
    broker = ScriptedBroker(lambda sock, req: broker.reply_release(req), timeout=1.0)
    conn = broker.client._conn
    lock = _InterruptibleLock(conn._lock)
    conn._lock = lock
    conn._filed = threading.Condition(lock)
    real_receive = conn._receive

    def receive(deadline):
        got = real_receive(deadline)
        lock.armed = True  # the reader's wait to take the lock back
        return got

    monkeypatch.setattr(conn, "_receive", receive)
    with pytest.raises(KeyboardInterrupt):
        broker.client.release(1)
    monkeypatch.setattr(conn, "_receive", real_receive)
    assert not conn._reading, "the interrupted reader is still marked reading"
    assert not conn._lock._is_owned()
    broker.client.release(2)  # read and answered (else DEADLINE_EXCEEDED: nobody reads)
    broker.close()


def test_a_record_read_while_the_client_closed_has_its_fds_closed(monkeypatch):
    # close() ran while a call read a record (without the lock): the record
    # was filed after close() had cleared what was filed, its fds open
    # until the Client was collected.
    import socket
    from halloc.v1 import broker_pb2
    memfd = os.memfd_create("read-across-close")
    inode = os.fstat(memfd).st_ino

    def answer(sock, req):
        frame = broker_pb2.BrokerFrame()
        frame.buffer.buffer_id = 42  # a gRPC call's fd, nobody's yet
        socket.send_fds(sock, [frame.SerializeToString()], [memfd])

    broker = ScriptedBroker(answer, timeout=2.0)
    conn = broker.client._conn
    real_receive = conn._receive

    def receive(deadline):
        got = real_receive(deadline)
        closer = threading.Thread(target=conn.close)
        closer.start()
        closer.join(5)
        return got

    monkeypatch.setattr(conn, "_receive", receive)
    with pytest.raises(halloc.FailedPreconditionError):
        broker.client.release(1)
    os.close(memfd)
    assert not open_on_inode(inode), "the record's fd outlived close()"
    broker.sock.close()


def test_calls_that_gave_up_are_not_remembered_for_ever(monkeypatch):
    # A gRPC Allocate that failed UNAVAILABLE (another process filled the
    # control connections, say) may have been carried out: its call is
    # noted, to close its fds should they come. Refused, they never come:
    # each such call stayed noted until the session ended.
    broker, _ = grpc_path_broker(monkeypatch, timeout=2.0)

    def unavailable(method, req, name, timeout=None, deadline=None):
        raise halloc.UnavailableError(f"{name}: failed to connect")

    monkeypatch.setattr(broker.client._conn, "call", unavailable)
    for _ in range(1100):
        with pytest.raises(halloc.UnavailableError):
            broker.client.allocate(halloc.blob(PAGE))
    release_on_the_socket(broker, 7)  # a record filed
    assert len(broker.client._conn._abandoned_calls) <= 1024
    broker.close()


def test_a_grpc_allocate_waits_for_its_fd_within_its_own_timeout(monkeypatch):
    # The fd comes on the broker socket ahead of the gRPC reply: waiting for
    # it after the reply is no new timeout (it took the reply's wait and a
    # whole timeout more: 5 s for a 3 s one). As libhalloc's
    # AGrpcAllocateWaitsForItsFdsWithinItsOwnTimeout.
    from halloc.v1 import allocator_pb2, types_pb2
    broker = ScriptedBroker(lambda sock, req: None, timeout=2.0)
    broker.client.welcome.allocate_call_ids = True
    monkeypatch.setattr(broker.client, "_fast_path", False)  # gRPC Allocate

    def late_reply_no_fd(method, req, name, timeout=None, deadline=None):
        time.sleep(1.5)  # within the call's timeout; no fd ever comes
        return allocator_pb2.AllocateResponse(buffers=[types_pb2.BufferInfo(id=42, size=PAGE)])

    monkeypatch.setattr(broker.client._conn, "call", late_reply_no_fd)
    start = time.monotonic()
    with pytest.raises(halloc.DeadlineExceededError, match="Allocate"):
        broker.client.allocate(halloc.blob(PAGE))
    assert time.monotonic() - start < 3.0, "the fd's wait was a new timeout"
    broker.close()


def test_an_fd_queued_by_the_deadline_is_taken_though_read_late(monkeypatch):
    # The fd came in time but the reply only after the deadline (a slow
    # reader): what is queued is read once before giving up, not abandoned.
    import socket
    from halloc import _scm
    from halloc.v1 import allocator_pb2, broker_pb2, types_pb2
    broker = ScriptedBroker(lambda sock, req: None, timeout=0.5)
    broker.client.welcome.allocate_call_ids = True
    monkeypatch.setattr(broker.client, "_fast_path", False)

    def fd_then_late_reply(method, req, name, timeout=None, deadline=None):
        # Records dropped as read ahead of it (one the kernel cuts, one with
        # more fds than a record may carry), and other calls' frames: all
        # read, not one.
        broker.sock.send(b"x" * (_scm.MAX_RECORD_BYTES + 1))
        extra = [os.memfd_create("extra") for _ in range(_scm.MAX_FDS_PER_RECORD + 1)]
        socket.send_fds(broker.sock, [b"y"], extra)
        for fd in extra:
            os.close(fd)
        for buffer_id, call_id in ((97, req.call_id + 100), (98, req.call_id + 101),
                                   (42, req.call_id)):
            frame = broker_pb2.BrokerFrame()
            frame.buffer.buffer_id = buffer_id
            frame.buffer.call_id = call_id
            fd = os.memfd_create("queued")
            socket.send_fds(broker.sock, [frame.SerializeToString()], [fd])
            os.close(fd)
        time.sleep(0.7)  # past the whole deadline
        return allocator_pb2.AllocateResponse(buffers=[types_pb2.BufferInfo(id=42, size=PAGE)])

    monkeypatch.setattr(broker.client._conn, "call", fd_then_late_reply)
    b = broker.client.allocate(halloc.blob(PAGE))
    assert b.id == 42
    b.close()
    broker.close()


def test_fds_no_call_claims_are_bounded():
    # A buggy daemon's frames whose fds no call claims are kept for a call
    # that may still claim them, but never more than MOST_PENDING_FDS: they
    # cannot fill the client's fd table (as libhalloc's
    # FdsNoCallClaimsAreBounded).
    import socket
    from halloc.v1 import broker_pb2
    memfd = os.memfd_create("stray")
    inode = os.fstat(memfd).st_ino

    def answer(sock, req):
        if req.WhichOneof("kind") != "release":
            return
        for i in range(1100):
            frame = broker_pb2.BrokerFrame()
            frame.buffer.buffer_id = 1000 + i
            frame.buffer.call_id = 999999
            socket.send_fds(sock, [frame.SerializeToString()], [memfd])
        broker.reply_release(req)

    broker = ScriptedBroker(answer, timeout=5.0)
    broker.client.release(3)
    kept = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            kept += os.stat(f"/proc/self/fd/{fd}").st_ino == inode
        except OSError:
            pass
    os.close(memfd)
    assert 1 < kept <= 1 + 1024, f"{kept - 1} stray fds kept"
    broker.close()
