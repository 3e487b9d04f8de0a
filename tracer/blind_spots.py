"""What each backend counts exactly and what it cannot see, per kernel feature.

One text for doctor, the TUI's blind spots (status line and `?`) and the
recording's manifest, so they cannot disagree (README "Backends and kernels"
says the same in prose). Pure: the kernel facts come in as arguments
(tracer/probes reads them), so every case is testable on any host.

The tracepoint backend cannot hook the accept-queue drop points. It counts
ACK-time overflows one by one at skb:kfree_skb, which needs two things from
the kernel: the tracepoint's `rx_sk` (the listener; Linux 6.11, commit
c53795d48ee8 "net: add rx_sk to trace_kfree_skb") and the drop reason
TCP_LISTEN_OVERFLOW (Linux 6.15, "tcp: add four drop reasons to
tcp_check_req()"). Without either, the program is not attached
(tracer/probes/offsets.py drop_reason_cflags): R = C = 0 in
tracer/aggregate/listeners.py split_drops, so `drops` stays 0 and
`syn_drops` is the whole change in sk_drops, in which the kernel counts an
ACK-time overflow twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

RX_SK_SINCE = "6.11"
LISTEN_OVERFLOW_REASON_SINCE = "6.15"


@dataclass(frozen=True)
class DropReasons:
    """What the kernel offers the tracepoint backend for the drop split.
    None: could not be told (no BTF)."""
    rx_sk: Optional[bool]                  # skb:kfree_skb has rx_sk
    listen_overflow: Optional[int]         # SKB_DROP_REASON_TCP_LISTEN_OVERFLOW's value, if any

    @property
    def split_exact(self) -> Optional[bool]:
        if self.rx_sk is None:
            return None
        return bool(self.rx_sk) and self.listen_overflow is not None


def drop_reasons_from_btf(btf) -> DropReasons:
    """Read both facts from kernel BTF (readable without root, unlike the
    tracepoint's format file): the tracepoint's record struct and the enum."""
    if btf is None:
        return DropReasons(None, None)
    try:
        btf.member_offset("trace_event_raw_kfree_skb", "rx_sk")
        rx_sk = True
    except Exception:
        rx_sk = False
    try:
        reason = btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")
    except Exception:
        reason = None
    return DropReasons(rx_sk, reason)


# ---- short lines: the TUI's "cannot see", the manifest ----------------------

IO_URING = ("accepts made through io_uring or inside the kernel (no accept() syscall): "
            "no accept rows or queue waits for them; likewise io_uring connects that fail "
            "before any SYN (no route, a policy): no row")
SYSCALL_COST = "accept() seen through syscall tracepoints (small cost on every syscall)"
OTHER_NETNS = "SYN-time drops only for listeners in this network namespace"


# kprobe/fentry: tracer/probes/blocked_accepts.py
BLOCKED_BEFORE_START = (
    "counted", "the next accept of a thread blocked in accept() since before start: seen at "
               "its syscall exit (syscalls:sys_exit_accept{,4}, attached only until it returns, "
               "60 s at most); the next accept of one still blocked after that is counted as lost")

SKIPPED = ("counted", "probe runs the kernel skips (another BPF program running on that CPU): "
                      "shown as 'probe runs skipped', never silent")


def split_missing_line() -> str:
    return (f"drop split (needs kernel {LISTEN_OVERFLOW_REASON_SINCE}+): every listener drop "
            f"is shown as a SYN drop and ACK-time overflows count twice")


def blind_spots(backend: str, split_exact: Optional[bool]) -> tuple[str, ...]:
    """What `backend` cannot see or counts inexactly here, one short line each."""
    if backend != "tracepoint":
        return ()
    spots = [SYSCALL_COST, IO_URING, OTHER_NETNS]
    if split_exact is False:
        spots.insert(0, split_missing_line())
    elif split_exact is None:
        spots.insert(0, "drop split unknown (no BTF to check skb:kfree_skb rx_sk and "
                        "TCP_LISTEN_OVERFLOW)")
    return tuple(spots)


# ---- doctor: per backend, what is exact and what is not -----------------------

def exactness(backend: str, reasons: DropReasons, kernel: str = "") -> list[tuple[str, str]]:
    """(status, text) lines for doctor: status is "exact", "NOT exact" or "unseen"."""
    here = f"kernel {kernel}" if kernel else "this kernel"
    out: list[tuple[str, str]] = [
        ("exact", "connect attempts and latency (socket state changes, every backend)"),
        ("exact", "connects that fail inside connect() before any SYN (no route, a route or "
                  "policy that forbids it), with connect()'s errno: "
                  + ("inet_stream_connect" if backend in ("kprobe", "fentry")
                     else "syscalls:sys_{enter,exit}_connect")),
    ]
    if backend in ("kprobe", "fentry"):
        if backend == "fentry":
            # tcp_conn_request's return says nothing: its drop is told by the
            # listener's sk_drops, which other CPUs move too (listeners.h)
            out.append(("NOT exact", "accept-queue drops, ACK-time (drops) and SYN-time "
                                     "(syn_drops), hooked where the kernel drops: exact but "
                                     "for a rare race, a SYN handled while accept() on another "
                                     "CPU empties the full queue and a third CPU drops on the "
                                     "same listener (once 842 against ListenOverflows 841 in a "
                                     "6.1 guest)"))
        else:
            # a kprobe run the kernel skips (another BPF program on that CPU,
            # every kretprobe instance busy) is counted by the kprobe's own
            # nmissed, which connscope does not read yet
            out.append(("NOT exact", "accept-queue drops, ACK-time (drops) and SYN-time "
                                     "(syn_drops), hooked where the kernel drops: under heavy "
                                     "load a kprobe run the kernel skips loses its drop, "
                                     "uncounted (20 of 3,952 once in a 6.12 guest; fentry "
                                     "does not); and the rare SYN-time race fentry has "
                                     "(1,018 against ListenOverflows 1,017 once in a 5.10 "
                                     "guest)"))
        out.append(("exact", "accepts and queue waits, also io_uring and in-kernel accepts "
                             "(inet_csk_accept)"))
        out.append(BLOCKED_BEFORE_START)
        out.append(SKIPPED)
        return out
    if reasons.split_exact:
        out.append(("exact", f"accept-queue drops split into drops (ACK time) and syn_drops: "
                             f"{here} has skb:kfree_skb rx_sk and reason TCP_LISTEN_OVERFLOW "
                             f"(= {reasons.listen_overflow})"))
    elif reasons.split_exact is None:
        out.append(("unknown", "accept-queue drop split: no kernel BTF to tell whether "
                               "skb:kfree_skb has rx_sk and reason TCP_LISTEN_OVERFLOW"))
    else:
        lacks = []
        if not reasons.rx_sk:
            lacks.append(f"skb:kfree_skb rx_sk ({RX_SK_SINCE}+)")
        if reasons.listen_overflow is None:
            lacks.append(f"drop reason TCP_LISTEN_OVERFLOW ({LISTEN_OVERFLOW_REASON_SINCE}+)")
        out.append(("NOT exact", f"accept-queue drops: {here} lacks {' and '.join(lacks)}, so "
                                 f"every listener drop is reported as syn_drops (drops stays 0) "
                                 f"and each ACK-time overflow is counted twice; their sum "
                                 f"overstates the kernel's ListenOverflows/ListenDrops. "
                                 f"Exact: --backend kprobe or fentry, where they load"))
    out.append(("NOT exact", "syn_drops only for listeners in connscope's own network "
                             "namespace (read through sock_diag)"))
    out.append(("unseen", IO_URING + "; the queues and drops of their listeners are still "
                                     "counted"))
    out.append(SKIPPED)
    return out
