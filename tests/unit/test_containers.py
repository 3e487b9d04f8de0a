"""tracer/domain/containers.py: cgroup paths and kubelet directory names as
each runtime writes them, and hostile look-alikes that must name nothing."""
import pytest

from tracer.domain import containers
from tracer.domain.containers import CgroupIdentity, PodInfo, identify

ID = "3f" * 32
ID2 = "0123456789abcdef" * 4
UID = "6b4f1c2e-8a3d-4e5f-9a1b-2c3d4e5f6a7b"
UID_ = UID.replace("-", "_")


@pytest.mark.parametrize("path, runtime, cid, pod", [
    (f"/docker/{ID}", "docker", ID, None),
    (f"/system.slice/docker-{ID}.scope", "docker", ID, None),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
     f"cri-containerd-{ID}.scope", "containerd", ID, UID),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"crio-{ID}.scope", "cri-o", ID, UID),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope", "conmon", ID, UID),
    (f"/kubepods/burstable/pod{UID}/{ID}", "cri", ID, UID),
    (f"/kubepods/pod{UID}/{ID}", "cri", ID, UID),          # guaranteed QoS: no class level
    (f"/kubepods/besteffort/pod{UID}/crio-{ID}", "cri-o", ID, UID),
    (f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope",
     "containerd", ID, UID),    # kind's kubelet: every slice has the prefix
    (f"/machine.slice/libpod-{ID}.scope", "podman", ID, None),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope",
     "podman", ID, None),
    (f"/machine.slice/libpod-conmon-{ID}.scope", "conmon", ID, None),
    (f"/libpod_parent/libpod-{ID}", "podman", ID, None),
    ("/system.slice/nginx.service", "systemd", "nginx.service", None),
    ("/system.slice/getty@tty1.service", "systemd", "getty@tty1.service", None),
    ("/system.slice/containerd.service/sub", "systemd", "containerd.service", None),
    ("/user.slice/user-1000.slice/session-3.scope", None, None, None),
    ("/", None, None, None),
    ("/process_api/9fea15fe0d19cb3c4c1f9bed302ca0d9", None, None, None),
    (f"/kubepods/burstable/pod{UID}", None, None, UID),     # the pod's own cgroup
])
def test_each_runtime_form(path, runtime, cid, pod):
    got = identify(path)
    assert (got.runtime, got.container_id, got.pod_uid) == (runtime, cid, pod)
    assert got.path == path


def test_kind_guaranteed_pod():
    path = (f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/"
            f"cri-containerd-{ID}.scope")
    assert (identify(path).container_id, identify(path).pod_uid) == (ID, UID)


def test_the_deepest_container_wins():
    got = identify(f"/system.slice/docker-{ID}.scope/docker/{ID2}")
    assert (got.runtime, got.container_id) == ("docker", ID)   # /docker/<id> only at the top
    got = identify(f"/system.slice/docker-{ID}.scope/libpod-{ID2}.scope")
    assert (got.runtime, got.container_id) == ("podman", ID2)


def test_short_name():
    assert identify(f"/docker/{ID}").short == ID[:12]
    assert identify("/system.slice/ssh.service").short == "ssh.service"
    assert identify("/user.slice").short is None


@pytest.mark.parametrize("path", [
    f"/docker/{ID[:-1]}",                       # 63 digits
    f"/docker/{ID}0",                           # 65
    f"/docker/{ID.upper()}",                    # runtimes write lowercase
    f"/system.slice/docker-{ID}.scope.evil",
    f"/system.slice/xdocker-{ID}.scope",
    f"/home/{ID}",                              # a bare id outside a pod or /docker
    f"/docker/x/{ID}",
])
def test_look_alikes_name_no_container(path):
    got = identify(path)
    assert got.container_id is None and got.runtime is None


@pytest.mark.parametrize("path", [
    f"/evil/pod{UID}/{ID}",                                  # no kubepods ancestor
    f"/kubepods/burstable/pod{UID[:-1]}/{ID}",               # short uid
    f"/kubepods/burstable/pod{UID.upper()}/{ID}",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice/x",  # dashes
])
def test_pod_uid_look_alikes(path):
    assert identify(path).pod_uid is None


