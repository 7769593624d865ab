"""The broker record layer (halloc._scm) on a socketpair: fds arrive owned
and close-on-exec, and a record the kernel cut closes the fds that came."""

import fcntl
import os
import socket

import pytest

import halloc
from halloc import _scm
from conftest import open_fds


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def test_fds_arrive_owned_and_cloexec(pair):
    sender, receiver = pair
    before = open_fds()
    r, w = os.pipe()
    socket.send_fds(sender, [b"frame"], [r, w])
    os.close(r)
    os.close(w)
    record = _scm.receive_record(receiver)
    assert record.data == b"frame"
    assert len(record.fds) == 2
    for fd in record.fds:
        assert fcntl.fcntl(fd.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    os.write(record.fds[1].fileno(), b"x")  # the pipe's two ends, in order
    assert os.read(record.fds[0].fileno(), 1) == b"x"
    _scm.close_all(record.fds)
    assert open_fds() == before


def test_fds_cut_are_closed_and_bytes_kept(pair):
    # More fds than the receive buffer has room for: the kernel installs
    # those that fit and sets MSG_CTRUNC (as when this process is out of fds).
    sender, receiver = pair
    before = open_fds()
    fd = os.memfd_create("cut")
    socket.send_fds(sender, [b"frame"], [fd] * 100)
    os.close(fd)
    with pytest.raises(_scm.TruncatedRecordError) as err:
        _scm.receive_record(receiver)
    assert err.value.payload == b"frame"
    assert err.value.code.name == "DATA_LOSS"
    assert open_fds() == before


def test_more_fds_than_a_record_may_carry_are_closed(pair):
    sender, receiver = pair
    before = open_fds()
    fd = os.memfd_create("many")
    socket.send_fds(sender, [b"frame"], [fd] * (_scm.MAX_FDS_PER_RECORD + 1))
    os.close(fd)
    with pytest.raises(halloc.DataLossError, match="65 fds; at most 64"):
        _scm.receive_record(receiver)
    assert open_fds() == before


def test_bytes_cut_are_dropped_with_their_fds(pair):
    sender, receiver = pair
    before = open_fds()
    fd = os.memfd_create("cut")
    socket.send_fds(sender, [b"x" * (_scm.MAX_RECORD_BYTES + 1)], [fd])
    os.close(fd)
    with pytest.raises(_scm.TruncatedRecordError) as err:
        _scm.receive_record(receiver)
    assert err.value.payload is None
    assert open_fds() == before


def test_nothing_queued_and_peer_closed(pair):
    sender, receiver = pair
    assert _scm.receive_record(receiver, block=False) is None
    sender.close()
    with pytest.raises(halloc.UnavailableError):
        _scm.receive_record(receiver)
