/* Accept queues: per-listener counters aggregated in the kernel (overflows,
 * SYN-ACK retransmits, accepts, queue peak) and one event per accepted
 * connection with how long it waited in the queue.
 *
 * Counters are kept per listening socket, keyed by its kernel address: the
 * members of an SO_REUSEPORT group share a key (netns, family, address,
 * port) but are separate sockets, opened and closed on their own (a reload
 * replaces them), and one shared entry restarted whenever any member came
 * or went. User space sums the members of each key. The queue peak is kept
 * per key (the highest of any member's queue).
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
#ifndef MAX_BLOCKED_ACCEPTS
#define MAX_BLOCKED_ACCEPTS 16384
#endif

BPF_HASH(listeners, u64, struct listener_stats, MAX_LISTENERS);
/* Peak accept queue since user space last deleted the entry (each interval).
 * Separate from `listeners` so that resetting it cannot lose counter updates. */
BPF_HASH(listener_peak, struct listener_key, u32, MAX_LISTENERS);
/* A listening socket of each key: how an accept() that began before we
 * started (no `accepting` entry) finds its listener from the child's key. */
BPF_HASH(listener_of_key, struct listener_key, u64, MAX_LISTENERS);
/* Children between handshake and accept(): when they were queued (ns).
 * An entry goes at accept() (whoever accepts: filters do not keep it) or
 * when its socket is destroyed (tcp_destroy_sock, child_forget), so it
 * lives no longer than its connection. Only accepts no hook sees (io_uring,
 * in-kernel) keep theirs until the connection closes: over 65k of those
 * alive at once fill the map, and each wait not measured then is counted
 * (CTR_HANDSHAKES_FULL). Not an LRU map: its evictions would lose waits
 * without a count. */
BPF_HASH(handshakes, u64, u64, MAX_HANDSHAKES);
/* accept() in progress on this thread: the listening socket. */
BPF_HASH(accepting, u32, u64, 16384);
#if !defined(BACKEND_TRACEPOINT) && defined(SYSCALL_EXIT_ACCEPT)
/* kprobe/fentry: threads user space found blocked in accept() before it
 * attached anything (tracer/probes/blocked_accepts.py). Only user space adds
 * entries, bounded by what it scans (a failed insert is counted there); each
 * goes at the thread's next return from accept() (main.c). */
BPF_HASH(blocked_accepts, u32, u8, MAX_BLOCKED_ACCEPTS);
#endif

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

static __always_inline void key_of_stats(struct listener_stats *st, struct listener_key *k)
{
    __builtin_memcpy(k->addr, st->addr, 16);
    k->netns = st->netns;
    k->port = st->port;
    k->family = st->family;
    k->pad = 0;
}

/* Take lsk's key into its entry (at listen(), and when the entry is made),
 * and make lsk the socket an accept() of that key is traced back to. */
static __always_inline void stats_take_key(struct listener_stats *st, u64 lsk)
{
    struct listener_key k = {};
    local_key_of(lsk, &k);
    __builtin_memcpy(st->addr, k.addr, 16);
    st->netns = k.netns;
    st->port = k.port;
    st->family = k.family;
    listener_of_key.update(&k, &lsk);
}

/* The entry of listening socket lsk, made if it has none. */
static __always_inline struct listener_stats *listener_get(u64 lsk)
{
    struct listener_stats *st = listeners.lookup(&lsk);
    if (st)
        return st;
    struct listener_stats zero = {};
    zero.sk = lsk;
    if (listeners.insert(&lsk, &zero) != 0 && !listeners.lookup(&lsk)) {
        count(CTR_LISTENERS_FULL);
        return 0;
    }
    st = listeners.lookup(&lsk);
    if (st)
        stats_take_key(st, lsk);
    return st;
}

/* The accept queue held q connections: keep the listener's gauges and the
 * interval's peak. The queue only grows at handshakes and only shrinks at
 * accept(), so the peak is seen at accept() (as q + the one taken) and at
 * overflow; handshakes, which happen in the connecting side's softirq, need
 * not look. */
