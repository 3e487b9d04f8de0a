"""Doctor arithmetic, backend choice and header-tree discovery, without root.

Expected timeouts come from the kernel's Documentation/networking/ip-sysctl.rst
(tcp_syn_retries: "final timeout ... after 127 seconds" before 6.5, "after
131 seconds" with tcp_syn_linear_timeouts = 4; tcp_synack_retries: "63
seconds") and from the packetdrill run in the netdev thread on linear SYN
timeouts (SYNs at +1 +1 +1 +1 +1 +2 +4 s). tests/kernel/test_features.py
measures one on the real kernel.
"""
from __future__ import annotations

import json
import os
import resource
from dataclasses import replace

import pytest

from tracer import doctor
from tracer.probes import headers
from tracer.probes.features import (
    KPROBE_TARGETS, TRACEPOINTS, BackendUnavailable, Feature, Features, auto_reason,
    backend_visibility, choose_backend, kernel_version, effective_capabilities,
)
from tracer.probes.headers import HeaderTree

EPERM = "EPERM (Operation not permitted) when loading a BPF_PROG_TYPE_TRACING program"


# --- arithmetic -------------------------------------------------------------------

@pytest.mark.parametrize("retries, linear, expected", [
    (6, 0, 127.0),   # ip-sysctl.rst before 6.5
    (6, 4, 131.0),   # ip-sysctl.rst 6.5+
    (0, 0, 1.0),
    (1, 1, 4.0),     # 1, 1, then 2
    (2, 0, 7.0),
    (8, 0, 1 + 2 + 4 + 8 + 16 + 32 + 64 + 120 + 120),  # capped at TCP_RTO_MAX
])
def test_syn_timeout_seconds(retries, linear, expected):
    assert doctor.syn_timeout_seconds(retries, linear) == expected


def test_syn_intervals_match_packetdrill_with_linear_timeouts():
    intervals = doctor.syn_retransmit_intervals(6, 4)
    assert intervals[:7] == [1, 1, 1, 1, 1, 2, 4]
    # ip-sysctl.rst: the last retransmission goes out at 67 s.
    assert sum(intervals[:-1]) == 67
    assert len(intervals) - 1 == 10  # SYN retransmits before giving up


def test_syn_timeout_respects_a_lower_rto_max():
    assert doctor.syn_timeout_seconds(6, 0, rto_max=10) == 1 + 2 + 4 + 8 + 10 + 10 + 10


def test_synack_timeout_seconds():
    assert doctor.synack_timeout_seconds(5) == 63.0
    assert doctor.synack_timeout_seconds(0) == 1.0


def test_ephemeral_ports():
    assert doctor.ephemeral_ports("32768\t60999") == 28232
    assert doctor.ephemeral_ports("1024 65535") == 64512
    assert doctor.ephemeral_ports("5000 4000") == 0
    with pytest.raises(ValueError):
        doctor.ephemeral_ports("32768")
    assert round(doctor.new_connections_per_second(28232)) == 471


def test_kernel_version_and_capabilities():
    assert kernel_version("6.18.44-fc-v657") == (6, 18, 44)
    assert kernel_version("5.8") == (5, 8, 0)
    assert kernel_version("garbage") == (0, 0, 0)
    assert effective_capabilities("CapPrm:\t1\nCapEff:\t000001fffeffffff\n") == 0x1fffeffffff
    assert effective_capabilities("nothing") == 0


# --- limits -----------------------------------------------------------------------

DEFAULTS = {
    "net.core.somaxconn": "4096",
    "net.ipv4.tcp_max_syn_backlog": "2048",
    "net.ipv4.ip_local_port_range": "32768\t60999",
    "net.ipv4.tcp_syn_retries": "6",
    "net.ipv4.tcp_syn_linear_timeouts": "4",
    "net.ipv4.tcp_rto_max_ms": "120000",
    "net.ipv4.tcp_synack_retries": "5",
    "net.ipv4.tcp_abort_on_overflow": "0",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.tcp_tw_reuse": "2",
    "net.ipv4.tcp_fin_timeout": "60",
    "fs.file-max": "2466177",
    "fs.nr_open": "1048576",
    "net.core.netdev_max_backlog": "1000",
}


def limits(changes=None, nofile=(65536, 65536)):
    values = {**DEFAULTS, **(changes or {})}
    return {i["name"]: i for i in doctor.assess_limits(values, nofile)}


