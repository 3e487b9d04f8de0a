"""`connscope doctor`: what this host can trace, and the limits that matter.

collect() gathers a JSON-able dict (for --json); render_text() prints it for a
person. The arithmetic behind the advice (connect timeouts, ephemeral ports)
is in pure functions so it can be tested without a kernel.
"""
from __future__ import annotations

import os
import resource
import socket
from dataclasses import asdict
from typing import Callable, Optional

from tracer import fastpath
from tracer.blind_spots import DropReasons, drop_reasons_from_btf, exactness
from tracer.probes.features import (
    AUTO_ORDER, BackendUnavailable, Feature, Features, auto_reason, backend_visibility,
    choose_backend, probe_features,
)

USERS = 1000  # the load the advice is written for
TIME_WAIT_SECONDS = 60  # TCP_TIMEWAIT_LEN, fixed in the kernel
TCP_TIMEOUT_INIT = 1.0  # first SYN / SYN-ACK retransmission timeout, seconds
TCP_RTO_MAX = 120.0     # default cap on one retransmission timeout

SYSCTLS = (
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_syn_linear_timeouts",
    "net.ipv4.tcp_rto_max_ms",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_fin_timeout",
    "fs.file-max",
    "fs.nr_open",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_rmem",
)


# --- pure arithmetic -----------------------------------------------------------

def syn_retransmit_intervals(retries: int, linear_timeouts: int = 0, rto_initial: float = TCP_TIMEOUT_INIT,
                             rto_max: float = TCP_RTO_MAX) -> list[float]:
    """Seconds between consecutive SYN timer firings until connect() fails with ETIMEDOUT.

    Mirrors tcp_retransmit_timer()/tcp_write_timeout(): the SYN is resent
    `retries + linear_timeouts` times (the linear ones are extra, 6.5+), and the
    last timer aborts. The timeout stays at its initial value for the first
    `linear_timeouts + 1` firings, then doubles, capped at rto_max.
    """
    intervals, rto = [], rto_initial
    for firing in range(1, retries + linear_timeouts + 2):
        intervals.append(rto)
        if firing > linear_timeouts:
            rto = min(rto * 2, rto_max)
    return intervals


def syn_timeout_seconds(retries: int, linear_timeouts: int = 0, rto_initial: float = TCP_TIMEOUT_INIT,
                        rto_max: float = TCP_RTO_MAX) -> float:
    """How long connect() to a silent host takes to fail: 127 s for 6 retries on
    older kernels, 131 s with the 6.5+ default of 4 linear timeouts."""
    return sum(syn_retransmit_intervals(retries, linear_timeouts, rto_initial, rto_max))


def synack_timeout_seconds(retries: int, rto_initial: float = TCP_TIMEOUT_INIT,
                           rto_max: float = TCP_RTO_MAX) -> float:
    """How long a listener keeps a half-open connection whose client stays silent
    (exponential backoff only): 63 s for the default 5 retries."""
    return sum(min(rto_initial * 2 ** i, rto_max) for i in range(retries + 1))


def ephemeral_ports(port_range: str) -> int:
    """'32768\\t60999' -> 28232 ports available to connect()."""
    parts = port_range.split()
    if len(parts) != 2:
        raise ValueError(f"not a port range: {port_range!r}")
    low, high = int(parts[0]), int(parts[1])
    return max(0, high - low + 1)


def new_connections_per_second(ports: int, time_wait: float = TIME_WAIT_SECONDS) -> float:
    """Sustained rate of new connections to one destination ip:port before every
    local port sits in TIME_WAIT (without tcp_tw_reuse)."""
    return ports / time_wait


def _fmt_seconds(s: float) -> str:
    return f"{s:g} s" if s < 120 else f"{s:g} s ({s / 60:.1f} min)"


# --- advice ---------------------------------------------------------------------

def _item(name: str, value, status: str, advice: str) -> dict:
    return {"name": name, "value": value, "status": status, "advice": advice}


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text.split()[0]) if text is not None else None
    except (ValueError, IndexError):
        return None


