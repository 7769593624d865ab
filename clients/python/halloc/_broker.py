"""The client side of hallocd's broker socket: connect and handshake.

The Python side of clients/cpp/halloc/broker_conn.cc; the protocol is
proto/halloc/v1/broker.proto (version 2): read Hello{challenge}, answer
Verify{challenge} from this very process (hallocd checks the kernel's
SCM_CREDENTIALS stamp on it), read Welcome{session token}.
"""

import random
import socket
import struct
import time

from . import _scm, errors
from .v1 import broker_pb2

BROKER_PROTOCOL_VERSION = 2
SESSION_METADATA_KEY = "halloc-session"


class BrokerConnection:
    """A verified broker socket, the Hello it started with and its Welcome."""

    def __init__(self, sock, hello, welcome):
        self.sock = sock
        self.hello = hello
        self.welcome = welcome


def _send_timeout(sock, seconds):
    sec = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("@ll", sec, int((seconds - sec) * 1e6)))


def connect_seqpacket(path, timeout=None):
    """A SOCK_SEQPACKET Unix socket (close-on-exec) connected to `path`,
    waiting at most `timeout` seconds (None: for ever) for room in the
    listener's backlog (a daemon that does not accept, or a backlog other
    processes filled): then DeadlineExceededError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Blocking, whatever socket.setdefaulttimeout() says: in timeout mode
    # CPython polls for up to that timeout before every send and receive,
    # MSG_DONTWAIT ones included, so a call would overrun its own deadline
    # and fail INTERNAL (a TimeoutError without errno). Waits are ours.
    sock.settimeout(None)
    try:
        # A Unix socket's connect waits for room in a full backlog for as
        # long as the send timeout says, then fails EAGAIN. (CPython's own
        # timeout mode would fail at once: non-blocking, it is EAGAIN.)
        bounded = timeout is not None and timeout < _MAX_CONNECT_WAIT
        if bounded:
            _send_timeout(sock, max(timeout, 0.001))
        sock.connect(path)
        if bounded:
            _send_timeout(sock, 0)
    except BlockingIOError:
        sock.close()
        raise errors.DeadlineExceededError(
            f"connect to hallocd broker at {path}: no room in its backlog within "
            f"{timeout} s (hallocd is not accepting connections)") from None
    except OSError as e:
        sock.close()
        raise errors.from_os_error(
            e, f"connect to hallocd broker at {path} (is hallocd running?)") from None
    return sock


_MAX_CONNECT_WAIT = 1e8  # seconds: longer is for ever


def reply_error(reply):
    """The HallocError a BrokerReply carries, or None when it is OK."""
    if reply.code == 0:
        return None
    return errors.error_for(reply.code, reply.message)


def _next_frame(sock, deadline):
    _scm.wait_readable(sock, deadline)
    record = _scm.receive_record(sock)
    _scm.close_all(record.fds)  # no handshake frame carries fds
    frame = broker_pb2.BrokerFrame()
    try:
        frame.ParseFromString(record.data)
    except Exception:  # google.protobuf.message.DecodeError
        raise errors.UnavailableError("hallocd broker sent a malformed frame") from None
    return frame


# Seconds a connect and handshake need after a wait for the connect rate.
_RETRY_MARGIN = 0.05


class _RefusedForNow(Exception):
    """A refusal that passes by itself: `error`, and how soon to ask again."""

    def __init__(self, error, retry_after):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def handshake(sock, timeout):
    """Reads the Hello, sends Verify (request id 0), reads the Welcome."""
    try:
        return _handshake(sock, timeout)
    except _RefusedForNow as refused:
        raise refused.error from None


def _handshake(sock, timeout):
    deadline = time.monotonic() + timeout
    frame = _next_frame(sock, deadline)
    if frame.WhichOneof("kind") == "reply":  # refused before any session
        err = reply_error(frame.reply)
        if err is not None and frame.reply.retry_after_ms:
            raise _RefusedForNow(err, frame.reply.retry_after_ms / 1000)
        if err is not None:
            raise err
    if frame.WhichOneof("kind") != "hello":
        raise errors.UnavailableError("hallocd broker sent no hello")
    hello = frame.hello
    if hello.version != BROKER_PROTOCOL_VERSION:
        raise errors.UnavailableError(
            f"hallocd speaks broker protocol {hello.version}; "
            f"this client speaks {BROKER_PROTOCOL_VERSION}")
    verify = broker_pb2.BrokerRequest(request_id=0)
    verify.verify.challenge = hello.challenge
    _scm.send_record(sock, verify.SerializeToString())
    frame = _next_frame(sock, deadline)
    if frame.WhichOneof("kind") != "reply":
        raise errors.UnavailableError("hallocd broker sent no reply to Verify")
    err = reply_error(frame.reply)
    if err is not None:
        raise err
    if frame.reply.WhichOneof("kind") != "welcome":
        raise errors.UnavailableError("hallocd broker's reply to Verify has no welcome")
    return BrokerConnection(sock, hello, frame.reply.welcome)


def connect_broker(path, timeout):
    """Connects to `path` and completes the handshake.

    A refusal for connecting faster than this uid's rate (the reply's
    retry_after_ms) is asked again once there is room, within `timeout`.
    """
    deadline = time.monotonic() + timeout
    while True:
        sock = connect_seqpacket(path, max(deadline - time.monotonic(), 0))
        try:
            return _handshake(sock, max(deadline - time.monotonic(), 0))
        except _RefusedForNow as refused:
            sock.close()
            # A little later than asked, at random, so that a crowd of this
            # uid's waiters does not come back at once; and only if that
            # leaves time to connect.
            wait = refused.retry_after * random.uniform(1.0, 1.5) + 0.001
            if time.monotonic() + wait + _RETRY_MARGIN >= deadline:
                raise refused.error from None
            time.sleep(wait)
        except BaseException:
            sock.close()
            raise
