/* connscope's kernel side: the hooks. Each hook is a thin wrapper that turns
 * its backend's arguments into a call to the shared handlers (connect.h, ...),
 * so every backend emits identical events.
 *
 * Backends (one of, -D from tracer/probes/program.py):
 *   BACKEND_TRACEPOINT  stable tracepoints only: works without kprobes/fentry
 *   BACKEND_KPROBE      kprobes on the TCP functions themselves
 *   BACKEND_FENTRY      BPF trampolines on the same functions (lowest cost)
 * and, with any of them:
 *   RAW_TRACEPOINTS     the tracepoints all backends share hooked as raw
 *                       tracepoints (the kernel has BTF; see below)
 * and, with kprobe or fentry:
 *   SYSCALL_EXIT_ACCEPT the syscall exit tracepoints of accept() are there:
 *                       compiled in, attached only while threads blocked in
 *                       accept() since before start have not returned
 */
#include "common.h"
#include "sockets.h"
#include "connect.h"
#include "listeners.h"

/* --- The tracepoints every backend hooks ------------------------------------
 *
 * As raw tracepoints (RAW_TRACEPOINTS: the kernel has BTF), each program gets
 * the tracepoint's own arguments (its TP_PROTO: the socket, the states) and
 * reads the socket's fields itself, at BTF offsets, reading only what it
 * uses: the kernel fills no trace record, and it guards each program against
 * recursion by itself instead of skipping every classic tracepoint program
 * while another BPF program runs on that CPU (bpf_prog_active). As classic
 * tracepoints otherwise (no BTF: offsets from the kernel's own headers), from
 * the trace record the format file describes. Either way each hook is a thin
 * wrapper that fills the same arguments for the same handlers below; the raw
 * ones read the fields the tracepoint itself records, from the same places
 * (include/trace/events/sock.h, tcp.h), so both see the same values. */

/* What the state-change handler takes from either kind of hook. */
struct state_change {
    u64 sk;
    int oldstate, newstate;
    u16 family, sport, dport;   /* ports in host order, as the record has them */
    u8 saddr[16], daddr[16];
};

/* Which of those sock_state_changed() reads for this change: a raw hook
 * reads only these from the socket (each read costs), and none at all for
 * the changes it passes over (FIN_WAIT1, CLOSE_WAIT, ...: half of them). */
#define NEED_FAMILY 1
#define NEED_SPORT 2
#define NEED_DPORT 4
#define NEED_ADDRS 8
#define NEED_PORTS (NEED_SPORT | NEED_DPORT)
static __always_inline u32 state_needs(int oldstate, int newstate)
{
    if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT)
        return NEED_FAMILY | NEED_DPORT | NEED_ADDRS;
    if (oldstate == TCP_SYN_SENT)
        return NEED_PORTS | NEED_ADDRS;
    if ((oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) ||
        (newstate == TCP_CLOSE && oldstate != TCP_LISTEN))
        return NEED_FAMILY | NEED_PORTS;
    if (newstate == TCP_LISTEN)
        return NEED_SPORT;
    return 0;
}

static __always_inline void sock_state_changed(void *ctx, struct state_change *s)
{
    u64 sk = s->sk;
    int oldstate = s->oldstate, newstate = s->newstate;
    u16 family = s->family;

    if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
#ifdef BACKEND_TRACEPOINT
        /* Inside connect(): current task is the caller. */
        connect_begin(sk, family, s->dport, s->daddr);
#else
        connect_dest(sk, s->dport, s->daddr);
#endif
        connect_call_reached(sk);
        return;
    }
    if (oldstate == TCP_SYN_SENT) {
        /* (family: the connect's own, from connect_begin) */
        connect_end(ctx, sk, newstate, s->sport, s->dport, s->saddr, s->daddr);
        return;
    }
    if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
        /* Same softirq that just put the child in the accept queue. */
        child_queued(sk, family, s->sport, s->dport);
        return;
    }
    if (newstate == TCP_CLOSE && oldstate != TCP_LISTEN) {
        if (family_wanted(family) && ports_wanted(s->sport, s->dport))
            sock_closed(ctx, sk, oldstate);
        return;
    }
    if (newstate == TCP_LISTEN && s->sport) {
        /* Inside listen(): current task owns the listener. (A listen()
         * without bind() gets its port only after this: seen later.) */
        listener_open(sk);
        return;
    }
    if (oldstate == TCP_LISTEN)
        listener_close(sk);
}