def assess_limits(sysctls: dict[str, Optional[str]], nofile: tuple[int, int]) -> list[dict]:
    """One item per sysctl or limit: name, value, status (ok/warn/info), advice.

    sysctls maps names to their text in /proc/sys (None when absent); nofile is
    (soft, hard) RLIMIT_NOFILE, resource.RLIM_INFINITY for unlimited.
    """
    items: list[dict] = []
    get = sysctls.get

    v = _int(get("net.core.somaxconn"))
    if v is not None:
        if v < 4096:
            items.append(_item("net.core.somaxconn", v, "warn",
                               f"every listen() backlog is capped at {v}: raise it to 4096 or more "
                               f"(sysctl -w net.core.somaxconn=4096) so a burst of {USERS:,} connects fits "
                               f"the accept queue"))
        else:
            items.append(_item("net.core.somaxconn", v, "ok",
                               f"listen() backlogs up to {v} are honoured; the server's own backlog "
                               f"argument must be as large"))

    cookies = _int(get("net.ipv4.tcp_syncookies"))
    v = _int(get("net.ipv4.tcp_max_syn_backlog"))
    if v is not None:
        if v >= USERS:
            items.append(_item("net.ipv4.tcp_max_syn_backlog", v, "ok",
                               f"up to {v} half-open connections per listener"))
        elif cookies:
            items.append(_item("net.ipv4.tcp_max_syn_backlog", v, "info",
                               f"only {v} half-open connections per listener, but SYN cookies "
                               f"answer the rest"))
        else:
            items.append(_item("net.ipv4.tcp_max_syn_backlog", v, "warn",
                               f"SYNs beyond {v} half-open connections per listener are dropped and "
                               f"SYN cookies are off: raise it to {USERS * 2} or more"))

    text = get("net.ipv4.ip_local_port_range")
    if text is not None:
        ports = ephemeral_ports(text)
        rate = new_connections_per_second(ports)
        value = " ".join(text.split())
        if ports < 28000:
            items.append(_item("net.ipv4.ip_local_port_range", value, "warn",
                               f"only {ports} ephemeral ports, about {rate:.0f} new connections/s to one "
                               f"destination before TIME_WAIT uses them up: widen it "
                               f"(sysctl -w net.ipv4.ip_local_port_range='1024 65535')"))
        else:
            items.append(_item("net.ipv4.ip_local_port_range", value, "ok",
                               f"{ports} ephemeral ports: about {rate:.0f} new connections/s to one "
                               f"destination ip:port before TIME_WAIT uses them up"))

    retries = _int(get("net.ipv4.tcp_syn_retries"))
    linear = _int(get("net.ipv4.tcp_syn_linear_timeouts")) or 0
    rto_max_ms = _int(get("net.ipv4.tcp_rto_max_ms"))
    rto_max = rto_max_ms / 1000 if rto_max_ms else TCP_RTO_MAX
    if retries is not None:
        total = syn_timeout_seconds(retries, linear, rto_max=rto_max)
        sends = retries + linear
        pace = (f"1 s apart for the first {linear + 1} timeouts (tcp_syn_linear_timeouts={linear}), "
                f"then doubling" if linear else "doubling from 1 s")
        items.append(_item("net.ipv4.tcp_syn_retries", retries, "warn" if total > 180 else "info",
                           f"connect() to a silent host fails after {_fmt_seconds(total)}: {sends} SYN "
                           f"retransmits, {pace}; clients should set their own connect timeout"))

    v = _int(get("net.ipv4.tcp_synack_retries"))
    if v is not None:
        items.append(_item("net.ipv4.tcp_synack_retries", v, "info",
                           f"a half-open connection whose client went silent is kept "
                           f"{_fmt_seconds(synack_timeout_seconds(v, rto_max=rto_max))}"))

    v = _int(get("net.ipv4.tcp_abort_on_overflow"))
    if v is not None:
        if v:
            items.append(_item("net.ipv4.tcp_abort_on_overflow", v, "warn",
                               "a full accept queue resets new connections, turning a burst into "
                               "errors; 0 lets clients retry instead"))
        else:
            items.append(_item("net.ipv4.tcp_abort_on_overflow", v, "ok",
                               "a full accept queue drops the handshake's last ACK and the client "
                               "retransmits (seen as latency, not errors)"))

    if cookies is not None:
        status, advice = {
            0: ("warn", "SYNs that do not fit the SYN queue are dropped: set 1"),
            1: ("ok", "SYN cookies answer when the SYN queue is full"),
            2: ("info", "SYN cookies always, even when the queue has room: TCP options are degraded"),
        }.get(cookies, ("info", "unknown value"))
        items.append(_item("net.ipv4.tcp_syncookies", cookies, status, advice))

    v = _int(get("net.ipv4.tcp_tw_reuse"))
    if v is not None:
        status, advice = {
            0: ("warn", "new outgoing connections never reuse TIME_WAIT ports: set 1 on clients "
                        "that open many short connections"),
            1: ("ok", "new outgoing connections may reuse TIME_WAIT ports (timestamps permitting)"),
            2: ("info", "TIME_WAIT ports are reused for loopback only; set 1 on clients that open "
                        "many short connections to other hosts"),
        }.get(v, ("info", "unknown value"))
        items.append(_item("net.ipv4.tcp_tw_reuse", v, status, advice))

    v = _int(get("net.ipv4.tcp_fin_timeout"))
    if v is not None:
        items.append(_item("net.ipv4.tcp_fin_timeout", v, "warn" if v > 60 else "info",
                           f"orphaned connections wait {v} s in FIN_WAIT_2"
                           + ("; 60 or less frees them sooner" if v > 60 else "")))

    v = _int(get("fs.file-max"))
    if v is not None:
        need = USERS * 16
        items.append(_item("fs.file-max", v, "warn" if v < need else "ok",
                           f"system-wide open files; {'raise it to ' + str(need) + ' or more' if v < need else 'enough'} "
                           f"for {USERS:,} connections plus everything else"))

    nr_open = _int(get("fs.nr_open"))
    if nr_open is not None:
        items.append(_item("fs.nr_open", nr_open, "ok" if nr_open >= 65536 else "warn",
                           f"the highest RLIMIT_NOFILE a process may set is {nr_open}"))

    soft, hard = nofile
    inf = resource.RLIM_INFINITY

    def show(n: int) -> str:
        return "unlimited" if n == inf else str(n)

    soft_low = soft != inf and soft < 4096
    hard_low = hard != inf and hard < 4096
    if soft_low or hard_low:
        fix = "ulimit -n 65536 (hard limit too)" if hard_low else f"ulimit -n {show(hard)}"
        advice = (f"a process started from here can open {show(soft)} files; a server holding "
                  f"{USERS:,} connections needs one descriptor each: raise it ({fix}, or LimitNOFILE= "
                  f"in its systemd unit)")
    else:
        advice = f"enough descriptors for {USERS:,} connections (this shell's limit; a service's may differ)"
    items.append(_item("RLIMIT_NOFILE", f"{show(soft)} soft / {show(hard)} hard",
                       "warn" if soft_low or hard_low else "ok", advice))

    v = _int(get("net.core.netdev_max_backlog"))
    if v is not None:
        items.append(_item("net.core.netdev_max_backlog", v, "warn" if v < 1000 else "ok",
                           f"per-CPU queue of received packets; drops show in the second column of "
                           f"/proc/net/softnet_stat" + ("; raise it to 1000 or more" if v < 1000 else "")))

    items += _tcp_memory_items(get("net.ipv4.tcp_mem"), get("net.ipv4.tcp_rmem"))
    return items


