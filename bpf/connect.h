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
 *   connect_forget  connect() failed before SYN_SENT (its syscall exit)
 *   connect_gone    tcp_destroy_sock: nothing outlives the socket; an entry
 *                   that reached SYN_SENT lost its exit, and is counted
 * An exit we never saw would otherwise leave an entry until its socket goes
 * (or, if that too was never seen, for ever: user space removes entries with
 * no sign of life for longer than the kernel ever waits between SYNs, and
 * counts them: tracer/probes/session.py, sweep_stale_connects).
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
    c.cgroup_id = bpf_get_current_cgroup_id();
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
    ev.cgroup_id = c->cgroup_id;
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

/* The socket is destroyed (tcp_destroy_sock): nothing of its connect may
 * outlive it. An entry still here that reached SYN_SENT (have_dest) lost its
 * way out of SYN_SENT: the kernel can fire the tracepoint and run neither
 * program on it, without counting a skipped run (seen in softirqs that
 * interrupted one process; BENCHMARKS.md section 29), so its outcome and
 * latency are not known: counted with the lost connects, once (a sweep that
 * got there first leaves nothing to delete). One that did not reach it is a
 * connect() that failed before (kprobe/fentry begin at tcp_v4/v6_connect):
 * that call's own error is reported elsewhere. */
static __always_inline void connect_gone(u64 sk)
{
    /* A lookup costs a fifth of a delete, and there is rarely anything. */
    struct inflight_connect *c = inflight.lookup(&sk);
    if (!c)
        return;
    u8 reached = c->have_dest;
    if (inflight.delete(&sk) == 0 && reached)
        count(CTR_CONNECT_ENDS_MISSED);
}

static __always_inline void connect_forget(u64 sk)
{
    /* A lookup costs a fifth of a delete, and there is rarely anything. */
    if (inflight.lookup(&sk))
        inflight.delete(&sk);
}

/* --- Failures connect() returns itself -------------------------------------
 *
 * A connect() that fails before the socket enters SYN_SENT (no route:
 * ENETUNREACH, or EHOSTUNREACH/EACCES/EINVAL from an unreachable, prohibit or
 * blackhole route; a cgroup connect hook's EPERM; an address the socket
 * cannot use) never changes the socket's state, so nothing above sees it.
 * These handlers watch the call itself, keyed by thread:
 *   connect_call_begin    the call enters, on a fresh TCP socket (the caller
 *                         checked connect_call_fresh): remember socket,
 *                         sockaddr and time
 *   connect_call_reached  the socket enters SYN_SENT inside the call: from
 *                         there its end is connect_end's (EADDRNOTAVAIL
 *                         included), so the call reports nothing
 *   connect_call_end      the call returns: an error from a call that never
 *                         reached SYN_SENT is one connect event, with the
 *                         errno the caller got and the destination it asked for
 * Where the call is seen: the tracepoint backend at the syscall
 * (sys_enter/exit_connect; the sockaddr is user memory), kprobe and fentry at
 * inet_stream_connect() (the kernel's copy), which also sees a cgroup
 * pre-connect hook's refusal and, for a v4-mapped address on an IPv6 socket,
 * counts once where tcp_v6_connect() calls tcp_v4_connect().
 */
#ifndef MAX_CONNECT_CALLS
#define MAX_CONNECT_CALLS 16384
#endif

#define SOCK_STREAM 1
#define SS_UNCONNECTED 1     /* enum socket_state: uapi (include/uapi/linux/net.h) */

/* struct connect_call is in event.h: user space sweeps the map.
 * One entry per thread inside connect(): bounded by threads, not by peers;
 * an insert that fails is counted (CTR_CONNECT_CALLS_FULL). A return we
 * never saw (recursion, a kretprobe instance short) leaves an entry that the
 * thread's next connect() replaces; user space removes any older than a
 * connect() can take before its socket enters SYN_SENT (session.py). */
BPF_HASH(connect_calls, u32, struct connect_call, MAX_CONNECT_CALLS);

/* A TCP socket on which connect() will call the protocol's connect: only a
 * socket that is unconnected (struct socket) and closed (struct sock) does;
 * any other gets EISCONN/EALREADY, or the error of an earlier non-blocking
 * connect that connect_end already reported. */
static __always_inline int connect_call_fresh(u32 sock_state, u64 sk)
{
    if (sock_state != SS_UNCONNECTED)
        return 0;
    if (READ_AT(sk, OFF_SK_PROTOCOL, u16) != IPPROTO_TCP)
        return 0;
    return READ_AT(sk, OFF_SKC_STATE, u8) == TCP_CLOSE;
}

/* The sockaddr is the caller's: user memory on the tracepoint backend (any
 * bytes another user chose), the kernel's copy of it on kprobe/fentry. Both
 * are read with the length the caller gave as the bound, and only in the
 * socket's own family (anything else failed with EINVAL/EAFNOSUPPORT before
 * it meant a destination: not reported). */