static __always_inline void sock_retransmitted(u64 sk, int state)
{
    if (state == TCP_SYN_SENT)
        connect_syn_rtx(sk);
}

static __always_inline void sock_destroyed(u64 sk, u16 dport)
{
    if (dport) {
        /* A connection (the common case, twice per connection): only a
         * child that was never accepted, or a connect whose end we never
         * saw, can have left something. */
        child_forget(sk);
        connect_gone(sk);
        return;
    }
    /* Not connected: a connect() that failed before SYN_SENT (the kernel
     * clears the port again), one closed by a reset (tcp_disconnect clears
     * it too), or a listener, which can go without a LISTEN -> CLOSE we saw
     * (its network namespace deleted, or known to us only from a drop). */
    connect_gone(sk);
    listener_close(sk);
}

#ifdef BACKEND_TRACEPOINT
#ifdef REASON_TCP_LISTEN_OVERFLOW
/* Without kprobes the drop points cannot be hooked. The ACK-time overflow
 * frees the packet with this reason and the listener as rx_sk (kernels that
 * have rx_sk); SYN-time drops are only in the listener's sk_drops, which
 * user space reads through sock_diag. */
static __always_inline void skb_freed(u64 rx_sk, int reason)
{
    if (!rx_sk)
        return;
    if (reason == REASON_TCP_LISTEN_OVERFLOW) {
        listener_overflow(rx_sk, OVERFLOW_ACK);
    } else if (reason == REASON_NO_SOCKET &&
               READ_AT(rx_sk, OFF_SKC_STATE, u8) == TCP_LISTEN) {
        /* A SYN-cookie ACK that found the queue full: no request socket,
         * so the kernel reports it as NO_SOCKET on the listener. */
        listener_overflow(rx_sk, OVERFLOW_COOKIE);
    }
}
#define HOOK_KFREE_SKB
#endif
#endif

#ifdef RAW_TRACEPOINTS
/* ctx->args[i]: argument i of the tracepoint's TP_PROTO. */

#ifdef OFFSETS_FROM_HEADERS
#error "raw tracepoints read fields at BTF offsets: not with OFFSETS_FROM_HEADERS"
#endif
/* Each bpf_probe_read_kernel() costs about as much for 24 bytes as for 2:
 * where the layout has them together (every kernel since 4.x), the fields
 * are read in one go: sock_common begins with daddr, rcv_saddr, hash,
 * dport, num, family; inet_sock keeps inet_saddr six bytes before
 * inet_sport. */
#define SK_HEAD 24
#ifdef TP_BTF
/* As BTF tracepoints (TP_BTF: tp_btf programs, BPF_PROG_TYPE_TRACING on the
 * same tracepoints, where the kernel loads them): the verifier knows that
 * argument 0 is a struct sock *, so each field the hook reads is a plain
 * load, which the JIT guards against faults, where a raw tracepoint pays a
 * helper call for each (bpf_probe_read_kernel). Same offsets, same values,
 * same handlers; the handlers' own reads stay helper calls. Each load must
 * stay inside one member (the verifier checks it against BTF), so the
 * one-read shortcuts below are for raw tracepoints only. */
#define SK_FIELD(sk, off, type) (*(volatile const type *)((const char *)(sk) + (off)))
#define TP_HOOK(name) int tp_btf__##name(struct bpf_raw_tracepoint_args *ctx)
#define TP_HOOK_COPY(name) int tp_btf__##name##__nested(struct bpf_raw_tracepoint_args *ctx)
#else
#define SK_FIELD(sk, off, type) READ_AT(sk, off, type)
#define TP_HOOK(name) RAW_TRACEPOINT_PROBE(name)
#define TP_HOOK_COPY(name) int raw_tracepoint__##name##__nested(struct bpf_raw_tracepoint_args *ctx)
#if OFF_SKC_DADDR + 4 <= SK_HEAD && OFF_SKC_DPORT + 2 <= SK_HEAD && OFF_SKC_FAMILY + 2 <= SK_HEAD
#define SK_HEAD_IN_ONE_READ
#endif
#if OFF_INET_SPORT == OFF_INET_SADDR + 6
#define INET_IN_ONE_READ
#endif
#endif

