/* The one definition of what crosses the kernel boundary.
 *
 * The BPF programs fill these structs; tracer/events.py parses this very file
 * to build its decoders, so a field added here is decoded without a second
 * definition to keep in sync. Rules that keep that parser simple and the
 * layout identical on both sides: fixed-size integer types and arrays only,
 * members ordered so natural alignment leaves no hidden holes, no bitfields,
 * no pointers. Every event starts with `type`.
 */
#ifndef CONNSCOPE_EVENT_H
#define CONNSCOPE_EVENT_H

#define EV_CONNECT 1
#define EV_ACCEPT 2
#define EV_CLOSE 3

/* connect outcomes, decided when the socket leaves SYN_SENT, or when
 * connect() returns an error without the socket ever entering it */
#define OUTCOME_ESTABLISHED 0  /* SYN-ACK, or a crossing SYN (simultaneous open) */
#define OUTCOME_REFUSED 1      /* RST in answer to the SYN (sk_err ECONNREFUSED) */
#define OUTCOME_TIMEOUT 2      /* the kernel's SYN retries exhausted (sk_err ETIMEDOUT) */
#define OUTCOME_ERROR 3        /* connect() itself failed, no SYN went out (err: its errno) */
#define OUTCOME_ABANDONED 4    /* closed by the application while SYN_SENT, no sk_err */
#define OUTCOME_UNREACHABLE 5  /* other sk_err (ICMP error), or connect() failed ENETUNREACH/EHOSTUNREACH */

/* counters[] slots, summed over CPUs by user space */
#define CTR_LOST_EVENTS 0      /* ring/perf buffer full: event dropped */
#define CTR_INFLIGHT_FULL 1    /* connect not tracked: in-flight map full */
#define CTR_HANDSHAKES_FULL 2  /* accept wait not measured: handshake map full */
#define CTR_LISTENERS_FULL 3   /* listener not tracked: listener map full */
#define CTR_ACCEPTING_FULL 4   /* accept() not seen: map of threads in accept() full */
#define CTR_CONNECT_CALLS_FULL 5 /* connect() not watched for its own error: map of threads in connect() full */
#define CTR_NESTED_STATE_CHANGES 6 /* state changes the raw program's second copy handled (main.c) */
#define CTR_NESTED_DESTROYS 7  /* destroyed sockets the raw program's second copy handled (main.c) */
#define CTR_CONNECT_ENDS_MISSED 8 /* connected socket destroyed with its connect still in flight: its outcome was never seen */
/* (user space counts the in-flight connects it sweeps as stale: session.py) */
#define CTR_MAX 9

struct connect_event {
    __u32 type;          /* EV_CONNECT */
    __u32 pid;           /* thread group id of the caller of connect() */
    __u32 tid;
    __s32 err;           /* errno when it failed (sk_err, or connect()'s own), 0 otherwise */
    __u64 ts_start_ns;   /* connect() entered, CLOCK_MONOTONIC */
    __u64 ts_end_ns;     /* socket left SYN_SENT, or connect() returned its error */
    __u64 sk;            /* kernel socket address: correlation key only */
    __u8 saddr[16];      /* IPv4 in the first 4 bytes */
    __u8 daddr[16];
    __u16 sport;         /* host byte order */
    __u16 dport;
    __u16 syn_retransmits;
    __u8 family;         /* AF_INET or AF_INET6 */
    __u8 outcome;        /* OUTCOME_* */
    char comm[16];
    __u32 netns;         /* network namespace inode number */
    __u8 pad[4];
    __u64 cgroup_id;     /* the caller's cgroup v2 id at connect(): names its container
                          * after it exited (tracer/probes/cgroups.py) */
};

/* One accepted connection, emitted in the accepting process's context. */
struct accept_event {
    __u32 type;          /* EV_ACCEPT */
    __u32 pid;           /* thread group id of the caller of accept() */
    __u32 tid;
    __u32 backlog_len;   /* listener's accept queue, including this connection */
    __u64 ts_ns;         /* accept() returned, CLOCK_MONOTONIC */
    __u64 ts_handshake_ns; /* handshake completed (queued); 0 if before we started */
    __u64 sk;            /* the accepted socket: correlation key only */
    __u8 laddr[16];
    __u8 raddr[16];
    __u16 lport;
    __u16 rport;
    __u32 backlog_max;
    __u32 netns;         /* network namespace inode number */
    __u8 family;
    __u8 pad[3];
    char comm[16];
};

