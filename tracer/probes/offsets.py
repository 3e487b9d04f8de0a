"""Kernel struct member offsets the BPF programs read, from BTF.

Headers on the host may belong to a different kernel (a generic tree when the
distribution ships none for the running one), and a wrong offset reads
plausible garbage without any error. So offsets come from the running
kernel's BTF; headers are used only when they are the running kernel's own
and there is no BTF.
"""
from __future__ import annotations

# -D name -> (struct, member path). Add here when a program reads a new field.
NEEDED = {
    "OFF_SK_ERR": ("sock", "sk_err"),
}


class OffsetError(Exception):
    pass


def offset_cflags(btf, headers_match_kernel: bool) -> tuple[list[str], str]:
    """-D flags for every needed offset, and a sentence saying where they came from."""
    if btf is not None:
        values = btf.offsets(NEEDED)
        return [f"-D{k}={v}" for k, v in sorted(values.items())], "struct offsets from kernel BTF"
    if headers_match_kernel:
        return ["-DOFFSETS_FROM_HEADERS"], "struct offsets from the running kernel's headers (no BTF)"
    raise OffsetError(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux) and no headers of its own: "
        "struct offsets cannot be known; install linux-headers-$(uname -r)"
    )