/* inet_sock_set_state(const struct sock *sk, int oldstate, int newstate) */
static __always_inline int set_state_raw(struct bpf_raw_tracepoint_args *ctx)
{
    struct state_change s = {};
    u64 sk = ctx->args[0];
    s.sk = sk;
    s.oldstate = (int)ctx->args[1];
    s.newstate = (int)ctx->args[2];
    u32 need = state_needs(s.oldstate, s.newstate);
    /* (a change that needs nothing only closes a listener we know: TCP's) */
    if (!need)
        goto run;
    if (SK_FIELD(sk, OFF_SK_PROTOCOL, u16) != IPPROTO_TCP)
        return 0;
    u32 daddr4 = 0, saddr4 = 0;
    if (need & (NEED_FAMILY | NEED_DPORT | NEED_ADDRS)) {
#ifdef SK_HEAD_IN_ONE_READ
        u8 head[SK_HEAD];
        bpf_probe_read_kernel(head, sizeof(head), (const void *)sk);
        __builtin_memcpy(&s.family, head + OFF_SKC_FAMILY, 2);
        __builtin_memcpy(&s.dport, head + OFF_SKC_DPORT, 2);
        __builtin_memcpy(&daddr4, head + OFF_SKC_DADDR, 4);
#else
        s.family = SK_FIELD(sk, OFF_SKC_FAMILY, u16);
        s.dport = SK_FIELD(sk, OFF_SKC_DPORT, u16);
        daddr4 = SK_FIELD(sk, OFF_SKC_DADDR, u32);
#endif
        s.dport = bpf_ntohs(s.dport);
    }
    /* sport is inet_sport, not skc_num: the record's, which a socket that
     * gave its port back at CLOSE still has (connect_outcome relies on it) */
    if (need & (NEED_SPORT | NEED_ADDRS)) {
#ifdef INET_IN_ONE_READ
        u8 inet[8];
        bpf_probe_read_kernel(inet, sizeof(inet), (const char *)sk + OFF_INET_SADDR);
        __builtin_memcpy(&saddr4, inet, 4);
        __builtin_memcpy(&s.sport, inet + 6, 2);
#elif defined(TP_BTF)
        /* inet_sock's fields lie beyond struct sock, all the verifier lets
         * the argument reach: the kernel's own cast (a helper that checks
         * for a full TCP socket, which it is: it is in a TCP state change)
         * widens it. */
        u64 tp = (u64)bpf_skc_to_tcp_sock((void *)sk);
        if (tp) {
            saddr4 = SK_FIELD(tp, OFF_INET_SADDR, u32);
            s.sport = SK_FIELD(tp, OFF_INET_SPORT, u16);
        } else {
            saddr4 = READ_AT(sk, OFF_INET_SADDR, u32);
            s.sport = READ_AT(sk, OFF_INET_SPORT, u16);
        }
#else
        saddr4 = SK_FIELD(sk, OFF_INET_SADDR, u32);
        s.sport = SK_FIELD(sk, OFF_INET_SPORT, u16);
#endif
        s.sport = bpf_ntohs(s.sport);
    }
    if (need & NEED_ADDRS) {
        if (s.family == AF_INET) {
            __builtin_memcpy(s.saddr, &saddr4, 4);
            __builtin_memcpy(s.daddr, &daddr4, 4);
        } else {
            bpf_probe_read_kernel(s.saddr, 16, (const char *)sk + OFF_SKC_V6_RCV_SADDR);
            bpf_probe_read_kernel(s.daddr, 16, (const char *)sk + OFF_SKC_V6_DADDR);
        }
    }
run:
    sock_state_changed(ctx, &s);
    return 0;
}

