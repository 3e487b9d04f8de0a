"""BTF (tp_btf), raw and classic tracepoint hooks see the same things: the
kinds loaded at once, on the same real connections (loopback, IPv4 and IPv6),
must report identical connects, accepts, closes and listener counters, with
the client's and server's own view as the ground truth for each. (Where the
kernel skipped runs of one for BPF recursion, which the kinds cause each
other, that one may have missed as many events and no more: counted, and then
only bounded.)"""
import errno
import os
import socket
import threading
import time

import pytest

from tracer.filters import Filters
from tracer.probes import bpf_syscall as sc
from tracer.probes import startup
from tracer.probes.btf import kernel_btf
from tracer.probes.features import CLASSIC_TRACEPOINTS_ENV, RAW_TRACEPOINTS_ENV, probe_features
from tracer.probes.offsets import kfree_skb_arg_positions

pytestmark = pytest.mark.kernel

CONNECTS = 20
BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_PROG_TYPE_TRACING = 5, 17, 26
SHARED = ("inet_sock_set_state", "tcp_retransmit_skb", "tcp_retransmit_synack", "tcp_destroy_sock")


def _requires_raw():
    f = probe_features(load_tests=False)
    if f.tracepoint_hooks == "classic":
        pytest.skip(f"this kernel gets classic tracepoint hooks: {f.tracepoint_hooks_why}")


def _btf_hooks_load() -> bool:
    """Whether this kernel loads tp_btf programs (the features' own test)."""
    return probe_features(load_tests=True).tracepoint_hooks == "btf"


@pytest.fixture
def kinds(monkeypatch):
    """{kind: session} of one backend: "btf" (where the kernel loads tp_btf
    programs: every kernel the tests run on), "raw" and "classic" (forced by
    their switches)."""
    _requires_raw()
    backend = os.environ.get("CONNSCOPE_TEST_BACKEND", "auto")
    monkeypatch.delenv(CLASSIC_TRACEPOINTS_ENV, raising=False)
    monkeypatch.delenv(RAW_TRACEPOINTS_ENV, raising=False)
    sessions = {}
    try:
        if _btf_hooks_load():
            sessions["btf"] = startup.start(backend, Filters())
        monkeypatch.setenv(RAW_TRACEPOINTS_ENV, "1")
        sessions["raw"] = startup.start(backend, Filters())
        monkeypatch.delenv(RAW_TRACEPOINTS_ENV)
        monkeypatch.setenv(CLASSIC_TRACEPOINTS_ENV, "1")
        sessions["classic"] = startup.start(backend, Filters())
        yield sessions
    finally:
        for s in sessions.values():
            s.close()


def _prog_types(session) -> dict[str, int]:
    out = {}
    for name, fd in session._prog.prog_fds.items():
        out[name] = int.from_bytes(sc.obj_info(fd)[0:4], "little")   # bpf_prog_info.type
    return out


def _drain(session, into: list, closes: list, until: float) -> None:
    while time.monotonic() < until:
        into.extend(session.poll(50))
        closes.append(session.take_closes())


def _serve(listener: socket.socket, n: int, accepted: list) -> None:
    for _ in range(n):
        conn, peer = listener.accept()
        accepted.append((conn.getsockname()[1], peer[1]))
        conn.close()


def test_the_shared_hooks_are_btf_raw_or_classic_as_chosen(kinds):
    raw, classic = kinds["raw"], kinds["classic"]
    assert raw.info.tracepoint_hooks.startswith("raw tracepoints")
    assert raw.info.tracepoint_hooks.endswith(f"BTF ones turned off by {RAW_TRACEPOINTS_ENV} "
                                              f"(a test and benchmark hook)")
    assert classic.info.tracepoint_hooks.startswith("classic tracepoints: forced by")
    raw_types, classic_types = _prog_types(raw), _prog_types(classic)
    for event in SHARED:
        assert raw_types[f"raw_tracepoint__{event}"] == BPF_PROG_TYPE_RAW_TRACEPOINT
        assert any(n.startswith("tracepoint__") and n.endswith(f"__{event}") and
                   t == BPF_PROG_TYPE_TRACEPOINT for n, t in classic_types.items())
    if "btf" in kinds:
        btf = kinds["btf"]
        assert btf.info.tracepoint_hooks.startswith("BTF tracepoints (tp_btf")
        assert not btf.info.notes or not any("failed to load" in n for n in btf.info.notes)
        btf_types = _prog_types(btf)
        for event in SHARED:
            assert btf_types[f"tp_btf__{event}"] == BPF_PROG_TYPE_TRACING
        for event in ("inet_sock_set_state", "tcp_destroy_sock"):   # and their nested copies
            assert btf_types[f"tp_btf__{event}__nested"] == BPF_PROG_TYPE_TRACING
        assert not any(n.startswith("raw_tracepoint__") and n != "raw_tracepoint__kfree_skb"
                       for n in btf_types)
        assert btf.info.drop_split == raw.info.drop_split
    # the drop split hooks kfree_skb in every kind, or in none
    assert raw.info.drop_split == classic.info.drop_split


