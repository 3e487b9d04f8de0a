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
    # per-process sockets through close, dup, fork and exit: passed by hand in
    # bullseye (kprobe), bookworm (kprobe, fentry, tracepoint) and trixie
    # (kprobe, fentry); 29-39 s a backend, about 5 min of CI over the 9 runs
    "tests/kernel/test_sockets.py",
)

# file -> why CI's guests leave it out: "host only: ..." where it cannot run
# in a TCG guest or tests nothing a guest kernel changes; "by hand: ..." where
# it passes in the guests but costs too much CI time (run it with
# `vagrant/guest.py run --venv -- 'CONNSCOPE_TEST_BACKEND=kprobe python3 -m
# pytest -m kernel FILE'`).
NOT_IN_GUEST_CI = {
    # Figures: bookworm guest (6.1), one boot, pytest's time for the file on
    # kprobe / fentry, 2026-12-05. All of these together take 13.6 / 12.4 min a
    # backend: in every guest and backend that is about 2 hours of CI.
    "tests/kernel/test_record_cli.py":
        "by hand: 9 passed, 1 skipped (the no-kprobes error path) in bookworm, 185 s / 157 s; "
        "it runs `auto` (fentry in the guests) whatever CONNSCOPE_TEST_BACKEND says",
    "tests/kernel/test_loader.py":
        "by hand: 6 passed in bookworm on kprobe and fentry, 78 s / 76 s (a fresh process a start)",
    "tests/kernel/test_losses.py":
        "by hand: 5 passed in bookworm on kprobe and fentry, 99 s / 103 s (one compile a test)",
    "tests/kernel/test_filters.py":
        "by hand: 8 passed in bookworm on kprobe and fentry, 100 s / 96 s (one compile a filter)",
    "tests/kernel/test_one_recording.py":
        "by hand: 1 passed in bookworm, 22 s; runs `auto` (fentry in the guests)",
    "tests/kernel/test_server_counters.py":
        "by hand: redis and nginx counters, 2 passed in bookworm on kprobe and fentry, 27 s / 18 s",
    "tests/kernel/test_cardinality.py":
        "by hand: 1 passed in bookworm on kprobe and fentry, 4 s; runs `record` with `auto`",
    "tests/kernel/test_hostile_recording.py":
        "by hand: 4 passed in bookworm, 52 s / 38 s; runs `record` with `auto` (fentry in the guests)",
    "tests/kernel/test_top_tmux.py":
        "by hand: the TUI in tmux, 4 passed in bookworm, 94 s / 103 s; runs `top` with `auto`",
    "tests/kernel/test_pool_advice.py":
        "host only: its postgres test (postgres and pgbench are left out of the guest images for "
        "their size; it skips by name); its nginx test passed in bookworm (8 s)",
    "tests/kernel/test_offsets_from_headers.py":
        "by hand: compiles the programs against kernel headers, as on a kernel without BTF; "
        "2 passed in bullseye (its own kernel's headers), 82 s; it loads nothing a backend changes",
    "tests/kernel/test_netlab.py":
        "host only: checks the test helpers' timing (3-5 ms tolerances on connect time) that "
        "TCG does not meet (3 of 14 failed in bookworm, medians 3.4-6.8 ms); no BPF",
    "tests/kernel/test_procfs.py":
        "by hand: socket ownership from /proc, no BPF; 7 passed in bookworm, 33 s",
    "tests/kernel/test_sock_diag.py":
        "host only: test_ack_time_overflow_counts_twice_in_sk_drops needs the "
        "TCP_LISTEN_OVERFLOW drop reason (6.15+, the host's); the rest passed in bookworm (4, "
        "1 skipped: RLIMIT_NOFILE 4096 < 10100), no BPF",
    "tests/kernel/test_compiler_child.py":
        "host only: its check starts `python3 -I`, which finds the project only where it is "
        "installed (the host venv), not in the guest's copied tree (3 of 4 failed there: "
        "No module named 'tracer'); the isolation it tests does not depend on the kernel",
    "tests/kernel/test_tracepoint_hooks.py":
        "by hand: BTF (tp_btf), raw and classic tracepoint hooks loaded side by side, identical "
        "rows, and the fallbacks; passed in bullseye, bookworm and trixie on tracepoint, kprobe "
        "and fentry (2026-12-07; three compiles a backend, ~100 s with test_features.py). The "
        "CI guests run BTF hooks (the default wherever the kernel loads them) under every "
        "backend through KERNEL_SUITE, and test_features.py fails if they fall back",
    "tests/kernel/test_memory_per_connection.py":
        "by hand: reads /proc and the memory cgroup, no hook a guest kernel changes; passed in "
        "bullseye and trixie on cgroup v2 alone (2,048,389 and 2,055,639 B a connection against "
        "2,042,721 and 2,051,896 expected) and on the hybrid host (v1); 76 s a guest",
    "tests/kernel/test_socket_memory.py":
        "by hand: skmem from sock_diag against ss -tanpm, no BPF; passed in bullseye and "
        "trixie",
    "tests/kernel/test_fleet.py":
        "host only: two recordings in UTS and network namespaces merged into one tree; what it "
        "tests (file names, the per-host report, DuckDB over a fleet) does not depend on the "
        "kernel, and its recordings use the same hooks as test_record_cli",
    "tests/kernel/test_edges.py":
        "host only: PostgreSQL (the last hop of the issue's ab -> nginx -> service -> "
        "PostgreSQL chain) is not in the guest images; the connection map of real chains on "
        "loopback (Python servers; ab, nginx and PostgreSQL), 4 passed on the host; it records "
        "with `auto` and joins through sock_diag and /proc as test_record_cli does",
    "tests/kernel/test_containers.py":
        "by hand: real runc containers; passed in trixie (fentry; tracepoint with the "
        "--cgroup/--container filter tests) and bookworm (tracepoint) on cgroup v2 alone, and "
        "on the hybrid host (v2 ids from the unified hierarchy); skips by name in bullseye, "
        "whose runc 1.0.0~rc93 cannot start them there",
    "tests/kernel/test_namespace_listener_drops.py":
        "by hand: not yet run in a guest; the real `record` against a listener in a test-made "
        "namespace over a 50 ms link, 7 variants (~55 s on the host): on the guests' tracepoint "
        "kernels it skips by name (no ACK-time split before 6.15), on kprobe/fentry 4 variants "
        "would run, whose timing under TCG is unverified",
    "tests/kernel/test_prometheus.py":
        "host only: a real Prometheus server scrapes record --metrics; the endpoint reads the "
        "same events and snapshots on every kernel, and Debian's prometheus is not in the guest "
        "images",
    "tests/kernel/test_tcp_pressure.py":
        "by hand: in a guest only (it lowers the host-wide net.ipv4.tcp_mem); passed in "
        "bullseye and trixie (TCPMemoryPressures +1, seen by connscope); "
        "`vagrant/guest.py run --venv -- 'python3 -m pytest -m kernel FILE'`",
}
