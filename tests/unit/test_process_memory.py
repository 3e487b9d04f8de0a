"""Reading resident memory and memory cgroups (tracer/probes/process_memory.py)
from files laid out as /proc and the cgroup file systems show them, and from
files someone made to mislead: anything odd reads as unknown, nothing is
followed out of the hierarchy."""
from __future__ import annotations

import os

import pytest

from tracer.probes import process_memory as pm

UNLIMITED_V1 = 9223372036854771712


@pytest.fixture
def proc(tmp_path, monkeypatch):
    monkeypatch.setattr(pm, "PROC", str(tmp_path / "proc"))

    def make(pid, **files):
        d = tmp_path / "proc" / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (d / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return make


def test_rss_is_the_second_statm_field_in_pages(proc):
    proc(10, statm="12345 512 100 10 0 300 0\n")
    assert pm.rss_bytes(10) == 512 * pm.PAGE_SIZE
    proc(11, statm="garbage")
    proc(12, statm="1 -5 0")
    assert pm.rss_bytes(11) is None and pm.rss_bytes(12) is None
    assert pm.rss_bytes(13) is None       # gone


def test_mem_total(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24683792 kB\nMemFree:  1 kB\n")
    assert pm.mem_total(str(f)) == 24683792 * 1024
    f.write_text("MemTotal: lots\n")
    assert pm.mem_total(str(f)) is None


HYBRID = ("9:name=systemd:/user.slice\n8:pids:/user.slice\n4:memory:/process_api/c2b0\n"
          "1:cpu:/\n0::/user.slice/session-1.scope\n")


def test_v1_memory_line_wins_on_hybrid_hosts(proc):
    proc(20, cgroup=HYBRID)
    assert pm.memory_cgroup(20) == pm.CgroupRef(1, "/process_api/c2b0")
    proc(21, cgroup="0::/system.slice/api.service\n")
    assert pm.memory_cgroup(21) == pm.CgroupRef(2, "/system.slice/api.service")
    proc(22, cgroup="4:memory:/\n0::/\n")
    assert pm.memory_cgroup(22) is None   # the root cgroup's figures are the host's


@pytest.mark.parametrize("text", [
    "4:memory:/a\n4:memory:/b\n",                 # a name with a newline forging a second line
    "4:memory:/a/../../etc\n",                    # out of the hierarchy
    "4:memory:/a/./b\n",
    "4:memory:relative\n",
    "no colons here\n",
    b"4:memory:/\xff\xfe\n",                      # not UTF-8
    "0::/a\n0::/b\n",
])
def test_odd_cgroup_files_read_as_unknown(proc, text):
    proc(30, cgroup=text)
    assert pm.memory_cgroup(30) is None


def _v1_group(root, path, usage, limit, hierarchical=None):
    d = root.joinpath(*path.strip("/").split("/"))
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
    stat = "cache 0\nrss 0\n"
    if hierarchical is not None:
        stat += f"hierarchical_memory_limit {hierarchical}\n"
    (d / "memory.stat").write_text(stat)
    return d


def test_v1_use_and_hierarchical_limit(tmp_path):
    root = tmp_path / "memory"
    _v1_group(root, "/box/api", 500_000_000, UNLIMITED_V1, hierarchical=1 << 30)
    m = pm.cgroup_memory(pm.CgroupRef(1, "/box/api"), v1_root=str(root))
    assert m == pm.CgroupMemory(500_000_000, 1 << 30)   # the parent's limit applies
    _v1_group(root, "/free", 7, UNLIMITED_V1, hierarchical=UNLIMITED_V1)
    assert pm.cgroup_memory(pm.CgroupRef(1, "/free"), v1_root=str(root)) == \
        pm.CgroupMemory(7, None)
    assert pm.cgroup_memory(pm.CgroupRef(1, "/gone"), v1_root=str(root)) is None


def test_a_link_in_the_hierarchy_is_not_followed(tmp_path):
    root = tmp_path / "memory"
    root.mkdir()
    outside = _v1_group(tmp_path / "elsewhere", "/x", 1, 2, hierarchical=2)
    os.symlink(outside, root / "trap")
    assert pm.cgroup_memory(pm.CgroupRef(1, "/trap"), v1_root=str(root)) is None
    # a file replaced by a link is not read either
    d = _v1_group(root, "/real", 5, UNLIMITED_V1)
    (d / "memory.usage_in_bytes").unlink()
    os.symlink(outside / "memory.usage_in_bytes", d / "memory.usage_in_bytes")
    assert pm.cgroup_memory(pm.CgroupRef(1, "/real"), v1_root=str(root)).used is None


def test_v2_limit_is_the_smallest_on_the_path_to_the_root(tmp_path):
    root = tmp_path / "unified"
    (root / "a" / "b").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory pids\n")
    (root / "a" / "memory.max").write_text("2000000000\n")
    (root / "a" / "b" / "memory.max").write_text("max\n")
    (root / "a" / "b" / "memory.current").write_text("300000000\n")
    m = pm.cgroup_memory(pm.CgroupRef(2, "/a/b"), v2_root=str(root))
    assert m == pm.CgroupMemory(300_000_000, 2_000_000_000)
    # no memory controller there (hybrid hosts' unified tree): unknown
    (root / "c").mkdir()
    assert pm.cgroup_memory(pm.CgroupRef(2, "/c"), v2_root=str(root)) is None


def test_this_process_reads_as_the_kernel_says():
    with open("/proc/self/status") as f:
        vmrss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    rss = pm.rss_bytes(os.getpid())
    assert abs(rss - vmrss) <= 64 * pm.PAGE_SIZE     # two reads a moment apart
    assert pm.mem_total() > 0