/* A state change can happen in an interrupt that arrives while this CPU
 * runs the program for another one (a loopback softirq inside connect()).
 * The kernel skips a raw tracepoint program already running on that CPU
 * (its recursion_misses), so the inner change would be lost. A second copy
 * of the program, attached to the same tracepoint, runs right after the
 * first in the same call and handles the change if the first did not.
 *
 * The first program leaves a mark of the change it took in a per-CPU slot
 * of its own stack level (the task's own stack, or another: the CPU's
 * interrupt stack, where softirqs run); the copy, in the same call and so on
 * the same level, finds it there, or handles the change. A change nested in
 * the first's run is on the other level and cannot overwrite the outer's
 * mark, wherever in the first's run it came: so the copy handles exactly
 * the runs the kernel skipped (kernels that do not skip run the first
 * nested, which marks its level's slot; the copy finds that mark). What the
 * kernel counted but no copy handled is shown as lost (session.py).
 *
 * (An earlier form had the copy handle a change only while a per-CPU flag
 * said the first was running: the kernel marks a program running a little
 * before its first instruction and a little after its last, and a softirq
 * in those windows was skipped and not handled: 0-35 % of the skipped runs
 * at the ceiling, BENCHMARKS.md sections 21 and 26.) */
#define RUNNING_SET_STATE 0
#define RUNNING_DESTROY 1
struct taken_mark {
    u64 sk;       /* the socket (0: none) */
    u64 states;   /* a state change's two states */
};
BPF_PERCPU_ARRAY(taken, struct taken_mark, 4);

/* A task's stack is THREAD_SIZE bytes: the loader's -DTASK_STACK_SIZE
 * with BTF offsets (offsets.py task_stack_size), the headers' own without. */
#ifndef TASK_STACK_SIZE
#define TASK_STACK_SIZE THREAD_SIZE
#endif

/* The slot for this call: the program's pair, then 0 if the tracepoint's
 * arguments (kept on the caller's stack) are on the current task's stack,
 * 1 if not. Comparing a pointer needs CAP_PERFMON, which loading needs. */
static __always_inline int taken_slot(struct bpf_raw_tracepoint_args *ctx, int hook)
{
#if defined(TP_BTF) && defined(HAVE_CURRENT_TASK_BTF)
    /* a plain load, as for the socket's fields (5.11+) */
    u64 stack = SK_FIELD(bpf_get_current_task_btf(), OFF_TASK_STACK, u64);
#else
    u64 stack = READ_AT(bpf_get_current_task(), OFF_TASK_STACK, u64);
#endif
    if ((u64)ctx >= stack && (u64)ctx < stack + TASK_STACK_SIZE)
        return hook * 2;
    return hook * 2 + 1;
}

/* A state change's two states, for its mark (with the socket: a mark is
 * two fields, as the verifier lets no arithmetic touch a BTF pointer) */
static __always_inline u64 change_states(struct bpf_raw_tracepoint_args *ctx)
{
    return (ctx->args[1] & 15) << 4 | (ctx->args[2] & 15);
}

/* 1 if the first program took this change (and its mark is cleared) */
static __always_inline int first_took(struct bpf_raw_tracepoint_args *ctx, int hook, u64 states)
{
    int slot = taken_slot(ctx, hook);
    struct taken_mark *seen = taken.lookup(&slot);
    if (!seen)
        return 1;
    if (seen->sk == ctx->args[0] && seen->states == states) {
        seen->sk = 0;
        return 1;
    }
    return 0;
}

static __always_inline void mark_taken(struct bpf_raw_tracepoint_args *ctx, int hook, u64 states)
{
    int slot = taken_slot(ctx, hook);
    struct taken_mark *seen = taken.lookup(&slot);
    if (seen) {
        seen->sk = ctx->args[0];
        seen->states = states;
    }
}

TP_HOOK(inet_sock_set_state)
{
    mark_taken(ctx, RUNNING_SET_STATE, change_states(ctx));
    return set_state_raw(ctx);
}

TP_HOOK_COPY(inet_sock_set_state)
{
    if (first_took(ctx, RUNNING_SET_STATE, change_states(ctx)))
        return 0;
    count(CTR_NESTED_STATE_CHANGES);
    return set_state_raw(ctx);
}

/* tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req) */
TP_HOOK(tcp_retransmit_synack)
{
    synack_retransmit(ctx->args[0]);
    return 0;
}

/* tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb[, int err]) */
TP_HOOK(tcp_retransmit_skb)
{
    u64 sk = ctx->args[0];
    sock_retransmitted(sk, SK_FIELD(sk, OFF_SKC_STATE, u8));
    return 0;
}