def test_every_limit_has_name_value_status_advice():
    items = limits()
    expected = set(DEFAULTS) - {"net.ipv4.tcp_syn_linear_timeouts", "net.ipv4.tcp_rto_max_ms"}
    assert set(items) == expected | {"RLIMIT_NOFILE"}
    for item in items.values():
        assert item["status"] in ("ok", "warn", "info")
        assert item["advice"] and "\n" not in item["advice"]


def test_somaxconn_below_4096_warns_that_it_caps_the_backlog():
    item = limits({"net.core.somaxconn": "128"})["net.core.somaxconn"]
    assert item["status"] == "warn" and "capped at 128" in item["advice"]
    assert limits()["net.core.somaxconn"]["status"] == "ok"


def test_narrow_port_range_warns_with_the_rate():
    item = limits({"net.ipv4.ip_local_port_range": "60000 61000"})["net.ipv4.ip_local_port_range"]
    assert item["status"] == "warn"
    assert "only 1001 ephemeral ports" in item["advice"] and "about 17 new connections/s" in item["advice"]
    assert limits()["net.ipv4.ip_local_port_range"]["value"] == "32768 60999"


def test_syn_retries_advice_uses_linear_timeouts_when_present():
    assert "fails after 131 s" in limits()["net.ipv4.tcp_syn_retries"]["advice"]
    older = dict(DEFAULTS)
    del older["net.ipv4.tcp_syn_linear_timeouts"]
    item = {i["name"]: i for i in doctor.assess_limits(older, (65536, 65536))}["net.ipv4.tcp_syn_retries"]
    assert "fails after 127 s" in item["advice"] and "6 SYN retransmits" in item["advice"]


def test_nofile_soft_limit_below_4096_warns():
    item = limits(nofile=(1024, 524288))["RLIMIT_NOFILE"]
    assert item["status"] == "warn" and "ulimit -n 524288" in item["advice"]
    assert item["value"] == "1024 soft / 524288 hard"
    inf = resource.RLIM_INFINITY
    assert limits(nofile=(inf, inf))["RLIMIT_NOFILE"]["status"] == "ok"


def test_abort_on_overflow_and_syncookies():
    assert limits({"net.ipv4.tcp_abort_on_overflow": "1"})["net.ipv4.tcp_abort_on_overflow"]["status"] == "warn"
    assert limits({"net.ipv4.tcp_syncookies": "0"})["net.ipv4.tcp_syncookies"]["status"] == "warn"
    no_cookies_small = limits({"net.ipv4.tcp_syncookies": "0", "net.ipv4.tcp_max_syn_backlog": "128"})
    assert no_cookies_small["net.ipv4.tcp_max_syn_backlog"]["status"] == "warn"
    cookies_small = limits({"net.ipv4.tcp_max_syn_backlog": "128"})
    assert cookies_small["net.ipv4.tcp_max_syn_backlog"]["status"] == "info"


def test_missing_sysctls_are_left_out():
    items = doctor.assess_limits({}, (65536, 65536))
    assert [i["name"] for i in items] == ["RLIMIT_NOFILE"]


def test_read_sysctls_reads_proc_sys_layout(tmp_path):
    (tmp_path / "net" / "core").mkdir(parents=True)
    (tmp_path / "net" / "core" / "somaxconn").write_text("4096\n")
    (tmp_path / "fs").mkdir()
    (tmp_path / "fs" / "file-max").write_text("100\n")
    got = doctor.read_sysctls(["net.core.somaxconn", "fs.file-max", "net.ipv4.nope"], root=str(tmp_path))
    assert got == {"net.core.somaxconn": "4096", "fs.file-max": "100", "net.ipv4.nope": None}


# --- backend choice ----------------------------------------------------------------

MERGED = HeaderTree("/var/cache/connscope/kernel-tree/6.1.0-9-cloud-amd64", "6.1.0-9-cloud-amd64", False,
                    "generic Debian tree", "merged")


