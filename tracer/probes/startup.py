"""From `--backend X` to a running ProbeSession: pick the backend, mount
tracefs, find a header tree, take struct offsets from BTF, load."""
from __future__ import annotations

import os

from tracer.filters import Filters
from tracer.probes import blocked_accepts, headers, loader
from tracer.probes.btf import BTFError, kernel_btf
from tracer.probes.features import BackendUnavailable, choose_backend, probe_features
from tracer.probes.offsets import OffsetError, drop_reason_cflags, fentry_cflags, offset_cflags
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
    require_root()
    features = probe_features(only_to_choose=True)
    backend = choose_backend(requested, features)
    headers.ensure_tracefs()
    tree = features.headers
    if tree.path is None:
        raise ProbeError(f"no kernel header tree to compile against ({tree.how}); "
                         f"install linux-headers-{os.uname().release} or any linux-headers package")
    # the BTF probe_features() read (indexing it costs ~20 ms; do it once)
    btf = kernel_btf() if os.path.exists(BTF_PATH) else None
    flags, offsets_from = offset_cflags(btf, tree.matches_running_kernel)
    reason_flags = drop_reason_cflags(btf)
    flags += reason_flags
    if backend == "fentry":
        flags += fentry_cflags(btf)
    if backend != "tracepoint" and blocked_accepts.exit_tracepoints_present(loader.tracefs_root()):
        flags.append(blocked_accepts.CFLAG)
    session = ProbeSession(backend, filters, ringbuf=features.ringbuf.ok, offset_flags=flags,
                           env=headers.bcc_environment(tree), offsets_from=offsets_from,
                           headers=tree.how,
                           btf_data=btf.raw if btf is not None else None)
    session.info.drop_split = bool(reason_flags)   # tracer/blind_spots.py says what it means
    return session.open()
