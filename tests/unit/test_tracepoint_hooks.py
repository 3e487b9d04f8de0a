"""BTF (tp_btf), raw or classic tracepoint hooks: which kind, why, and what a
raw hook must know of its arguments (from BTF's btf_trace_<name> typedefs,
never from the kernel version)."""
import pytest

from tests.unit.btf_builder import BTFBuilder
from tests.unit.test_doctor import error, make
from tracer.probes import features
from tracer.probes.btf import BTF, BTFError
from tracer.domain.hooks import hook_label
from tracer.probes.features import (CLASSIC_TRACEPOINTS_ENV, HOOKED_TRACEPOINTS, RAW_TRACEPOINTS_ENV,
                                    Feature, choose_backend, choose_tracepoint_hooks,
                                    classic_tracepoints_forced, raw_tracepoints_forced)
from tracer.probes.loader import kernel_name
from tracer.probes.offsets import drop_reason_cflags, kfree_skb_arg_positions, tracepoint_hook_cflags

# kfree_skb's TP_PROTO as kernels had it
KFREE_5_10 = ["skb", "location"]                          # no reason
KFREE_6_1 = ["skb", "location", "reason"]                 # reason (5.17+)
KFREE_6_18 = ["skb", "location", "reason", "rx_sk"]       # and the receiving socket


def kernel_like(kfree_args, hooked=tuple(tp.split("/")[1] for tp in HOOKED_TRACEPOINTS)) -> BTF:
    """A BTF blob with the btf_trace_ typedefs a kernel has: each a pointer
    to a function whose first parameter is the tracepoint's void *__data."""
    b = BTFBuilder()
    u32 = b.int("unsigned int", 4)
    b.int("long int", 8, signed=True)
    i32 = b.int("int", 4, signed=True)
    sock = b.struct("sock", 8, [("x", u32, 0)])
    skb = b.struct("sk_buff", 8, [("y", u32, 0)])
    reason = b.enum("skb_drop_reason", {"SKB_DROP_REASON_NO_SOCKET": 3,
                                        "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW": 40})
    reason_t = b.ref("TYPEDEF", reason, "reason_alias")     # looked through
    void_p = b.ref("PTR", 0)
    types = {"skb": b.ref("PTR", skb), "location": void_p, "reason": reason_t,
             "rx_sk": b.ref("PTR", b.ref("CONST", sock))}

    def typedef(name, params):
        proto = b.func_proto(0, [("", void_p)] + [("", t) for t in params])
        b.ref("TYPEDEF", b.ref("PTR", proto), f"btf_trace_{name}")

    sock_p = b.ref("PTR", sock)
    for name in hooked:
        typedef(name, {"inet_sock_set_state": [sock_p, i32, i32]}.get(name, [sock_p]))
    if kfree_args is not None:
        typedef("kfree_skb", [types[a] for a in kfree_args])
    return BTF.from_bytes(b.build())


def test_tracepoint_params_are_the_tp_proto_types_without_data():
    btf = kernel_like(KFREE_6_18)
    assert btf.tracepoint_params("kfree_skb") == [
        "struct sk_buff *", "void *", "enum skb_drop_reason", "struct sock *"]
    assert btf.tracepoint_params("inet_sock_set_state") == ["struct sock *", "int", "int"]
    with pytest.raises(BTFError, match="no btf_trace_tcp_probe"):
        btf.tracepoint_params("tcp_probe")


@pytest.mark.parametrize("args, want", [
    (KFREE_5_10, None), (KFREE_6_1, None), (KFREE_6_18, (2, 3)),
    (["skb", "location", "rx_sk", "reason"], (3, 2)),    # found by type, wherever it is
])
def test_kfree_skb_positions_come_from_btf(args, want):
    assert kfree_skb_arg_positions(kernel_like(args).tracepoint_params("kfree_skb")) == want


