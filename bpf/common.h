/* Helpers every probe family uses: event transport, loss counters, filters,
 * and reading kernel struct fields at offsets the loader took from BTF.
 *
 * Compile-time switches (passed as -D by tracer/probes/program.py, never
 * spliced into the text):
 *   USE_PERF_BUFFER      kernel has no BPF ring buffer (< 5.8)
 *   RINGBUF_PAGES        ring buffer size in pages
 *   FILTER_PID           only processes listed in filter_pid
 *   FILTER_COMM          only tasks whose comm equals filter_comm[0]
 *   FILTER_PORT          only connections with a local or remote port in filter_port
 *   FILTER_FAMILY=2|10   only IPv4 or only IPv6
 *   FILTER_CGROUP        only tasks in a cgroup v2 listed in filter_cgroup
 *   CGROUP_ANCESTORS     ... or below one (the kernel lets tracing programs
 *                        call bpf_get_current_ancestor_cgroup_id: tested by
 *                        tracer/probes/cgroup_filter.py)
 *   OFF_<NAME>           struct member offsets (see tracer/probes/offsets.py)
 */
#ifndef CONNSCOPE_COMMON_H
#define CONNSCOPE_COMMON_H

#include "event.h"

/* Without BTF, offsets come from the running kernel's own headers (below).
 * They go first: the names defined next are enum constants in them
 * (IPPROTO_TCP, TCP_*), which a macro defined earlier would break. */
#ifdef OFFSETS_FROM_HEADERS
#include <net/sock.h>
#include <net/inet_connection_sock.h>
#include <linux/fdtable.h>
#include <linux/net.h>
#endif

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* TCP states: part of the kernel's tracepoint ABI (include/net/tcp_states.h) */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN 10

#define ECONNREFUSED 111
#define ETIMEDOUT 110
#define EADDRNOTAVAIL 99
#define ENETUNREACH 101
#define EHOSTUNREACH 113
#define EINPROGRESS 115
#define EALREADY 114
#define EISCONN 106

BPF_PERCPU_ARRAY(counters, u64, CTR_MAX);

static __always_inline void count(u32 slot)
{
    u64 *v = counters.lookup(&slot);
    /* atomic: a softirq on this CPU can count the same slot in between */
    if (v)
        __sync_fetch_and_add(v, 1);
}

/* bcc cannot rewrite map calls inside macros, hence a function; inlined, so
 * `size` is a constant the verifier can check. */
#ifdef USE_PERF_BUFFER
BPF_PERF_OUTPUT(events);
static __always_inline void emit(void *ctx, void *ev, u32 size)
{
    if (events.perf_submit(ctx, ev, size) < 0)
        count(CTR_LOST_EVENTS);
}
#else
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#define BPF_RB_NO_WAKEUP 1
/* ringbuf_output copies from the stack: one code path for both transports.
 * No wake-up: user space reads on its own clock (every 50 ms), which costs
 * a fraction of one wake-up per event. */
static __always_inline void emit(void *ctx, void *ev, u32 size)
{
    if (events.ringbuf_output(ev, size, BPF_RB_NO_WAKEUP) < 0)
        count(CTR_LOST_EVENTS);
}
#endif

#ifdef FILTER_PID
BPF_HASH(filter_pid, u32, u8, 1024);
#endif
#ifdef FILTER_COMM
BPF_ARRAY(filter_comm, struct comm_filter, 1);
#endif
#ifdef FILTER_PORT
BPF_HASH(filter_port, u16, u8, 1024);
#endif
#ifdef FILTER_CGROUP
#define MAX_CGROUP_FILTERS 8    /* tracer/filters.py MAX_CGROUPS */
BPF_ARRAY(filter_cgroup, struct cgroup_filter, MAX_CGROUP_FILTERS);
#endif

/* --cgroup/--container: the current task is in a selected cgroup (or below
 * one). Process context only: in softirq the current task is unrelated. */
static __always_inline int cgroup_wanted(void)
{
#ifdef FILTER_CGROUP
#ifndef CGROUP_ANCESTORS
    u64 mine = bpf_get_current_cgroup_id();
#endif
#pragma unroll
    for (u32 i = 0; i < MAX_CGROUP_FILTERS; i++) {
        u32 k = i;
        struct cgroup_filter *f = filter_cgroup.lookup(&k);
        if (!f || !f->id)
            return 0;
#ifdef CGROUP_ANCESTORS
        if (bpf_get_current_ancestor_cgroup_id(f->level) == f->id)
            return 1;
#else
        if (mine == f->id)
            return 1;
#endif
    }
    return 0;
#else
    return 1;
#endif
}

