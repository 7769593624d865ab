"""Buffers shared between libhalloc (C++) and this client, both ways.

The C++ side is //tests/integration:peer (peer_main.cc) in its `shell`
mode: one command line in, one reply line out, as this process's uid.
"""

import mmap
import os
import select
import subprocess
import time

import pytest

import halloc
from halloc.v1 import types_pb2
from conftest import child_env

PAGE = mmap.PAGESIZE
READ = halloc.CpuAccess.CPU_ACCESS_READ
READ_WRITE = halloc.CpuAccess.CPU_ACCESS_READ_WRITE


@pytest.fixture(autouse=True)
def _peer_can_be_us():
    # `peer shell UID` sets gid = uid unless UID is 0.
    if os.getuid() != 0 and os.getgid() != os.getuid():
        pytest.skip("the peer sets its gid to its uid: needs gid == uid, or root")


class Peer:
    """A libhalloc client process: `peer CONTROL BROKER shell UID`."""

    def __init__(self, hallocd):
        self.proc = subprocess.Popen(
            [os.environ["HALLOC_TEST_PEER"], hallocd.control, hallocd.broker,
             "shell", str(os.getuid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=child_env())

    def __call__(self, command, timeout=10.0):
        """Sends one command; its reply line, split."""
        self.proc.stdin.write(command.encode() + b"\n")
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError(f"peer: no reply to {command!r}; so far {line!r}")
            chunk = self.proc.stdout.read(1)
            if not chunk:
                raise EOFError(f"peer exited ({self.proc.wait()}) on {command!r}")
            line += chunk
        return line.decode().split()

    def quit(self):
        """Ends the peer; its exit code (0: every check held)."""
        self.proc.stdin.write(b"quit\n")
        return self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


def test_cpp_producer_shares_with_python_consumer(hallocd, client):
    size = 3 * PAGE
    with Peer(hallocd) as peer:
        ok, buffer_id = peer(f"alloc {size} cpu_read_often,cpu_write_often")
        assert ok == "ok"
        assert peer(f"write {buffer_id} 90") == ["ok"]
        ok, token, _ = peer(f"share {buffer_id} uid:{os.getuid()} read")
        assert ok == "ok"
        buf = client.import_buffer(token)
        assert (buf.id, buf.size, buf.cpu_access) == (int(buffer_id), size, READ)
        assert not buf.info.owned and buf.info.owner_uid == os.getuid()
        with pytest.raises(halloc.PermissionDeniedError):
            buf.map(halloc.Access.READ_WRITE)
        with buf.map(halloc.Access.READ) as m:
            assert m[:] == b"\x5a" * size
            assert peer(f"write {buffer_id} 7") == ["ok"]  # one memory
            assert m[:] == b"\x07" * size
        assert peer.quit() == 0
    # The producer's session is over; the fd we imported still maps.
    with buf.map(halloc.Access.READ) as m:
        assert m[size - 1] == 7
    client.release(buf)


def test_python_producer_shares_with_cpp_consumer(hallocd, client):
    buf = client.allocate(halloc.blob(2 * PAGE, name="py.frame"))
    with buf.map() as m:
        m[:] = b"\xa7" * buf.size
    grant = client.share(buf, uid=os.getuid(), cpu_access=READ_WRITE)
    with Peer(hallocd) as peer:
        assert peer(f"import {grant.token}") == ["ok", str(buf.id), "CPU_ACCESS_READ_WRITE"]
        assert peer(f"read {buf.id}") == ["ok", str(0xa7)]
        assert peer(f"write {buf.id} 33") == ["ok"]
        with buf.map(halloc.Access.READ) as m:
            assert m[:] == b"\x21" * buf.size
        assert peer.quit() == 0
    # What libhalloc's Describe says of a buffer it imported from us.
    grant = client.share(buf, uid=os.getuid(), cpu_access=READ)
    out = subprocess.run(
        [os.environ["HALLOC_TEST_PEER"], hallocd.control, hallocd.broker,
         "import-describe", grant.token],
        stdout=subprocess.PIPE, check=True, timeout=10, env=child_env()).stdout
    seen = types_pb2.BufferInfo.FromString(out)
    assert (seen.id, seen.size, seen.name) == (buf.id, buf.size, "py.frame")
    assert (seen.owned, seen.owner_uid, seen.cpu_access) == (False, os.getuid(), READ)
    client.release(buf)
