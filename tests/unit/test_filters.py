"""Filters.build: validation, comm truncation as the kernel does it, and the
summaries shown to the user and stored with a recording."""

import json
import threading

import pytest

from tracer.filters import FilterError, Filters


def kernel_comm(name: str) -> str:
    """The name the kernel keeps for a thread asked to take `name`."""
    out = []

    def run():
        with open("/proc/thread-self/comm", "w") as f:
            f.write(name)
        with open("/proc/thread-self/comm") as f:
            out.append(f.read().rstrip("\n"))

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=10)
    return out[0]


def test_no_filters():
    f = Filters.build()
    assert f == Filters()
    assert f.describe() == "none"
    assert f.as_dict() == {"pids": [], "comm": None, "ports": [], "family": None, "cgroups": []}


@pytest.mark.parametrize("kwargs,message", [
    ({"pids": [0]}, "--pid 0: not a process id"),
    ({"pids": [12, -3]}, "--pid -3: not a process id"),
    ({"pids": [2**31]}, f"--pid {2**31}: not a process id"),
    ({"ports": [0]}, "--port 0: ports are 1-65535"),
    ({"ports": [80, 65536]}, "--port 65536: ports are 1-65535"),
    ({"ipv4": True, "ipv6": True}, "-4 and -6 together select nothing; give one or neither"),
    ({"comm": ""}, "--comm needs a process name"),
])
def test_invalid_filters_are_refused_with_a_message(kwargs, message):
    with pytest.raises(FilterError) as e:
        Filters.build(**kwargs)
    assert str(e.value) == message


def test_limits_are_accepted():
    f = Filters.build(pids=[1, 4_194_304], ports=[1, 65535])
    assert f.pids == {1, 4_194_304}
    assert f.ports == {1, 65535}


@pytest.mark.parametrize("name", ["nginx", "exactly15chars_", "sixteen_chars_xx",
                                  "a-much-longer-process-name"])
def test_comm_is_truncated_like_the_kernel(name):
    want = kernel_comm(name)
    assert len(want) <= 15
    assert Filters.build(comm=name).comm == want


def test_family():
    assert Filters.build(ipv4=True).family == 4
    assert Filters.build(ipv6=True).family == 6
    assert Filters.build().family is None


def test_describe_and_as_dict_are_sorted_and_deduplicated():
    f = Filters.build(pids=[30, 4, 30], comm="nginx", ports=[443, 80], ipv6=True)
    assert f.describe() == "pid 4,30; comm nginx; port 80,443; IPv6 only"
    d = f.as_dict()
    assert d == {"pids": [4, 30], "comm": "nginx", "ports": [80, 443], "family": 6,
                 "cgroups": []}
    assert json.loads(json.dumps(d)) == d
    assert Filters.build(ports=[5432]).describe() == "port 5432"
    assert Filters.build(ipv4=True).describe() == "IPv4 only"


def test_filters_are_immutable_values():
    a = Filters.build(pids=[1, 2], ports=[80])
    assert a == Filters.build(pids=[2, 1], ports=[80]) and hash(a) == hash(Filters.build(pids=[2, 1], ports=[80]))
    with pytest.raises(AttributeError):
        a.comm = "x"


# --- filters on the views read from the socket table, and --pid checks ----------

from tracer.aggregate.snapshot import ListenerRow, PoolAdvice, ProcessRow  # noqa: E402
from tracer.filters import check_pids, read_pid_max  # noqa: E402


def _listener(port, family=4, pid=10, comm="nginx"):
    return ListenerRow(family=family, laddr="0.0.0.0" if family == 4 else "::", lport=port,
                       pid=pid, comm=comm, backlog_max=128, queue_len=0, queue_peak=0,
                       syn_queue_len=0, drops=0, syn_drops=0, drops_total=0, drops_per_s=0.0,
                       accepts=0, accept_wait_p50_us=None, accept_wait_p99_us=None,
                       synack_retransmits=0)


def _process(pid, comm="app", advice=(), opened=0):
    return ProcessRow(pid=pid, comm=comm, established=1, syn_sent=0, listen=0, close_wait=0,
                      other=0, opened_per_s=float(opened), closed_per_s=0.0, fds=10,
                      fd_limit=1024, tx_queue_bytes=0, rx_queue_bytes=0, churning=False,
                      advice=advice, opened=opened)


def test_port_family_pid_comm_select_listeners():
    rows = [_listener(80), _listener(443), _listener(443, family=6), _listener(5432, pid=11,
                                                                              comm="postgres")]
    other = ListenerRow(family=0, laddr="other", lport=0, pid=None, comm=None, backlog_max=0,
                        queue_len=0, queue_peak=0, syn_queue_len=None, drops=0, syn_drops=0,
                        drops_total=0, drops_per_s=0.0, accepts=0, accept_wait_p50_us=None,
                        accept_wait_p99_us=None, synack_retransmits=0)

    def kept(f):
        return [(r.family, r.lport) for r in rows + [other] if f.keeps_listener(r)]

    assert kept(Filters()) == [(4, 80), (4, 443), (6, 443), (4, 5432), (0, 0)]
    assert kept(Filters.build(ports=[443])) == [(4, 443), (6, 443)]
    assert kept(Filters.build(ports=[443], ipv6=True)) == [(6, 443)]
    assert kept(Filters.build(pids=[11])) == [(4, 5432)]
    assert kept(Filters.build(comm="nginx", ipv4=True)) == [(4, 80), (4, 443)]
    assert kept(Filters.build(ports=[9999])) == []


def test_pid_comm_select_processes_port_keeps_those_with_matching_connections():
    advice = (PoolAdvice("10.0.0.1:5432", 1.0, 0.1, 0.1, 1.0, 1, 2, 1, "pooled"),)
    rows = [_process(1), _process(2, "db", advice=advice), _process(3, opened=4)]
    assert [p.pid for p in rows if Filters.build(pids=[2]).keeps_process(p)] == [2]
    assert [p.pid for p in rows if Filters.build(comm="db").keeps_process(p)] == [2]
    assert [p.pid for p in rows if Filters.build(ports=[5432]).keeps_process(p)] == [2, 3]
    assert [p.pid for p in rows if Filters().keeps_process(p)] == [1, 2, 3]


def test_pid_checks_error_only_when_no_process_can_ever_have_it():
    alive = {1, 200}
    errors, warnings = check_pids({1, 999_999, 500}, 32768, alive.__contains__)
    assert errors == ["--pid 999999: no process can have it (kernel.pid_max is 32768)"]
    assert warnings == ["--pid 500: no such process now; it is traced if it appears "
                        "(pids are reused)"]
    assert check_pids({1, 200}, 32768, alive.__contains__) == ([], [])
    # pid_max unreadable: never an error
    assert check_pids({999_999}, None, alive.__contains__)[0] == []


def test_pid_max_read_from_proc():
    with open("/proc/sys/kernel/pid_max") as f:
        assert read_pid_max() == int(f.read())
