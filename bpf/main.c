/* connscope's kernel side: the hooks. Each hook is a thin wrapper that turns
 * its backend's arguments into a call to the shared handlers (connect.h, ...),
 * so every backend emits identical events.
 *
 * Backends (one of, -D from tracer/probes/program.py):
 *   BACKEND_TRACEPOINT  stable tracepoints only: works without kprobes/fentry
 *   BACKEND_KPROBE      kprobes on the TCP functions themselves
 *   BACKEND_FENTRY      BPF trampolines on the same functions (lowest cost)
 * and, with kprobe or fentry:
 *   SYSCALL_EXIT_ACCEPT the syscall exit tracepoints of accept() are there:
 *                       compiled in, attached only while threads blocked in
 *                       accept() since before start have not returned
 */
#include "common.h"
#include "sockets.h"
#include "connect.h"
#include "listeners.h"

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
    u64 sk = (u64)args->skaddr;
    int oldstate = args->oldstate, newstate = args->newstate;
    u16 family = args->family;

    if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
        u8 daddr[16] = {};
        ADDR16(daddr, args, daddr, daddr_v6, family);
#ifdef BACKEND_TRACEPOINT
        /* Inside connect(): current task is the caller. */
        connect_begin(sk, family, args->dport, daddr);
#else
        connect_dest(sk, args->dport, daddr);
#endif
        connect_call_reached(sk);
        return 0;
    }
    if (oldstate == TCP_SYN_SENT) {
        u8 saddr[16] = {}, daddr[16] = {};
        ADDR16(saddr, args, saddr, saddr_v6, family);
        ADDR16(daddr, args, daddr, daddr_v6, family);
        connect_end(args, sk, newstate, args->sport, args->dport, saddr, daddr);
        return 0;
    }
    if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
        /* Same softirq that just put the child in the accept queue. */
        child_queued(sk, family, args->sport, args->dport);
        return 0;
    }
    if (newstate == TCP_CLOSE && oldstate != TCP_LISTEN) {
        if (family_wanted(family) && ports_wanted(args->sport, args->dport))
            sock_closed(args, sk, oldstate);
        return 0;
    }
    if (newstate == TCP_LISTEN && args->sport) {
        /* Inside listen(): current task owns the listener. (A listen()
         * without bind() gets its port only after this: seen later.) */
        listener_open(sk);
        return 0;
    }
    if (oldstate == TCP_LISTEN)
        listener_close(sk);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_synack)
{
    synack_retransmit((u64)args->skaddr);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    if (args->state == TCP_SYN_SENT)
        connect_syn_rtx((u64)args->skaddr);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_destroy_sock)
{
    u64 sk = (u64)args->skaddr;
    if (args->dport) {
        /* A connection (the common case, twice per connection): only a
         * child that was never accepted can have left something. */
        child_forget(sk);
        return 0;
    }
    /* Not connected: a connect() that failed before SYN_SENT (the kernel
     * clears the port again), or a listener, which can go without a
     * LISTEN -> CLOSE we saw (its network namespace deleted, or known to us
     * only from a drop). */
    connect_forget(sk);
    listener_close(sk);
    return 0;
}

#ifdef BACKEND_TRACEPOINT
#ifdef REASON_TCP_LISTEN_OVERFLOW
#ifndef OFFSETS_FROM_HEADERS
/* The tracepoint's struct names this enum; the generic headers may lack it
 * (or have another kernel's values). Its values come from BTF, so an
 * int-sized stand-in is all the compiler needs. */
enum skb_drop_reason { CONNSCOPE_SKB_DROP_REASON_FROM_BTF = 0 };
#endif
/* Without kprobes the drop points cannot be hooked. The ACK-time overflow
 * frees the packet with this reason and the listener as rx_sk (kernels that
 * have rx_sk); SYN-time drops are only in the listener's sk_drops, which
 * user space reads through sock_diag. */
TRACEPOINT_PROBE(skb, kfree_skb)
{
    u64 rx_sk = (u64)args->rx_sk;
    if (!rx_sk)
        return 0;
    if (args->reason == REASON_TCP_LISTEN_OVERFLOW) {
        listener_overflow(rx_sk, OVERFLOW_ACK);
    } else if (args->reason == REASON_NO_SOCKET &&
               READ_AT(rx_sk, OFF_SKC_STATE, u8) == TCP_LISTEN) {
        /* A SYN-cookie ACK that found the queue full: no request socket,
         * so the kernel reports it as NO_SOCKET on the listener. */
        listener_overflow(rx_sk, OVERFLOW_COOKIE);
    }
    return 0;
}
#endif
#endif

#ifdef BACKEND_TRACEPOINT
/* connect() failing before SYN_SENT (connect.h, connect_call_*). Every
 * connect() of every process comes here (UDP, AF_UNIX too): anything but a
 * fresh TCP socket leaves after a few reads. private_data is a struct socket
 * only if fd is a socket: its sock must point back at it. */
TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    u64 sock = socket_of_fd((int)args->fd);
    /* (struct socket's type first: UDP, the common other connect(), leaves
     * two reads sooner) */
    if (!sock || READ_AT(sock, OFF_SOCKET_TYPE, u16) != SOCK_STREAM)
        return 0;
    u64 sk = READ_AT(sock, OFF_SOCKET_SK, u64);
    if (!sk || READ_AT(sk, OFF_SK_SOCKET, u64) != sock || !connect_call_fresh(sock, sk))
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
    u64 sk = READ_AT(sock, OFF_SOCKET_SK, u64);
    if (sk && connect_call_fresh(sock, sk))
        connect_call_begin(sk, uaddr, (u32)addr_len);
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

/* Without the return value: 6.12 added a seventh parameter, which moves
 * it; whether the call dropped is told by the listener's sk_drops. */
KRETFUNC_PROBE(tcp_v4_syn_recv_sock, void *sk, void *skb)
{
    syn_recv_sock_returned((u64)skb, 0);
    return 0;
}

#ifndef NO_FENTRY_TCP_V6_SYN_RECV_SOCK
KFUNC_PROBE(tcp_v6_syn_recv_sock, void *sk, void *skb, void *req, void *dst, void *req_unhash)
{
    syn_recv_sock_entered((u64)sk, (u64)skb, (u64)req_unhash, 1);
    return 0;
}

/* Without the return value: 6.12 added a seventh parameter, which moves
 * it; whether the call dropped is told by the listener's sk_drops. */
KRETFUNC_PROBE(tcp_v6_syn_recv_sock, void *sk, void *skb)
{
    syn_recv_sock_returned((u64)skb, 0);
    return 0;
}
#endif
#endif