def test_raw_drop_flags_carry_positions_and_the_kernels_enum_values(tmp_path):
    no_format = str(tmp_path / "absent")   # raw hooks do not read the format file
    assert drop_reason_cflags(kernel_like(KFREE_6_18), no_format, raw=True) == [
        "-DREASON_TCP_LISTEN_OVERFLOW=40", "-DREASON_NO_SOCKET=3",
        "-DKFREE_SKB_REASON_ARG=2", "-DKFREE_SKB_RX_SK_ARG=3"]
    assert drop_reason_cflags(kernel_like(KFREE_6_1), no_format, raw=True) == []
    assert drop_reason_cflags(kernel_like(None), no_format, raw=True) == []
    assert drop_reason_cflags(None, no_format, raw=True) == []


def test_classic_drop_flags_follow_the_format_file(tmp_path):
    fmt = tmp_path / "format"
    fmt.write_text("\tfield:void * rx_sk;\toffset:32;\tsize:8;\tsigned:0;\n")
    btf = kernel_like(KFREE_6_18)
    assert drop_reason_cflags(btf, str(fmt)) == ["-DREASON_TCP_LISTEN_OVERFLOW=40",
                                                 "-DREASON_NO_SOCKET=3"]
    fmt.write_text("\tfield:enum skb_drop_reason reason;\toffset:24;\tsize:4;\tsigned:0;\n")
    assert drop_reason_cflags(btf, str(fmt)) == []


def test_choice_of_hook_kind():
    assert choose_tracepoint_hooks(True, []) == (
        "raw", "raw tracepoints (fields read at BTF offsets, no trace record filled)")
    loads = Feature(True, "a test tp_btf program on inet_sock_set_state loaded and attached")
    refused = Feature(False, "a test tp_btf program on inet_sock_set_state fails to load with EPERM")
    assert choose_tracepoint_hooks(True, [], tp_btf=loads) == (
        "btf", "BTF tracepoints (tp_btf: fields read by plain loads at BTF offsets, "
               "no trace record filled)")
    assert choose_tracepoint_hooks(True, [], tp_btf=refused) == (
        "raw", "raw tracepoints (fields read at BTF offsets, no trace record filled); not BTF ones: "
               "a test tp_btf program on inet_sock_set_state fails to load with EPERM")
    # the switches win over a kernel that would load them, classic over raw
    kind, why = choose_tracepoint_hooks(True, [], tp_btf=loads, forced_raw=True)
    assert kind == "raw" and why.endswith(f"BTF ones turned off by {RAW_TRACEPOINTS_ENV} "
                                          f"(a test and benchmark hook)")
    assert choose_tracepoint_hooks(True, [], True, loads, True)[0] == "classic"
    # without BTF, or BTF that does not describe a hooked tracepoint: classic, whatever loads
    assert choose_tracepoint_hooks(False, [], tp_btf=loads)[0] == "classic"
    assert choose_tracepoint_hooks(True, ["tcp_destroy_sock"], tp_btf=loads)[0] == "classic"
    assert choose_tracepoint_hooks(False, []) == (
        "classic", "classic tracepoints: no kernel BTF, so fields come from the trace records")
    kind, why = choose_tracepoint_hooks(True, ["tcp_destroy_sock"])
    assert kind == "classic" and "BTF does not describe tcp_destroy_sock" in why
    kind, why = choose_tracepoint_hooks(True, [], forced_classic=True)
    assert (kind, why) == ("classic", f"classic tracepoints: forced by {CLASSIC_TRACEPOINTS_ENV} "
                                      f"(a test hook)")
    assert tracepoint_hook_cflags("btf") == ["-DRAW_TRACEPOINTS", "-DTP_BTF"]
    assert tracepoint_hook_cflags("raw") == ["-DRAW_TRACEPOINTS"]
    assert tracepoint_hook_cflags("classic") == []