/* tcp_destroy_sock(struct sock *sk); a socket destroyed in a softirq while
 * this CPU runs the program for another is handled by a nested copy, as for
 * inet_sock_set_state above. */
static __always_inline int destroy_raw(struct bpf_raw_tracepoint_args *ctx)
{
    u64 sk = ctx->args[0];
    sock_destroyed(sk, SK_FIELD(sk, OFF_SKC_DPORT, u16));
    return 0;
}

TP_HOOK(tcp_destroy_sock)
{
    mark_taken(ctx, RUNNING_DESTROY, 0);
    return destroy_raw(ctx);
}

TP_HOOK_COPY(tcp_destroy_sock)
{
    if (first_took(ctx, RUNNING_DESTROY, 0))
        return 0;
    count(CTR_NESTED_DESTROYS);
    return destroy_raw(ctx);
}

#ifdef HOOK_KFREE_SKB
/* kfree_skb(skb, location, reason, rx_sk): which argument is which comes
 * from the kernel's BTF (btf_trace_kfree_skb), -D by the loader. */
RAW_TRACEPOINT_PROBE(kfree_skb)
{
    skb_freed(ctx->args[KFREE_SKB_RX_SK_ARG], (int)ctx->args[KFREE_SKB_REASON_ARG]);
    return 0;
}
#endif

#else /* classic tracepoints */

/* Tracepoint argument arrays are 4 bytes for IPv4: widen to the event's 16. */
#define ADDR16(dst, args, v4, v6, family)                                    \
    do {                                                                     \
        if ((family) == AF_INET)                                             \
            __builtin_memcpy((dst), (args)->v4, 4);                          \
        else                                                                 \
            __builtin_memcpy((dst), (args)->v6, 16);                         \
    } while (0)

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    struct state_change s = {};
    s.sk = (u64)args->skaddr;
    s.oldstate = args->oldstate;
    s.newstate = args->newstate;
    s.family = args->family;
    s.sport = args->sport;
    s.dport = args->dport;
    if (state_needs(s.oldstate, s.newstate) & NEED_ADDRS) {
        ADDR16(s.saddr, args, saddr, saddr_v6, s.family);
        ADDR16(s.daddr, args, daddr, daddr_v6, s.family);
    }
    sock_state_changed(args, &s);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_synack)
{
    synack_retransmit((u64)args->skaddr);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    sock_retransmitted((u64)args->skaddr, args->state);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_destroy_sock)
{
    sock_destroyed((u64)args->skaddr, args->dport);
    return 0;
}

#ifdef HOOK_KFREE_SKB
#ifndef OFFSETS_FROM_HEADERS
/* The tracepoint's struct names this enum; the generic headers may lack it
 * (or have another kernel's values). Its values come from BTF, so an
 * int-sized stand-in is all the compiler needs. */
enum skb_drop_reason { CONNSCOPE_SKB_DROP_REASON_FROM_BTF = 0 };
#endif
TRACEPOINT_PROBE(skb, kfree_skb)
{
    skb_freed((u64)args->rx_sk, args->reason);
    return 0;
}
#endif
#endif /* RAW_TRACEPOINTS */

#ifdef BACKEND_TRACEPOINT
/* connect() failing before SYN_SENT (connect.h, connect_call_*). Every
 * connect() of every process comes here (UDP, AF_UNIX too): anything but a
 * fresh TCP socket leaves after a few reads. private_data is a struct socket
 * only if fd is a socket: its sock must point back at it. */
TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    u64 sock = socket_of_fd((int)args->fd);
    struct socket_fields f = {};
    if (!sock || !socket_fields_of(sock, &f) || f.type != SOCK_STREAM)
        return 0;
    u64 sk = f.sk;
    if (!sk || !connect_call_fresh(f.state, sk) || READ_AT(sk, OFF_SK_SOCKET, u64) != sock)
        return 0;
    connect_call_begin(sk, (u64)args->uservaddr, (u32)args->addrlen);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    connect_call_end(args, args->ret);
    return 0;
}
#endif

/* accept() has no tracepoint of its own: the syscall ones are the only
 * process-context hook here. They tax every syscall a little (see
 * BENCHMARKS.md); the kprobe and fentry backends attach only the exit ones,
 * and only while a thread that was blocked in accept() before we started
 * has not returned from it (below; SYSCALL_EXIT_ACCEPT: the kernel has the
 * syscall tracepoints, which bcc needs to compile them). */
