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

/* connect outcomes, decided when the socket leaves SYN_SENT */
#define OUTCOME_ESTABLISHED 0
#define OUTCOME_REFUSED 1   /* RST in answer to the SYN (sk_err ECONNREFUSED) */
#define OUTCOME_TIMEOUT 2   /* SYN retries exhausted (sk_err ETIMEDOUT) */
#define OUTCOME_ERROR 3     /* anything else: closed by the application, ICMP error, no port */

/* counters[] slots, summed over CPUs by user space */
#define CTR_LOST_EVENTS 0      /* ring/perf buffer full: event dropped */
#define CTR_INFLIGHT_FULL 1    /* connect not tracked: in-flight map full */
#define CTR_MAX 4

struct connect_event {
    __u32 type;          /* EV_CONNECT */
    __u32 pid;           /* thread group id of the caller of connect() */
    __u32 tid;
    __s32 err;           /* sk_err when it failed, 0 otherwise */
    __u64 ts_start_ns;   /* connect() entered, CLOCK_MONOTONIC */
    __u64 ts_end_ns;     /* socket left SYN_SENT */
    __u64 sk;            /* kernel socket address: correlation key only */
    __u8 saddr[16];      /* IPv4 in the first 4 bytes */
    __u8 daddr[16];
    __u16 sport;         /* host byte order */
    __u16 dport;
    __u16 syn_retransmits;
    __u8 family;         /* AF_INET or AF_INET6 */
    __u8 outcome;        /* OUTCOME_* */
    char comm[16];
};

#endif