/* Process-side filters, checked in process context (connect, accept). */
static __always_inline int task_wanted(u32 tgid, const char *comm)
{
    if (!cgroup_wanted())
        return 0;
#ifdef FILTER_PID
    if (!filter_pid.lookup(&tgid))
        return 0;
#endif
#ifdef FILTER_COMM
    u32 zero = 0;
    struct comm_filter *want = filter_comm.lookup(&zero);
    if (!want)
        return 0;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        if (want->comm[i] != comm[i])
            return 0;
        if (comm[i] == 0)
            break;
    }
#endif
    return 1;
}

/* task_wanted() for the current task, reading its comm only under --comm. */
static __always_inline int current_task_wanted(u64 pid_tgid)
{
    char comm[16] = {};
#ifdef FILTER_COMM
    bpf_get_current_comm(&comm, sizeof(comm));
#endif
    return task_wanted(pid_tgid >> 32, comm);
}

static __always_inline int family_wanted(u16 family)
{
#ifdef FILTER_FAMILY
    return family == FILTER_FAMILY;
#else
    return family == AF_INET || family == AF_INET6;
#endif
}

static __always_inline int ports_wanted(u16 lport, u16 rport)
{
#ifdef FILTER_PORT
    if (filter_port.lookup(&lport) || filter_port.lookup(&rport))
        return 1;
    return 0;
#else
    return 1;
#endif
}

/* Without BTF, offsets can only come from headers, and only when those are
 * the running kernel's own (the loader checks that before defining this). */
#ifdef OFFSETS_FROM_HEADERS
#define OFF_SK_ERR offsetof(struct sock, sk_err)
#define OFF_SKC_NET offsetof(struct sock, __sk_common.skc_net)
#define OFF_NET_NS_INUM offsetof(struct net, ns.inum)
#define OFF_SKC_FAMILY offsetof(struct sock, __sk_common.skc_family)
#define OFF_SKC_STATE offsetof(struct sock, __sk_common.skc_state)
#define OFF_SKC_NUM offsetof(struct sock, __sk_common.skc_num)
#define OFF_SKC_DPORT offsetof(struct sock, __sk_common.skc_dport)
#define OFF_SKC_RCV_SADDR offsetof(struct sock, __sk_common.skc_rcv_saddr)
#define OFF_SKC_DADDR offsetof(struct sock, __sk_common.skc_daddr)
#define OFF_SKC_V6_RCV_SADDR offsetof(struct sock, __sk_common.skc_v6_rcv_saddr)
#define OFF_SKC_V6_DADDR offsetof(struct sock, __sk_common.skc_v6_daddr)
#define OFF_SK_ACK_BACKLOG offsetof(struct sock, sk_ack_backlog)
#define OFF_SK_DROPS offsetof(struct sock, sk_drops)
#define OFF_SKC_COOKIE offsetof(struct sock, __sk_common.skc_cookie)
#define OFF_SK_MAX_ACK_BACKLOG offsetof(struct sock, sk_max_ack_backlog)
#define OFF_ICSK_ACCEPT_QUEUE_QLEN offsetof(struct inet_connection_sock, icsk_accept_queue.qlen)
#define OFF_TASK_FILES offsetof(struct task_struct, files)
#define OFF_TASK_STACK offsetof(struct task_struct, stack)
#define OFF_FILES_FDT offsetof(struct files_struct, fdt)
#define OFF_FDT_MAX_FDS offsetof(struct fdtable, max_fds)
#define OFF_FDT_FD offsetof(struct fdtable, fd)
#define OFF_FILE_PRIVATE_DATA offsetof(struct file, private_data)
#define OFF_SOCKET_SK offsetof(struct socket, sk)
#define OFF_SOCKET_STATE offsetof(struct socket, state)
#define OFF_SOCKET_TYPE offsetof(struct socket, type)
#define OFF_SK_SOCKET offsetof(struct sock, sk_socket)
#define OFF_SK_PROTOCOL offsetof(struct sock, sk_protocol)
#define OFF_INET_SPORT offsetof(struct inet_sock, inet_sport)
#define OFF_INET_SADDR offsetof(struct inet_sock, inet_saddr)
#endif