#if defined(BACKEND_TRACEPOINT) || defined(SYSCALL_EXIT_ACCEPT)
static __always_inline void accept_exit_fd(void *ctx, long ret)
{
    accept_end(ctx, ret >= 0 ? sk_of_fd((int)ret) : 0, 0);
}

#ifdef BACKEND_TRACEPOINT
static __always_inline void accept_enter_fd(int fd)
{
    u64 lsk = sk_of_fd(fd);
    if (lsk && READ_AT(lsk, OFF_SKC_STATE, u8) == TCP_LISTEN)
        accept_begin(lsk);
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept4)
{
    accept_enter_fd((int)args->fd);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept)
{
    accept_enter_fd((int)args->fd);
    return 0;
}

static __always_inline void accept_exited(void *ctx, long ret)
{
    accept_exit_fd(ctx, ret);
}
#else
/* kprobe/fentry: a call already blocked in inet_csk_accept when the
 * kretprobe/fexit is attached returns through neither (they are armed on
 * entry). So user space puts the threads it finds blocked in accept() into
 * `blocked_accepts` before it attaches anything, attaches the two exit
 * tracepoints below (always loaded, attached only then), and only then the
 * function hooks. A thread's entry goes at its first return from accept():
 * through the kretprobe/fexit (accept_returned: a call seen from its
 * start, which its syscall exit, on the same thread right after, must not
 * count again) or here, for the call that began before we started. User
 * space detaches these when the map is empty. */
static __always_inline void accept_exited(void *ctx, long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (!blocked_accepts.lookup(&tid))
        return;
    blocked_accepts.delete(&tid);
    accept_exit_fd(ctx, ret);
}
#endif

TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
    accept_exited(args, args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
    accept_exited(args, args->ret);
    return 0;
}
#endif

#if defined(BACKEND_KPROBE) || defined(BACKEND_FENTRY)
/* Shared by the two backends that hook the TCP functions themselves. */
#define ETH_P_IP 0x0800

#ifdef OFFSETS_FROM_HEADERS
#include <linux/skbuff.h>
#define OFF_SKB_PROTOCOL offsetof(struct sk_buff, protocol)
#endif

/* tcp_v6_connect() hands a v4-mapped destination to tcp_v4_connect(): the
 * outer call is the connect, and its family is the socket's (AF_INET6), as
 * in the tracepoint backend's events. */
static __always_inline void connect_entered(u64 sk, u16 fn_family)
{
    u16 family = READ_AT(sk, OFF_SKC_FAMILY, u16);
    if (fn_family == AF_INET && family != AF_INET)
        return;   /* called from tcp_v6_connect, which began it */
    connect_begin(sk, family, 0, 0);
}

/* inet_stream_connect(sock, uaddr, addr_len, flags): every connect() of a
 * TCP socket (and io_uring's, and the kernel's own), before the cgroup
 * pre-connect hook and before tcp_v4/v6_connect (connect.h, connect_call_*). */
static __always_inline void stream_connect_entered(u64 sock, u64 uaddr, int addr_len)
{
    struct socket_fields f = {};
    if (socket_fields_of(sock, &f) && f.sk && connect_call_fresh(f.state, f.sk))
        connect_call_begin(f.sk, uaddr, (u32)addr_len);
}

/* inet_csk_accept returned through the kretprobe/fexit: a call seen from its
 * start. If its thread was blocked in accept() when we started, it is not
 * blocked since then any more: the syscall exit must not count this call. */
static __always_inline void accept_returned(void *ctx, u64 child, u64 lsk)
{
#ifdef SYSCALL_EXIT_ACCEPT
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (blocked_accepts.lookup(&tid))
        blocked_accepts.delete(&tid);
#endif
    accept_end(ctx, child, lsk);
}

/* The two places the kernel drops for a full accept queue: the SYN
 * (tcp_conn_request), and the handshake's last ACK (syn_recv_sock). Entry
 * and return are both hooked: the drop is decided when the call returns
 * (listeners.h, drop_check_*). */
static __always_inline void conn_request_entered(u64 lsk, u64 skb)
{
    drop_check_push(lsk, skb, OVERFLOW_SYN, 0);
}