def make(*, kprobes=True, fentry=True, fentry_tested=True, tracepoints=True, bcc=True, btf=True,
         tree=MERGED, targets=KPROBE_TARGETS, root=True) -> Features:
    presence = {tp: tracepoints for tp in TRACEPOINTS}
    return Features(
        is_root=root,
        privileges=Feature(root, "root" if root else "uid 1000"),
        kernel_release="6.18.44-test",
        btf=Feature(btf, "/sys/kernel/btf/vmlinux" if btf else "no BTF"),
        headers=tree,
        bcc=Feature(bcc, "bcc 0.26.0" if bcc else "no bcc"),
        kprobes=Feature(kprobes, "kprobe PMU present" if kprobes else "CONFIG_KPROBES is off"),
        kprobe_targets={t: t in targets for t in KPROBE_TARGETS},
        fentry=Feature(fentry, "loaded" if fentry else (EPERM if fentry_tested else
                       "not tested: loading a test program needs root"), tested=fentry_tested),
        tracepoints=Feature(tracepoints, "all present" if tracepoints else "missing"),
        tracepoint_presence=presence,
        ringbuf=Feature(True, "ok"),
    )


def error(requested, features) -> str:
    with pytest.raises(BackendUnavailable) as e:
        choose_backend(requested, features)
    return str(e.value)


@pytest.mark.parametrize("kprobes", [True, False])
@pytest.mark.parametrize("fentry", [True, False])
@pytest.mark.parametrize("tracepoints", [True, False])
def test_auto_prefers_fentry_then_kprobe_then_tracepoint(kprobes, fentry, tracepoints):
    f = make(kprobes=kprobes, fentry=fentry, tracepoints=tracepoints)
    expected = "fentry" if fentry else "kprobe" if kprobes else "tracepoint" if tracepoints else None
    if expected is None:
        assert error("auto", f).startswith("no backend works here: fentry (BPF trampolines) does not load")
    else:
        assert choose_backend("auto", f) == expected
    for name, works in (("fentry", fentry), ("kprobe", kprobes), ("tracepoint", tracepoints)):
        if works:
            assert choose_backend(name, f) == name
        else:
            error(name, f)


@pytest.mark.parametrize("kprobes", [True, False])
@pytest.mark.parametrize("fentry", [True, False])
def test_auto_tries_every_usable_backend_in_order_and_a_named_one_alone(kprobes, fentry):
    from tracer.probes.features import backends_to_try

    f = make(kprobes=kprobes, fentry=fentry)
    assert backends_to_try("auto", f) == [b for b, ok in (
        ("fentry", fentry), ("kprobe", kprobes), ("tracepoint", True)) if ok]
    assert backends_to_try("tracepoint", f) == ["tracepoint"]
    if kprobes:
        assert backends_to_try("kprobe", f) == ["kprobe"]


def test_explicit_kprobe_without_kprobes():
    f = make(kprobes=False, fentry=False)
    f.kprobes = Feature(False, "CONFIG_KPROBES is off")
    assert error("kprobe", f) == ("kprobes are not available on this kernel (CONFIG_KPROBES is off); "
                                  "use --backend tracepoint")
    f.fentry = Feature(True, "loaded")
    assert error("kprobe", f) == ("kprobes are not available on this kernel (CONFIG_KPROBES is off); "
                                  "use --backend tracepoint or --backend fentry")


def test_explicit_fentry_that_does_not_load():
    assert error("fentry", make(fentry=False, kprobes=False)) == (
        f"fentry (BPF trampolines) does not load on this kernel: {EPERM}; use --backend tracepoint")
    assert error("fentry", make(fentry=False, kprobes=True)) == (
        f"fentry (BPF trampolines) does not load on this kernel: {EPERM}; "
        f"use --backend tracepoint or --backend kprobe")
    assert error("fentry", make(fentry=False, kprobes=True, tracepoints=False)) == (
        f"fentry (BPF trampolines) does not load on this kernel: {EPERM}; use --backend kprobe")
    assert error("fentry", make(fentry=False, kprobes=False, tracepoints=False)) == (
        f"fentry (BPF trampolines) does not load on this kernel: {EPERM}")


def test_untested_fentry_is_not_picked_and_says_why():
    f = make(fentry=False, fentry_tested=False, kprobes=False, root=False)
    assert choose_backend("auto", f) == "tracepoint"
    assert error("fentry", f) == "fentry (BPF trampolines) could not be tested: loading a test program needs root"