def _tcp_memory_items(tcp_mem: Optional[str], tcp_rmem: Optional[str]) -> list[dict]:
    """What net.ipv4.tcp_mem allows every TCP socket of the host together, in
    bytes, and how many connections with full default receive buffers fit
    before memory pressure (tracer/domain/tcp_memory.py)."""
    from tracer.domain.memory import size
    from tracer.probes.tcp_memory import tcp_mem_pages

    pages = tcp_mem_pages(tcp_mem)
    if pages[0] is None:
        return []
    page = os.sysconf("SC_PAGE_SIZE")
    low, pressure, maximum = (p * page for p in pages)
    advice = (f"all TCP buffers of the host together: limited from {size(low)}, in memory "
              f"pressure above {size(pressure)} (buffers shrink, queues pruned: "
              f"TCPMemoryPressures), nothing more past {size(maximum)} (data dropped: "
              f"TCPRcvQDrop; connections aborted)")
    rmem = [int(x) for x in (tcp_rmem or "").split() if x.isdigit()]
    status = "ok"
    if len(rmem) == 3 and rmem[1]:
        fit = pressure // rmem[1]
        advice += (f"; {fit:,} connections with a full default receive buffer "
                   f"({size(rmem[1])}, net.ipv4.tcp_rmem) reach pressure")
        if fit < USERS:
            status = "warn"
            advice += f": fewer than {USERS:,}, raise tcp_mem"
    return [_item("net.ipv4.tcp_mem", " ".join(tcp_mem.split()), status, advice)]


