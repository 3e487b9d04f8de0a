"""From `--backend X` to a running ProbeSession: pick the backend, mount
tracefs, find a header tree, take struct offsets from BTF, load."""
from __future__ import annotations

import os

from tracer.domain.hooks import TRACEPOINT_HOOKS
from tracer.filters import Filters
from tracer.probes import blocked_accepts, headers, loader
from tracer.probes.btf import BTFError, kernel_btf
from tracer.probes.features import (BackendUnavailable, backends_to_try, failing_loads,
                                    hooks_made_to_fail,
                                    probe_features)
from tracer.probes.offsets import (OffsetError, drop_reason_cflags, fentry_cflags, offset_cflags,
                                   tracepoint_hook_cflags)
from tracer.probes.session import ProbeError, ProbeSession

BTF_PATH = "/sys/kernel/btf/vmlinux"

# Everything start() can raise for a reason the user can fix; the CLI prints
# these as one "Error:" line.
STARTUP_ERRORS = (BackendUnavailable, BTFError, OffsetError, ProbeError,
                  headers.TracefsUnavailable)


class NotPermitted(ProbeError):
    pass


def require_root() -> None:
    """Called first by `top` and `record`, before anything is written."""
    if os.geteuid() != 0:
        raise NotPermitted("tracing loads BPF programs and needs root: run it with sudo")


def start(requested: str, filters: Filters) -> ProbeSession:
    """A loaded session of `requested`; for `auto`, of the first usable
    backend that loads. Those that failed to load are in info.passed_over
    (shown on the status line) and the error names each if none loads."""
    require_root()
    features = probe_features(only_to_choose=True)
    candidates = backends_to_try(requested, features)
    headers.ensure_tracefs()
    tree = features.headers
    if tree.path is None:
        raise ProbeError(f"no kernel header tree to compile against ({tree.how}); "
                         f"install linux-headers-{os.uname().release} or any linux-headers package")
    # the BTF probe_features() read (indexing it costs ~20 ms; do it once)
    btf = kernel_btf() if os.path.exists(BTF_PATH) else None
    flags, offsets_from = offset_cflags(btf, tree.matches_running_kernel)
    hooks = features.tracepoint_hooks if btf is not None else "classic"
    failed: list[str] = []
    for backend in candidates:
        try:
            session = _open_hooks(backend, filters, features, tree, btf, flags, offsets_from, hooks)
        except (ProbeError, OffsetError) as e:
            if len(candidates) == 1:
                raise
            failed.append(f"{backend}: {e}")
            continue
        session.info.passed_over = failed
        return session
    raise ProbeError("no backend could be loaded: " + "; ".join(failed))


def _open_hooks(backend, filters, features, tree, btf, flags, offsets_from, hooks) -> ProbeSession:
    """_open with the shared tracepoints hooked as `hooks` says; BTF ones the
    kernel refuses (a verifier or attach failure detection cannot foresee)
    are replaced by raw ones, raw ones by classic ones, and the session says
    so."""
    why = features.tracepoint_hooks_why
    failures = []
    while True:
        try:
            session = _open_with(backend, filters, features, tree, btf, flags, offsets_from, hooks)
            break
        except ProbeError as e:
            fallback = _HOOKS_FALLBACK.get(hooks)
            if fallback is None or _HOOK_PREFIX[hooks] not in str(e):
                raise
            failures.append(f"{_HOOK_WORDS[hooks]} failed to load ({e})")
            hooks = fallback
    if failures:
        why = f"{_HOOK_WORDS[hooks]}: " + "; ".join(failures)
        session.info.notes.append(why)
    session.info.tracepoint_hooks = why
    return session


# what each kind of hook for the shared tracepoints falls back to when the
# kernel refuses it, the prefix of its programs' names, and its name
_HOOKS_FALLBACK = {"btf": "raw", "raw": "classic"}
_HOOK_PREFIX = {"btf": "tp_btf__", "raw": "raw_tracepoint__"}
_HOOK_WORDS = {kind: f"{word} tracepoints" for kind, word in TRACEPOINT_HOOKS.items()}


def _open_with(backend, filters, features, tree, btf, flags, offsets_from, hooks) -> ProbeSession:
    if hooks_made_to_fail(hooks):
        raise ProbeError(f"cannot load the {backend} programs: cannot attach "
                         f"{_HOOK_PREFIX[hooks]}inet_sock_set_state: made to fail by "
                         f"CONNSCOPE_FAIL_LOAD (a test hook)")
    reason_flags = drop_reason_cflags(btf, raw=hooks != "classic")
    session = _open(backend, filters, features, tree, btf,
                    flags + tracepoint_hook_cflags(hooks) + reason_flags, offsets_from)
    session.info.drop_split = bool(reason_flags)   # tracer/blind_spots.py says what it means
    return session


def _open(backend, filters, features, tree, btf, flags, offsets_from) -> ProbeSession:
    if backend in failing_loads():
        raise ProbeError(f"cannot load the {backend} programs: made to fail by "
                         "CONNSCOPE_FAIL_LOAD (a test hook)")
    if backend == "fentry":
        flags = flags + fentry_cflags(btf)
    if backend != "tracepoint" and blocked_accepts.exit_tracepoints_present(loader.tracefs_root()):
        flags = flags + [blocked_accepts.CFLAG]
    session = ProbeSession(backend, filters, ringbuf=features.ringbuf.ok, offset_flags=flags,
                           env=headers.bcc_environment(tree), offsets_from=offsets_from,
                           headers=tree.how,
                           btf_data=btf.raw if btf is not None else None)
    return session.open()