def test_kprobe_with_a_hooked_function_missing():
    f = make(fentry=False, targets=[t for t in KPROBE_TARGETS if t != "inet_csk_accept"])
    assert choose_backend("auto", f) == "tracepoint"
    assert error("kprobe", f) == ("the kprobe backend hooks inet_csk_accept, which /proc/kallsyms does not "
                                  "list (inlined or renamed in this kernel); use --backend tracepoint")
    # IPv6 functions are optional: a kernel without IPv6 still gets kprobes.
    f = make(fentry=False, targets=[t for t in KPROBE_TARGETS if "v6" not in t])
    assert choose_backend("auto", f) == "kprobe"
    assert any("cannot hook tcp_v6_connect, tcp_v6_syn_recv_sock" in line
               for line in backend_visibility("kprobe", f))


def test_explicit_tracepoint_without_the_tracepoint():
    assert error("tracepoint", make(tracepoints=False, kprobes=False, fentry=False)) == (
        "the tracepoint backend needs the sock/inet_sock_set_state, tcp/tcp_retransmit_skb, "
        "tcp/tcp_retransmit_synack, tcp/tcp_destroy_sock tracepoints, which this kernel does "
        "not have (it needs Linux 4.16 or newer)")


@pytest.mark.parametrize("requested", ["auto", "fentry", "kprobe", "tracepoint"])
def test_toolchain_problems_come_first(requested):
    assert error(requested, make(bcc=False)) == (
        "bcc is not installed: install python3-bpfcc (apt-get install python3-bpfcc)")
    assert error(requested, make(tree=HeaderTree(None, None, False, "none", "none"))) == (
        "no kernel headers for bcc to compile against: install linux-headers-6.18.44-test, or any "
        "linux-headers package when there is none for this kernel (struct offsets then come from BTF)")
    unmerged = HeaderTree(None, "6.1.0-9-cloud-amd64", False, "found but not merged", "unmerged")
    assert error(requested, make(tree=unmerged)) == (
        "the kernel headers found (6.1.0-9-cloud-amd64) must be merged into connscope's cache first: "
        "run as root")
    assert error(requested, make(btf=False)) == (
        "this kernel has no BTF and the installed headers are for 6.1.0-9-cloud-amd64, not "
        "6.18.44-test: struct offsets cannot be known; install linux-headers-6.18.44-test")


def test_no_btf_is_fine_with_the_kernels_own_headers():
    own = HeaderTree("/lib/modules/6.18.44-test/build", "6.18.44-test", True, "running", "running")
    assert choose_backend("auto", make(btf=False, tree=own)) == "fentry"


def test_unknown_backend():
    assert error("ebpf", make()) == "unknown backend 'ebpf': choose one of auto, fentry, kprobe, tracepoint"


def test_auto_reason_names_what_was_passed_over():
    assert auto_reason(make(fentry=False, kprobes=False)) == (
        f"tracepoint (fentry: {EPERM}; kprobe: CONFIG_KPROBES is off)")
    assert auto_reason(make()) == "fentry: works here and costs least per event"
    assert auto_reason(make(bcc=False)).startswith("nothing: bcc is not installed")


def test_visibility_per_backend():
    f = make(fentry=False, kprobes=False)
    tp = backend_visibility("tracepoint", f)
    assert any(line.startswith("accept-queue drops: ACK-time drops at skb:kfree_skb") for line in tp)
    assert any("syscalls:sys_{enter,exit}_accept" in line for line in tp)
    assert not any(line.startswith("not usable here") for line in tp)
    kp = backend_visibility("kprobe", f)
    assert kp[0] == "not usable here: kprobes are not available on this kernel (CONFIG_KPROBES is off)"
    assert any(line.startswith("hooks tcp_v4_connect, tcp_v6_connect, inet_csk_accept, tcp_conn_request, "
                               "tcp_v4_syn_recv_sock") for line in kp)
    missing = replace(f, tracepoint_presence={**f.tracepoint_presence, "tcp/tcp_retransmit_skb": False})
    assert "SYN retransmits: not seen (no tcp:tcp_retransmit_skb)" in backend_visibility("tracepoint", missing)


# --- the report -----------------------------------------------------------------------

def report(features: Features) -> dict:
    return doctor.collect(features, sysctls=DEFAULTS, nofile=(1024, 4096))


