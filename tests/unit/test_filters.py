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
    assert f.as_dict() == {"pids": [], "comm": None, "ports": [], "family": None}


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
    assert d == {"pids": [4, 30], "comm": "nginx", "ports": [80, 443], "family": 6}
    assert json.loads(json.dumps(d)) == d
    assert Filters.build(ports=[5432]).describe() == "port 5432"
    assert Filters.build(ipv4=True).describe() == "IPv4 only"


def test_filters_are_immutable_values():
    a = Filters.build(pids=[1, 2], ports=[80])
    assert a == Filters.build(pids=[2, 1], ports=[80]) and hash(a) == hash(Filters.build(pids=[2, 1], ports=[80]))
    with pytest.raises(AttributeError):
        a.comm = "x"
