"""Imports against a scripted broker (scripted_broker.py): an Import whose
caller gave up, or whose fd was cut, leaves neither its fd open nor its
reference on the session's hold (ReleaseRequest.import_references), and
never releases whole a hold another Import's Buffer uses; a forked child
is refused one."""

import os
import threading
import time

import pytest

import halloc
from conftest import wait_for
from scripted_broker import (PAGE, ScriptedBroker, interrupt_the_next_wait, open_on_inode,
                             release_on_the_socket)


def test_the_fd_of_an_import_that_gave_up_is_closed_when_it_comes(monkeypatch):
    import socket
    from halloc.v1 import broker_pb2
    # (No wait here is meant to expire: a long timeout, so that a loaded
    # machine (the ASan run) does not make the Release below miss its reply.)
    released = []

    def answer(sock, req):
        _releases(released, req)
        broker.reply_release(req)

    broker = ScriptedBroker(answer, timeout=10.0)
    broker.client.welcome.import_call_ids = True
    memfd = os.memfd_create("late-import")
    inode = os.fstat(memfd).st_ino

    def late(method, req, name, timeout=None, deadline=None):
        # hallocd sends the fd as the call's deadline passes.
        frame = broker_pb2.BrokerFrame()
        frame.buffer.buffer_id = 42
        frame.buffer.call_id = req.call_id
        frame.buffer.hold_generation = 9
        socket.send_fds(broker.sock, [frame.SerializeToString()], [memfd])
        raise halloc.DeadlineExceededError("Import: deadline passed")

    monkeypatch.setattr(broker.client._conn, "call", late)
    with pytest.raises(halloc.DeadlineExceededError):
        broker.client.import_buffer("token")
    os.close(memfd)
    broker.client.release(7)  # takes the late fd off the socket first
    broker.client.release(8)  # after the give-back it sent
    assert not open_on_inode(inode), "the late import's fd is still open in the client"
    # The fd went, so the import was delivered: its reference goes back
    # with it (hallocd sends none once it sees the call gave up), naming
    # the hold the fd's BufferFd said it is on.
    assert released == [7, ("ref", 42, 9), 8]
    broker.close()


def test_an_import_given_up_after_its_fd_came_names_the_hold_its_fd_said(monkeypatch):
    # A gRPC Import's fd came, read off the socket by another call, before
    # its call gave up (no reply came): the fd is closed as the call gives
    # up, and its reference goes back naming the hold its BufferFd said.
    # (As libhalloc's AGivenUpImportWhoseFdCameFirstNamesItsHold.)
    import socket
    from halloc.v1 import broker_pb2
    released = []

    def answer(sock, req):
        _releases(released, req)
        broker.reply_release(req)

    broker = ScriptedBroker(answer, timeout=10.0)
    broker.client.welcome.import_call_ids = True
    memfd = os.memfd_create("import")
    inode = os.fstat(memfd).st_ino

    def fd_first(method, req, name, timeout=None, deadline=None):
        frame = broker_pb2.BrokerFrame()
        frame.buffer.buffer_id = 42
        frame.buffer.call_id = req.call_id
        frame.buffer.hold_generation = 9
        socket.send_fds(broker.sock, [frame.SerializeToString()], [memfd])
        release_on_the_socket(broker, 7)  # reads the fd off the socket, for the Import
        raise halloc.DeadlineExceededError("Import: deadline passed")

    monkeypatch.setattr(broker.client._conn, "call", fd_first)
    with pytest.raises(halloc.DeadlineExceededError):
        broker.client.import_buffer("token")
    os.close(memfd)
    broker.client.release(8)  # after the give-back
    assert not open_on_inode(inode), "the given-up import's fd is still open in the client"
    assert released == [7, ("ref", 42, 9), 8]
    broker.close()


def _releases(released, req):
    """Notes a Release: its ids, or ("ref", id, hold generation) for each
    import reference it gives back (("ref", id) where it names no holds)."""
    r = req.release
    if not r.import_references:
        released.extend(r.buffer_ids)
    elif r.hold_generations:
        assert len(r.hold_generations) == len(r.buffer_ids), "one generation per id"
        released.extend(("ref", i, g) for i, g in zip(r.buffer_ids, r.hold_generations))
    else:
        released.extend(("ref", i) for i in r.buffer_ids)


