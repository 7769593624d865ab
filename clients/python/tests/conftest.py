"""A real hallocd for the suite, and connected clients for each test.

Like tests/integration/hallocd_process.cc: hallocd (//service:hallocd, its
path in $HALLOC_TEST_HALLOCD) with its sockets in a fresh directory under
/tmp (sun_path is short), 0666 so peers reach them, its stderr in a log that
a failing test prints; killed when the suite ends.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import halloc
from halloc import _broker


def child_env():
    """The environment for C++ processes (hallocd, the peer): with the
    preload run_pytest.sh kept away from the interpreter."""
    env = dict(os.environ)
    preload = env.pop("HALLOC_TEST_CHILD_LD_PRELOAD", "")
    if preload:
        env["LD_PRELOAD"] = preload
    return env


class Hallocd:
    def __init__(self, directory):
        self.dir = directory
        self.control = os.path.join(directory, "control.sock")
        self.broker = os.path.join(directory, "broker.sock")
        self.log_path = os.path.join(directory, "hallocd.log")
        args = [os.environ["HALLOC_TEST_HALLOCD"],
                f"--control_socket={self.control}", f"--broker_socket={self.broker}",
                "--socket_mode=0666"]
        if os.geteuid() != 0:
            # As the suite's uid: its fds counted through its /proc, and its
            # read-only shares to this uid are what the tests look at.
            args += ["--dumpable", "--read_only_for_own_uid"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_env())
        # Ready once the broker accepts: it starts last.
        deadline = time.monotonic() + 10
        while True:
            try:
                _broker.connect_seqpacket(self.broker).close()
                return
            except halloc.HallocError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"hallocd did not start; log:\n{self.log()}")
                time.sleep(0.01)

    @property
    def pid(self):
        return self.proc.pid

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="session")
def hallocd():
    directory = tempfile.mkdtemp(prefix="halloc-py-", dir="/tmp")
    daemon = Hallocd(directory)
    try:
        yield daemon
    finally:
        daemon.kill()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def connect(hallocd, request):
    """connect(**options) -> a Client of the suite's hallocd, closed after
    the test (a failing test prints hallocd's log)."""
    clients = []

    def make(**options):
        c = halloc.Client.connect(hallocd.control, hallocd.broker, **options)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"hallocd log:\n{hallocd.log()}")


@pytest.fixture
def client(connect):
    return connect()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def open_fds():
    """This process's open fds and what they are (not the one listing them)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own fd, closed by now
        if target != f"/proc/{os.getpid()}/fd":
            out[int(name)] = target
    return out


@pytest.fixture
def fds():
    """fds() -> {fd: target} of this process, for leak checks."""
    return open_fds


def wait_for(predicate, timeout=5.0):
    """Whether `predicate()` came true within `timeout` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