static __always_inline void note_queue_len(struct listener_stats *st, u64 lsk, u32 q, u32 qmax)
{
    st->backlog_max = qmax;
    st->syn_queue_len = READ_AT(lsk, OFF_ICSK_ACCEPT_QUEUE_QLEN, u32);
    struct listener_key k = {};
    key_of_stats(st, &k);
    u32 *peak = listener_peak.lookup(&k);
    if (!peak)
        listener_peak.update(&k, &q);
    else if (q > *peak)
        *peak = q;
}

static __always_inline void note_queue(struct listener_stats *st, u64 lsk)
{
    note_queue_len(st, lsk, READ_AT(lsk, OFF_SK_ACK_BACKLOG, u32),
                   READ_AT(lsk, OFF_SK_MAX_ACK_BACKLOG, u32));
}

/* listen(): process context, so the owner is the current task. The
 * counters carry on from whatever socket had this address before (user
 * space has its counts up to its last read), and so do `cookie` and
 * `drops_at_close`: that socket's last sk_drops, which user space may not
 * have read yet. */
static __always_inline void listener_open(u64 lsk)
{
    struct listener_stats *st = listener_get(lsk);
    if (!st)
        return;
    stats_take_key(st, lsk);
    u64 id = bpf_get_current_pid_tgid();
    st->pid = id >> 32;
    bpf_get_current_comm(&st->comm, sizeof(st->comm));
    st->closed = 0;
    note_queue(st, lsk);
}

/* LISTEN -> CLOSE, or a destroyed socket that was never connected. The
 * socket's sk_drops is final now and sock_diag will not show it again:
 * keep it, with the cookie sock_diag knew the socket by (sock_diag gives
 * every socket it lists one), for user space's last difference. */
static __always_inline void listener_close(u64 lsk)
{
    struct listener_stats *st = listeners.lookup(&lsk);
    if (!st || st->closed)
        return;
    st->cookie = READ_AT(lsk, OFF_SKC_COOKIE, u64);
    st->drops_at_close = READ_AT(lsk, OFF_SK_DROPS, u32);
    st->closed = 1;
    struct listener_key k = {};
    key_of_stats(st, &k);
    u64 *indexed = listener_of_key.lookup(&k);
    if (indexed && *indexed == lsk)
        listener_of_key.delete(&k);
}

/* A passive child finished its handshake and sits in the accept queue:
 * only the time, for the wait accept() will measure. (This runs in the
 * softirq of the connecting side's packet, on a loopback connect inside the
 * client's connect(): keep it to a clock read and one update.) The port and
 * family filters apply here already; the process filters cannot (the
 * acceptor is not known yet): accept_end removes the entry for any
 * acceptor. */
static __always_inline void child_queued(u64 child, u16 family, u16 lport, u16 rport)
{
    if (!family_wanted(family) || !ports_wanted(lport, rport))
        return;
    u64 ts = bpf_ktime_get_ns();
    if (handshakes.update(&child, &ts) != 0)
        count(CTR_HANDSHAKES_FULL);
}

/* The accept queue was full: a connection (ACK time, with a request socket
 * or from a SYN cookie) or a SYN was dropped. kind: OVERFLOW_*. */
static __always_inline void listener_overflow(u64 lsk, int kind)
{
    struct listener_stats *st = listener_get(lsk);
    if (!st)
        return;
    if (kind == OVERFLOW_SYN)
        __sync_fetch_and_add(&st->syn_overflows, 1);
    else if (kind == OVERFLOW_COOKIE)
        __sync_fetch_and_add(&st->cookie_overflows, 1);
    else
        __sync_fetch_and_add(&st->ack_overflows, 1);
    note_queue(st, lsk);
}

