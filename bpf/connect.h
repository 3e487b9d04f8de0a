/* Connect latency: from connect() to the first answer, with the outcome and
 * the SYN retransmits in between. Handlers only; the hooks that call them are
 * in main.c, one thin wrapper per backend.
 *
 * Life of an entry in `inflight` (keyed by the kernel socket address):
 *   connect_begin   process context (the caller's pid and comm are right here);
 *                   the tracepoint backend begins when the socket enters
 *                   SYN_SENT and passes the destination along (one update)
 *   connect_dest    kprobe/fentry: the socket enters SYN_SENT, destination known
 *   connect_syn_rtx each SYN retransmit (a sign of life: ts_active_ns)
 *   connect_end     the socket leaves SYN_SENT: one event, entry deleted
 *   connect_forget  tcp_destroy_sock of a socket whose connect() failed
 *                   before SYN_SENT (kprobe/fentry only): nothing outlives it
 * An exit we never saw (the tracepoint skipped for BPF recursion) would leave
 * an entry for ever: user space removes entries with no sign of life for
 * longer than the kernel ever waits between SYNs, and counts them
 * (tracer/probes/session.py, sweep_stale_connects).
 */
#ifndef CONNSCOPE_CONNECT_H
#define CONNSCOPE_CONNECT_H

#include "common.h"

#ifndef MAX_INFLIGHT
#define MAX_INFLIGHT 65536
#endif

/* struct inflight_connect is in event.h: user space reads the map. */
BPF_HASH(inflight, u64, struct inflight_connect, MAX_INFLIGHT);

/* daddr: the destination when it is already known (NULL: connect_dest
 * brings it); inlined, so the test is decided at compile time. */
static __always_inline void connect_begin(u64 sk, u16 family, u16 dport, const u8 *daddr)
{
    if (!family_wanted(family))
        return;
    struct inflight_connect c = {};
    u64 id = bpf_get_current_pid_tgid();
    c.pid = id >> 32;
    c.tid = (u32)id;
    bpf_get_current_comm(&c.comm, sizeof(c.comm));
    if (!task_wanted(c.pid, c.comm))
        return;
    c.family = family;
    c.ts_ns = bpf_ktime_get_ns();
    c.ts_active_ns = c.ts_ns;
    if (daddr) {
        c.dport = dport;
        __builtin_memcpy(c.daddr, daddr, 16);
        c.have_dest = 1;
    }
    if (inflight.update(&sk, &c) != 0)
        count(CTR_INFLIGHT_FULL);
}

/* The destination is set before the socket enters SYN_SENT, the source port
 * only after (inet_hash_connect); and if no source port can be had, the
 * kernel clears the destination again before we see the failure. So keep it. */
static __always_inline void connect_dest(u64 sk, u16 dport, const u8 *daddr)
{
    struct inflight_connect *c = inflight.lookup(&sk);
    if (!c)
        return;
    c->dport = dport;
    __builtin_memcpy(c->daddr, daddr, 16);
    c->have_dest = 1;
}

static __always_inline void connect_syn_rtx(u64 sk)
{
    struct inflight_connect *c = inflight.lookup(&sk);
    if (c) {
        c->syn_retransmits++;
        c->ts_active_ns = bpf_ktime_get_ns();
    }
}

/* Why the socket left SYN_SENT. tcp_reset() and tcp_write_err() (and
 * tcp_v4_err()/tcp_v6_err() for an ICMP error) set sk_err before tcp_done()
 * moves the socket to CLOSE, so it names the cause here. No sk_err: either
 * the application closed the socket (close(), exit, connect(AF_UNSPEC): its
 * own timeout gave up), or connect() itself failed after entering SYN_SENT.
 * The only such failure that leaves no source port is inet_hash_connect()
 * finding none free: EADDRNOTAVAIL (-ENOMEM there is the other, too rare to
 * tell apart without a return probe); a SYN that went out had a port. */
static __always_inline u8 connect_outcome(u64 sk, int newstate, u16 sport, s32 *err)
{
    if (newstate == TCP_ESTABLISHED || newstate == TCP_SYN_RECV)
        return OUTCOME_ESTABLISHED;   /* SYN_RECV: a crossing SYN, the peer answered */
    *err = READ_AT(sk, OFF_SK_ERR, int);
    if (*err == ECONNREFUSED)
        return OUTCOME_REFUSED;
    if (*err == ETIMEDOUT)
        return OUTCOME_TIMEOUT;
    if (*err)
        return OUTCOME_UNREACHABLE;
    if (sport == 0) {
        *err = EADDRNOTAVAIL;
        return OUTCOME_ERROR;
    }
    return OUTCOME_ABANDONED;
}

static __always_inline void connect_end(void *ctx, u64 sk, int newstate, u16 sport,
                                        u16 dport, const u8 *saddr, const u8 *daddr)
{
    struct inflight_connect *c = inflight.lookup(&sk);
    if (!c)
        return;
    struct connect_event ev = {};
    ev.type = EV_CONNECT;
    ev.ts_end_ns = bpf_ktime_get_ns();
    ev.ts_start_ns = c->ts_ns;
    ev.pid = c->pid;
    ev.tid = c->tid;
    ev.sk = sk;
    ev.family = c->family;
    ev.syn_retransmits = c->syn_retransmits;
    __builtin_memcpy(ev.comm, c->comm, sizeof(ev.comm));
    __builtin_memcpy(ev.saddr, saddr, 16);
    ev.sport = sport;
    if (dport == 0 && c->have_dest) {
        ev.dport = c->dport;
        __builtin_memcpy(ev.daddr, c->daddr, 16);
    } else {
        ev.dport = dport;
        __builtin_memcpy(ev.daddr, daddr, 16);
    }
    inflight.delete(&sk);

    ev.netns = netns_of(sk);
    ev.outcome = connect_outcome(sk, newstate, sport, &ev.err);
    if (!ports_wanted(ev.sport, ev.dport))
        return;
    emit(ctx, &ev, sizeof(ev));
}

static __always_inline void connect_forget(u64 sk)
{
    /* A lookup costs a fifth of a delete, and there is rarely anything. */
    if (inflight.lookup(&sk))
        inflight.delete(&sk);
}

#endif
