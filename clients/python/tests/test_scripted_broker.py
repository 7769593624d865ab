"""The Python client against a scripted broker (a socket pair whose other
end answers as a test says) or a hallocd it is made to lose calls with:
waiting for its own answer, answers without what was asked, late replies
and fds after a call gave up (given back or closed), timeouts, interrupts
and closing mid-call."""

import os
import threading
import time

import grpc
import pytest

import halloc
from halloc import _broker
from conftest import wait_for

PAGE = os.sysconf("SC_PAGE_SIZE")


def _open_on_inode(inode):
    """Whether any fd of this process is open on `inode`."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.stat(f"/proc/self/fd/{fd}").st_ino == inode:
                return True
        except OSError:
            pass
    return False


class _ScriptedBroker:
    """A Client on one end of a socket pair; `answer(sock, request)` on the
    other, on its own thread."""

    def __init__(self, answer, timeout):
        import socket
        from halloc.v1 import broker_pb2
        self._broker_pb2 = broker_pb2
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = theirs
        conn = _broker.BrokerConnection(ours, broker_pb2.Hello(),
                                        broker_pb2.Welcome(session_id=1, session_token="t"))
        self.client = halloc.Client(conn, grpc.insecure_channel("unix:/nonexistent"),
                                    timeout, True)
        self._answer = answer
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:  # closed by the test
                return
            if not data:
                return
            req = self._broker_pb2.BrokerRequest()
            req.ParseFromString(data)
            self._answer(self.sock, req)

    def reply_release(self, req):
        frame = self._broker_pb2.BrokerFrame()
        frame.reply.request_id = req.request_id
        frame.reply.release.SetInParent()
        self.sock.send(frame.SerializeToString())

    def close(self):
        self.client.close()
        self.sock.close()


def test_a_call_waits_for_its_own_answer_only():
    first_sent = threading.Event()

    def answer(sock, req):
        if req.release.buffer_ids[0] == 1:
            first_sent.set()  # never answered
        else:
            broker.reply_release(req)

    broker = _ScriptedBroker(answer, timeout=2.0)
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
    broker = _ScriptedBroker(lambda sock, req: broker.reply_release(req), timeout=2.0)
    with pytest.raises(halloc.DataLossError):
        broker.client.allocate(halloc.blob(PAGE))  # answered with no buffers
    broker.close()


def test_calls_keep_their_timeout_when_the_daemon_stops_reading():
    resume = threading.Event()
    broker = _ScriptedBroker(lambda sock, req: resume.wait(), timeout=0.005)
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


def test_the_fd_of_an_import_that_gave_up_is_closed_when_it_comes(monkeypatch):
    import socket
    from halloc.v1 import broker_pb2
    # (No wait here is meant to expire: a long timeout, so that a loaded
    # machine (the ASan run) does not make the Release below miss its reply.)
    broker = _ScriptedBroker(lambda sock, req: broker.reply_release(req), timeout=10.0)
    broker.client.welcome.import_call_ids = True
    memfd = os.memfd_create("late-import")
    inode = os.fstat(memfd).st_ino

    def late(method, req, name):
        # hallocd sends the fd as the call's deadline passes.
        frame = broker_pb2.BrokerFrame()
        frame.buffer.buffer_id = 42
        frame.buffer.call_id = req.call_id
        socket.send_fds(broker.sock, [frame.SerializeToString()], [memfd])
        raise halloc.DeadlineExceededError("Import: deadline passed")

    monkeypatch.setattr(broker.client._conn, "call", late)
    with pytest.raises(halloc.DeadlineExceededError):
        broker.client.import_buffer("token")
    os.close(memfd)
    broker.client.release(7)  # takes the late fd off the socket first
    assert not _open_on_inode(inode), "the late import's fd is still open in the client"
    broker.close()


def test_the_fds_of_a_grpc_allocate_that_gave_up_are_closed_and_given_back(monkeypatch):
    import socket
    from halloc.v1 import allocator_pb2, broker_pb2, types_pb2
    released = []

    def answer(sock, req):
        released.extend(req.release.buffer_ids)
        broker.reply_release(req)

    broker = _ScriptedBroker(answer, timeout=2.0)
    broker.client.welcome.allocate_call_ids = True
    monkeypatch.setattr(broker.client, "_fast_path", False)  # gRPC Allocate
    late = os.memfd_create("late-allocate")
    inode = os.fstat(late).st_ino
    call_ids = []

    def grpc_allocate(method, req, name):
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
    assert not _open_on_inode(inode), "the late Allocate's fd is still open in the client"
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

    broker = _ScriptedBroker(answer, timeout=2.0)
    broker.client.welcome.broker_share = True
    _interrupt_the_next_wait(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        broker.client.share(41, uid=1000)
    time.sleep(0.5)
    broker.client.release(7)  # takes the late reply off the socket first
    assert wait_for(lambda: revoked == [5]), f"grant 5 was not withdrawn: {revoked}"
    broker.close()


def _interrupt_the_next_wait(monkeypatch):
    """The next wait for the broker socket raises KeyboardInterrupt (as
    Ctrl-C would), once."""
    from halloc import _scm
    real_wait = _scm.wait_readable

    def interrupted(*args, **kwargs):
        monkeypatch.setattr(_scm, "wait_readable", real_wait)
        raise KeyboardInterrupt

    monkeypatch.setattr(_scm, "wait_readable", interrupted)


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

    broker = _ScriptedBroker(answer, timeout=2.0)
    _interrupt_the_next_wait(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        broker.client.allocate(halloc.blob(PAGE))
    time.sleep(0.5)
    broker.client.release(7)  # takes the late reply off the socket first
    os.close(memfd)
    assert not _open_on_inode(inode), "the interrupted Allocate's fd is still open"
    assert wait_for(lambda: 5 in released), f"buffer 5 was not given back: {released}"
    broker.close()


@pytest.mark.parametrize("newly_held", [False, True])
def test_a_broker_import_that_gave_up_closes_its_late_fd_and_gives_back_only_its_own_hold(
        monkeypatch, newly_held):
    # Its reply and fd come together after the caller was interrupted: the
    # fd is closed; the hold is given back only if this import made it
    # (ImportResponse.newly_held; otherwise the session held the buffer
    # before it).
    import socket
    from halloc.v1 import broker_pb2
    memfd = os.memfd_create("late-import")
    inode = os.fstat(memfd).st_ino
    released, imports = [], []

    def answer(sock, req):
        if req.WhichOneof("kind") == "import_buffer":
            imports.append(req.import_buffer.grant_token)
            time.sleep(0.3)  # after the caller was interrupted
            frame = broker_pb2.BrokerFrame()
            frame.reply.request_id = req.request_id
            frame.reply.import_buffer.buffer.id = 5
            frame.reply.import_buffer.newly_held = newly_held
            socket.send_fds(sock, [frame.SerializeToString()], [memfd])
            return
        released.extend(req.release.buffer_ids)
        broker.reply_release(req)

    broker = _ScriptedBroker(answer, timeout=2.0)
    broker.client.welcome.broker_import = True
    _interrupt_the_next_wait(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        broker.client.import_buffer("token")
    time.sleep(0.5)
    assert imports == [b"token"], "the import went on the broker socket"
    broker.client.release(7)  # takes the late reply off the socket first
    broker.client.release(8)  # after any give-back it would have sent
    os.close(memfd)
    assert not _open_on_inode(inode), "the interrupted Import's fd is still open"
    assert released == ([7, 5, 8] if newly_held else [7, 8])
    broker.close()


@pytest.mark.parametrize("newly_held", [False, True])
def test_a_broker_import_reply_without_its_fd_is_data_loss(newly_held):
    from halloc.v1 import broker_pb2
    released = []

    def answer(sock, req):
        if req.WhichOneof("kind") == "release":
            released.extend(req.release.buffer_ids)
            broker.reply_release(req)
            return
        frame = broker_pb2.BrokerFrame()
        frame.reply.request_id = req.request_id
        frame.reply.import_buffer.buffer.id = 5
        frame.reply.import_buffer.newly_held = newly_held
        sock.send(frame.SerializeToString())  # no fd

    broker = _ScriptedBroker(answer, timeout=2.0)
    broker.client.welcome.broker_import = True
    with pytest.raises(halloc.DataLossError):
        broker.client.import_buffer("token")
    broker.client.release(8)  # after any give-back it would have sent
    # The hold this import made (if it made one) reached nobody: given back.
    assert released == ([5, 8] if newly_held else [8])
    broker.close()


def test_an_import_never_answered_stops_holding_back_give_backs():
    # It was in flight for good: no hold an import nobody received made was
    # given back again until the session ended. Twice the timeout after it
    # gave up, it is forgotten.
    from halloc.v1 import broker_pb2
    released, imports = [], []

    def answer(sock, req):
        if req.WhichOneof("kind") == "release":
            released.extend(req.release.buffer_ids)
            broker.reply_release(req)
            return
        imports.append(req.request_id)
        if len(imports) == 1:
            return  # never answered
        frame = broker_pb2.BrokerFrame()
        frame.reply.request_id = req.request_id
        frame.reply.import_buffer.buffer.id = 43
        frame.reply.import_buffer.newly_held = True
        sock.send(frame.SerializeToString())  # no fd: DATA_LOSS

    broker = _ScriptedBroker(answer, timeout=0.5)
    broker.client.welcome.broker_import = True
    with pytest.raises(halloc.DeadlineExceededError):
        broker.client.import_buffer("never")
    with pytest.raises(halloc.DataLossError):
        broker.client.import_buffer("cut")
    broker.client.release(7)  # 43 waits: an import is in flight
    time.sleep(1.3)  # past twice the timeout
    broker.client.release(8)  # its reply is filed after the wait
    broker.client.release(9)
    assert released == [7, 8, 43, 9]
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

    broker = _ScriptedBroker(answer, timeout=2.0)
    broker.client.release(3)
    os.close(memfd)
    assert not _open_on_inode(inode), "the dropped record's fds are still open"
    broker.close()


def test_closing_a_client_ends_its_calls_in_flight():
    # Another thread's call, reading the socket or waiting for the reader,
    # ends at once with FAILED_PRECONDITION, not at its deadline.
    broker = _ScriptedBroker(lambda sock, req: None, timeout=10.0)  # never answers
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

    broker = _ScriptedBroker(answer, timeout=5.0)
    broker.client.welcome.broker_metadata = True
    over_grpc = []

    def call(method, req, name):
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
    broker = _ScriptedBroker(answer, timeout=5.0)
    for i in (7, 8, 9):
        broker.client.release(i)
    os.close(memfd)
    assert not _open_on_inode(inode), "the unasked reply's fd is still open in the client"
    assert releases == [7, 8, 9]
    broker.close()


def test_a_hold_another_import_received_is_not_given_back_later(monkeypatch):
    # Two gRPC Imports of buffer 42: the first, served first, made the hold
    # (newly_held) but its fd never comes; the second (newly_held false) is
    # received and ends first. The first's end must not give back the hold
    # the second's Buffer uses. (As libhalloc's
    # AHoldAnotherImportReceivedIsNotGivenBackLater.)
    import socket
    from halloc.v1 import allocator_pb2, broker_pb2, types_pb2
    releases = []

    def answer(sock, req):
        if req.WhichOneof("kind") == "release":
            releases.extend(req.release.buffer_ids)
            broker.reply_release(req)

    # The first import waits out this timeout for its fd; the rest of the
    # test must be answered within it, on a loaded machine too.
    broker = _ScriptedBroker(answer, timeout=3.0)
    broker.client.welcome.import_call_ids = True
    calls = []
    first_served = threading.Event()

    def grpc_import(method, req, name):
        calls.append(req.call_id)
        first = len(calls) == 1
        if not first:
            frame = broker_pb2.BrokerFrame()
            frame.buffer.buffer_id = 42
            frame.buffer.call_id = req.call_id
            memfd = os.memfd_create("second")
            socket.send_fds(broker.sock, [frame.SerializeToString()], [memfd])
            os.close(memfd)
        else:
            first_served.set()
        return allocator_pb2.ImportResponse(buffer=types_pb2.BufferInfo(id=42, size=PAGE),
                                            newly_held=first)

    monkeypatch.setattr(broker.client._conn, "call", grpc_import)
    outcome = {}

    def first_import():
        try:
            outcome["first"] = broker.client.import_buffer("token")
        except halloc.HallocError as e:
            outcome["first"] = e

    importing = threading.Thread(target=first_import)
    importing.start()
    assert first_served.wait(5)
    second = broker.client.import_buffer("token")
    importing.join()
    assert isinstance(outcome["first"], halloc.DeadlineExceededError), outcome["first"]
    broker.client.release(7)  # a round trip after any give-back
    assert releases == [7], "the hold the second import's Buffer uses was given back"
    second.close()
    broker.close()


def _late_fd(broker, call_id, memfd, buffer_id=42):
    """Sends `memfd` as buffer `buffer_id`'s fd for gRPC call `call_id`."""
    import socket
    from halloc.v1 import broker_pb2
    frame = broker_pb2.BrokerFrame()
    frame.buffer.buffer_id = buffer_id
    frame.buffer.call_id = call_id
    socket.send_fds(broker.sock, [frame.SerializeToString()], [memfd])