def read_sysctls(names=SYSCTLS, root: str = "/proc/sys") -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {}
    for name in names:
        try:
            with open(os.path.join(root, *name.split("."))) as f:
                out[name] = f.read().strip()
        except OSError:
            out[name] = None
    return out


# --- the report -----------------------------------------------------------------

def _feature(f: Feature) -> dict:
    return asdict(f)


def _containers() -> dict:
    """What container attribution can see here (tracer/probes/cgroups.py)."""
    from tracer.probes import cgroups

    h = cgroups.hierarchies()
    pods = cgroups.read_pods()
    detail = {
        "v2": f"cgroup v2 at {h.v2}: cgroup ids, containers and pods from cgroup paths",
        "hybrid": f"hybrid: cgroup v2 at {h.v2} gives cgroup ids; a container a runtime "
                  "put only in the v1 controllers is named from its v1 path, without an id",
        "v1": "cgroup v1 only: containers and pods named from v1 paths; no cgroup ids "
              "(cgroup_id null)",
        "none": "no cgroup file system mounted: no container attribution",
    }[h.mode]
    if pods.notes:
        names = "; ".join(pods.notes)
    elif pods.by_uid:
        names = f"{len(pods.by_uid)} pods in {cgroups.POD_LOGS}"
    elif os.path.isdir(cgroups.POD_LOGS):
        names = f"no pods in {cgroups.POD_LOGS}"
    else:
        names = f"no {cgroups.POD_LOGS} (no kubelet here): pod uids only, no names"
    from tracer.probes import cgroup_filter

    usable, filtering = cgroup_filter.support(
        h.v2, cgroup_filter.ancestors_matched() if h.v2 and os.geteuid() == 0 else None)
    return {"ok": h.mode != "none", "tested": True, "mode": h.mode, "v2": h.v2,
            "v1": list(h.v1), "detail": f"{detail}; pod names: {names}",
            "filter": {"ok": usable, "tested": True, "detail": filtering}}


def _program_cache() -> dict:
    from tracer.probes import compiled

    ok, detail = compiled.status()
    return {"ok": ok, "detail": detail, "tested": True}


def _drop_reasons() -> DropReasons:
    from tracer.probes.btf import kernel_btf

    try:
        btf = kernel_btf() if os.path.exists("/sys/kernel/btf/vmlinux") else None
    except Exception:   # an unreadable BTF: the split is unknown, not an error
        btf = None
    return drop_reasons_from_btf(btf)


def collect(features: Optional[Features] = None, *,
            sysctls: Optional[dict[str, Optional[str]]] = None,
            nofile: Optional[tuple[int, int]] = None,
            drop_reasons: Optional[DropReasons] = None) -> dict:
    """Everything doctor reports, as plain JSON-able values."""
    f = features if features is not None else probe_features()
    reasons = drop_reasons if drop_reasons is not None else _drop_reasons()
    sysctls = sysctls if sysctls is not None else read_sysctls()
    nofile = nofile if nofile is not None else resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        auto = choose_backend("auto", f)
        auto_error = None
    except BackendUnavailable as e:
        auto, auto_error = None, str(e)
    report = {
        "host": socket.gethostname(),
        "kernel": f.kernel_release,
        "is_root": f.is_root,
        "privileges": _feature(f.privileges),
        "btf": _feature(f.btf),
        "headers": asdict(f.headers),
        "bcc": _feature(f.bcc),
        "kprobes": {**_feature(f.kprobes), "targets": dict(f.kprobe_targets),
                    "missing_targets": f.missing_kprobe_targets()},
        "fentry": _feature(f.fentry),
        "tracepoints": {**_feature(f.tracepoints), "present": dict(f.tracepoint_presence)},
        "ringbuf": _feature(f.ringbuf),
        "program_cache": _program_cache(),
        "event_path": {"ok": fastpath.native is not None, "tested": True,
                       "detail": fastpath.STATUS if fastpath.native is not None
                       else f"{fastpath.STATUS}; {fastpath.TO_COMPILE}"},
        "containers": _containers(),
        "load_tested": f.load_tested,
        "backend": {"auto": auto, "why": auto_reason(f), "error": auto_error},
        "tracepoint_hooks": {"kind": f.tracepoint_hooks, "why": f.tracepoint_hooks_why},
        "visibility": {b: backend_visibility(b, f) for b in AUTO_ORDER},
        "drop_reasons": {"kfree_skb_rx_sk": reasons.rx_sk,
                         "tcp_listen_overflow": reasons.listen_overflow},
        "exactness": {b: [{"status": st, "text": t}
                          for st, t in exactness(b, reasons, f.kernel_release)]
                      for b in AUTO_ORDER},
        "limits": assess_limits(sysctls, nofile),
        "notes": list(f.notes),
        "as_root": None if f.is_root else (
            "run as root to probe fentry and the ring buffer by loading a test program, "
            "to read tracefs, and to merge a header tree if one is needed"),
    }
    return report


