"""probe_features() and choose_backend() against the real kernel.

Each assertion compares what connscope reports with what the kernel does
when asked directly (attach a kprobe, load an fentry program, create a ring
buffer, read tracefs), so the same tests hold on this host (no kprobes,
fentry refused) and on a Debian 6.1 guest where both work.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tracer import doctor
from tracer.probes import headers
from tracer.probes.features import (
    BackendUnavailable, TRACEPOINTS, KPROBE_TARGETS, choose_backend, kernel_config, probe_features,
)

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
BCC_TRACING_EVENTS = "/sys/kernel/debug/tracing/events"  # where bcc 0.26 reads formats

if os.geteuid() != 0:
    pytest.skip("needs root: loads BPF programs and mounts tracefs", allow_module_level=True)


def _bcc_load(text: str, tree) -> tuple[bool, str]:
    """Compile, load and auto-attach `text` with bcc; (worked, error message)."""
    from bcc import BPF

    saved = dict(os.environ)
    os.environ.update(headers.bcc_environment(tree))
    try:
        b = BPF(text=text.encode())
    except Exception as e:  # bcc raises bare Exception
        return False, str(e)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    b.cleanup()
    return True, ""


@pytest.fixture(scope="module")
def features():
    return probe_features(load_tests=True)


@pytest.fixture(scope="module")
def truth(features):
    """What the kernel does when asked directly. One compile each (slow under TCG)."""
    tree = features.headers
    assert tree.path is not None, f"no header tree to compile the ground-truth programs: {tree.how}"
    kprobe = _bcc_load("int kprobe__tcp_v4_connect(void *ctx) { return 0; }", tree)
    # fexit rather than the fentry program connscope loads: same mechanism, other code.
    fentry = _bcc_load("KRETFUNC_PROBE(tcp_v4_connect, void *sk, int ret) { return 0; }", tree)
    tracepoint = _bcc_load("TRACEPOINT_PROBE(sock, inet_sock_set_state) { return args->protocol == 0; }", tree)
    ringbuf = _bcc_load("BPF_RINGBUF_OUTPUT(rb, 1);", tree)
    return {"kprobe": kprobe, "fentry": fentry, "tracepoint": tracepoint, "ringbuf": ringbuf}


def test_btf_matches_sysfs(features):
    assert features.btf.ok == os.path.isfile("/sys/kernel/btf/vmlinux")


def test_kprobes_match_an_attach_attempt(features, truth):
    attached, error = truth["kprobe"]
    assert features.kprobes.ok == attached, (features.kprobes, error)
    config = kernel_config(os.uname().release)
    if not attached and config is not None and config.get("CONFIG_KPROBES") == "n":
        assert features.kprobes.detail == "CONFIG_KPROBES is off"
    # bcc's two ways to attach: the kprobe PMU, or kprobe_events in tracefs.
    has_interface = (os.path.isdir("/sys/bus/event_source/devices/kprobe")
                     or os.path.exists("/sys/kernel/tracing/kprobe_events"))
    assert has_interface == attached


def test_kprobe_targets_match_kallsyms(features):
    text = Path("/proc/kallsyms").read_text()
    for name in KPROBE_TARGETS:
        listed = f" {name}\n" in text or f" {name}\t" in text
        assert features.kprobe_targets[name] == listed, name


def test_fentry_matches_a_load_attempt(features, truth):
    loaded, error = truth["fentry"]
    assert features.fentry.tested
    assert features.fentry.ok == loaded, (features.fentry, error)
    if not loaded and "super-user" in error:  # bcc's wording for EPERM
        assert features.fentry.detail.startswith("EPERM (Operation not permitted)")


def test_the_shared_hooks_are_btf_tracepoints_wherever_a_tp_btf_program_loads(features,
                                                                              probe_session):
    """Every kernel the tests run on (5.10, 6.1, 6.12, 6.18) loads the
    features' test tp_btf program: there connscope's own BTF hooks must load
    too, not fall back to raw ones (which would work, and hide a verifier
    refusal behind a note)."""
    if features.tracepoint_hooks != "btf":
        pytest.skip(f"the shared tracepoints are not hooked as BTF ones here: "
                    f"{features.tracepoint_hooks_why}")
    why = probe_session.info.tracepoint_hooks
    assert why.startswith("BTF tracepoints (tp_btf"), why
    from tracer.probes import bpf_syscall as sc
    types = {name: int.from_bytes(sc.obj_info(fd)[0:4], "little")
             for name, fd in probe_session._prog.prog_fds.items()}
    for event in ("inet_sock_set_state", "tcp_retransmit_skb", "tcp_retransmit_synack",
                  "tcp_destroy_sock"):
        assert types[f"tp_btf__{event}"] == sc.PROG_TRACING


def test_tracepoints_match_tracefs(features, truth):
    for tp in TRACEPOINTS:
        exists = os.path.isfile(os.path.join(BCC_TRACING_EVENTS, tp, "format"))
        assert features.tracepoint_presence[tp] == exists, tp
    attached, error = truth["tracepoint"]
    assert features.tracepoints.ok == attached, (features.tracepoints, error)
    if attached:    # it compiled and attached: no field it reads can be missing
        assert features.tracepoint_fields_missing == {}


def test_header_tree_is_what_bcc_compiled_against(features, truth):
    tree = features.headers
    release = os.uname().release
    assert tree.matches_running_kernel == (tree.version == release)
    if tree.kind == "merged":
        assert tree.path == os.path.join(headers.DEFAULT_CACHE_DIR, tree.version)
        assert headers.read_utsrelease(tree.path) == tree.version
        assert not tree.matches_running_kernel or tree.version == release
        assert "struct offsets from BTF" in tree.how or tree.matches_running_kernel
    # The tracepoint program above compiled against this tree.
    assert truth["tracepoint"][0], truth["tracepoint"][1]


def test_ringbuf_matches_a_map_create(features, truth):
    created, error = truth["ringbuf"]
    assert features.ringbuf.tested
    assert features.ringbuf.ok == created, (features.ringbuf, error)


def test_auto_picks_the_first_backend_that_works(features, truth):
    targets_ok = all(features.kprobe_targets[n] for n in ("tcp_v4_connect", "inet_csk_accept",
                                                          "tcp_conn_request", "tcp_v4_syn_recv_sock"))
    works = {"fentry": truth["fentry"][0], "kprobe": truth["kprobe"][0] and targets_ok,
             "tracepoint": truth["tracepoint"][0]}
    expected = next(b for b in ("fentry", "kprobe", "tracepoint") if works[b])
    assert choose_backend("auto", features) == expected


def test_explicit_kprobe(features, truth):
    if truth["kprobe"][0]:
        assert choose_backend("kprobe", features) == "kprobe"
        return
    with pytest.raises(BackendUnavailable) as e:
        choose_backend("kprobe", features)
    alternatives = " or --backend fentry" if truth["fentry"][0] else ""
    assert str(e.value) == (f"kprobes are not available on this kernel ({features.kprobes.detail}); "
                            f"use --backend tracepoint{alternatives}")
    config = kernel_config(os.uname().release)
    if config is not None and config.get("CONFIG_KPROBES") == "n" and not truth["fentry"][0]:
        assert str(e.value) == ("kprobes are not available on this kernel (CONFIG_KPROBES is off); "
                                "use --backend tracepoint")


def test_explicit_fentry(features, truth):
    if truth["fentry"][0]:
        assert choose_backend("fentry", features) == "fentry"
        return
    with pytest.raises(BackendUnavailable) as e:
        choose_backend("fentry", features)
    assert str(e.value).startswith(f"fentry (BPF trampolines) does not load on this kernel: "
                                   f"{features.fentry.detail}; use --backend tracepoint")


def test_doctor_report_on_this_host(features):
    report = doctor.collect(features)
    assert json.loads(json.dumps(report)) == report
    assert report["backend"]["auto"] == choose_backend("auto", features)
    text = doctor.render_text(report)
    assert f"--backend auto picks {report['backend']['auto']}" in text
    assert "Limits for 1,000 concurrent users" in text
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert f"net.core.somaxconn = {somaxconn}" in text


def test_ensure_tracefs_mounts_what_is_missing():
    # A private mount namespace: the host's mounts are untouched.
    script = textwrap.dedent("""
        import json, subprocess
        from tracer.probes import headers
        for target in ("/sys/kernel/debug/tracing", "/sys/kernel/debug", "/sys/kernel/tracing"):
            subprocess.run(["umount", target], stderr=subprocess.DEVNULL)
        before = headers.mounted_fstypes()
        headers.ensure_tracefs()
        headers.ensure_tracefs()  # idempotent
        after = headers.mounted_fstypes()
        import os
        print(json.dumps({"before": before, "after": after,
                          "formats": os.path.isfile("/sys/kernel/debug/tracing/events/sock/inet_sock_set_state/format")}))
    """)
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert "/sys/kernel/tracing" not in got["before"] and "/sys/kernel/debug" not in got["before"]
    assert got["after"]["/sys/kernel/tracing"] == "tracefs"
    assert got["after"]["/sys/kernel/debug"] == "debugfs"
    assert got["formats"]
    assert headers.mounted_fstypes().get("/sys/kernel/tracing") == "tracefs"  # host unchanged


SYN_TIMEOUT_SCRIPT = textwrap.dedent("""
    import errno, json, os, socket, subprocess, sys, time
    retries, linear = int(sys.argv[1]), int(sys.argv[2])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/tcp_syn_retries", "w") as f:
        f.write(str(retries))
    linear_path = "/proc/sys/net/ipv4/tcp_syn_linear_timeouts"
    if os.path.exists(linear_path):
        with open(linear_path, "w") as f:
            f.write(str(linear))
    else:
        linear = 0
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)                 # accept queue of one...
    first = socket.create_connection(srv.getsockname(), timeout=5)  # ...now full: later SYNs are dropped
    late = socket.socket()
    start = time.monotonic()
    try:
        late.connect(srv.getsockname())
        result = "connected"
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e.errno))
    print(json.dumps({"seconds": time.monotonic() - start, "result": result, "linear": linear}))