#ifdef BACKEND_TRACEPOINT
#define read_sockaddr bpf_probe_read_user
#else
#define read_sockaddr bpf_probe_read_kernel
#endif

static __always_inline int sockaddr_dest(u64 uaddr, u32 addrlen, u16 family,
                                         u16 *dport, u8 *daddr)
{
    u16 sa_family = 0, port = 0;
    /* (over 128, sizeof(struct sockaddr_storage), the kernel refused to copy it) */
    if (addrlen < sizeof(sa_family) || addrlen > 128 ||
        read_sockaddr(&sa_family, sizeof(sa_family), (void *)uaddr) != 0 ||
        sa_family != family)
        return 0;
    if (family == AF_INET) {
        if (addrlen < 16 || read_sockaddr(daddr, 4, (void *)(uaddr + 4)) != 0)
            return 0;
    } else {
        if (addrlen < 24 || read_sockaddr(daddr, 16, (void *)(uaddr + 8)) != 0)
            return 0;
    }
    if (read_sockaddr(&port, sizeof(port), (void *)(uaddr + 2)) != 0)
        return 0;
    *dport = bpf_ntohs(port);
    return 1;
}

static __always_inline void connect_call_begin(u64 sk, u64 uaddr, u32 addrlen)
{
    u16 family = READ_AT(sk, OFF_SKC_FAMILY, u16);
    if (!family_wanted(family))
        return;
    u64 id = bpf_get_current_pid_tgid();
    if (!current_task_wanted(id))
        return;
#ifdef FILTER_PORT
    /* --port: decided before anything is stored (the exit checks again) */
    u16 dport = 0;
    u8 daddr[16] = {};
    if (!sockaddr_dest(uaddr, addrlen, family, &dport, daddr) ||
        !ports_wanted(READ_AT(sk, OFF_SKC_NUM, u16), dport))
        return;
#endif
    u32 tid = (u32)id;
    struct connect_call c = {};
    c.sk = sk;
    c.uaddr = uaddr;
    c.addrlen = addrlen;
    c.ts_ns = bpf_ktime_get_ns();
    if (connect_calls.update(&tid, &c) != 0)
        count(CTR_CONNECT_CALLS_FULL);
}

/* Called where the socket enters SYN_SENT: inside connect(), current task. */
static __always_inline void connect_call_reached(u64 sk)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct connect_call *c = connect_calls.lookup(&tid);
    if (c && c->sk == sk)
        c->reached = 1;
}

static __always_inline void connect_call_end(void *ctx, long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct connect_call *c = connect_calls.lookup(&tid);
    if (!c)
        return;
    struct connect_call call = *c;
    connect_calls.delete(&tid);
    /* Success, or the SYN went out (connect_end reports the outcome); the
     * last three only when another thread's connect() on the same socket
     * got in first. */
    if (ret >= 0 || call.reached || ret == -EINPROGRESS || ret == -EALREADY ||
        ret == -EISCONN)
        return;
    u64 sk = call.sk;
    connect_forget(sk);   /* kprobe/fentry began it at tcp_v4/v6_connect */

    struct connect_event ev = {};
    ev.family = READ_AT(sk, OFF_SKC_FAMILY, u16);
    if (!sockaddr_dest(call.uaddr, call.addrlen, ev.family, &ev.dport, ev.daddr))
        return;
    /* A socket bound before connect() has its local address and port. */
    ev.sport = READ_AT(sk, OFF_SKC_NUM, u16);
    if (!ports_wanted(ev.sport, ev.dport))
        return;
    if (ev.family == AF_INET)
        bpf_probe_read_kernel(ev.saddr, 4, (void *)(sk + OFF_SKC_RCV_SADDR));
    else
        bpf_probe_read_kernel(ev.saddr, 16, (void *)(sk + OFF_SKC_V6_RCV_SADDR));
    ev.type = EV_CONNECT;
    ev.ts_start_ns = call.ts_ns;
    ev.ts_end_ns = bpf_ktime_get_ns();
    ev.pid = id >> 32;
    ev.tid = tid;
    ev.sk = sk;
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    ev.cgroup_id = bpf_get_current_cgroup_id();
    ev.err = -ret;
    /* (ECONNREFUSED/ETIMEDOUT only if the SYN_SENT tracepoint run was
     * skipped: then this is the one report of it, named as connect_end would) */
    if (ev.err == ENETUNREACH || ev.err == EHOSTUNREACH)
        ev.outcome = OUTCOME_UNREACHABLE;
    else if (ev.err == ECONNREFUSED)
        ev.outcome = OUTCOME_REFUSED;
    else if (ev.err == ETIMEDOUT)
        ev.outcome = OUTCOME_TIMEOUT;
    else
        ev.outcome = OUTCOME_ERROR;
    ev.netns = netns_of(sk);
    emit(ctx, &ev, sizeof(ev));
}

#endif