def test_service_names_are_strict():
    assert identify("/system.slice/a b.service").container_id is None
    assert identify("/system.slice/" + "a" * 300 + ".service").container_id is None


def test_long_paths_are_capped_keeping_the_leaf():
    path = "/" + "/".join(["d" * 200] * 10) + f"/docker-{ID}.scope"
    got = identify(path)
    assert len(got.path) == containers.MAX_PATH and got.path.startswith("...")
    assert got.path.endswith(f"docker-{ID}.scope")
    assert got.container_id == ID


def test_proc_cgroup_hybrid_host():
    raw = (b"9:name=systemd:/\n8:pids:/\n4:memory:/process_api/9fea\n1:cpu,cpuacct:/x\n"
           b"0::/system.slice/docker-" + ID.encode() + b".scope\n")
    v2, v1 = containers.parse_proc_cgroup(raw)
    assert v2 == f"/system.slice/docker-{ID}.scope"
    assert v1 == {"name=systemd": "/", "pids": "/", "memory": "/process_api/9fea",
                  "cpu": "/x", "cpuacct": "/x"}


def test_proc_cgroup_v1_only():
    v2, v1 = containers.parse_proc_cgroup(b"4:memory:/docker/" + ID.encode() + b"\n")
    assert v2 is None and v1["memory"] == f"/docker/{ID}"


@pytest.mark.parametrize("raw", [
    b"0::/a\n0::/b\n",                  # a forged second line for one hierarchy
    b"4:memory:/a\n5:memory:/b\n",      # one controller twice
    b"0::relative\n",
    b"0::/a/../b\n",
    b"0::/a//b\n",
    b"x::/a\n",
    b"0:/a\n",
    b"0::/a\x00b\n",
    b"".join(b"%d:c%d:/\n" % (i, i) for i in range(1, 100)),
])
def test_proc_cgroup_refuses_what_the_kernel_does_not_write(raw):
    assert containers.parse_proc_cgroup(raw) is None


def test_paths_keep_every_byte():
    v2, _ = containers.parse_proc_cgroup(b"0::/a\xff\x1b[31m\n")
    assert v2 == "/a\\xff\x1b[31m"       # faithful; views escape the ESC


@pytest.mark.parametrize("name, pod", [
    (f"default_web-7d4b9c-xk2p_{UID}", PodInfo("default", "web-7d4b9c-xk2p", UID)),
    (f"kube-system_coredns.v1_{UID}", PodInfo("kube-system", "coredns.v1", UID)),
    (f"default_web_{UID[:-1]}", None),
    (f"Default_web_{UID}", None),
    (f"default_we_b_{UID}", None),
    (f"default_web_{UID}_x", None),
    (f"default_-web_{UID}", None),
    (f"default_web\n_{UID}", None),
    (f"{'n' * 64}_web_{UID}", None),        # a namespace is at most 63
    (f"ns_{'a' * 254}_{UID}", None),        # a pod name at most 253
    (f"ns_../x_{UID}", None),
])
def test_pod_dirs(name, pod):
    assert containers.pod_dir(name) == pod


def test_container_dirs_and_links():
    assert containers.container_dir("nginx") == "nginx"
    assert containers.container_dir("../x") is None
    assert containers.container_dir("a" * 64) is None
    assert containers.container_log(f"web-1_default_nginx-{ID}.log") == (
        "web-1", "default", "nginx", ID)
    assert containers.container_log(f"web-1_default_nginx-{ID}.log.evil") is None
    assert containers.container_log(f"web-1_default_nginx-{ID[:-1]}.log") is None


def test_attribution_can_be_left_out_for_the_benchmark(monkeypatch):
    from tracer.probes.cgroups import ContainerCache
    from tracer.run import NO_CONTAINERS_ENV, container_cache

    monkeypatch.delenv(NO_CONTAINERS_ENV, raising=False)
    assert isinstance(container_cache(), ContainerCache)
    monkeypatch.setenv(NO_CONTAINERS_ENV, "1")
    assert container_cache() is None
    monkeypatch.setenv(NO_CONTAINERS_ENV, "yes")     # only "1" turns it off
    assert isinstance(container_cache(), ContainerCache)
