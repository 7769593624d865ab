"""One record with file descriptors on a SOCK_SEQPACKET Unix socket.

The Python side of clients/cpp/halloc/base/scm.h. fds travel beside the bytes in
SCM_RIGHTS, are received close-on-exec (MSG_CMSG_CLOEXEC) and are owned by
an OwnedFd from the moment they arrive, so every error path (a truncated
record included) closes them.

Why recvmsg and not socket.recv_fds: in Python 3.11, recv_fds drops its
`flags` argument, so its fds cannot be received close-on-exec nor its call
made non-blocking, and it leaves MSG_CTRUNC to the caller; this is the same
call with those three things done.
"""

import array
import os
import select
import socket
import time

from . import errors

# Most fds one record may carry, and the largest record (scm.h).
MAX_FDS_PER_RECORD = 64
MAX_RECORD_BYTES = 64 * 1024

_INT = array.array("i").itemsize
# Room for a full SCM_RIGHTS and an SCM_CREDENTIALS (struct ucred: 3 ints).
_ANCILLARY_BYTES = (socket.CMSG_SPACE(MAX_FDS_PER_RECORD * _INT) +
                    socket.CMSG_SPACE(3 * _INT))


class OwnedFd:
    """Owns one fd: closes it once, on close(), on exit or when collected."""

    __slots__ = ("_fd",)

    def __init__(self, fd):
        self._fd = fd

    def fileno(self):
        if self._fd < 0:
            raise ValueError("fd is closed")
        return self._fd

    @property
    def closed(self):
        return self._fd < 0

    def detach(self):
        """Gives the fd up: the caller closes it."""
        fd, self._fd = self._fd, -1
        return fd

    def close(self):
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self):
        return f"OwnedFd({self._fd})"


def close_all(fds):
    for fd in fds:
        fd.close()


class TruncatedRecordError(errors.DataLossError):
    """The kernel cut a record, or it carried more fds than a record may.
    `payload` is its bytes when only the fds were cut (MSG_CTRUNC: this
    process is out of fds) or too many, else None."""

    def __init__(self, message, payload):
        super().__init__(message)
        self.payload = payload


class Record:
    __slots__ = ("data", "fds")

    def __init__(self, data, fds):
        self.data = data
        self.fds = fds


def send_record(sock, data, *, block=True):
    """Sends `data` as one record (no fds). EINTR is retried (PEP 475).
    Without `block`, a full socket is RESOURCE_EXHAUSTED, not a wait."""
    if len(data) > MAX_RECORD_BYTES:
        raise errors.InvalidArgumentError(f"record too large: {len(data)} bytes")
    flags = socket.MSG_NOSIGNAL | (0 if block else socket.MSG_DONTWAIT)
    try:
        sent = sock.sendmsg([data], [], flags)
    except BlockingIOError:
        raise errors.ResourceExhaustedError(
            "hallocd's broker queue is full") from None
    except OSError as e:
        raise errors.from_os_error(e, "sendmsg") from None
    if sent != len(data):
        raise errors.InternalError(f"sendmsg sent {sent} of {len(data)} bytes")


def receive_record(sock, *, block=True):
    """Receives one record, or None when `block` is false and none is
    queued. Peer closed: UnavailableError. A record the kernel cut:
    TruncatedRecordError, after closing every fd that did arrive."""
    flags = socket.MSG_CMSG_CLOEXEC | (0 if block else socket.MSG_DONTWAIT)
    try:
        data, ancillary, msg_flags, _ = sock.recvmsg(
            MAX_RECORD_BYTES, _ANCILLARY_BYTES, flags)
    except BlockingIOError:
        return None
    except OSError as e:
        raise errors.from_os_error(e, "recvmsg") from None
    # Own every fd first, so that each error below closes them.
    fds = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            raw = array.array("i")
            raw.frombytes(payload[:len(payload) - len(payload) % _INT])
            fds.extend(OwnedFd(fd) for fd in raw)
    if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        close_all(fds)
        bytes_cut = bool(msg_flags & socket.MSG_TRUNC)
        raise TruncatedRecordError(
            f"record truncated ({'bytes' if bytes_cut else 'fds'}); dropped it",
            None if bytes_cut else data)
    if len(fds) > MAX_FDS_PER_RECORD:
        # (The kernel's spare room held them.) Its bytes say which they
        # were: a waiting call fails now, not at its deadline.
        close_all(fds)
        raise TruncatedRecordError(
            f"record carries {len(fds)} fds; at most {MAX_FDS_PER_RECORD}; dropped it", data)
    if not data and not fds:
        raise errors.UnavailableError("hallocd closed the broker socket")
    return Record(data, fds)


def wait_readable(sock, deadline):
    """Waits until `sock` is readable (or hung up) or time.monotonic()
    passes `deadline`: DeadlineExceededError then."""
    _wait(sock, select.POLLIN, deadline, "no answer from hallocd in time")


def wait_writable(sock, deadline):
    """The same for room to write (a full broker queue: a daemon that does
    not read it)."""
    _wait(sock, select.POLLOUT, deadline,
          "hallocd takes no requests (its broker socket is full)")


_MAX_POLL_MS = 2**31 - 1


def _wait(sock, events, deadline, timed_out):
    poller = select.poll()
    poller.register(sock, events)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise errors.DeadlineExceededError(timed_out)
        # At most INT_MAX ms at a time (poll's int; an infinite or very long
        # timeout would overflow it), as libhalloc clamps.
        if poller.poll(min(left * 1000, _MAX_POLL_MS)):  # EINTR retried (PEP 475)
            return
