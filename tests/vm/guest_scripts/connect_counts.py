"""Runs inside the test guest (tests/vm/test_guest_runner.py): counts this
process's loopback connects with a kprobe and an fentry program on
tcp_v4_connect, and prints one JSON line with both counts and the timings.

Usage: python3 connect_counts.py N
"""
import json
import socket
import sys
import time

t0 = time.monotonic()
from bcc import BPF  # noqa: E402  (timed: bcc's import is part of what we measure)

import_s = time.monotonic() - t0

PROGRAM = r"""
#include <net/sock.h>

BPF_ARRAY(counts, u64, 2);

static int bump(int slot)
{
    if (bpf_get_current_pid_tgid() >> 32 != TARGET_TGID)
        return 0;
    u64 *count = counts.lookup(&slot);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}

int kprobe__tcp_v4_connect(struct pt_regs *ctx) { return bump(0); }

KFUNC_PROBE(tcp_v4_connect, struct sock *sk) { return bump(1); }
"""


def connect_many(n: int) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(n)
        for _ in range(n):
            with socket.create_connection(listener.getsockname(), timeout=5):
                conn, _ = listener.accept()
                conn.close()


def main() -> None:
    n = int(sys.argv[1])
    t1 = time.monotonic()
    bpf = BPF(text=PROGRAM, cflags=[f"-DTARGET_TGID={__import__('os').getpid()}"])
    compile_s = time.monotonic() - t1
    connect_many(n)
    counts = bpf["counts"]
    print(json.dumps({
        "kprobe": counts[0].value,
        "kfunc": counts[1].value,
        "import_s": round(import_s, 2),
        "compile_s": round(compile_s, 2),
    }))


if __name__ == "__main__":
    main()