static __always_inline int acceptq_full(u64 lsk)
{
    return READ_AT(lsk, OFF_SK_ACK_BACKLOG, u32) > READ_AT(lsk, OFF_SK_MAX_ACK_BACKLOG, u32);
}

#if defined(BACKEND_KPROBE) || defined(BACKEND_FENTRY)
/* kprobe/fentry: a drop point's call (tcp_conn_request for the SYN,
 * tcp_v4/v6_syn_recv_sock for the handshake's last ACK) is judged when it
 * returns, from what its entry saw. The kernel tests the queue between the
 * two (sk_acceptq_is_full), and an accept() on another CPU can empty it
 * meanwhile: "full on entry" alone counted a drop the kernel did not make
 * (fentry 428, ListenOverflows 427 under nginx). A drop is counted when the
 * call really dropped (its tcp_listendrop() moved the listener's sk_drops,
 * and syn_recv_sock returned no socket) and the queue was full on entry or
 * on return, around the kernel's own test. Left inexact, for tcp_conn_request
 * alone, whose return says nothing: another CPU's drop on the same listener
 * during a SYN that was not dropped although the queue was full at one end
 * (two races at once; before fexit read syn_recv_sock's return, fentry
 * once counted 842 drops against ListenOverflows 841).
 *
 * The entries wait in a small per-CPU stack: these calls run in softirq, or
 * from release_sock() with a softirq able to nest on top on the same CPU
 * (LIFO), and a kretprobe has no arguments. Indexing modulo the size keeps
 * pairs matched even after a call whose return was not seen (attached
 * mid-call). */
#define DROP_CHECK_DEPTH 4
struct drop_check {
    u64 lsk;
    u64 skb;
    u32 drops;    /* the listener's sk_drops on entry */
    u8 full;      /* the accept queue was full on entry */
    u8 kind;      /* OVERFLOW_* if this call drops */
    u8 skip;      /* counted by an inner call (see syn_recv_sock_entered) */
    u8 pad;
};
struct drop_checks {
    u32 depth;
    u32 pad;
    struct drop_check slot[DROP_CHECK_DEPTH];
};
BPF_PERCPU_ARRAY(drop_checks, struct drop_checks, 1);

static __always_inline void drop_check_push(u64 lsk, u64 skb, int kind, int skip)
{
    int zero = 0;
    struct drop_checks *s = drop_checks.lookup(&zero);
    if (!s)
        return;
    struct drop_check *c = &s->slot[s->depth & (DROP_CHECK_DEPTH - 1)];
    c->lsk = lsk;
    c->skb = skb;
    c->kind = kind;
    c->skip = skip;
    c->full = skip ? 0 : acceptq_full(lsk);
    c->drops = skip ? 0 : READ_AT(lsk, OFF_SK_DROPS, u32);
    s->depth++;
}

/* The entry of the call now returning (skb: the call's own, 0 when the
 * hook does not have it), or 0. */
static __always_inline struct drop_check *drop_check_pop(u64 skb)
{
    int zero = 0;
    struct drop_checks *s = drop_checks.lookup(&zero);
    if (!s || s->depth == 0)
        return 0;
    s->depth--;
    struct drop_check *c = &s->slot[s->depth & (DROP_CHECK_DEPTH - 1)];
    if (c->skip || !c->lsk || (skb && c->skb != skb))
        return 0;
    return c;
}

/* The call of a drop point returned; made: it made the connection's socket
 * (syn_recv_sock returned one; tcp_conn_request does not say: 0). Dropped
 * means tcp_listendrop() ran in the call: the listener's sk_drops moved.
 * (syn_recv_sock also returns NULL without a drop: a SYN-cookie ACK whose
 * connection another CPU made first, found_dup_sk.) */
static __always_inline void drop_check_returned(u64 skb, int made)
{
    struct drop_check *c = drop_check_pop(skb);
    if (!c || made)
        return;
    u64 lsk = c->lsk;
    if (READ_AT(lsk, OFF_SK_DROPS, u32) != c->drops && (c->full || acceptq_full(lsk)))
        listener_overflow(lsk, c->kind);
}
#endif

