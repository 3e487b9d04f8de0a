/* Connection lifetimes: from the handshake to CLOSE, for every connection we
 * saw opened in process context (connect() or accept()), so that churn and
 * hold times can be told per process and destination. What sockets each
 * process holds right now is not tracked here: user space reads that exactly
 * from the kernel's socket table and /proc (tracer/probes/socket_owners.py).
 */
#ifndef CONNSCOPE_SOCKETS_H
#define CONNSCOPE_SOCKETS_H

#include "common.h"

#ifndef MAX_OWNED
#define MAX_OWNED 262144
#endif

struct owned_sock {
    u64 ts_open_ns;
    u32 pid;
    u16 rport;
    u16 lport;
    u8 raddr[16];
    u8 family;
    u8 passive;
    u8 pad[6];
    char comm[16];
};

BPF_HASH(owned, u64, struct owned_sock, MAX_OWNED);

static __always_inline void sock_opened(u64 sk, u64 ts_open_ns, u32 pid, const char *comm,
                                        u8 family, const u8 *raddr, u16 rport, u16 lport,
                                        u8 passive)
{
    struct owned_sock o = {};
    o.ts_open_ns = ts_open_ns;
    o.pid = pid;
    o.family = family;
    o.rport = rport;
    o.lport = lport;
    o.passive = passive;
    __builtin_memcpy(o.raddr, raddr, 16);
    __builtin_memcpy(o.comm, comm, 16);
    if (owned.update(&sk, &o) != 0)
        count(CTR_OWNED_FULL);
}

static __always_inline void sock_closed(void *ctx, u64 sk, int oldstate)
{
    struct owned_sock *o = owned.lookup(&sk);
    if (!o)
        return;
    struct close_event ev = {};
    ev.type = EV_CLOSE;
    ev.ts_ns = bpf_ktime_get_ns();
    ev.ts_open_ns = o->ts_open_ns;
    ev.pid = o->pid;
    ev.sk = sk;
    ev.family = o->family;
    ev.rport = o->rport;
    ev.lport = o->lport;
    ev.passive = o->passive;
    ev.oldstate = oldstate;
    __builtin_memcpy(ev.raddr, o->raddr, 16);
    __builtin_memcpy(ev.comm, o->comm, 16);
    owned.delete(&sk);
    emit(ctx, &ev, sizeof(ev));
}

static __always_inline void sock_forget(u64 sk)
{
    owned.delete(&sk);
}

#endif