@pytest.mark.parametrize("value, forced", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_the_switch_to_classic(monkeypatch, value, forced):
    monkeypatch.setenv(CLASSIC_TRACEPOINTS_ENV, value)
    assert classic_tracepoints_forced() is forced
    kind, _ = features._tracepoint_hooks(kernel_like(KFREE_6_18), False, False)
    assert kind == ("classic" if forced else "raw")


@pytest.mark.parametrize("value, forced", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_the_switch_to_raw(monkeypatch, value, forced):
    monkeypatch.delenv(CLASSIC_TRACEPOINTS_ENV, raising=False)
    monkeypatch.setenv(RAW_TRACEPOINTS_ENV, value)
    assert raw_tracepoints_forced() is forced
    kind, why = features._tracepoint_hooks(kernel_like(KFREE_6_18), False, False)
    assert kind == "raw"
    # forced: no test program is even tried; else one would be, as root
    assert why.endswith("(a test and benchmark hook)" if forced else
                        "not BTF ones: not tested: loading a test program needs root")


def test_the_btf_typedef_is_what_a_tp_btf_program_attaches_to():
    btf = kernel_like(KFREE_6_18)
    tid = btf.tracepoint_id("inet_sock_set_state")
    assert tid > 0 and btf.tracepoint_id("tcp_probe") == 0
    assert btf.tracepoint_id("kfree_skb") not in (0, tid)
    assert features._test_tp_btf(0).tested is False   # nothing to attach to: not tried


def test_a_tracepoint_btf_does_not_describe_means_classic(monkeypatch):
    monkeypatch.delenv(CLASSIC_TRACEPOINTS_ENV, raising=False)
    btf = kernel_like(KFREE_6_18, hooked=("tcp_retransmit_skb", "tcp_retransmit_synack",
                                          "tcp_destroy_sock"))
    kind, why = features._tracepoint_hooks(btf, False, False)
    assert kind == "classic" and why.endswith("inet_sock_set_state (no btf_trace_ typedef)")
    assert features._tracepoint_hooks(None, False, False)[0] == "classic"


def test_records_lacking_fields_matter_only_to_classic_hooks():
    """5.10's tcp_destroy_sock record has no family: fatal for classic hooks
    that read it, nothing to raw hooks, which read the socket."""
    f = make()
    f.tracepoint_fields_missing = {"tcp/tcp_destroy_sock": ["family"]}
    f.tracepoint_hooks, f.tracepoint_hooks_why = "classic", "classic tracepoints: no kernel BTF, so fields come from the trace records"
    assert "tcp:tcp_destroy_sock has no family, by its format files; classic tracepoints: no " \
           "kernel BTF" in error("tracepoint", f)
    f.tracepoint_hooks = "raw"
    assert choose_backend("tracepoint", f) == "tracepoint"
    # an absent tracepoint matters to both
    f.tracepoint_presence = {**f.tracepoint_presence, "tcp/tcp_destroy_sock": False}
    assert "lacks the tcp:tcp_destroy_sock tracepoint" in error("tracepoint", f)


def test_raw_programs_have_distinct_kernel_names():
    names = [kernel_name(f"raw_tracepoint__{tp.split('/')[1]}") for tp in HOOKED_TRACEPOINTS]
    names.append(kernel_name("raw_tracepoint__kfree_skb"))
    assert len(set(names)) == len(names) and all(len(n) <= 15 for n in names)
    assert kernel_name("raw_tracepoint__inet_sock_set_state") == kernel_name(
        "tracepoint__sock__inet_sock_set_state") == "sock_set_state"
    # BTF ones, and the nested copies of either kind, are named alike
    for tp in HOOKED_TRACEPOINTS:
        event = tp.split("/")[1]
        assert kernel_name(f"tp_btf__{event}") == kernel_name(f"raw_tracepoint__{event}")
        assert kernel_name(f"tp_btf__{event}__nested") == kernel_name(f"raw_tracepoint__{event}__nested")
        assert kernel_name(f"tp_btf__{event}__nested") != kernel_name(f"tp_btf__{event}")


def test_btf_hooks_are_labelled_for_people():
    assert hook_label("tp_btf__inet_sock_set_state") == "BTF tracepoint inet_sock_set_state"
    assert hook_label("raw_tracepoint__inet_sock_set_state") == "raw tracepoint inet_sock_set_state"


@pytest.mark.parametrize("kind, why", [
    ("btf", "BTF tracepoints (tp_btf: fields read by plain loads at BTF offsets, no trace record filled)"),
    ("raw", "raw tracepoints (fields read at BTF offsets, no trace record filled)"),
    ("classic", "classic tracepoints: no kernel BTF, so fields come from the trace records"),
])
def test_doctor_says_in_one_line_which_kind_runs_and_why(kind, why):
    from tests.unit.test_doctor import report
    from tracer import doctor

    f = make(fentry=False, kprobes=False)
    f.tracepoint_hooks, f.tracepoint_hooks_why = kind, why
    r = report(f)
    assert r["tracepoint_hooks"] == {"kind": kind, "why": why}
    lines = doctor.render_text(r).splitlines()
    assert f"  tracepoints every backend hooks: {why}" in lines
    assert lines.index(f"  tracepoints every backend hooks: {why}") == 1 + next(
        i for i, line in enumerate(lines) if line.startswith("  --backend auto picks"))


def test_a_record_lacking_a_field_does_not_break_the_tracepoints_for_raw_hooks(tmp_path, monkeypatch):
    """As tracefs lays it out: tcp_destroy_sock's record without dport."""
    events = tmp_path / "events"
    for tp, fields in {**features.HOOKED_TRACEPOINTS, **features.ACCEPT_SYSCALL_TRACEPOINTS}.items():
        d = events / tp
        d.mkdir(parents=True)
        keep = [f for f in fields if tp != "tcp/tcp_destroy_sock" or f != "dport"]
        (d / "format").write_text("".join(f"\tfield:u64 {f};\toffset:8;\tsize:8;\tsigned:0;\n"
                                          for f in keep))
    (events / "skb/kfree_skb").mkdir(parents=True)
    (events / "skb/kfree_skb/format").write_text("\tfield:void * skbaddr;\n")
    monkeypatch.setattr(features, "TRACEFS_DIRS", (str(tmp_path),))
    classic, _, lacking = features._check_tracepoints(True, raw=False)
    raw, _, _ = features._check_tracepoints(True, raw=True)
    assert lacking == {"tcp/tcp_destroy_sock": ["dport"]}
    assert not classic.ok and "tcp:tcp_destroy_sock lacks dport (" in classic.detail
    assert raw.ok and "tcp:tcp_destroy_sock lacks dport (not needed: raw tracepoints)" in raw.detail


def test_every_hook_choice_is_named_by_the_first_word_every_view_shows():
    """The sentence that says which tracepoint hooks a run uses (the
    manifest's tracepoint_hooks, the session's info) starts with the word
    for its kind, the one word top, replay and report show from it
    (tracer/domain/hooks.py hooks_kind): for every choice detection makes,
    and for the fall-backs startup writes when the kernel refuses a kind."""
    from tracer.domain.hooks import TRACEPOINT_HOOKS, backend_text, hooks_kind
    from tracer.probes import startup

    loads = Feature(True, "loaded and attached")
    refused = Feature(False, "fails to load with EPERM")
    choices = [choose_tracepoint_hooks(*args, **kw) for args, kw in [
        ((True, []), {}), ((True, []), {"tp_btf": loads}), ((True, []), {"tp_btf": refused}),
        ((True, []), {"tp_btf": loads, "forced_raw": True}), ((False, []), {"tp_btf": loads}),
        ((True, ["tcp_destroy_sock"]), {}), ((True, []), {"forced_classic": True})]]
    assert {kind for kind, _ in choices} == set(TRACEPOINT_HOOKS)
    for kind, why in choices:
        assert hooks_kind(why) == TRACEPOINT_HOOKS[kind], why
    for kind in ("raw", "classic"):      # what a fall-back to this kind says
        assert hooks_kind(f"{startup._HOOK_WORDS[kind]}: BTF tracepoints failed to load (x)") \
            == TRACEPOINT_HOOKS[kind]
    assert backend_text("tracepoint", "BTF") == "tracepoint (BTF hooks)"
    assert backend_text("kprobe", "") == "kprobe"
    for hostile in (None, 7, ["BTF"], "\x1b[2JBTF", "BTFtracepoints", "bpf hooks", ""):
        assert hooks_kind(hostile) == ""
