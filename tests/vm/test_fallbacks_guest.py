"""The fallbacks, forced on a kernel that has everything (the Debian 6.1 test
guest): runs INSIDE the guest only.

Its checks are named check_*, so a pytest run on the host collects nothing
here; tests/vm/test_fallbacks.py boots the guest and runs them there with
`-o python_functions=check_*`, one JUnit testcase each. The test hooks
CONNSCOPE_HIDE_FUNCTIONS and CONNSCOPE_HIDE_FEATURES (tracer/probes/features.py)
make present things count as absent; each check asserts what doctor says,
then that tracing still works on what remains, against the kernel's own
counters and the sockets the check made. Each session costs one BPF compile
(10-20 s under TCG).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

PROJECT = Path(__file__).resolve().parents[2]
V6_HOOKS = ("tcp_v6_connect", "tcp_v6_syn_recv_sock")
HIDDEN_FUNCTIONS_NOTE = "CONNSCOPE_HIDE_FUNCTIONS (a test hook) makes tcp_v6_connect, tcp_v6_syn_recv_sock count as absent"


def doctor_json(env: dict[str, str]) -> dict:
    """`connscope doctor --json` as a user would run it, with the test hooks set."""
    proc = subprocess.run([sys.executable, "-m", "tracer", "doctor", "--json"], cwd=PROJECT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def kallsyms_has(name: str) -> bool:
    with open("/proc/kallsyms") as f:
        return any(line.split()[2] == name for line in f if len(line.split()) >= 3)


def listen_overflows() -> int:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            return dict(zip(head.split()[1:], map(int, values.split()[1:])))["ListenOverflows"]
    raise AssertionError("no TcpExt in /proc/net/netstat")


def traffic(session, family: int, addr: str) -> dict:
    """Against ground truth made here: one connect that is accepted, and SYNs
    dropped at a full accept queue (counted by the kernel's ListenOverflows).
    Returns what the session saw of it."""
    srv = socket.socket(family)
    srv.bind((addr, 0))
    srv.listen(0)                        # the queue is full with one connection
    port = srv.getsockname()[1]
    session.poll(0)
    cl = socket.socket(family)
    cl.connect((addr, port))
    sport = cl.getsockname()[1]
    conn, _ = srv.accept()
    queued = socket.create_connection((addr, port), timeout=5)   # fills the queue
    time.sleep(0.2)                      # its handshake is done on the listener's side too
    before = listen_overflows()
    late = []
    for _ in range(3):                   # dropped at SYN time; retransmits only after 1 s
        s = socket.socket(family)
        s.setblocking(False)
        s.connect_ex((addr, port))
        late.append(s)
    seen, deadline = [], time.monotonic() + 10
    while time.monotonic() < deadline:
        seen += session.poll(100)
        if any(getattr(e, "sport", None) == sport for e in seen) and \
                any(getattr(e, "rport", None) == sport for e in seen):
            break
    time.sleep(0.3)
    seen += session.poll(0)
    dropped = listen_overflows() - before
    counters = [c for c in session.listener_counters() if c.lport == port]
    for s in [cl, conn, queued, srv, *late]:
        s.close()
    return {
        "connects": [e for e in seen if getattr(e, "dport", None) == port and getattr(e, "sport", None) == sport],
        "accepts": [e for e in seen if getattr(e, "lport", None) == port and getattr(e, "rport", None) == sport],
        "kernel_syn_drops": dropped,
        "bpf_syn_drops": sum(c.syn_overflows for c in counters),
    }


def assert_traced(got: dict, family: int, *, drops: bool = True) -> None:
    [connect] = got["connects"]
    assert (connect.pid, connect.family, connect.outcome) == (os.getpid(), family, "established")
    [accept] = got["accepts"]
    assert accept.pid == os.getpid()
    if drops:
        assert got["kernel_syn_drops"] >= 3
        assert got["bpf_syn_drops"] == got["kernel_syn_drops"]


@pytest.fixture
def hide(monkeypatch):
    def set_env(**env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env
    return set_env


def start(backend: str):
    from tracer.filters import Filters
    from tracer.probes import startup

    return startup.start(backend, Filters())


# --- a hooked function is absent -------------------------------------------------

def check_doctor_lists_hidden_functions_as_missing(hide):
    env = hide(CONNSCOPE_HIDE_FUNCTIONS=",".join(V6_HOOKS))
    assert all(kallsyms_has(name) for name in V6_HOOKS)   # the hook alone hides them
    report = doctor_json(env)
    assert report["kprobes"]["missing_targets"] == list(V6_HOOKS)
    assert HIDDEN_FUNCTIONS_NOTE in report["notes"]
    # Optional functions: the fastest backend still works.
    assert report["backend"]["auto"] == "fentry"
    assert "cannot hook tcp_v6_connect, tcp_v6_syn_recv_sock: not in /proc/kallsyms (inlined or renamed)" \
        in report["visibility"]["kprobe"]


def check_doctor_without_a_required_function_falls_back_to_tracepoints(hide):
    env = hide(CONNSCOPE_HIDE_FUNCTIONS="tcp_conn_request")
    report = doctor_json(env)
    assert report["backend"]["auto"] == "tracepoint"
    assert report["backend"]["why"] == ("tracepoint (fentry: tcp_conn_request not in /proc/kallsyms; "
                                        "kprobe: tcp_conn_request not in /proc/kallsyms)")


@pytest.mark.parametrize("backend", ["kprobe", "fentry"])
def check_backend_without_ipv6_functions_traces_ipv4(hide, backend):
    hide(CONNSCOPE_HIDE_FUNCTIONS=",".join(V6_HOOKS))
    session = start(backend)
    try:
        assert session.info.backend == backend
        assert session.info.notes == [
            f"{backend} tcp_v6_connect not attached (hidden by CONNSCOPE_HIDE_FUNCTIONS); "
            "IPv6 connects are not traced",
            f"{backend} tcp_v6_syn_recv_sock not attached (hidden by CONNSCOPE_HIDE_FUNCTIONS); "
            "ACK-time accept-queue drops of IPv6 connections are not counted",
        ]
        assert_traced(traffic(session, socket.AF_INET, "127.0.0.1"), 4)
        # The IPv6 connect hook is really gone: the connect is made, not seen.
        # Accepts and SYN-time drops (inet_csk_accept, tcp_conn_request) are
        # shared by both families and still counted.
        v6 = traffic(session, socket.AF_INET6, "::1")
        assert v6["connects"] == []
        assert len(v6["accepts"]) == 1
        assert v6["bpf_syn_drops"] == v6["kernel_syn_drops"] >= 3
    finally:
        session.close()


# --- a whole mechanism is unavailable ----------------------------------------------

def check_without_fentry_auto_picks_kprobe_and_traces(hide):
    from tracer.probes.features import BackendUnavailable, choose_backend, probe_features

    assert probe_features(load_tests=True).fentry.ok   # the hook alone hides it
    env = hide(CONNSCOPE_HIDE_FEATURES="fentry")
    report = doctor_json(env)
    assert report["fentry"]["ok"] is False
    assert report["backend"]["auto"] == "kprobe"
    assert report["backend"]["why"] == "kprobe (fentry: hidden by CONNSCOPE_HIDE_FEATURES (a test hook))"
    assert "CONNSCOPE_HIDE_FEATURES (a test hook) makes fentry count as unavailable" in report["notes"]
    with pytest.raises(BackendUnavailable) as refused:
        choose_backend("fentry", probe_features(load_tests=True))
    assert str(refused.value) == ("fentry (BPF trampolines) is hidden by CONNSCOPE_HIDE_FEATURES "
                                  "(a test hook); use --backend tracepoint or --backend kprobe")
    session = start("auto")
    try:
        assert (session.info.backend, session.info.transport, session.info.notes) == \
            ("kprobe", "ring buffer", [])
        assert_traced(traffic(session, socket.AF_INET, "127.0.0.1"), 4)
        assert_traced(traffic(session, socket.AF_INET6, "::1"), 6)
    finally:
        session.close()


def check_without_fentry_kprobes_and_ringbuf_tracepoints_on_the_perf_buffer(hide):
    env = hide(CONNSCOPE_HIDE_FEATURES="fentry,kprobes,ringbuf")
    report = doctor_json(env)
    assert report["backend"]["auto"] == "tracepoint"
    assert report["backend"]["why"] == (
        "tracepoint (fentry: hidden by CONNSCOPE_HIDE_FEATURES (a test hook); "
        "kprobe: hidden by CONNSCOPE_HIDE_FEATURES (a test hook))")
    assert report["ringbuf"]["ok"] is False
    session = start("auto")
    try:
        assert (session.info.backend, session.info.transport) == ("tracepoint", "perf buffer")
        # Without kprobes, SYN-time drops are not seen in BPF (user space
        # reads them from sk_drops): only connects and accepts here.
        assert_traced(traffic(session, socket.AF_INET, "127.0.0.1"), 4, drops=False)
    finally:
        session.close()


# --- detection saw nothing wrong, the load failed anyway (issue 15 item 5) -------

FAILED_FENTRY = "fentry: cannot load the fentry programs: made to fail by CONNSCOPE_FAIL_LOAD (a test hook)"
FAILED_KPROBE = "kprobe: cannot load the kprobe programs: made to fail by CONNSCOPE_FAIL_LOAD (a test hook)"


def check_auto_falls_back_to_kprobe_when_fentry_fails_to_load(hide):
    hide(CONNSCOPE_FAIL_LOAD="fentry")
    session = start("auto")
    try:
        assert (session.info.backend, session.info.passed_over) == ("kprobe", [FAILED_FENTRY])
        assert_traced(traffic(session, socket.AF_INET, "127.0.0.1"), 4)
    finally:
        session.close()


def check_top_says_on_its_first_lines_which_backends_failed_to_load(hide):
    """As a user runs it: both better backends fail, tracepoint runs, and
    the output says so before anything else; asked for by name, a failing
    backend is an Error line, not a fallback."""
    env = {**os.environ, **hide(CONNSCOPE_FAIL_LOAD="fentry,kprobe")}
    proc = subprocess.run([sys.executable, "-m", "tracer", "top", "--plain", "--duration", "1"],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[:2] == [
        f"connscope: {FAILED_FENTRY}; running tracepoint instead",
        f"connscope: {FAILED_KPROBE}; running tracepoint instead"], proc.stderr
    assert proc.stdout.lstrip().split("\n", 1)[0].split()[1] == "[tracepoint]", proc.stdout
    asked = subprocess.run([sys.executable, "-m", "tracer", "top", "--plain", "--duration", "1",
                            "--backend", "kprobe"], cwd=PROJECT, env=env, capture_output=True,
                           text=True, timeout=180)
    assert asked.returncode != 0
    assert asked.stderr.strip() == f"Error: {FAILED_KPROBE.split(': ', 1)[1]}", asked.stderr
