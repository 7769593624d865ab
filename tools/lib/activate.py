#!/usr/bin/env python3
"""Socket activation the way systemd does it, for tests of the installed
hallocd: binds hallocd.socket's and hallocd-broker.socket's sockets (a
SOCK_STREAM control socket, a SOCK_SEQPACKET broker socket with
SO_PASSCRED), waits for the first client to connect to either, then execs
the command with LISTEN_FDS=2, LISTEN_FDNAMES=control:broker and LISTEN_PID
set to its own pid, the sockets as fds 3 and 4 (sd_listen_fds(3)).

(systemd-socket-activate cannot hand one process a stream and a seqpacket
socket at once: it makes every socket of one type.)

Usage: activate.py CONTROL_PATH BROKER_PATH -- COMMAND [ARGS...]
"""
import fcntl
import os
import select
import socket
import sys


def listen(path, kind):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, kind)
    if kind == socket.SOCK_SEQPACKET:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    s.bind(path)
    os.chmod(path, 0o660)
    s.listen(128)
    return s


def main():
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        sys.exit(__doc__)
    control = listen(sys.argv[1], socket.SOCK_STREAM)
    broker = listen(sys.argv[2], socket.SOCK_SEQPACKET)
    print("activate: listening; waiting for the first connection", flush=True)
    select.select([control, broker], [], [])
    print("activate: a client connected; starting", sys.argv[4], flush=True)
    # fds 3 and 4, in the order of LISTEN_FDNAMES, inheritable: first out
    # of the way (either may sit on 3 or 4 now), then into place.
    high = []
    for sock in (control, broker):
        fd = sock.detach()
        high.append(fcntl.fcntl(fd, fcntl.F_DUPFD, 10))
        os.close(fd)
    for want, fd in zip((3, 4), high):
        os.dup2(fd, want, inheritable=True)
        os.close(fd)
    os.environ["LISTEN_FDS"] = "2"
    os.environ["LISTEN_FDNAMES"] = "control:broker"
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execvp(sys.argv[4], sys.argv[4:])


if __name__ == "__main__":
    main()