""")


def test_syn_timeout_arithmetic_matches_the_kernel():
    # Two private network namespaces, run side by side; each connect() is
    # dropped at a full accept queue until the kernel gives up.
    cases = [(1, 1), (1, 0)]
    procs = [subprocess.Popen(["unshare", "--net", sys.executable, "-c", SYN_TIMEOUT_SCRIPT, str(r), str(lin)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, lin in cases]
    for (retries, _), proc in zip(cases, procs):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        got = json.loads(out)
        expected = doctor.syn_timeout_seconds(retries, got["linear"])
        assert got["result"] == "ETIMEDOUT"
        assert expected - 0.05 <= got["seconds"] <= expected + 0.75, (got, expected)


def test_kretprobe_events_left_by_a_killed_connscope_are_removed(probe_session):
    """kill -9 skips close(), which would leave connscope's kretprobe (made
    through kprobe_events for its maxactive) behind; the next start removes
    those of dead processes, and close() its own."""
    from tracer.filters import Filters
    from tracer.probes import loader, program, startup

    if probe_session.info.backend != "kprobe":
        pytest.skip(f"kprobe_events entries are made only by the kprobe backend "
                    f"(this run: {probe_session.info.backend})")
    path = Path(loader.tracefs_root()) / "kprobe_events"
    dead = next(p for p in range(4_000_000, 4_100_000) if not os.path.exists(f"/proc/{p}"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"r:connscope_{dead}/kretp_inet_csk_accept_1 inet_csk_accept".encode())
    finally:
        os.close(fd)
    assert f"connscope_{dead}/" in path.read_text()
    session = startup.start("kprobe", Filters())
    try:
        text = path.read_text()
        assert f"connscope_{dead}/" not in text
        mine = [l for l in text.splitlines() if f"connscope_{os.getpid()}/" in l]
        per_session = len(program.KRETPROBES)
        assert len(mine) == 2 * per_session, text   # the fixture's session and this one
        assert all(l.startswith("r4096:") for l in mine), text
        assert not [n for n in session.info.notes if "maxactive" in n], session.info.notes
    finally:
        session.close()
    assert len([l for l in path.read_text().splitlines()
                if f"connscope_{os.getpid()}/" in l]) == per_session


def test_doctor_names_this_hosts_drop_split_case():
    """The real `connscope doctor`: its "What is exact here" for the tracepoint
    backend must match what this kernel's skb:kfree_skb tracepoint offers, read
    independently from its format file (the rx_sk field, and the drop reason
    TCP_LISTEN_OVERFLOW among the names it prints)."""
    import re
    import subprocess
    import sys

    fmt = Path("/sys/kernel/tracing/events/skb/kfree_skb/format").read_text()
    rx_sk = re.search(r"field:void \* rx_sk;", fmt) is not None
    m = re.search(r'\{ *(\d+), *"TCP_LISTEN_OVERFLOW" *\}', fmt)
    out = subprocess.run([sys.executable, "-m", "tracer", "doctor"], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    text = out.stdout
    start = text.index("What is exact here with --backend tracepoint")
    section = text[start:text.index("\n\n", start)]
    if rx_sk and m:
        assert (f"exact     accept-queue drops split into drops (ACK time) and syn_drops: kernel "
                f"{os.uname().release} has skb:kfree_skb rx_sk and reason TCP_LISTEN_OVERFLOW "
                f"(= {m.group(1)})") in section
        assert "NOT exact accept-queue drops:" not in section
    else:
        assert "NOT exact accept-queue drops:" in section
        assert "every listener drop is reported as syn_drops" in section