def _release_on_the_socket(broker, buffer_id):
    """A Release over the broker socket whatever the Client's path: its
    reply is read after whatever came before it."""
    from halloc.v1 import allocator_pb2, broker_pb2
    broker.client._conn.broker_call(broker_pb2.BrokerRequest(
        release=allocator_pb2.ReleaseRequest(buffer_ids=[buffer_id])), "Release")


def _grpc_path_broker(monkeypatch, timeout):
    """A scripted broker whose Client calls Allocate over gRPC (its call
    ids echoed) and answers Releases on the socket; and the list of the
    buffers released there."""
    released = []

    def answer(sock, req):
        released.extend(req.release.buffer_ids)
        broker.reply_release(req)

    broker = _ScriptedBroker(answer, timeout=timeout)
    broker.client.welcome.allocate_call_ids = True
    monkeypatch.setattr(broker.client, "_fast_path", False)
    return broker, released


def test_an_interrupted_grpc_allocate_closes_its_late_fd_and_gives_it_back(monkeypatch):
    # Ctrl-C while the gRPC Allocate waited, hallocd having sent the fd: it
    # was filed for a taker that never came (open, and the buffer held,
    # until some record came twice the timeout later).
    broker, released = _grpc_path_broker(monkeypatch, timeout=1.0)
    memfd = os.memfd_create("late-allocate")
    inode = os.fstat(memfd).st_ino

    def interrupted(method, req, name):
        _late_fd(broker, req.call_id, memfd)
        raise KeyboardInterrupt

    monkeypatch.setattr(broker.client._conn, "call", interrupted)
    with pytest.raises(KeyboardInterrupt):
        broker.client.allocate(halloc.blob(PAGE))
    os.close(memfd)
    _release_on_the_socket(broker, 7)  # files the fd's record first
    assert not _open_on_inode(inode), "the interrupted Allocate's late fd is still open"
    assert wait_for(lambda: 42 in released, 2), released
    broker.close()


