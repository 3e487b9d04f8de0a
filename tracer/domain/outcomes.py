"""Connect outcomes: their names, and which count as a failure, a timeout or
an error wherever failures are summarised (live view, report, replay).

The kernel decides the outcome when the socket leaves SYN_SENT, or when
connect() returns an error without the socket ever entering it (no route, a
policy's refusal: bpf/connect.h, codes in bpf/event.h); the names below are
what the `connects` table's `outcome` column holds. Old recordings have only the first four: in them,
`error` also covers what is now `abandoned` and `unreachable`.
"""
from __future__ import annotations

import errno as _errno

ESTABLISHED = "established"   # handshake answered (SYN-ACK, or a crossing SYN)
REFUSED = "refused"           # RST in answer to the SYN: errno 111 ECONNREFUSED
TIMEOUT = "timeout"           # the kernel gave up resending the SYN: errno 110 ETIMEDOUT
ABANDONED = "abandoned"       # the application gave up: closed while SYN_SENT, no error
UNREACHABLE = "unreachable"   # no route, or an ICMP error answered the SYN (errno 101, 113, ...)
ERROR = "error"               # connect() itself failed otherwise (errno 99 EADDRNOTAVAIL, 13, 1, ...)

OUTCOMES = (ESTABLISHED, REFUSED, TIMEOUT, ABANDONED, UNREACHABLE, ERROR)
FAILURES = OUTCOMES[1:]
# Summarised as "timed out": the caller waited and got nothing, whoever gave up.
TIMEOUTS = (TIMEOUT, ABANDONED)
# Summarised as "error": neither an answer nor a wait.
ERRORS = (UNREACHABLE, ERROR)

DESCRIPTIONS = {
    ESTABLISHED: "the handshake completed (a crossing SYN counts: simultaneous open)",
    REFUSED: "a RST answered the SYN (errno 111)",
    TIMEOUT: "the kernel gave up resending the SYN (errno 110)",
    ABANDONED: "the application gave up: it closed the socket while the SYN was unanswered "
               "(its own connect timeout, or exit); counted as a timeout in summaries",
    UNREACHABLE: "connect() found no route (errno 101 ENETUNREACH, 113 EHOSTUNREACH: no SYN "
                 "sent, latency is the time inside connect()), or an ICMP error answered the "
                 "SYN (errno says which, e.g. 113)",
    ERROR: "connect() itself failed, no SYN answered (errno, e.g. 99 EADDRNOTAVAIL: no local "
           "port left; 13 EACCES: a prohibit route; 22 EINVAL: a blackhole route; 1 EPERM: a "
           "cgroup connect policy)",
}


def summary_class(outcome: str) -> str:
    """The column a failure is counted under where failures are summarised:
    established, refused, timeout or error."""
    if outcome in (ESTABLISHED, REFUSED):
        return outcome
    if outcome in TIMEOUTS:
        return TIMEOUT
    return ERROR


def schema_description() -> str:
    """The `outcome` column's description in tracer/schema.py."""
    return "; ".join(f"{name}: {DESCRIPTIONS[name]}" for name in OUTCOMES)


def errno_text(code: int) -> str:
    """"errno 99 EADDRNOTAVAIL": the number users search for, and its name."""
    name = _errno.errorcode.get(code)
    return f"errno {code} {name}" if name else f"errno {code}"