def test_kfree_skb_argument_positions_agree_with_the_format_file():
    """BTF's btf_trace_kfree_skb and the format file describe the same
    tracepoint: rx_sk is in both or in neither."""
    _requires_raw()
    found = kfree_skb_arg_positions(kernel_btf().tracepoint_params("kfree_skb"))
    from tracer.probes.loader import tracefs_root
    with open(os.path.join(tracefs_root(), "events/skb/kfree_skb/format")) as f:
        fmt = f.read()
    assert (found is not None) == ("rx_sk;" in fmt and "reason;" in fmt)


@pytest.mark.parametrize("family, addr", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_every_kind_reports_identical_events(kinds, family, addr):
    listener = socket.socket(family)
    listener.bind((addr, 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    refused = socket.socket(family)
    refused.bind((addr, 0))
    closed_port = refused.getsockname()[1]
    refused.close()
    for s in kinds.values():
        s.poll(0)
        s.take_closes()
    missed0 = {id(s): s.counters()["missed_runs"] for s in kinds.values()}
    accepted: list = []
    server = threading.Thread(target=_serve, args=(listener, CONNECTS, accepted), daemon=True)
    server.start()
    client_ports, refusals = [], 0
    for _ in range(CONNECTS):
        with socket.socket(family) as c:
            c.connect((addr, port))
            client_ports.append(c.getsockname()[1])
    for _ in range(3):
        with socket.socket(family) as c:
            assert c.connect_ex((addr, closed_port)) == errno.ECONNREFUSED
            refusals += 1
    server.join(10)
    listener.close()
    assert len(accepted) == CONNECTS

    seen = {}
    for name, s in kinds.items():
        evs, closes = [], []
        _drain(s, evs, closes, time.monotonic() + 1.0)
        seen[name] = (evs, closes, s)

    def connects(evs, p):
        return sorted((e.pid, e.tid, e.comm, e.family, e.saddr, e.sport, e.daddr, e.dport, e.outcome,
                       e.err, e.syn_retransmits, e.sk, e.netns)
                      for e in evs if getattr(e, "dport", None) == p and hasattr(e, "outcome"))

    def accepts(evs):
        return sorted((e.pid, e.tid, e.comm, e.family, e.laddr, e.lport, e.raddr, e.rport,
                       e.backlog_max, e.netns, e.sk)
                      for e in evs if getattr(e, "lport", None) == port and hasattr(e, "backlog_len"))

    def closes_to(closes):
        lifetimes = 0
        for c in closes:
            lifetimes += sum(len(v) for k, v in c.active.items() if k[3] == port)
        return lifetimes

    # Runs the kernel skipped for BPF recursion (each kind's programs run
    # while the other's do: a classic one is skipped whenever any BPF
    # program runs on that CPU, seen under the guests' emulation): a session
    # that missed runs may have missed as many events, no more.
    missed = {name: s.counters()["missed_runs"] - missed0[id(s)]
              for name, (_, _, s) in seen.items()}
    truth = {"connects": sorted(client_ports), "refused": refusals,
             "accepts": sorted(p for _, p in accepted), "closes": CONNECTS}

    def observed(evs, closes):
        got = connects(evs, port)
        refused_seen = connects(evs, closed_port)
        assert {e[8] for e in got} <= {"established"}
        assert {e[9] for e in refused_seen} <= {errno.ECONNREFUSED}
        return {"connects": sorted(e[5] for e in got), "refused": len(refused_seen),
                "accepts": sorted(a[7] for a in accepts(evs)), "closes": closes_to(closes)}

    views = {name: observed(evs, closes) for name, (evs, closes, _) in seen.items()}
    # Before 6.7 the kernel counts no skipped run of a classic tracepoint
    # program (trace_call_bpf began counting them then): a skip is invisible,
    # so the classic view may be short by what a busy CPU skipped, uncounted.
    counts_classic_skips = tuple(map(int, os.uname().release.split(".")[:2])) >= (6, 7)
    for name, view in views.items():
        if name == "classic" and not counts_classic_skips and view != truth:
            assert all(set(view[k]) <= set(truth[k]) if isinstance(truth[k], list)
                       else view[k] <= truth[k] for k in truth), (name, view, truth)
            continue
        if missed[name] == 0:    # ground truth: the client's ports and errnos, the server's accepts
            assert view == truth, name
        else:
            short = sum(len(truth[k]) - len(view[k]) if isinstance(truth[k], list) else truth[k] - view[k]
                        for k in truth)
            assert 0 <= short <= 4 * missed[name], (name, missed[name], view)
    if not any(missed.values()):
        # and the kinds saw exactly the same, field by field
        raw_evs = seen["raw"][0]
        for name, (evs, _, _) in seen.items():
            assert connects(evs, port) == connects(raw_evs, port), name
            assert connects(evs, closed_port) == connects(raw_evs, closed_port), name
            assert accepts(evs) == accepts(raw_evs), name
    else:
        print(f"recursion misses during the workload: {missed}")
        return

    def listener_row(s):
        rows = [c for c in s.listener_counters() if c.lport == port]
        return sorted((c.accepts, c.ack_overflows, c.syn_overflows, c.synack_retransmits, c.backlog_max)
                      for c in rows)

    # (a closed listener's entry goes once read: read each once)
    rows = {name: listener_row(s) for name, s in kinds.items()}
    assert all(r == rows["raw"] for r in rows.values()), rows
    assert sum(r[0] for r in rows["raw"]) == CONNECTS


def test_raw_hooks_the_kernel_refuses_fall_back_to_classic(monkeypatch):
    """CONNSCOPE_FAIL_LOAD=raw_tracepoints (a test hook) makes the raw
    hooks' load fail as a kernel's refusal would: the session runs on
    classic tracepoints, and says why."""
    _requires_raw()
    monkeypatch.delenv(CLASSIC_TRACEPOINTS_ENV, raising=False)
    monkeypatch.setenv(RAW_TRACEPOINTS_ENV, "1")
    monkeypatch.setenv("CONNSCOPE_FAIL_LOAD", "raw_tracepoints")
    session = startup.start(os.environ.get("CONNSCOPE_TEST_BACKEND", "auto"), Filters())
    try:
        why = session.info.tracepoint_hooks
        assert why.startswith("classic tracepoints: raw tracepoints failed to load (cannot load the ")
        assert why.endswith("made to fail by CONNSCOPE_FAIL_LOAD (a test hook))")
        assert why in session.info.notes
        types = _prog_types(session)
        assert BPF_PROG_TYPE_RAW_TRACEPOINT not in types.values()
        assert types["tracepoint__sock__inet_sock_set_state"] == BPF_PROG_TYPE_TRACEPOINT
    finally:
        session.close()


def test_btf_hooks_the_kernel_refuses_fall_back_to_raw_then_classic(monkeypatch):
    """CONNSCOPE_FAIL_LOAD=tp_btf makes the BTF hooks' load fail as a
    kernel's refusal would: the session runs on raw tracepoints and says
    why; with raw ones refused too, on classic ones, naming both refusals."""
    _requires_raw()
    if not _btf_hooks_load():
        pytest.skip(f"this kernel loads no tp_btf program: "
                    f"{probe_features(load_tests=True).tracepoint_hooks_why}")
    monkeypatch.delenv(CLASSIC_TRACEPOINTS_ENV, raising=False)
    monkeypatch.delenv(RAW_TRACEPOINTS_ENV, raising=False)
    backend = os.environ.get("CONNSCOPE_TEST_BACKEND", "auto")
    monkeypatch.setenv("CONNSCOPE_FAIL_LOAD", "tp_btf")
    session = startup.start(backend, Filters())
    try:
        why = session.info.tracepoint_hooks
        assert why.startswith("raw tracepoints: BTF tracepoints failed to load (cannot load the ")
        assert why.endswith("tp_btf__inet_sock_set_state: made to fail by CONNSCOPE_FAIL_LOAD "
                            "(a test hook))")
        assert why in session.info.notes
        types = _prog_types(session)
        assert BPF_PROG_TYPE_TRACING not in types.values() or backend == "fentry"
        assert types["raw_tracepoint__inet_sock_set_state"] == BPF_PROG_TYPE_RAW_TRACEPOINT
    finally:
        session.close()
    monkeypatch.setenv("CONNSCOPE_FAIL_LOAD", "tp_btf,raw_tracepoints")
    session = startup.start(backend, Filters())
    try:
        why = session.info.tracepoint_hooks
        assert why.startswith("classic tracepoints: BTF tracepoints failed to load (")
        assert "; raw tracepoints failed to load (" in why
        assert _prog_types(session)["tracepoint__sock__inet_sock_set_state"] == BPF_PROG_TYPE_TRACEPOINT
    finally:
        session.close()