def test_an_fd_that_comes_after_take_fd_gave_up_is_closed_as_it_comes(monkeypatch):
    # gRPC answered the Allocate but its fd came only after the wait for it
    # ended: it was filed for a taker that never came.
    broker, released = _grpc_path_broker(monkeypatch, timeout=0.3)
    from halloc.v1 import allocator_pb2, types_pb2
    calls = []

    def answered(method, req, name):
        calls.append(req.call_id)
        return allocator_pb2.AllocateResponse(buffers=[types_pb2.BufferInfo(id=42, size=PAGE)])

    monkeypatch.setattr(broker.client._conn, "call", answered)
    with pytest.raises(halloc.DeadlineExceededError):
        broker.client.allocate(halloc.blob(PAGE))
    memfd = os.memfd_create("late-fd")
    inode = os.fstat(memfd).st_ino
    _late_fd(broker, calls[0], memfd)
    os.close(memfd)
    _release_on_the_socket(broker, 7)  # files the fd's record first
    assert not _open_on_inode(inode), "the fd that came late is still open"
    assert released[:2] == [42, 7], "given back once, when the wait ended"
    broker.close()


def test_a_forked_child_is_refused_an_import_not_hung():
    # A thread of the parent held the client's lock at the fork: the child's
    # Import took it before asking whether this Client was its own, and
    # waited for good.
    import signal
    broker = _ScriptedBroker(lambda sock, req: broker.reply_release(req), timeout=1.0)
    lock = broker.client._conn._lock
    lock.acquire()  # as a parent thread filing a record at the fork
    try:
        pid = os.fork()
        if pid == 0:
            signal.alarm(3)  # hung: killed by SIGALRM
            try:
                broker.client.import_buffer("token")  # over gRPC (no broker_import)
            except halloc.FailedPreconditionError:
                os._exit(0)
            except BaseException:
                os._exit(2)
            os._exit(3)
    finally:
        lock.release()
    _, status = os.waitpid(pid, 0)
    broker.close()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status:#x}"