/* Read a kernel struct member at an offset that came from the running
 * kernel's BTF. Headers here may belong to another kernel, so neither
 * `sk->field` nor offsetof() is ever used on kernel structs. */
#define READ_AT(base, off, type)                                             \
    ({                                                                       \
        type __v = 0;                                                        \
        bpf_probe_read_kernel(&__v, sizeof(__v), (const char *)(base) + (off)); \
        __v;                                                                 \
    })

/* Inode number of the socket's network namespace (as in /proc/PID/ns/net). */
static __always_inline u32 netns_of(u64 sk)
{
    u64 net = READ_AT(sk, OFF_SKC_NET, u64);
    return net ? READ_AT(net, OFF_NET_NS_INUM, u32) : 0;
}

/* Two fields a few bytes apart cost one bpf_probe_read_kernel() instead of
 * two (each costs about as much for 16 bytes as for 4: BENCHMARKS.md section
 * 9), where the offsets are numbers the preprocessor can compare (from BTF;
 * not offsetof() from headers). struct fdtable begins with max_fds and fd;
 * struct socket with state and type, sk a few words on. */
#ifndef OFFSETS_FROM_HEADERS   /* (nested: #if cannot even parse offsetof()) */
#if OFF_FDT_MAX_FDS + 4 <= 16 && OFF_FDT_FD + 8 <= 16
#define FDT_IN_ONE_READ
#endif
#if OFF_SOCKET_STATE + 4 <= 32 && OFF_SOCKET_TYPE + 2 <= 32 && OFF_SOCKET_SK + 8 <= 32
#define SOCKET_IN_ONE_READ
#endif
#endif

/* The private_data of file descriptor fd of the current task, or 0:
 * task->files->fdt->fd[fd]->private_data (a struct socket if fd is a socket;
 * anything else otherwise: callers check). */
static __always_inline u64 socket_of_fd(int fd)
{
    u64 task = bpf_get_current_task();
    u64 files = READ_AT(task, OFF_TASK_FILES, u64);
    if (!files || fd < 0)
        return 0;
    u64 fdt = READ_AT(files, OFF_FILES_FDT, u64);
    if (!fdt)
        return 0;
    u32 max_fds = 0;
    u64 fds = 0;
#ifdef FDT_IN_ONE_READ
    u8 head[16];
    if (bpf_probe_read_kernel(head, sizeof(head), (const void *)fdt) != 0)
        return 0;
    __builtin_memcpy(&max_fds, head + OFF_FDT_MAX_FDS, 4);
    __builtin_memcpy(&fds, head + OFF_FDT_FD, 8);
#else
    max_fds = READ_AT(fdt, OFF_FDT_MAX_FDS, u32);
    fds = READ_AT(fdt, OFF_FDT_FD, u64);
#endif
    if ((u32)fd >= max_fds || !fds)
        return 0;
    u64 file = READ_AT(fds + 8 * (u64)fd, 0, u64);
    if (!file)
        return 0;
    return READ_AT(file, OFF_FILE_PRIVATE_DATA, u64);
}

/* The struct sock behind file descriptor fd of the current task, or 0. */
static __always_inline u64 sk_of_fd(int fd)
{
    u64 sock = socket_of_fd(fd);
    return sock ? READ_AT(sock, OFF_SOCKET_SK, u64) : 0;
}

/* A struct socket's state, type and sock, in one read where the layout
 * allows (SOCKET_IN_ONE_READ); 0 if unreadable. */
struct socket_fields {
    u32 state;
    u16 type;
    u64 sk;
};

static __always_inline int socket_fields_of(u64 sock, struct socket_fields *f)
{
#ifdef SOCKET_IN_ONE_READ
    u8 head[32];
    if (bpf_probe_read_kernel(head, sizeof(head), (const void *)sock) != 0)
        return 0;
    __builtin_memcpy(&f->state, head + OFF_SOCKET_STATE, 4);
    __builtin_memcpy(&f->type, head + OFF_SOCKET_TYPE, 2);
    __builtin_memcpy(&f->sk, head + OFF_SOCKET_SK, 8);
#else
    f->type = READ_AT(sock, OFF_SOCKET_TYPE, u16);
    f->sk = READ_AT(sock, OFF_SOCKET_SK, u64);
    f->state = READ_AT(sock, OFF_SOCKET_STATE, u32);
#endif
    return 1;
}

#endif
