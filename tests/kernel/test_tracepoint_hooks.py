"""Raw and classic tracepoint hooks see the same things: both kinds loaded at
once, on the same real connections (loopback, IPv4 and IPv6), must report
identical connects, accepts, closes and listener counters, with the client's
and server's own view as the ground truth for both. (Where the kernel skipped
runs of one for BPF recursion, which the two kinds cause each other, that one
may have missed as many events and no more: counted, and then only bounded.)"""
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
from tracer.probes.features import CLASSIC_TRACEPOINTS_ENV, probe_features
from tracer.probes.offsets import kfree_skb_arg_positions

pytestmark = pytest.mark.kernel

CONNECTS = 20
BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_RAW_TRACEPOINT = 5, 17


def _requires_raw():
    f = probe_features(load_tests=False)
    if f.tracepoint_hooks != "raw":
        pytest.skip(f"this kernel gets classic tracepoint hooks: {f.tracepoint_hooks_why}")


@pytest.fixture
def both(monkeypatch):
    """A raw-tracepoint session and a classic-tracepoint one, same backend."""
    _requires_raw()
    backend = os.environ.get("CONNSCOPE_TEST_BACKEND", "auto")
    monkeypatch.delenv(CLASSIC_TRACEPOINTS_ENV, raising=False)
    raw = startup.start(backend, Filters())
    try:
        monkeypatch.setenv(CLASSIC_TRACEPOINTS_ENV, "1")
        classic = startup.start(backend, Filters())
    except BaseException:
        raw.close()
        raise
    try:
        yield raw, classic
    finally:
        raw.close()
        classic.close()


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


def test_the_shared_hooks_are_raw_tracepoints_or_classic_as_chosen(both):
    raw, classic = both
    assert raw.info.tracepoint_hooks.startswith("raw tracepoints")
    assert classic.info.tracepoint_hooks.startswith("classic tracepoints: forced by")
    raw_types, classic_types = _prog_types(raw), _prog_types(classic)
    shared = ("inet_sock_set_state", "tcp_retransmit_skb", "tcp_retransmit_synack", "tcp_destroy_sock")
    for event in shared:
        assert raw_types[f"raw_tracepoint__{event}"] == BPF_PROG_TYPE_RAW_TRACEPOINT
        assert any(n.startswith("tracepoint__") and n.endswith(f"__{event}") and
                   t == BPF_PROG_TYPE_TRACEPOINT for n, t in classic_types.items())
    # the drop split hooks kfree_skb in both kinds, or in neither
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
def test_raw_and_classic_report_identical_events(both, family, addr):
    raw, classic = both
    listener = socket.socket(family)
    listener.bind((addr, 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    refused = socket.socket(family)
    refused.bind((addr, 0))
    closed_port = refused.getsockname()[1]
    refused.close()
    for s in (raw, classic):
        s.poll(0)
        s.take_closes()
    missed0 = {id(s): s.counters()["missed_runs"] for s in (raw, classic)}
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
    for name, s in (("raw", raw), ("classic", classic)):
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
    if missed["raw"] == missed["classic"] == 0:
        # and the two kinds saw exactly the same, field by field
        raw_evs, classic_evs = seen["raw"][0], seen["classic"][0]
        assert connects(classic_evs, port) == connects(raw_evs, port)
        assert connects(classic_evs, closed_port) == connects(raw_evs, closed_port)
        assert accepts(classic_evs) == accepts(raw_evs)
    else:
        print(f"recursion misses during the workload: {missed}")
        return

    def listener_row(s):
        rows = [c for c in s.listener_counters() if c.lport == port]
        return sorted((c.accepts, c.ack_overflows, c.syn_overflows, c.synack_retransmits, c.backlog_max)
                      for c in rows)

    # (a closed listener's entry goes once read: read each once)
    raw_rows = listener_row(raw)
    assert raw_rows == listener_row(classic)
    assert sum(r[0] for r in raw_rows) == CONNECTS


def test_raw_hooks_the_kernel_refuses_fall_back_to_classic(monkeypatch):
    """CONNSCOPE_FAIL_LOAD=raw_tracepoints (a test hook) makes the raw
    hooks' load fail as a kernel's refusal would: the session runs on
    classic tracepoints, and says why."""
    _requires_raw()
    monkeypatch.delenv(CLASSIC_TRACEPOINTS_ENV, raising=False)
    monkeypatch.setenv("CONNSCOPE_FAIL_LOAD", "raw_tracepoints")
    session = startup.start(os.environ.get("CONNSCOPE_TEST_BACKEND", "auto"), Filters())
    try:
        why = session.info.tracepoint_hooks
        assert why.startswith("classic tracepoints: raw ones failed to load (cannot load the ")
        assert why.endswith("made to fail by CONNSCOPE_FAIL_LOAD (a test hook))")
        assert why in session.info.notes
        types = _prog_types(session)
        assert BPF_PROG_TYPE_RAW_TRACEPOINT not in types.values()
        assert types["tracepoint__sock__inet_sock_set_state"] == BPF_PROG_TYPE_TRACEPOINT
    finally:
        session.close()