def test_an_import_given_up_after_its_reply_was_filed_keeps_a_hold_another_received():
    # Imports A (it makes the session a holder of buffer 5) and B (the same
    # buffer, by A's hold) have their replies filed by a third call's
    # reader; B's caller takes its Buffer, then A's caller gives up (Ctrl-C)
    # before taking its reply. A's hold is the one B's Buffer uses: given
    # back before, as if A's reply had come after it gave up.
    import socket
    from halloc.v1 import broker_pb2
    released, imports, held = [], [], []

    def answer(sock, req):
        kind = req.WhichOneof("kind")
        if kind == "import_buffer":
            imports.append(req)
            if len(imports) < 2:
                return
            for r in sorted(imports, key=lambda r: r.request_id):
                frame = broker_pb2.BrokerFrame()
                frame.reply.request_id = r.request_id
                frame.reply.import_buffer.buffer.id = 5
                frame.reply.import_buffer.newly_held = r.import_buffer.grant_token == b"A"
                fd = os.memfd_create("import")
                socket.send_fds(sock, [frame.SerializeToString()], [fd])
                os.close(fd)
            for r in held:  # the reader's own answer last
                broker.reply_release(r)
            return
        if list(req.release.buffer_ids) == [99]:
            held.append(req)  # answered once both imports are
            return
        released.extend(req.release.buffer_ids)
        broker.reply_release(req)

    broker = _ScriptedBroker(answer, timeout=5.0)
    broker.client.welcome.broker_import = True
    conn = broker.client._conn
    reader = threading.Thread(target=broker.client.release, args=(99,))
    reader.start()
    assert wait_for(lambda: conn._reading, 2), "the Release of 99 reads the socket"
    b_done = threading.Event()
    got = {}

    def import_b():
        got["B"] = broker.client.import_buffer("B")
        b_done.set()

    main = threading.get_ident()
    real_wait = conn._filed.wait

    def wait(timeout=None):
        r = real_wait(timeout)
        if threading.get_ident() == main and any(
                isinstance(v, tuple) and v[0].import_buffer.newly_held
                for v in conn._replies.values()):
            while not b_done.is_set():  # B takes its Buffer first
                real_wait(0.05)
            raise KeyboardInterrupt  # A's caller, its reply filed
        return r

    conn._filed.wait = wait
    worker = threading.Timer(0.2, import_b)  # after A's request
    worker.start()
    with pytest.raises(KeyboardInterrupt):
        broker.client.import_buffer("A")
    worker.join(5)
    reader.join(5)
    conn._filed.wait = real_wait
    assert got["B"].id == 5
    broker.client.release(8)
    assert released == [8], "the hold B's Buffer uses was given back"
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
    broker = _ScriptedBroker(lambda sock, req: broker.reply_release(req), timeout=1.0)
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
    start = time.monotonic()
    broker.client.release(2)  # read and answered, not waited out
    assert time.monotonic() - start < 0.9
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

    broker = _ScriptedBroker(answer, timeout=2.0)
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
    assert not _open_on_inode(inode), "the record's fd outlived close()"
    broker.sock.close()
