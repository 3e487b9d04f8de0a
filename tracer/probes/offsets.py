"""Kernel struct member offsets the BPF programs read, from BTF.

Headers on the host may belong to a different kernel (a generic tree when the
distribution ships none for the running one), and a wrong offset reads
plausible garbage without any error. So offsets come from the running
kernel's BTF; headers are used only when they are the running kernel's own
and there is no BTF.
"""
from __future__ import annotations

from tracer.probes.btf import BTFError
from tracer.probes.features import OPTIONAL_HOOKS, hidden_functions

# -D name -> (struct, member path). Add here when a program reads a new field.
NEEDED = {
    "OFF_SK_ERR": ("sock", "sk_err"),
    "OFF_SKC_NET": ("sock", "__sk_common.skc_net"),
    "OFF_NET_NS_INUM": ("net", "ns.inum"),
    "OFF_SKC_FAMILY": ("sock", "__sk_common.skc_family"),
    "OFF_SKC_STATE": ("sock", "__sk_common.skc_state"),
    "OFF_SKC_NUM": ("sock", "__sk_common.skc_num"),
    "OFF_SKC_DPORT": ("sock", "__sk_common.skc_dport"),
    "OFF_SKC_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr"),
    "OFF_SKC_DADDR": ("sock", "__sk_common.skc_daddr"),
    "OFF_SKC_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr"),
    "OFF_SKC_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr"),
    "OFF_SK_ACK_BACKLOG": ("sock", "sk_ack_backlog"),
    "OFF_SK_DROPS": ("sock", "sk_drops"),
    "OFF_SKC_COOKIE": ("sock", "__sk_common.skc_cookie"),
    "OFF_SK_MAX_ACK_BACKLOG": ("sock", "sk_max_ack_backlog"),
    "OFF_ICSK_ACCEPT_QUEUE_QLEN": ("inet_connection_sock", "icsk_accept_queue.qlen"),
    "OFF_TASK_FILES": ("task_struct", "files"),
    "OFF_TASK_STACK": ("task_struct", "stack"),
    "OFF_FILES_FDT": ("files_struct", "fdt"),
    "OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "OFF_FDT_FD": ("fdtable", "fd"),
    "OFF_FILE_PRIVATE_DATA": ("file", "private_data"),
    "OFF_SOCKET_SK": ("socket", "sk"),
    "OFF_SOCKET_STATE": ("socket", "state"),
    "OFF_SOCKET_TYPE": ("socket", "type"),
    "OFF_SK_SOCKET": ("sock", "sk_socket"),
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
    "OFF_SKB_PROTOCOL": ("sk_buff", "protocol"),
    # raw tracepoints read what inet_sock_set_state records: its source
    # address and port are the inet_sock's, not skc_rcv_saddr/skc_num
    "OFF_INET_SPORT": ("inet_sock", "inet_sport"),
    "OFF_INET_SADDR": ("inet_sock", "inet_saddr"),
}


class OffsetError(Exception):
    pass


def task_stack_size(btf) -> int:
    """THREAD_SIZE, which the nested copies' marks need (bpf/main.c
    taken_slot) and BTF does not hold: 16 KiB on x86-64 and arm64, twice
    that where KASAN is built in (its functions are in BTF). With the
    kernel's own headers, their THREAD_SIZE is used instead."""
    return 32768 if btf.has_function("kasan_report") else 16384


def has_current_task_btf(btf) -> bool:
    """Whether the kernel has bpf_get_current_task_btf (5.11+: its helper
    number is in BTF's enum bpf_func_id), through which a BTF tracepoint
    program reads the task's fields as plain loads."""
    try:
        btf.enum_value("bpf_func_id", "BPF_FUNC_get_current_task_btf")
    except BTFError:
        return False
    return True


def offset_cflags(btf, headers_match_kernel: bool) -> tuple[list[str], str]:
    """-D flags for every needed offset, and a sentence saying where they came from."""
    if btf is not None:
        values = btf.offsets(NEEDED)
        return ([f"-D{k}={v}" for k, v in sorted(values.items())]
                + [f"-DTASK_STACK_SIZE={task_stack_size(btf)}"]
                + (["-DHAVE_CURRENT_TASK_BTF"] if has_current_task_btf(btf) else [])
                ), "struct offsets from kernel BTF"
    if headers_match_kernel:
        return ["-DOFFSETS_FROM_HEADERS"], "struct offsets from the running kernel's headers (no BTF)"
    raise OffsetError(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux) and no headers of its own: "
        "struct offsets cannot be known; install linux-headers-$(uname -r)"
    )