def test_report_is_json_serializable_and_round_trips():
    r = report(make(fentry=False, kprobes=False))
    assert json.loads(json.dumps(r)) == r
    assert r["backend"]["auto"] == "tracepoint" and r["backend"]["error"] is None
    assert set(r["visibility"]) == {"fentry", "kprobe", "tracepoint"}


def test_render_text_has_every_section():
    f = make(fentry=False, kprobes=False)
    f.kprobes = Feature(False, "CONFIG_KPROBES is off")
    text = doctor.render_text(report(f))
    for needle in ("Host", "privileges", "BTF", "headers", "bcc", "kprobes", "fentry", "tracepoints",
                   "ring buffer", "Backend", "--backend auto picks tracepoint", "  fentry:", "  kprobe:",
                   "  tracepoint:", "Limits for 1,000 concurrent users", "CONFIG_KPROBES is off", EPERM):
        assert needle in text, needle
    for name in list(DEFAULTS)[:3] + ["RLIMIT_NOFILE", "fs.nr_open"]:
        assert name in text
    assert "warn RLIMIT_NOFILE = 1024 soft / 4096 hard" in text
    assert "not root" not in text


def test_render_text_says_what_root_would_add():
    f = make(fentry=False, fentry_tested=False, root=False)
    text = doctor.render_text(report(f))
    assert "not root: run as root to probe fentry and the ring buffer by loading a test program" in text
    assert "fentry       ?   not tested: loading a test program needs root" in text


def test_render_text_when_nothing_works():
    f = make(bcc=False, tree=HeaderTree(None, None, False, "none", "none"))
    r = report(f)
    assert r["backend"]["auto"] is None and r["backend"]["error"].startswith("bcc is not installed")
    text = doctor.render_text(r)
    assert "headers      no  none: install linux-headers-$(uname -r)" in text
    assert "--backend auto picks nothing: bcc is not installed" in text


# --- header trees (fake /usr/src and /lib/modules) ----------------------------------------

def fake_debian_headers(src, abi: str, flavour: str = "cloud-amd64"):
    common = src / f"linux-headers-{abi}-common"
    arch = src / f"linux-headers-{abi}-{flavour}"
    (common / "include" / "linux").mkdir(parents=True)
    (common / "include" / "linux" / "kconfig.h").write_text("/* kconfig */\n")
    (common / "include" / "linux" / "tcp.h").write_text("/* common tcp.h */\n")
    (common / "Makefile").write_text("# common\n")
    (arch / "include" / "generated").mkdir(parents=True)
    (arch / "include" / "generated" / "utsrelease.h").write_text(f'#define UTS_RELEASE "{abi}-{flavour}"\n')
    (arch / "Makefile").write_text(f"include {common}/Makefile\n")
    (arch / "arch" / "x86" / "include" / "generated").mkdir(parents=True)
    (arch / "arch" / "x86" / "include" / "generated" / "asm.h").write_text("/* arch */\n")
    return arch, common


def find(tmp_path, release="6.18.0-test", **kw):
    return headers.find_header_tree(release, str(tmp_path / "cache"), modules_dir=str(tmp_path / "modules"),
                                    usr_src=str(tmp_path / "src"), kheaders=str(tmp_path / "kheaders.tar.xz"),
                                    **kw)


def test_no_headers_anywhere(tmp_path):
    tree = find(tmp_path)
    assert tree == HeaderTree(None, None, False, "none", "none")
    assert headers.bcc_environment(tree) == {}


def test_debian_split_headers_are_merged_once(tmp_path):
    arch, common = fake_debian_headers(tmp_path / "src", "6.1.0-9")
    tree = find(tmp_path)
    merged = tmp_path / "cache" / "6.1.0-9-cloud-amd64"
    assert tree.path == str(merged) and tree.kind == "merged"
    assert tree.version == "6.1.0-9-cloud-amd64" and not tree.matches_running_kernel
    assert tree.how == f"generic Debian tree 6.1.0-9-cloud-amd64 merged at {merged}; struct offsets from BTF"
    # Both halves are reachable through the one directory bcc is given.
    assert (merged / "include" / "linux" / "kconfig.h").read_text() == "/* kconfig */\n"
    assert (merged / "arch" / "x86" / "include" / "generated" / "asm.h").read_text() == "/* arch */\n"
    assert os.path.islink(merged / "include" / "linux" / "tcp.h")
    assert headers.bcc_environment(tree) == {"BCC_KERNEL_SOURCE": str(merged)}
    assert [p for p in os.listdir(tmp_path / "cache") if p.startswith(".")] == []  # no temp dirs left
    # Reused as is: same inode.
    inode = os.stat(merged).st_ino
    assert find(tmp_path).path == str(merged) and os.stat(merged).st_ino == inode
    # A package upgrade (new mtime) rebuilds it.
    os.utime(arch / "include" / "generated" / "utsrelease.h", (1, 1))
    assert find(tmp_path).path == str(merged)
    assert os.stat(merged).st_ino != inode
    assert sorted(os.listdir(tmp_path / "cache")) == ["6.1.0-9-cloud-amd64"]


