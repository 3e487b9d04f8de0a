/* Accept queues: per-listener counters aggregated in the kernel (overflows,
 * SYN-ACK retransmits, accepts, queue peak) and one event per accepted
 * connection with how long it waited in the queue.
 *
 * Listeners are keyed by what they are bound to (family, address, port), so
 * that every hook can find the same entry whether it sees the listening
 * socket itself (listen(), accept(), a drop) or only a child's local end.
 * Handlers only; the hooks that call them are in main.c.
 */
#ifndef CONNSCOPE_LISTENERS_H
#define CONNSCOPE_LISTENERS_H

#include "common.h"

#ifndef MAX_LISTENERS
#define MAX_LISTENERS 4096
#endif
#ifndef MAX_HANDSHAKES
#define MAX_HANDSHAKES 65536
#endif

BPF_HASH(listeners, struct listener_key, struct listener_stats, MAX_LISTENERS);
/* Peak accept queue since user space last deleted the entry (each interval).
 * Separate from `listeners` so that resetting it cannot lose counter updates. */
BPF_HASH(listener_peak, struct listener_key, u32, MAX_LISTENERS);
/* Children between handshake and accept(): when they were queued (ns). */
BPF_HASH(handshakes, u64, u64, MAX_HANDSHAKES);
/* accept() in progress on this thread: the listening socket. */
BPF_HASH(accepting, u32, u64, 16384);

static __always_inline void local_key_of(u64 sk, struct listener_key *k)
{
    k->netns = netns_of(sk);
    k->family = READ_AT(sk, OFF_SKC_FAMILY, u16);
    k->port = READ_AT(sk, OFF_SKC_NUM, u16);
    if (k->family == AF_INET) {
        u32 a = READ_AT(sk, OFF_SKC_RCV_SADDR, u32);
        __builtin_memcpy(k->addr, &a, 4);
    } else {
        bpf_probe_read_kernel(k->addr, 16, (const char *)sk + OFF_SKC_V6_RCV_SADDR);
    }
}

static __always_inline void remote_of(u64 sk, u16 family, u8 *addr, u16 *port)
{
    *port = bpf_ntohs(READ_AT(sk, OFF_SKC_DPORT, u16));
    if (family == AF_INET) {
        u32 a = READ_AT(sk, OFF_SKC_DADDR, u32);
        __builtin_memcpy(addr, &a, 4);
    } else {
        bpf_probe_read_kernel(addr, 16, (const char *)sk + OFF_SKC_V6_DADDR);
    }
}

static __always_inline struct listener_stats *listener_get(struct listener_key *k)
{
    struct listener_stats *st = listeners.lookup(k);
    if (st)
        return st;
    struct listener_stats zero = {};
    if (listeners.insert(k, &zero) != 0 && !listeners.lookup(k)) {
        count(CTR_LISTENERS_FULL);
        return 0;
    }
    return listeners.lookup(k);
}

/* The entry of listening socket lsk, found without reading lsk's address
 * when it can be: k holds the local end of a child lsk just accepted, which
 * is lsk's own key, or (lsk bound to the wildcard address) the same with the
 * address zeroed. An entry counts as found only if it was last seen with lsk
 * itself; otherwise (first accept since we started, SO_REUSEPORT groups that
 * share a key) lsk's key is read and its entry looked up or made. On return
 * k is the key of the entry. */
static __always_inline struct listener_stats *listener_for_accept(u64 lsk, struct listener_key *k)
{
    struct listener_stats *st = listeners.lookup(k);
    if (st && st->sk == lsk)
        return st;
    __builtin_memset(k->addr, 0, 16);
    st = listeners.lookup(k);
    if (st && st->sk == lsk)
        return st;
    local_key_of(lsk, k);
    return listener_get(k);
}

/* The accept queue held q connections: keep the listener's gauges and the
 * interval's peak. The queue only grows at handshakes and only shrinks at
 * accept(), so the peak is seen at accept() (as q + the one taken) and at
 * overflow; handshakes, which happen in the connecting side's softirq, need
 * not look. */
static __always_inline void note_queue_len(struct listener_key *k, struct listener_stats *st,
                                           u64 lsk, u32 q, u32 qmax)
{
    st->sk = lsk;
    st->backlog_max = qmax;
    st->syn_queue_len = READ_AT(lsk, OFF_ICSK_ACCEPT_QUEUE_QLEN, u32);
    u32 *peak = listener_peak.lookup(k);
    if (!peak)
        listener_peak.update(k, &q);
    else if (q > *peak)
        *peak = q;
}

static __always_inline void note_queue(struct listener_key *k, struct listener_stats *st, u64 lsk)
{
    note_queue_len(k, st, lsk, READ_AT(lsk, OFF_SK_ACK_BACKLOG, u32),
                   READ_AT(lsk, OFF_SK_MAX_ACK_BACKLOG, u32));
}