def _mark(d: dict) -> str:
    if d.get("ok"):
        return "ok"
    return "?" if d.get("tested") is False else "no"


def _exactness_lines(r: dict) -> list[str]:
    """What the backend auto picks counts exactly on this host (and the
    tracepoint backend's case, which depends on the kernel, if auto picks another)."""
    exact = r.get("exactness")
    if not exact:
        return []
    auto = r["backend"]["auto"]
    shown = [b for b in (auto, "tracepoint") if b in exact]
    lines: list[str] = []
    for b in dict.fromkeys(shown):
        lines += ["", f"What is exact here with --backend {b}"
                  + (" (what auto picks)" if b == auto else "")]
        lines += [f"  {i['status']:<9} {i['text']}" for i in exact[b]]
    return lines


def render_text(report: dict) -> str:
    """The report for a person: one line per feature, then backends, then limits."""
    r = report
    lines = [f"connscope doctor: {r['host']}, kernel {r['kernel']}", ""]

    h = r["headers"]
    header_ok = {"ok": h["path"] is not None, "tested": True}
    rows = [
        ("privileges", r["privileges"], r["privileges"]["detail"]),
        ("BTF", r["btf"], r["btf"]["detail"]),
        ("headers", header_ok, h["how"] if h["path"] is not None or h["how"] != "none"
            else "none: install linux-headers-$(uname -r), or any linux-headers package"),
        ("bcc", r["bcc"], r["bcc"]["detail"]),
        ("kprobes", r["kprobes"], r["kprobes"]["detail"]),
        ("fentry", r["fentry"], r["fentry"]["detail"]),
        ("tracepoints", r["tracepoints"], r["tracepoints"]["detail"]),
        ("ring buffer", r["ringbuf"], r["ringbuf"]["detail"]),
    ]
    if "program_cache" in r:
        rows.append(("prog cache", r["program_cache"], r["program_cache"]["detail"]))
    if "event_path" in r:
        rows.append(("event path", r["event_path"], r["event_path"]["detail"]))
    if "containers" in r:
        rows.append(("containers", r["containers"], r["containers"]["detail"]))
        if "filter" in r["containers"]:
            f = r["containers"]["filter"]
            rows.append(("--cgroup", f, f["detail"]))
    lines.append("Host")
    for name, d, detail in rows:
        lines.append(f"  {name:<12} {_mark(d):<3} {detail}")
    missing = r["kprobes"]["missing_targets"]
    if missing:
        lines.append(f"  {'':<12} {'':<3} kprobe/fentry targets missing from /proc/kallsyms: "
                     f"{', '.join(missing)}")
    for note in r["notes"]:
        lines.append(f"  note: {note}")
    if r["as_root"]:
        lines.append(f"  not root: {r['as_root']}")

    lines += ["", "Backend"]
    b = r["backend"]
    lines.append(f"  --backend auto picks {b['why']}")
    hooks = r.get("tracepoint_hooks")
    if hooks:
        lines.append(f"  tracepoints every backend hooks: {hooks['why']}")
    for name, vis in r["visibility"].items():
        lines.append(f"  {name}:")
        lines += [f"    - {line}" for line in vis]

    lines += _exactness_lines(r)

    lines += ["", f"Limits for {USERS:,} concurrent users"]
    width = max((len(i["name"]) + len(str(i["value"])) for i in r["limits"]), default=0) + 3
    for i in r["limits"]:
        setting = f"{i['name']} = {i['value']}"
        lines.append(f"  {i['status']:<4} {setting:<{width}} {i['advice']}")
    return "\n".join(lines) + "\n"
