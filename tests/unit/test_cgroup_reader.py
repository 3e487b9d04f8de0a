"""tracer/probes/cgroups.py without root: this process's own cgroup files,
the mount table, and pod directories this user owns (the trust rules take
root or ourselves; tests/kernel/test_containers.py does the root side)."""
import os

from tracer.probes import cgroups
from tracer.probes.cgroups import Attribution, ContainerCache

ID = "ab" * 32
UID = "6b4f1c2e-8a3d-4e5f-9a1b-2c3d4e5f6a7b"


def test_hierarchies_of_a_hybrid_host(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
        "26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n"
        "27 25 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "29 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    h = cgroups.hierarchies(str(info))
    assert h.v2 == "/sys/fs/cgroup/unified"
    assert h.v1 == ("cpu", "cpuacct", "memory", "name=systemd")
    assert h.mode == "hybrid"


def test_hierarchies_v2_only_and_v1_only(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("26 25 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    assert cgroups.hierarchies(str(info)) == cgroups.Hierarchies("/sys/fs/cgroup", ())
    info.write_text("29 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    h = cgroups.hierarchies(str(info))
    assert (h.v2, h.mode) == (None, "v1")


def test_cgroup_id_is_the_directory_inode_and_no_link_is_followed(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "out", tmp_path / "a" / "link")
    assert cgroups.cgroup_id(str(tmp_path), "/a/b") == os.stat(tmp_path / "a" / "b").st_ino
    assert cgroups.cgroup_id(str(tmp_path), "/") == os.stat(tmp_path).st_ino
    assert cgroups.cgroup_id(str(tmp_path), "/a/link") is None
    assert cgroups.cgroup_id(str(tmp_path), "/a/missing") is None


def test_this_process(tmp_path):
    """Our own /proc entries, as the kernel writes them, agree with the mount."""
    h = cgroups.hierarchies()
    cache = ContainerCache(v2_root=h.v2, pods_root=str(tmp_path / "none"),
                           links_root=str(tmp_path / "none"))
    a = cache.get(os.getpid())
    assert a is not None
    v2, _ = cgroups.containers.parse_proc_cgroup(open("/proc/self/cgroup", "rb").read())
    if h.v2 and v2:
        assert a.cgroup_id == os.stat(h.v2 + v2).st_ino
    assert cgroups.start_time(os.getpid()) is not None
    assert cache.get(os.getpid()) is a      # cached


def _fake_proc(root, pid, cgroup: bytes, start: int):
    d = root / str(pid)
    d.mkdir(exist_ok=True)
    (d / "cgroup").write_bytes(cgroup)
    (d / "stat").write_bytes(b"%d (a) b) S 1 " % pid + b" ".join(b"0" for _ in range(17))
                             + b" %d 0 0\n" % start)


def test_cache_revalidates_on_pid_reuse_and_exit(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    _fake_proc(proc, 42, b"0::/docker/" + ID.encode() + b"\n", 1000)
    cache = ContainerCache(v2_root=None, pods_root=str(tmp_path / "none"),
                           links_root=str(tmp_path / "none"), proc=str(proc))
    assert cgroups.start_time(42, str(proc)) == 1000
    a = cache.get(42)
    assert (a.container_runtime, a.container_id, a.cgroup_id) == ("docker", ID, None)
    _fake_proc(proc, 42, b"0::/system.slice/ssh.service\n", 2000)     # pid reused
    assert cache.get(42).container_id == ID     # not re-read within the interval
    cache.revalidate()
    assert cache.get(42).container_id == "ssh.service"
    (proc / "42" / "stat").unlink()              # exited
    cache.revalidate()
    assert cache.get(42) is None and cache.unreadable == 1


def test_cache_is_bounded_and_counts_evictions(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    for pid in range(1, 11):
        _fake_proc(proc, pid, b"0::/\n", 5)
    cache = ContainerCache(max_pids=4, v2_root=None, pods_root=str(tmp_path / "none"),
                           links_root=str(tmp_path / "none"), proc=str(proc))
    cache.note(range(1, 11))
    assert cache.evicted == 6 and len(cache._entries) == 4


def test_a_forged_proc_cgroup_attributes_nothing(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    _fake_proc(proc, 7, b"0::/docker/" + ID.encode() + b"\n0::/\n", 5)
    cache = ContainerCache(v2_root=None, pods_root=str(tmp_path / "none"),
                           links_root=str(tmp_path / "none"), proc=str(proc))
    assert cache.get(7) == cgroups.NONE


def _pods_tree(root):
    pods = root / "pods"
    pods.mkdir(mode=0o755)
    (pods / f"shop_web-1_{UID}" / "nginx").mkdir(parents=True)
    (pods / "not_a_pod").mkdir()
    links = root / "containers"
    links.mkdir(mode=0o755)
    (links / f"web-1_shop_nginx-{ID}.log").symlink_to("/nonexistent")
    return pods, links


def test_pods_join_by_uid_and_container_id(tmp_path):
    pods, links = _pods_tree(tmp_path)
    got = cgroups.read_pods(str(pods), str(links))
    assert got.by_uid[UID] == cgroups.PodInfo("shop", "web-1", UID)
    assert got.containers[UID] == ("nginx",) and got.names_by_id == {ID: "nginx"}
    assert any("1 entries are not pod directories" in n for n in got.notes)
    bare = Attribution(5, "/x", "cri", ID, UID)
    assert cgroups.with_pod(bare, got) == Attribution(5, "/x", "cri", ID, UID, "shop", "web-1",
                                                      "nginx")
    assert cgroups.with_pod(Attribution(pod_uid="0" * 8 + UID[8:]), got).pod_name is None


def test_a_pods_directory_others_can_write_is_not_read(tmp_path):
    pods, links = _pods_tree(tmp_path)
    os.chmod(pods, 0o777)
    got = cgroups.read_pods(str(pods), str(links))
    assert got.by_uid == {}
    assert got.notes == (f"pod names not read from {pods}: {pods} is writable by group and "
                         "others (mode 0777)",)


def test_a_linked_pod_directory_is_skipped(tmp_path):
    pods, links = _pods_tree(tmp_path)
    other = tmp_path / "elsewhere"
    (other / "nginx").mkdir(parents=True)
    (pods / f"ns_linked_{UID.replace('6b', '7c')}").symlink_to(other)
    got = cgroups.read_pods(str(pods), str(links))
    assert set(got.by_uid) == {UID}


def test_missing_directories_are_no_note(tmp_path):
    assert cgroups.read_pods(str(tmp_path / "a"), str(tmp_path / "b")) == cgroups.EMPTY_PODS


def test_container_label():
    assert Attribution(container_runtime="docker", container_id=ID).container_label == \
        f"docker:{ID[:12]}"
    assert Attribution(container_runtime="systemd", container_id="a.service").container_label \
        == "systemd:a.service"
    assert Attribution(pod_namespace="n", pod_name="p", container_name="c").container_label \
        == "n/p/c"
    assert Attribution().container_label is None


def test_doctor_says_what_attribution_sees_here():
    from tracer import doctor

    got = doctor._containers()
    h = cgroups.hierarchies()
    assert got["mode"] == h.mode and got["v2"] == h.v2
    assert ("pod names:" in got["detail"]) and (h.mode != "hybrid" or "hybrid" in got["detail"])
    text = doctor.render_text({**doctor.collect(), "containers": got})
    assert f"  containers   {'ok' if got['ok'] else 'no'}" in text


def test_per_event_lookups_match_the_attribution(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    _fake_proc(proc, 42, b"0::/docker/" + ID.encode() + b"\n", 1000)
    cache = ContainerCache(v2_root=None, pods_root=str(tmp_path / "none"),
                           links_root=str(tmp_path / "none"), proc=str(proc))
    cache.note([42, 43])                       # 43: no such process
    assert cache.columns(42) == cgroups.containers.values(cache.get(42))
    assert cache.group(42) == f"docker:{ID[:12]}"
    assert cache.columns(43) == cgroups.containers.values(None) and cache.group(43) == "host"
    (proc / "42" / "stat").unlink()
    cache.revalidate()
    assert cache.columns(42) == cgroups.containers.values(None)


def test_pids_not_asked_for_in_an_interval_are_let_go(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    for pid in (1, 2):
        _fake_proc(proc, pid, b"0::/\n", 5)
    cache = ContainerCache(v2_root=None, pods_root=str(tmp_path / "none"),
                           links_root=str(tmp_path / "none"), proc=str(proc))
    cache.note([1, 2])
    cache.revalidate()              # both asked for in this interval: kept
    assert set(cache._entries) == {1, 2}
    cache.get(1)
    cache.revalidate()              # 2 idle for a whole interval
    assert set(cache._entries) == {1} and cache.group(2) == "host"
    assert cache.get(2) is not None     # read again when it comes back


def test_a_connect_whose_cgroup_is_gone_keeps_its_cgroup_id(tmp_path):
    """The pid exited and the cgroup was removed before its path was read:
    the id the kernel put on the connect is still recorded, the rest null."""
    cache = ContainerCache(v2_root=str(tmp_path), pods_root=str(tmp_path / "none"),
                           links_root=str(tmp_path / "none"), proc=str(tmp_path / "proc"))
    cache.note([99999], [123456789])          # no such pid, no such cgroup id
    assert cache.columns_of(99999, 123456789) == (123456789, None, None, None, None, None,
                                                  None, None)
    assert cache.columns_of(99999, 0) == (None,) * 8