static __always_inline void synack_retransmit(u64 lsk)
{
    struct listener_stats *st = listener_get(lsk);
    if (st)
        __sync_fetch_and_add(&st->synack_retransmits, 1);
}

/* accept() entered on this thread for listening socket lsk. */
static __always_inline void accept_begin(u64 lsk)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!current_task_wanted(id))
        return;
    u32 tid = (u32)id;
    /* Threads blocked in accept() are another user's to create: past the
     * map's size an accept goes unseen, and that is counted. */
    if (accepting.update(&tid, &lsk) != 0)
        count(CTR_ACCEPTING_FULL);
}

/* The listener a child was accepted from, for an accept() that began before
 * we started: one socket of the child's key (a member of an SO_REUSEPORT
 * group stands for the group; user space sums them), or of the wildcard. */
static __always_inline u64 listener_of_child(struct listener_key *child_key)
{
    struct listener_key k = *child_key;
    u64 *lsk = listener_of_key.lookup(&k);
    if (!lsk) {
        __builtin_memset(k.addr, 0, 16);
        lsk = listener_of_key.lookup(&k);
    }
    if (!lsk || READ_AT(*lsk, OFF_SKC_STATE, u8) != TCP_LISTEN)
        return 0;
    return *lsk;
}

/* accept() returned child (0 on failure): process context. lsk_arg: the
 * listening socket when the hook has it (fexit), else 0. */
static __always_inline void accept_end(void *ctx, u64 child, u64 lsk_arg)
{
    if (!child)
        return;
    /* Whoever accepted it, the child left the queue: its entry goes now,
     * also when the acceptor is filtered out (it would stay as long as the
     * connection otherwise). */
    u64 queued = 0;
    u64 *qp = handshakes.lookup(&child);
    if (qp) {
        queued = *qp;
        handshakes.delete(&child);
    }
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    u64 lsk = lsk_arg;
    u64 *lskp = accepting.lookup(&tid);
    if (lskp) {
        lsk = *lskp;
        accepting.delete(&tid);
    } else {
        /* Blocked in accept() since before we started (or filtered out):
         * accept_begin never ran for it. */
        if (!current_task_wanted(id))
            return;
    }

    struct accept_event ev = {};
    ev.type = EV_ACCEPT;
    ev.ts_ns = bpf_ktime_get_ns();
    ev.pid = id >> 32;
    ev.tid = tid;
    ev.sk = child;
    ev.ts_handshake_ns = queued;
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));

    struct listener_key k = {};
    local_key_of(child, &k);
    /* A child the peer reset while it sat in the queue is in CLOSE now, and
     * CLOSE gave its port back: tcp_set_state() -> inet_put_port() zeroes
     * skc_num. inet_sport keeps the port it was accepted on (the listener's),
     * as the kernel's own tracepoints report it. */
    k.port = bpf_ntohs(READ_AT(child, OFF_INET_SPORT, u16));
    ev.family = k.family;
    ev.netns = k.netns;
    ev.lport = k.port;
    __builtin_memcpy(ev.laddr, k.addr, 16);
    remote_of(child, k.family, ev.raddr, &ev.rport);
    if (!family_wanted(ev.family) || !ports_wanted(ev.lport, ev.rport))
        return;
    if (!lsk)
        lsk = listener_of_child(&k);

    if (lsk) {
        /* The queue as accept() found it: what is left plus the one it took. */
        ev.backlog_len = READ_AT(lsk, OFF_SK_ACK_BACKLOG, u32) + 1;
        ev.backlog_max = READ_AT(lsk, OFF_SK_MAX_ACK_BACKLOG, u32);
        struct listener_stats *st = listener_get(lsk);
        if (st) {
            __sync_fetch_and_add(&st->accepts, 1);
            note_queue_len(st, lsk, ev.backlog_len, ev.backlog_max);
        }
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
