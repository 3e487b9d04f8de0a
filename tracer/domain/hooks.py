"""What a BPF program of ours is hooked to, in the words a user knows.

Programs are named by bcc's convention (tracer/probes/loader.py): the name
says the kind of hook and its target. The recording keeps the program's own
name; the live view, replay and report label it with this one function.
"""
from __future__ import annotations

import re

# (prefix of the program's function name, kind of hook), longest first
_PREFIXES = (
    ("raw_tracepoint__", "raw tracepoint"),
    ("tp_btf__", "BTF tracepoint"),
    ("tracepoint__", "tracepoint"),
    ("kretfunc__", "fexit"),
    ("kfunc__", "fentry"),
    ("kretp_", "kretprobe"),
    ("kp_", "kprobe"),
)


def hook_label(program: str) -> str:
    """'tracepoint__sock__inet_sock_set_state' -> 'tracepoint sock:inet_sock_set_state',
    'kfunc__vmlinux__tcp_v4_connect' -> 'fentry tcp_v4_connect'; anything else as
    is. Names read back from a file pass missed_runs_from first."""
    for prefix, kind in _PREFIXES:
        if program.startswith(prefix):
            target = program[len(prefix):]
            if kind == "tracepoint" and "__" in target:
                category, _, event = target.partition("__")
                target = f"{category}:{event}"
            elif kind in ("fentry", "fexit") and target.startswith("vmlinux__"):
                target = target[len("vmlinux__"):]
            return f"{kind} {target}" if target else program
    return program


# The kinds of hook for the tracepoints every backend shares, as the first
# word of the sentence that says which were chosen and why
# (tracer/probes/features.py choose_tracepoint_hooks: a run manifest's
# tracepoint_hooks, the probe session's info): key -> that word.
TRACEPOINT_HOOKS = {"btf": "BTF", "raw": "raw", "classic": "classic"}


def hooks_kind(sentence) -> str:
    """The kind of tracepoint hook a tracepoint_hooks sentence names (its
    first word), or "" for anything else: a manifest is read as someone
    else's file, and only these words are ever shown from it."""
    if not isinstance(sentence, str):
        return ""
    word = sentence[:16].split(" ", 1)[0]
    return word if word in TRACEPOINT_HOOKS.values() else ""


def backend_text(backend: str, hooks: str) -> str:
    """'tracepoint (BTF hooks)': a backend with the kind of its tracepoint
    hooks (hooks_kind), as the live view, replay and report show it."""
    return f"{backend} ({hooks} hooks)" if hooks else backend


def skipped_runs_text(missed: dict[str, int], limit: int = 3) -> str:
    """'1,167 runs skipped (tracepoint sock:inet_sock_set_state 1,100, ...)':
    the programs with the most skipped runs first, at most `limit` named."""
    total = sum(missed.values())
    ranked = sorted(missed.items(), key=lambda kv: (-kv[1], kv[0]))
    named = ", ".join(f"{hook_label(p)} {n:,}" for p, n in ranked[:limit])
    more = f", {len(ranked) - limit} more" if len(ranked) > limit else ""
    return f"{total:,} probe run{'s' if total != 1 else ''} skipped by the kernel ({named}{more})"


# A second program on a raw tracepoint that handles the changes the kernel
# skipped the first for (bpf/main.c: the set-state program's nested copy).
NESTED_COPY = "__nested"


def unhandled_misses(missed: dict[str, int], handled: dict[str, int]) -> dict[str, int]:
    """The kernel's skipped runs ({program: n}, recursion_misses) less those
    a nested copy handled: `handled` is {program: runs its copy handled}, read
    BEFORE `missed` (each handled run follows its miss, so the difference is
    never below what was really lost). A copy's own skipped runs are left
    out: it is skipped only while it runs, and then either the first ran
    (nothing lost) or the first was skipped too (counted there)."""
    out = {}
    for name, n in missed.items():
        if name.endswith(NESTED_COPY):
            continue
        n -= handled.get(name, 0)
        if n > 0:
            out[name] = n
    return out


MAX_PROGRAMS = 64   # we load about 20; more in a manifest is not ours
_PROGRAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")   # a C function name


def missed_runs_from(value) -> dict[str, int]:
    """A manifest's "missed_runs" ({program: skipped runs}) as read back from
    a file: entries that are not a C function name (as all our programs are:
    nothing a terminal would act on) and a positive count are dropped, and
    at most MAX_PROGRAMS are kept."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, int] = {}
    for name, n in value.items():
        if len(out) >= MAX_PROGRAMS:
            break
        if isinstance(name, str) and _PROGRAM_NAME.fullmatch(name) and type(n) is int and n > 0:
            out[name] = n
    return out
