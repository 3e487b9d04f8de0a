"""The compiled fd-table scan (tracer/_fastpath.c fd_sockets) against the
Python one it replaces (tracer/probes/procfs.py _scan_fd_dir_python) and
against what the process itself says it holds: real processes with every
kind of fd, files named to look like sockets among them. The holders are
the hostile side: as root, the test starts them as nobody, so the files
named like socket links are another user's choice, as they would be on a
shared host."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tracer import fastpath
from tracer.probes import procfs

pytestmark = pytest.mark.skipif(fastpath.native is None,
                                reason=f"no compiled path here: {fastpath.STATUS}")

HOLDER = textwrap.dedent(r"""
    import json, os, resource, shutil, socket, sys, tempfile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    keep, inodes = [], []
    ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(64)
    keep.append(ls)
    for _ in range(int(sys.argv[1])):
        c = socket.create_connection(ls.getsockname()); a, _ = ls.accept()
        keep += [c, a]
    keep.append(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    keep += list(socket.socketpair())
    r, w = os.pipe()
    d = tempfile.mkdtemp()
    # files whose paths look like socket links: their links start with "/"
    tricks = [os.open(os.path.join(d, n), os.O_CREAT | os.O_RDWR)
              for n in ("socket:[1]", "socket:[99999999999999999999999]", "socket:[x]")]
    gone = os.open(os.path.join(d, "deleted"), os.O_CREAT | os.O_RDWR)
    os.unlink(os.path.join(d, "deleted"))
    null = os.open("/dev/null", os.O_RDONLY)
    inodes = sorted(os.fstat(s.fileno()).st_ino for s in keep)
    print(json.dumps({"inodes": inodes, "fds": len(os.listdir("/proc/self/fd")) - 1,
                      "uid": os.getuid()}), flush=True)
    sys.stdin.read()
    shutil.rmtree(d)
""")
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def holder():
    """A process holding sockets of every kind, a pipe, files (one deleted,
    some named like socket links) and /dev/null; what it says it holds. As
    root: the process is nobody's."""
    procs = []
    as_nobody = AS_NOBODY if os.geteuid() == 0 else []

    def start(connections: int = 20, own: bool = False):
        p = subprocess.Popen([*([] if own else as_nobody), sys.executable, "-c", HOLDER, str(connections)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(p)
        return p, json.loads(p.stdout.readline())

    yield start
    for p in procs:
        p.stdin.close()
        p.wait(timeout=10)


def test_the_compiled_scan_is_in_use():
    assert procfs._scan_fd_dir is fastpath.native.fd_sockets


@pytest.mark.parametrize("connections", [0, 20, 450])
def test_same_answer_as_python_and_as_the_process_itself(holder, connections):
    p, said = holder(connections)
    assert said["uid"] == (65534 if os.geteuid() == 0 else os.geteuid())
    count, inodes = fastpath.native.fd_sockets(p.pid)
    assert (count, inodes) == procfs._scan_fd_dir_python(p.pid)
    assert sorted(inodes) == said["inodes"]           # the process's own fstat
    assert count == said["fds"]                        # its own listing, less the listing's fd
    assert len(inodes) == 2 * connections + 4


def test_gone_and_invalid_processes_are_none():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    for pid in (p.pid, 0, -1, 2**31 - 1):
        assert fastpath.native.fd_sockets(pid) is None
        assert procfs._scan_fd_dir_python(pid) is None
    with pytest.raises(OverflowError):
        fastpath.native.fd_sockets(2**40)
    with pytest.raises(TypeError):
        fastpath.native.fd_sockets("1")


def test_a_table_it_may_not_read_is_none(holder):
    """As another user: a root process's fd table is unreadable (EACCES)."""
    p, _ = holder(1, own=True)
    code = ("import sys; from tracer import fastpath; from tracer.probes import procfs; "
            f"print(fastpath.native.fd_sockets({p.pid}), procfs._scan_fd_dir_python({p.pid}))")
    if os.geteuid() == 0:
        argv = [*AS_NOBODY, sys.executable, "-c", code]
    elif os.stat(f"/proc/{p.pid}").st_uid == os.geteuid():
        pytest.skip("not root, and the only processes this test can start are this user's own")
    else:
        argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "None"]