def test_newest_tree_wins_unless_one_matches_the_kernel(tmp_path):
    fake_debian_headers(tmp_path / "src", "6.1.0-9")
    fake_debian_headers(tmp_path / "src", "6.1.0-10")
    assert find(tmp_path).version == "6.1.0-10-cloud-amd64"
    tree = find(tmp_path, release="6.1.0-9-cloud-amd64")
    assert tree.version == "6.1.0-9-cloud-amd64" and tree.matches_running_kernel
    assert tree.how.startswith("running kernel's Debian tree 6.1.0-9-cloud-amd64 merged at")


def test_running_kernels_own_build_dir_is_preferred(tmp_path):
    arch, common = fake_debian_headers(tmp_path / "src", "6.1.0-9")
    mod = tmp_path / "modules" / "6.1.0-9-cloud-amd64"
    mod.mkdir(parents=True)
    os.symlink(arch, mod / "build")
    os.symlink(common, mod / "source")
    tree = find(tmp_path, release="6.1.0-9-cloud-amd64")
    assert tree.kind == "running" and tree.matches_running_kernel
    assert tree.how == f"running kernel's headers at {mod / 'build'}"
    assert headers.bcc_environment(tree) == {}
    assert not (tmp_path / "cache").exists()


def test_kheaders_when_no_build_dir(tmp_path):
    fake_debian_headers(tmp_path / "src", "6.1.0-9")
    (tmp_path / "kheaders.tar.xz").write_bytes(b"xz")
    tree = find(tmp_path)
    assert tree.kind == "kheaders" and tree.matches_running_kernel


def test_unwritable_cache_reports_unmerged(tmp_path):
    fake_debian_headers(tmp_path / "src", "6.1.0-9")
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    tree = headers.find_header_tree("6.18.0-test", str(tmp_path / "cache" / "tree"),
                                    modules_dir=str(tmp_path / "modules"), usr_src=str(tmp_path / "src"),
                                    kheaders=str(tmp_path / "none"))
    assert tree.path is None and tree.kind == "unmerged" and tree.version == "6.1.0-9-cloud-amd64"
    assert tree.how.endswith(f"{tmp_path / 'cache'} is not a directory")


def test_version_key_orders_numbers_numerically():
    assert sorted(["6.1.0-10", "6.1.0-9", "5.10.0-30"], key=headers.version_key) == \
        ["5.10.0-30", "6.1.0-9", "6.1.0-10"]