static __always_inline void conn_request_returned(u64 skb)
{
    drop_check_returned(skb, 0);
}

/* syn_recv_sock(sk, skb, req, dst, req_unhash, own_req): req_unhash is the
 * request socket for a handshake the listener kept (tcp_check_req), NULL for
 * a SYN cookie (tcp_get_cookie_sock). For an IPv4 packet on a dual-stack
 * IPv6 listener, tcp_v6_syn_recv_sock() calls tcp_v4_syn_recv_sock(), which
 * alone checks the queue and counts the overflow: count it there, once (the
 * outer call's entry is kept, marked skip, so that returns pair up). */
static __always_inline void syn_recv_sock_entered(u64 lsk, u64 skb, u64 req_unhash, int v6)
{
    int skip = v6 && READ_AT(skb, OFF_SKB_PROTOCOL, u16) == bpf_htons(ETH_P_IP);
    drop_check_push(lsk, skb, req_unhash ? OVERFLOW_ACK : OVERFLOW_COOKIE, skip);
}

static __always_inline void syn_recv_sock_returned(u64 skb, u64 child)
{
    drop_check_returned(skb, child != 0);
}
#endif

#ifdef BACKEND_KPROBE
#include <uapi/linux/ptrace.h>

int kp_tcp_v4_connect(struct pt_regs *ctx)
{
    connect_entered((u64)PT_REGS_PARM1(ctx), AF_INET);
    return 0;
}

int kp_tcp_v6_connect(struct pt_regs *ctx)
{
    connect_entered((u64)PT_REGS_PARM1(ctx), AF_INET6);
    return 0;
}

int kp_inet_stream_connect(struct pt_regs *ctx)
{
    stream_connect_entered((u64)PT_REGS_PARM1(ctx), (u64)PT_REGS_PARM2(ctx),
                           (int)PT_REGS_PARM3(ctx));
    return 0;
}

int kretp_inet_stream_connect(struct pt_regs *ctx)
{
    connect_call_end(ctx, (long)(int)PT_REGS_RC(ctx));
    return 0;
}

int kp_inet_csk_accept(struct pt_regs *ctx)
{
    accept_begin((u64)PT_REGS_PARM1(ctx));
    return 0;
}

int kretp_inet_csk_accept(struct pt_regs *ctx)
{
    /* The listener is no longer in the registers here: an accept() whose
     * entry probe did not run (attached in between) finds it from the
     * child's key. (One already blocked before we attached returns through
     * no kretprobe at all: those are armed on entry; see accept_exited.) */
    accept_returned(ctx, (u64)PT_REGS_RC(ctx), 0);
    return 0;
}

int kp_tcp_conn_request(struct pt_regs *ctx)
{
    conn_request_entered((u64)PT_REGS_PARM3(ctx), (u64)PT_REGS_PARM4(ctx));
    return 0;
}

int kretp_tcp_conn_request(struct pt_regs *ctx)
{
    conn_request_returned(0);
    return 0;
}

int kp_tcp_v4_syn_recv_sock(struct pt_regs *ctx)
{
    syn_recv_sock_entered((u64)PT_REGS_PARM1(ctx), (u64)PT_REGS_PARM2(ctx),
                          (u64)PT_REGS_PARM5(ctx), 0);
    return 0;
}

int kp_tcp_v6_syn_recv_sock(struct pt_regs *ctx)
{
    syn_recv_sock_entered((u64)PT_REGS_PARM1(ctx), (u64)PT_REGS_PARM2(ctx),
                          (u64)PT_REGS_PARM5(ctx), 1);
    return 0;
}

/* A kretprobe has no arguments: the skb is not known at return. */
int kretp_tcp_v4_syn_recv_sock(struct pt_regs *ctx)
{
    syn_recv_sock_returned(0, (u64)PT_REGS_RC(ctx));
    return 0;
}

int kretp_tcp_v6_syn_recv_sock(struct pt_regs *ctx)
{
    syn_recv_sock_returned(0, (u64)PT_REGS_RC(ctx));
    return 0;
}
#endif

#ifdef BACKEND_FENTRY
/* NO_FENTRY_<FUNCTION>: that optional function is absent here (IPv6 built as
 * a module or off, or hidden for a test); its hook is left out, since bcc
 * attaches every KFUNC_PROBE in the text. */
