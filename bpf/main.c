/* connscope's kernel side: the hooks. Each hook is a thin wrapper that turns
 * its backend's arguments into a call to the shared handlers (connect.h, ...),
 * so every backend emits identical events.
 *
 * Backends (one of, -D from tracer/probes/program.py):
 *   BACKEND_TRACEPOINT  stable tracepoints only: works without kprobes/fentry
 *   BACKEND_KPROBE      kprobes on the TCP functions themselves
 *   BACKEND_FENTRY      BPF trampolines on the same functions (lowest cost)
 */
#include "common.h"
#include "connect.h"

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
#ifdef BACKEND_TRACEPOINT
        /* Inside connect(): current task is the caller. */
        connect_begin(sk, family);
#endif
        u8 daddr[16] = {};
        ADDR16(daddr, args, daddr, daddr_v6, family);
        connect_dest(sk, args->dport, daddr);
        return 0;
    }
    if (oldstate == TCP_SYN_SENT) {
        u8 saddr[16] = {}, daddr[16] = {};
        ADDR16(saddr, args, saddr, saddr_v6, family);
        ADDR16(daddr, args, daddr, daddr_v6, family);
        connect_end(args, sk, newstate, args->sport, args->dport, saddr, daddr);
    }
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
    connect_forget((u64)args->skaddr);
    return 0;
}

#ifdef BACKEND_KPROBE
int kp_tcp_v4_connect(struct pt_regs *ctx)
{
    connect_begin((u64)PT_REGS_PARM1(ctx), AF_INET);
    return 0;
}

int kp_tcp_v6_connect(struct pt_regs *ctx)
{
    connect_begin((u64)PT_REGS_PARM1(ctx), AF_INET6);
    return 0;
}
#endif

#ifdef BACKEND_FENTRY
KFUNC_PROBE(tcp_v4_connect, void *sk)
{
    connect_begin((u64)sk, AF_INET);
    return 0;
}

KFUNC_PROBE(tcp_v6_connect, void *sk)
{
    connect_begin((u64)sk, AF_INET6);
    return 0;
}
#endif