/* listen(): process context, so the owner is the current task. */
static __always_inline void listener_open(u64 lsk)
{
    struct listener_key k = {};
    local_key_of(lsk, &k);
    struct listener_stats *st = listener_get(&k);
    if (!st)
        return;
    u64 id = bpf_get_current_pid_tgid();
    st->pid = id >> 32;
    bpf_get_current_comm(&st->comm, sizeof(st->comm));
    st->closed = 0;
    note_queue(&k, st, lsk);
}

/* The key comes from the caller: by the time LISTEN -> CLOSE is traced the
 * kernel has already released the port (inet_num is 0). */
static __always_inline void listener_close(u64 lsk, struct listener_key *k)
{
    struct listener_stats *st = listeners.lookup(k);
    if (st && st->sk == lsk)
        st->closed = 1;
}

/* A passive child finished its handshake and sits in the accept queue:
 * only the time, for the wait accept() will measure. (This runs in the
 * softirq of the connecting side's packet, on a loopback connect inside the
 * client's connect(): keep it to a clock read and one update.) */
static __always_inline void child_queued(u64 child)
{
    u64 ts = bpf_ktime_get_ns();
    if (handshakes.update(&child, &ts) != 0)
        count(CTR_HANDSHAKES_FULL);
}

/* The accept queue was full: a connection (ACK time, with a request socket
 * or from a SYN cookie) or a SYN was dropped. kind: OVERFLOW_*. */
static __always_inline void listener_overflow(u64 lsk, int kind)
{
    struct listener_key k = {};
    local_key_of(lsk, &k);
    struct listener_stats *st = listener_get(&k);
    if (!st)
        return;
    if (kind == OVERFLOW_SYN)
        __sync_fetch_and_add(&st->syn_overflows, 1);
    else if (kind == OVERFLOW_COOKIE)
        __sync_fetch_and_add(&st->cookie_overflows, 1);
    else
        __sync_fetch_and_add(&st->ack_overflows, 1);
    note_queue(&k, st, lsk);
}

static __always_inline int acceptq_full(u64 lsk)
{
    return READ_AT(lsk, OFF_SK_ACK_BACKLOG, u32) > READ_AT(lsk, OFF_SK_MAX_ACK_BACKLOG, u32);
}

static __always_inline void synack_retransmit(u64 lsk)
{
    struct listener_key k = {};
    local_key_of(lsk, &k);
    struct listener_stats *st = listener_get(&k);
    if (st) {
        __sync_fetch_and_add(&st->synack_retransmits, 1);
        st->sk = lsk;
    }
}

/* accept() entered on this thread for listening socket lsk. */
static __always_inline void accept_begin(u64 lsk)
{
    u64 id = bpf_get_current_pid_tgid();
    char comm[16] = {};
#ifdef FILTER_COMM
    bpf_get_current_comm(&comm, sizeof(comm));   /* (accept_end reads it for the event) */
#endif
    if (!task_wanted(id >> 32, comm))
        return;
    u32 tid = (u32)id;
    /* Threads blocked in accept() are another user's to create: past the
     * map's size an accept goes unseen, and that is counted. */
    if (accepting.update(&tid, &lsk) != 0)
        count(CTR_ACCEPTING_FULL);
}

/* accept() returned child (0 on failure): process context. */
static __always_inline void accept_end(void *ctx, u64 child)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    u64 *lskp = accepting.lookup(&tid);
    if (!lskp)
        return;
    u64 lsk = *lskp;
    accepting.delete(&tid);
    if (!child)
        return;

    struct accept_event ev = {};
    ev.type = EV_ACCEPT;
    ev.ts_ns = bpf_ktime_get_ns();
    ev.pid = id >> 32;
    ev.tid = tid;
    ev.sk = child;
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));

    struct listener_key k = {};
    local_key_of(child, &k);
    ev.family = k.family;
    ev.netns = k.netns;
    ev.lport = k.port;
    __builtin_memcpy(ev.laddr, k.addr, 16);
    remote_of(child, k.family, ev.raddr, &ev.rport);
    if (!family_wanted(ev.family) || !ports_wanted(ev.lport, ev.rport))
        return;

    u64 *queued = handshakes.lookup(&child);
    if (queued) {
        ev.ts_handshake_ns = *queued;
        handshakes.delete(&child);
    }
    /* The queue as accept() found it: what is left plus the one it took. */
    ev.backlog_len = READ_AT(lsk, OFF_SK_ACK_BACKLOG, u32) + 1;
    ev.backlog_max = READ_AT(lsk, OFF_SK_MAX_ACK_BACKLOG, u32);

    struct listener_stats *st = listener_for_accept(lsk, &k);
    if (st) {
        __sync_fetch_and_add(&st->accepts, 1);
        note_queue_len(&k, st, lsk, ev.backlog_len, ev.backlog_max);
    }
    emit(ctx, &ev, sizeof(ev));
}

static __always_inline void child_forget(u64 sk)
{
    /* Accepted children are gone from the map already: look before deleting. */
    if (handshakes.lookup(&sk))
        handshakes.delete(&sk);
}

#endif
