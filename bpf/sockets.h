/* Connection lifetimes: when a TCP socket reaches CLOSE, one small record
 * with the socket and the time. Who opened it, to where, and when are in the
 * connect or accept event user space already has for the same socket; it
 * joins the two (tracer/lifetimes.py). Doing that join here would take a map
 * insert when a connection opens and a lookup and delete when it closes:
 * measured, those were a third of the programs' cost on every connection.
 * What sockets each process holds right now is not tracked here: user space
 * reads that exactly from the kernel's socket table and /proc
 * (tracer/probes/socket_owners.py).
 */
#ifndef CONNSCOPE_SOCKETS_H
#define CONNSCOPE_SOCKETS_H

#include "common.h"

static __always_inline void sock_closed(void *ctx, u64 sk, int oldstate)
{
    struct close_event ev = {};
    ev.type = EV_CLOSE;
    ev.oldstate = oldstate;
    ev.ts_ns = bpf_ktime_get_ns();
    ev.sk = sk;
    emit(ctx, &ev, sizeof(ev));
}

#endif
