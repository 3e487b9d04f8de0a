"""Which kernel test files the CI guests run (test_backends_in_guest.py), and
why each of the others does not. Every tests/kernel/test_*.py is in exactly
one of the two (test_guest_runner.py checks it), so a new kernel test file
needs a decision. The measured figures behind the reasons are in
vagrant/README.md ("The rest of the kernel suite in the guests")."""
from __future__ import annotations

# Run in every guest (bullseye 5.10, bookworm 6.1, trixie 6.12) under every
# backend in every CI run.
KERNEL_SUITE = (
    "tests/kernel/test_connects.py",
    "tests/kernel/test_connect_outcomes.py",
    "tests/kernel/test_listeners.py",
    "tests/kernel/test_listener_identity.py",
    "tests/kernel/test_features.py",
)

# file -> why CI's guests leave it out: "host only: ..." where it cannot run
# in a TCG guest or tests nothing a guest kernel changes; "by hand: ..." where
# it passes in the guests but costs too much CI time (run it with
# `vagrant/guest.py run --venv -- 'CONNSCOPE_TEST_BACKEND=kprobe python3 -m
# pytest -m kernel FILE'`).
NOT_IN_GUEST_CI = {
    # BACKEND_RESULTS_PENDING
    "tests/kernel/test_sockets.py":
        "by hand: per-process sockets through close, dup, fork and exit against ss and /proc",
    "tests/kernel/test_record_cli.py":
        "by hand: `connscope record` as a process (signals, full disks); it runs `auto` (fentry in "
        "the guests) whatever CONNSCOPE_TEST_BACKEND says",
    "tests/kernel/test_loader.py":
        "by hand: the compiled-program cache and the perf-buffer transport, each start a fresh process",
    "tests/kernel/test_losses.py":
        "by hand: losses provoked with tiny maps and ring buffers, one compile per test",
    "tests/kernel/test_filters.py":
        "by hand: the kernel-side filters, one compile per filter",
    "tests/kernel/test_one_recording.py":
        "by hand: one real `record` read three ways; runs `auto` (fentry in the guests)",
    "tests/kernel/test_server_counters.py":
        "by hand: redis and nginx's own counters under benchmark load",
    "tests/kernel/test_cardinality.py":
        "by hand: hostile cardinality, a lowered table bound and a recording",
    "tests/kernel/test_hostile_recording.py":
        "by hand: traps in a recording directory; runs `auto` (fentry in the guests)",
    "tests/kernel/test_top_tmux.py":
        "by hand: the TUI in tmux with on-screen deadlines that TCG's slowness does not meet "
        "reliably; runs `auto`",
    "tests/kernel/test_pool_advice.py":
        "host only: needs postgres and pgbench, left out of the guest images for their size",
    "tests/kernel/test_netlab.py":
        "host only: checks the test helpers themselves (netlab links, namespaces), no BPF",
    "tests/kernel/test_procfs.py":
        "host only: socket ownership read from /proc, no BPF: the same code on every backend",
    "tests/kernel/test_sock_diag.py":
        "by hand: sock_diag against ss and /proc/net/tcp, no BPF: once per kernel, not per backend",
    "tests/kernel/test_compiler_child.py":
        "host only: the compiler child's isolation from root's cwd and PYTHON* variables; "
        "no kernel or backend dependence",
}