/* A TCP socket reached CLOSE (from any state but LISTEN and SYN_SENT; a
 * failed connect is a connect_event). Only the socket and the time: user
 * space joins it with the connect_event or accept_event of the same `sk`,
 * which already told who opened it and to where. Sockets it saw no open of
 * (opened before the tracer, filtered out, never accepted) it passes over.
 * Keeping that table in user space takes a map insert, lookup and delete
 * off every connection in the kernel (see BENCHMARKS.md). */
struct close_event {
    __u32 type;          /* EV_CLOSE */
    __u32 oldstate;      /* state it closed from (TIME_WAIT entry shows as FIN_WAIT2 etc.) */
    __u64 ts_ns;         /* reached CLOSE, CLOCK_MONOTONIC */
    __u64 sk;
};

/* Identity of a listening socket; addr all zero for a wildcard bind. The
 * network namespace is part of it: two containers may both listen on :80. */
struct listener_key {
    __u8 addr[16];
    __u32 netns;         /* inode number of the network namespace */
    __u16 port;          /* host byte order */
    __u8 family;         /* AF_INET or AF_INET6 */
    __u8 pad;
};

/* Kinds of accept-queue overflow */
#define OVERFLOW_ACK 0       /* handshake done, request socket dropped */
#define OVERFLOW_SYN 1       /* SYN dropped */
#define OVERFLOW_COOKIE 2    /* SYN-cookie handshake done, dropped */

/* Per-socket listener counters (map `listeners`, keyed by the socket's
 * kernel address), aggregated in the kernel and read by user space once per
 * interval (a SYN flood costs map updates, not events). The members of an
 * SO_REUSEPORT group are separate sockets with the same key: each has its
 * own entry, summed per key by user space. Counters are cumulative for the
 * address (a socket reusing it carries on from there, so none ever goes
 * down); user space takes differences and treats a counter that went down
 * (the entry removed and made again) as a new start. */
struct listener_stats {
    __u64 ack_overflows;      /* handshake done but accept queue full: connection dropped */
    __u64 cookie_overflows;   /* the same for a SYN-cookie handshake (no request socket) */
    __u64 syn_overflows;      /* SYN dropped, accept queue full (seen at the drop point only by kprobe/fentry) */
    __u64 synack_retransmits;
    __u64 accepts;
    __u64 sk;                 /* the socket's kernel address (the map key) */
    __u64 cookie;             /* socket cookie when it closed (0: never asked for, e.g. by sock_diag) */
    __u32 backlog_max;
    __u32 syn_queue_len;
    __u32 pid;                /* owner: who called listen(), when we saw it */
    __u32 closed;             /* LISTEN -> CLOSE seen: user space removes it once read */
    __u32 drops_at_close;     /* sk_drops when it closed: what sock_diag can no longer tell */
    __u32 netns;              /* the listener key: inode of the network namespace, */
    __u8 addr[16];            /* address (all zero for a wildcard bind), */
    __u16 port;               /* port (host byte order), */
    __u8 family;              /* AF_INET or AF_INET6 */
    __u8 pad;
    char comm[16];
    __u32 pad2;
};

/* Maps user space reads or fills itself, by these layouts. */

/* A connect() waiting for its answer (map `inflight`, keyed by socket). */
struct inflight_connect {
    __u64 ts_ns;
    __u64 ts_active_ns;  /* last sign of life: start, or the last SYN retransmit */
    __u32 pid;
    __u32 tid;
    __u8 daddr[16];
    __u16 dport;
    __u16 syn_retransmits;
    __u8 family;
    __u8 have_dest;
    char comm[16];
    __u8 pad[2];
    __u64 cgroup_id;     /* bpf_get_current_cgroup_id() in connect() */
};

/* A thread inside connect() on a fresh TCP socket (map `connect_calls`,
 * keyed by thread id): connect.h, connect_call_*. */
struct connect_call {
    __u64 sk;
    __u64 uaddr;         /* the struct sockaddr the caller passed */
    __u64 ts_ns;         /* connect() entered, CLOCK_MONOTONIC */
    __u32 addrlen;
    __u32 reached;       /* the socket entered SYN_SENT in this call */
};

/* --cgroup/--container: a cgroup v2 wanted (map `filter_cgroup`, one per
 * index, id 0 ends the list): its id and its depth below the v2 root. */
struct cgroup_filter {
    __u64 id;
    __u32 level;
    __u32 pad;
};

/* --comm: the one process name wanted (map `filter_comm`, index 0). */
struct comm_filter {
    char comm[16];
};

#endif