KFREE_SKB_FORMAT = "/sys/kernel/tracing/events/skb/kfree_skb/format"


def tracepoint_hook_cflags(kind: str) -> list[str]:
    """-DRAW_TRACEPOINTS for raw tracepoint hooks, and -DTP_BTF too for BTF
    ones (tp_btf: the same arguments, fields read by plain loads);
    features.tracepoint_hooks says which kind and why. Classic ones need no
    switch."""
    return {"btf": ["-DRAW_TRACEPOINTS", "-DTP_BTF"], "raw": ["-DRAW_TRACEPOINTS"]}.get(kind, [])


def kfree_skb_arg_positions(params: list[str]) -> tuple[int, int] | None:
    """(reason, rx_sk): where skb:kfree_skb's drop reason and receiving
    socket are among its raw tracepoint arguments (BTF.tracepoint_params),
    None if it lacks either. By type, since BTF has no names for them:
    kfree_skb(skb, location, reason[, rx_sk])."""
    reason = [i for i, t in enumerate(params) if t == "enum skb_drop_reason"]
    rx_sk = [i for i, t in enumerate(params) if t == "struct sock *"]
    if len(reason) != 1 or len(rx_sk) != 1:
        return None
    return reason[0], rx_sk[0]


def drop_reason_cflags(btf, format_path: str = KFREE_SKB_FORMAT, *, raw: bool = False) -> list[str]:
    """-DREASON_TCP_LISTEN_OVERFLOW=N -DREASON_NO_SOCKET=M when skb:kfree_skb names the receiving
    socket (rx_sk, 6.11+) and the kernel has that drop reason (6.15+); the value is
    the kernel's own (enums change between kernels), never hard-coded. raw: for a
    raw tracepoint hook, whose arguments come from BTF, with where each is
    (-DKFREE_SKB_REASON_ARG, -DKFREE_SKB_RX_SK_ARG); else from the format file."""
    if btf is None:
        return []
    position = []
    if raw:
        try:
            found = kfree_skb_arg_positions(btf.tracepoint_params("kfree_skb"))
        except Exception:
            found = None
        if found is None:
            return []
        position = [f"-DKFREE_SKB_REASON_ARG={found[0]}", f"-DKFREE_SKB_RX_SK_ARG={found[1]}"]
    else:
        try:
            with open(format_path) as f:
                fmt = f.read()
        except OSError:
            return []
        if "rx_sk;" not in fmt:
            return []
    try:
        overflow = btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")
        no_socket = btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_NO_SOCKET")
    except Exception:
        return []
    return [f"-DREASON_TCP_LISTEN_OVERFLOW={overflow}", f"-DREASON_NO_SOCKET={no_socket}", *position]


def fentry_cflags(btf) -> list[str]:
    """What fentry/fexit programs must know about function signatures here,
    and which optional functions to leave out (-DNO_FENTRY_<NAME>): an
    fentry program on a function the kernel lacks fails the whole load."""
    if btf is None:
        raise OffsetError("fentry needs kernel BTF (/sys/kernel/btf/vmlinux)")
    flags = [f"-DINET_CSK_ACCEPT_NARGS={btf.function_arity('inet_csk_accept')}",
             f"-DTCP_V4_SYN_RECV_SOCK_NARGS={btf.function_arity('tcp_v4_syn_recv_sock')}"]
    hidden = hidden_functions()
    for name in OPTIONAL_HOOKS:   # IPv6 built as a module, or off
        if name in hidden or not btf.has_function(name):
            flags.append(f"-DNO_FENTRY_{name.upper()}")
        elif name == "tcp_v6_syn_recv_sock":
            flags.append(f"-DTCP_V6_SYN_RECV_SOCK_NARGS={btf.function_arity(name)}")
    return flags