@pytest.mark.parametrize("hallocd", ["generations", "references", "older"])
@pytest.mark.parametrize("newly_held", [False, True])
def test_a_broker_import_that_gave_up_closes_its_late_fd_and_gives_back_its_reference(
        monkeypatch, newly_held, hallocd):
    # Its reply and fd come together after the caller was interrupted: the
    # fd is closed and the reference the import is on the session's hold
    # goes back, whether or not it made the hold (that reference alone
    # goes), naming that hold where hallocd takes hold generations. An
    # older hallocd (no Welcome.import_references) is sent nothing: its
    # Release would drop the whole hold.
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
            frame.reply.import_buffer.hold_generation = 9
            socket.send_fds(sock, [frame.SerializeToString()], [memfd])
            return
        _releases(released, req)
        broker.reply_release(req)

    broker = ScriptedBroker(answer, timeout=2.0)
    broker.client.welcome.broker_import = True
    broker.client.welcome.import_references = hallocd != "older"
    broker.client.welcome.hold_generations = hallocd == "generations"
    interrupt_the_next_wait(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        broker.client.import_buffer("token")
    time.sleep(0.5)
    assert imports == [b"token"], "the import went on the broker socket"
    broker.client.release(7)  # takes the late reply off the socket first
    broker.client.release(8)  # after any give-back it would have sent
    os.close(memfd)
    assert not open_on_inode(inode), "the interrupted Import's fd is still open"
    assert released == {"generations": [7, ("ref", 5, 9), 8], "references": [7, ("ref", 5), 8],
                        "older": [7, 8]}[hallocd]
    broker.close()


@pytest.mark.parametrize("newly_held", [False, True])
def test_a_broker_import_reply_without_its_fd_is_data_loss(newly_held):
    from halloc.v1 import broker_pb2
    released = []

    def answer(sock, req):
        if req.WhichOneof("kind") == "release":
            _releases(released, req)
            broker.reply_release(req)
            return
        frame = broker_pb2.BrokerFrame()
        frame.reply.request_id = req.request_id
        frame.reply.import_buffer.buffer.id = 5
        frame.reply.import_buffer.newly_held = newly_held
        frame.reply.import_buffer.hold_generation = 9
        sock.send(frame.SerializeToString())  # no fd

    broker = ScriptedBroker(answer, timeout=2.0)
    broker.client.welcome.broker_import = True
    with pytest.raises(halloc.DataLossError):
        broker.client.import_buffer("token")
    broker.client.release(8)  # after any give-back it would have sent
    # The reference this import made reached nobody: given back.
    assert released == [("ref", 5, 9), 8]
    broker.close()


def test_an_import_never_answered_holds_back_no_give_back():
    # Before references, every give-back waited until no import was in
    # flight, and one never answered held them back for twice the timeout.
    from halloc.v1 import broker_pb2
    released, imports = [], []

    def answer(sock, req):
        if req.WhichOneof("kind") == "release":
            _releases(released, req)
            broker.reply_release(req)
            return
        imports.append(req.request_id)
        if len(imports) == 1:
            return  # never answered
        frame = broker_pb2.BrokerFrame()
        frame.reply.request_id = req.request_id
        frame.reply.import_buffer.buffer.id = 43
        frame.reply.import_buffer.newly_held = True
        frame.reply.import_buffer.hold_generation = 5
        sock.send(frame.SerializeToString())  # no fd: DATA_LOSS

    broker = ScriptedBroker(answer, timeout=0.5)
    broker.client.welcome.broker_import = True
    with pytest.raises(halloc.DeadlineExceededError):
        broker.client.import_buffer("never")
    with pytest.raises(halloc.DataLossError):
        broker.client.import_buffer("cut")
    broker.client.release(7)  # a round trip after the give-back
    assert released == [("ref", 43, 5), 7]
    broker.close()


def test_an_import_whose_fd_never_came_gives_back_only_its_reference(monkeypatch):
    # Two gRPC Imports of buffer 42: the first, served first, made the hold
    # (newly_held) but its fd never comes; the second is received and ends
    # first. The first's end gives back its own reference, not the hold the
    # second's Buffer uses. (As libhalloc's
    # AnImportWhoseFdNeverCameGivesBackOnlyItsReference.)
    import socket
    from halloc.v1 import allocator_pb2, broker_pb2, types_pb2
    releases = []

    def answer(sock, req):
        if req.WhichOneof("kind") == "release":
            _releases(releases, req)
            broker.reply_release(req)

    # The first import waits out this timeout for its fd; the rest of the
    # test must be answered within it, on a loaded machine too.
    broker = ScriptedBroker(answer, timeout=3.0)
    broker.client.welcome.import_call_ids = True
    calls = []
    first_served = threading.Event()

    def grpc_import(method, req, name, timeout=None, deadline=None):
        calls.append(req.call_id)
        first = len(calls) == 1
        if not first:
            frame = broker_pb2.BrokerFrame()
            frame.buffer.buffer_id = 42
            frame.buffer.call_id = req.call_id
            frame.buffer.hold_generation = 9
            memfd = os.memfd_create("second")
            socket.send_fds(broker.sock, [frame.SerializeToString()], [memfd])
            os.close(memfd)
        else:
            first_served.set()
        return allocator_pb2.ImportResponse(buffer=types_pb2.BufferInfo(id=42, size=PAGE),
                                            newly_held=first, hold_generation=9)

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
    assert releases == [("ref", 42, 9), 7], \
        "the hold the second import's Buffer uses was released"
    second.close()
    broker.close()


def test_a_forked_child_is_refused_an_import_not_hung():
    # A thread of the parent held the client's lock at the fork: the child's
    # Import took it before asking whether this Client was its own, and
    # waited for good.
    import signal
    broker = ScriptedBroker(lambda sock, req: broker.reply_release(req), timeout=1.0)
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


def test_an_import_given_up_after_its_reply_was_filed_gives_back_its_reference_alone():
    # Imports A (it makes the session a holder of buffer 5) and B (the same
    # buffer) have their replies filed by a third call's reader; B's caller
    # takes its Buffer, then A's caller gives up (Ctrl-C) before taking its
    # reply. A's reference goes back, and only it: the hold B's Buffer
    # uses was released whole before references.
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
                frame.reply.import_buffer.hold_generation = 9  # one hold, both
                fd = os.memfd_create("import")
                socket.send_fds(sock, [frame.SerializeToString()], [fd])
                os.close(fd)
            for r in held:  # the reader's own answer last
                broker.reply_release(r)
            return
        if list(req.release.buffer_ids) == [99]:
            held.append(req)  # answered once both imports are
            return
        _releases(released, req)
        broker.reply_release(req)

    broker = ScriptedBroker(answer, timeout=5.0)
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
    assert released == [("ref", 5, 9), 8], "the hold B's Buffer uses was released"
    broker.close()