KFUNC_PROBE(tcp_v4_connect, void *sk)
{
    connect_entered((u64)sk, AF_INET);
    return 0;
}

#ifndef NO_FENTRY_TCP_V6_CONNECT
KFUNC_PROBE(tcp_v6_connect, void *sk)
{
    connect_entered((u64)sk, AF_INET6);
    return 0;
}
#endif

#ifndef NO_FENTRY_INET_STREAM_CONNECT
KFUNC_PROBE(inet_stream_connect, void *sock, void *uaddr, int addr_len)
{
    stream_connect_entered((u64)sock, (u64)uaddr, addr_len);
    return 0;
}

KRETFUNC_PROBE(inet_stream_connect, void *sock, void *uaddr, int addr_len, int flags, int ret)
{
    connect_call_end(ctx, ret);
    return 0;
}
#endif

KFUNC_PROBE(inet_csk_accept, void *sk)
{
    accept_begin((u64)sk);
    return 0;
}

/* fexit finds the return value after all the arguments, and the number of
 * arguments changed in 6.10 (the loader reads it from BTF). */
#if INET_CSK_ACCEPT_NARGS == 2
KRETFUNC_PROBE(inet_csk_accept, void *sk, void *arg, void *ret)
#else
KRETFUNC_PROBE(inet_csk_accept, void *sk, int flags, void *err, int kern, void *ret)
#endif
{
    accept_returned(ctx, (u64)ret, (u64)sk);
    return 0;
}

KFUNC_PROBE(tcp_conn_request, void *rsk_ops, void *af_ops, void *sk, void *skb)
{
    conn_request_entered((u64)sk, (u64)skb);
    return 0;
}

KRETFUNC_PROBE(tcp_conn_request, void *rsk_ops, void *af_ops, void *sk, void *skb, int ret)
{
    conn_request_returned((u64)skb);
    return 0;
}

KFUNC_PROBE(tcp_v4_syn_recv_sock, void *sk, void *skb, void *req, void *dst, void *req_unhash)
{
    syn_recv_sock_entered((u64)sk, (u64)skb, (u64)req_unhash, 0);
    return 0;
}

/* The return value follows the parameters, and 6.12 added a seventh
 * (offsets.fentry_cflags counts them in the kernel's BTF). */
#if TCP_V4_SYN_RECV_SOCK_NARGS == 6
KRETFUNC_PROBE(tcp_v4_syn_recv_sock, void *sk, void *skb, void *req, void *dst,
               void *req_unhash, void *own_req, void *ret)
#elif TCP_V4_SYN_RECV_SOCK_NARGS == 7
KRETFUNC_PROBE(tcp_v4_syn_recv_sock, void *sk, void *skb, void *req, void *dst,
               void *req_unhash, void *own_req, void *opt_child_init, void *ret)
#else
#error "tcp_v4_syn_recv_sock: a signature this program does not know"
#endif
{
    syn_recv_sock_returned((u64)skb, (u64)ret);
    return 0;
}

#ifndef NO_FENTRY_TCP_V6_SYN_RECV_SOCK
KFUNC_PROBE(tcp_v6_syn_recv_sock, void *sk, void *skb, void *req, void *dst, void *req_unhash)
{
    syn_recv_sock_entered((u64)sk, (u64)skb, (u64)req_unhash, 1);
    return 0;
}

/* The return value follows the parameters, and 6.12 added a seventh
 * (offsets.fentry_cflags counts them in the kernel's BTF). */
#if TCP_V6_SYN_RECV_SOCK_NARGS == 6
KRETFUNC_PROBE(tcp_v6_syn_recv_sock, void *sk, void *skb, void *req, void *dst,
               void *req_unhash, void *own_req, void *ret)
#elif TCP_V6_SYN_RECV_SOCK_NARGS == 7
KRETFUNC_PROBE(tcp_v6_syn_recv_sock, void *sk, void *skb, void *req, void *dst,
               void *req_unhash, void *own_req, void *opt_child_init, void *ret)
#else
#error "tcp_v6_syn_recv_sock: a signature this program does not know"
#endif
{
    syn_recv_sock_returned((u64)skb, (u64)ret);
    return 0;
}
#endif
#endif
