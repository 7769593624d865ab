"""A scripted broker for the Python client's tests: a Client on one end of
a socket pair whose other end answers as a test says, and what the tests
of late replies, late fds and interrupts share."""

import os
import threading

import grpc

import halloc
from halloc import _broker
from halloc import client as client_module

PAGE = os.sysconf("SC_PAGE_SIZE")


def open_on_inode(inode):
    """Whether any fd of this process is open on `inode`."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.stat(f"/proc/self/fd/{fd}").st_ino == inode:
                return True
        except OSError:
            pass
    return False


class ScriptedBroker:
    """A Client on one end of a socket pair; `answer(sock, request)` on the
    other, on its own thread."""

    def __init__(self, answer, timeout, control="/nonexistent"):
        import socket
        from halloc.v1 import broker_pb2
        self._broker_pb2 = broker_pb2
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = theirs
        conn = _broker.BrokerConnection(ours, broker_pb2.Hello(),
                                        broker_pb2.Welcome(session_id=1, session_token="t",
                                                           import_references=True,
                                                           hold_generations=True))
        self.client = halloc.Client(
            conn, grpc.insecure_channel(f"unix:{control}", options=client_module._CHANNEL_OPTIONS),
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


def interrupt_the_next_wait(monkeypatch):
    """The next wait for the broker socket raises KeyboardInterrupt (as
    Ctrl-C would), once."""
    from halloc import _scm
    real_wait = _scm.wait_readable

    def interrupted(*args, **kwargs):
        monkeypatch.setattr(_scm, "wait_readable", real_wait)
        raise KeyboardInterrupt

    monkeypatch.setattr(_scm, "wait_readable", interrupted)


def late_fd(broker, call_id, memfd, buffer_id=42):
    """Sends `memfd` as buffer `buffer_id`'s fd for gRPC call `call_id`."""
    import socket
    from halloc.v1 import broker_pb2
    frame = broker_pb2.BrokerFrame()
    frame.buffer.buffer_id = buffer_id
    frame.buffer.call_id = call_id
    socket.send_fds(broker.sock, [frame.SerializeToString()], [memfd])


def release_on_the_socket(broker, buffer_id):
    """A Release over the broker socket whatever the Client's path: its
    reply is read after whatever came before it."""
    from halloc.v1 import allocator_pb2, broker_pb2
    broker.client._conn.broker_call(broker_pb2.BrokerRequest(
        release=allocator_pb2.ReleaseRequest(buffer_ids=[buffer_id])), "Release")


def grpc_path_broker(monkeypatch, timeout):
    """A scripted broker whose Client calls Allocate over gRPC (its call
    ids echoed) and answers Releases on the socket; and the list of the
    buffers released there."""
    released = []

    def answer(sock, req):
        released.extend(req.release.buffer_ids)
        broker.reply_release(req)

    broker = ScriptedBroker(answer, timeout=timeout)
    broker.client.welcome.allocate_call_ids = True
    monkeypatch.setattr(broker.client, "_fast_path", False)
    return broker, released