def test_mounted_fstypes_parses_proc_mounts(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("nodev /sys/kernel/tracing tracefs rw 0 0\n"
                      "nodev /sys/kernel/debug debugfs rw 0 0\n"
                      "/dev/x /mnt/with\\040space ext4 rw 0 0\n")
    assert headers.mounted_fstypes(str(mounts)) == {
        "/sys/kernel/tracing": "tracefs", "/sys/kernel/debug": "debugfs", "/mnt/with space": "ext4"}


# --- what is exact here: the tracepoint backend's drop split by kernel ---------------

from tracer.blind_spots import DropReasons, blind_spots, drop_reasons_from_btf  # noqa: E402
from tracer.probes.btf import BTF  # noqa: E402

from tests.unit.btf_builder import BTFBuilder  # noqa: E402

NEW = DropReasons(rx_sk=True, listen_overflow=40)          # 6.15+
NO_REASON = DropReasons(rx_sk=True, listen_overflow=None)  # 6.11-6.14
OLD = DropReasons(rx_sk=False, listen_overflow=None)       # before 6.11
UNKNOWN = DropReasons(rx_sk=None, listen_overflow=None)    # no BTF


def doctor_text(features: Features, reasons: DropReasons) -> str:
    return doctor.render_text(doctor.collect(features, sysctls=DEFAULTS, nofile=(1024, 4096),
                                             drop_reasons=reasons))


def section(text: str, backend: str) -> str:
    head = f"What is exact here with --backend {backend}"
    start = text.index(head)
    return text[start:text.index("\n\n", start)]


def test_doctor_says_the_drop_split_is_exact_on_a_kernel_with_both():
    text = doctor_text(make(fentry=False, kprobes=False), NEW)
    s = section(text, "tracepoint")
    assert "(what auto picks)" in s.splitlines()[0]
    assert ("exact     accept-queue drops split into drops (ACK time) and syn_drops: kernel "
            "6.18.44-test has skb:kfree_skb rx_sk and reason TCP_LISTEN_OVERFLOW (= 40)") in s
    assert "NOT exact accept-queue drops" not in s
    assert "unseen    accepts made through io_uring or inside the kernel" in s


@pytest.mark.parametrize("reasons, lacks", [
    (OLD, "lacks skb:kfree_skb rx_sk (6.11+) and drop reason TCP_LISTEN_OVERFLOW (6.15+)"),
    (NO_REASON, "lacks drop reason TCP_LISTEN_OVERFLOW (6.15+)"),
])
def test_doctor_says_the_split_is_not_exact_on_older_kernels(reasons, lacks):
    text = doctor_text(make(fentry=False, kprobes=False), reasons)
    s = section(text, "tracepoint")
    line = next(l for l in s.splitlines() if l.startswith("  NOT exact accept-queue drops"))
    assert lacks in line
    assert "every listener drop is reported as syn_drops (drops stays 0)" in line
    assert "each ACK-time overflow is counted twice" in line
    assert "exact     accept-queue drops split" not in s


def test_doctor_unknown_split_without_btf():
    s = section(doctor_text(make(fentry=False, kprobes=False, btf=False), UNKNOWN), "tracepoint")
    assert "unknown   accept-queue drop split: no kernel BTF" in s


def test_doctor_with_kprobes_shows_both_cases():
    """auto picks fentry: its exactness first, then the tracepoint backend's for this kernel."""
    text = doctor_text(make(), OLD)
    f = section(text, "fentry")
    assert "(what auto picks)" in f.splitlines()[0]
    assert "NOT exact accept-queue drops, ACK-time (drops) and SYN-time (syn_drops)" in f
    assert "rare race" in f
    assert "also io_uring and in-kernel accepts" in f
    t = section(text, "tracepoint")
    assert "(what auto picks)" not in t and "NOT exact accept-queue drops" in t


def test_blind_spots_of_the_running_backend():
    assert blind_spots("kprobe", False) == ()
    exact = blind_spots("tracepoint", True)
    assert not any("drop split" in s for s in exact)
    assert any("io_uring" in s for s in exact)
    old = blind_spots("tracepoint", False)
    assert old[0].startswith("drop split (needs kernel 6.15+)") and "count twice" in old[0]
    assert blind_spots("tracepoint", None)[0].startswith("drop split unknown")


def _btf(rx_sk: bool, reason: bool) -> BTF:
    b = BTFBuilder()
    u64 = b.int("long long unsigned int", 8)
    ptr = b.ref("PTR", 0)
    members = [("skbaddr", ptr, 64), ("location", ptr, 128)]
    if rx_sk:
        members.append(("rx_sk", ptr, 192))
    b.struct("trace_event_raw_kfree_skb", 40, members + [("protocol", u64, 256)])
    values = {"SKB_NOT_DROPPED_YET": 0, "SKB_DROP_REASON_NO_SOCKET": 3}
    if reason:
        values["SKB_DROP_REASON_TCP_LISTEN_OVERFLOW"] = 40
    b.enum("skb_drop_reason", values)
    return BTF.from_bytes(b.build())


@pytest.mark.parametrize("rx_sk, reason, expected", [
    (True, True, NEW), (True, False, NO_REASON), (False, False, OLD),
    (False, True, DropReasons(False, 40)),
])
def test_drop_reasons_read_from_btf(rx_sk, reason, expected):
    got = drop_reasons_from_btf(_btf(rx_sk, reason))
    assert got == expected
    assert got.split_exact == (rx_sk and reason)
    assert drop_reasons_from_btf(None) == UNKNOWN


@pytest.mark.parametrize("split, first", [
    (True, "accept() seen through syscall tracepoints"),
    (False, "drop split (needs kernel 6.15+)"),
])
def test_the_live_header_carries_the_running_backends_blind_spots(split, first):
    """What `top` shows in its status line and under `?`: from the session
    that was loaded (whether the drop-reason program went in), plus its notes."""
    from types import SimpleNamespace

    from tracer.filters import Filters
    from tracer.probes.session import LoadInfo
    from tracer.run import header_for

    info = LoadInfo("tracepoint", "ring buffer", "BTF", "generic", 0.1, notes=["a note"],
                    drop_split=split)
    h = header_for(SimpleNamespace(info=info), filters=Filters.build(ports=[443]))
    assert h.blind_spots[0].startswith(first)
    assert h.blind_spots[-1] == "a note"
    assert any("io_uring" in s for s in h.blind_spots)
    assert h.filters == "port 443"
    kp = header_for(SimpleNamespace(info=LoadInfo("kprobe", "ring buffer", "BTF", "", 0.1)))
    assert kp.blind_spots == () and kp.filters == ""


# --- tracepoint records, from the kernel's own format files ---------------------------

# tcp:tcp_destroy_sock cut down: no dport (as a kernel without it would record it)
DESTROY_WITHOUT_DPORT = """name: tcp_destroy_sock
ID: 1405
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:20;\tsize:4;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:44;\tsize:16;\tsigned:0;

print fmt: "sport=%hu", REC->sport
"""


def test_format_fields_reads_names_arrays_and_pointers():
    from tracer.probes.features import format_fields

    assert format_fields(DESTROY_WITHOUT_DPORT) == {"common_type", "common_pid", "skaddr",
                                                    "sport", "saddr", "daddr_v6"}


def tracefs_with(tmp_path, formats: dict[str, str]) -> str:
    for tp, text in formats.items():
        d = tmp_path / "events" / tp
        d.mkdir(parents=True)
        (d / "format").write_text(text)
    return str(tmp_path)


def test_missing_fields_names_what_the_record_lacks(tmp_path):
    from tracer.probes.features import HOOKED_TRACEPOINTS, missing_fields

    root = tracefs_with(tmp_path, {"tcp/tcp_destroy_sock": DESTROY_WITHOUT_DPORT})
    assert missing_fields(root, HOOKED_TRACEPOINTS) == {"tcp/tcp_destroy_sock": ["dport"]}


def test_a_hooked_record_without_a_field_read_rules_out_every_backend():
    f = make()
    f.tracepoint_fields_missing = {"tcp/tcp_destroy_sock": ["dport"]}
    why = ("this kernel's tracepoint records lack fields every backend reads "
           "(tcp:tcp_destroy_sock has no dport, by its format files): connscope cannot trace here")
    for backend in ("fentry", "kprobe", "tracepoint"):
        assert error(backend, f) == why
    assert error("auto", f).startswith("no backend works here: " + why)


def test_without_syscall_tracepoints_only_the_tracepoint_backend_is_out():
    f = make()
    f.tracepoint_presence = {**f.tracepoint_presence, "syscalls/sys_exit_accept4": False}
    assert error("tracepoint", f).startswith(
        "the tracepoint backend sees accept() through syscalls/sys_exit_accept4, which this "
        "kernel lacks or records without the fields read (CONFIG_FTRACE_SYSCALLS)")
    assert choose_backend("auto", f) == "fentry"


def test_kprobe_and_fentry_drops_are_not_claimed_exact():
    """A kprobe run the kernel skips loses its drop, and nothing counts it yet;
    fentry tells a SYN-time drop by the listener's sk_drops, which another CPU
    can move during the call (842 counted against 841 once)."""
    from tracer.blind_spots import exactness

    k = dict((text.split(",")[0], (status, text)) for status, text in exactness("kprobe", OLD))
    f = dict((text.split(",")[0], (status, text)) for status, text in exactness("fentry", OLD))
    assert k["accept-queue drops"][0] == "NOT exact" and "skips" in k["accept-queue drops"][1]
    assert f["accept-queue drops"][0] == "NOT exact" and "rare race" in f["accept-queue drops"][1]
