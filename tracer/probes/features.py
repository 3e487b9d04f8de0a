"""What this host can trace with, and which backend to use.

Each check reads what the kernel exposes (sysfs, tracefs, /proc, BTF) rather
than guessing from the version, because distributions and sandboxes switch
features off independently: the kernel this project is developed on has BTF
and the trampoline code, yet fentry programs fail to load with EPERM and
CONFIG_KPROBES is off. The only sure test of fentry is loading one, so that
check (and the ring buffer's) runs only as root and only when asked.
"""
from __future__ import annotations

import errno
import gzip
import os
import platform
import re
import struct
from dataclasses import dataclass, field
from typing import Optional

from tracer.probes import bpf_syscall as sc
from tracer.probes import headers as headers_mod
from tracer.probes.btf import BTF, BTFError, kernel_btf
from tracer.probes.headers import HeaderTree
from tracer.probes.loader import find_vmlinux_btf_id

BACKENDS = ("auto", "fentry", "kprobe", "tracepoint")
AUTO_ORDER = ("fentry", "kprobe", "tracepoint")  # cheapest per event first

BTF_PATH = "/sys/kernel/btf/vmlinux"
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"
KALLSYMS = "/proc/kallsyms"

# The tracepoints bpf/main.c hooks and the record fields it reads from each
# (a kernel whose record lacks one fails to compile: checked here first, from
# the kernel's own format files). Every backend hooks these:
HOOKED_TRACEPOINTS = {
    "sock/inet_sock_set_state": ("skaddr", "oldstate", "newstate", "sport", "dport", "family",
                                 "protocol", "saddr", "daddr", "saddr_v6", "daddr_v6"),
    "tcp/tcp_retransmit_skb": ("skaddr", "state"),
    "tcp/tcp_retransmit_synack": ("skaddr",),
    "tcp/tcp_destroy_sock": ("skaddr", "dport"),
}
# the tracepoint backend also the accept syscalls (CONFIG_FTRACE_SYSCALLS)
ACCEPT_SYSCALL_TRACEPOINTS = {
    "syscalls/sys_enter_accept4": ("fd",),
    "syscalls/sys_enter_accept": ("fd",),
    "syscalls/sys_exit_accept4": ("ret",),
    "syscalls/sys_exit_accept": ("ret",),
    # and connect(), for the errors it returns before any SYN (bpf/connect.h)
    "syscalls/sys_enter_connect": ("fd", "uservaddr", "addrlen"),
    "syscalls/sys_exit_connect": ("ret",),
}
# and skb:kfree_skb where its record has what the drop split needs (offsets.py)
TRACEPOINTS = (*HOOKED_TRACEPOINTS, *ACCEPT_SYSCALL_TRACEPOINTS, "skb/kfree_skb")
REQUIRED_TRACEPOINTS = tuple(HOOKED_TRACEPOINTS)

# Functions the kprobe and fentry backends hook. GCC may inline or rename
# (".isra.0") any of them, so they are looked up rather than assumed.
KPROBE_TARGETS = (
    "tcp_v4_connect", "tcp_v6_connect", "inet_csk_accept",
    "tcp_conn_request", "tcp_v4_syn_recv_sock", "tcp_v6_syn_recv_sock",
    "inet_stream_connect",
)
REQUIRED_KPROBE_TARGETS = ("tcp_v4_connect", "inet_csk_accept", "tcp_conn_request",
                           "tcp_v4_syn_recv_sock")
# The others are optional (IPv6 may be a module, or off); what goes unseen
# without each, for the notes a session reports.
OPTIONAL_HOOKS = {
    "tcp_v6_connect": "IPv6 connects are not traced",
    "tcp_v6_syn_recv_sock": "ACK-time accept-queue drops of IPv6 connections are not counted",
    "inet_stream_connect": "errors connect() returns before sending a SYN (no route, "
                           "a policy's EACCES/EPERM) are not seen",
}
FENTRY_TEST_FUNCTION = "tcp_v4_connect"

# Test and diagnostic hooks: make what this kernel has look absent, so that
# the fallbacks can be exercised on a kernel that has everything
# (tests/vm/test_fallbacks.py). Comma-separated names; doctor notes them.
HIDE_FUNCTIONS_ENV = "CONNSCOPE_HIDE_FUNCTIONS"  # hooked functions, e.g. tcp_v6_connect
HIDE_FEATURES_ENV = "CONNSCOPE_HIDE_FEATURES"    # any of HIDEABLE_FEATURES
HIDEABLE_FEATURES = ("fentry", "kprobes", "ringbuf")
FAIL_LOAD_ENV = "CONNSCOPE_FAIL_LOAD"            # backends whose load is made to fail
CLASSIC_TRACEPOINTS_ENV = "CONNSCOPE_CLASSIC_TRACEPOINTS"   # 1: classic tracepoint hooks even with BTF
RAW_TRACEPOINTS_ENV = "CONNSCOPE_RAW_TRACEPOINTS"   # 1: raw tracepoint hooks even where BTF ones load

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
RINGBUF_MIN_KERNEL = (5, 8)


class BackendUnavailable(Exception):
    """The requested backend cannot work here; the message says why and what to do."""


@dataclass
class Feature:
    ok: bool
    detail: str
    tested: bool = True  # False: could not be checked here (needs root, or not asked)


@dataclass
class Features:
    is_root: bool
    privileges: Feature          # CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN
    kernel_release: str
    btf: Feature
    headers: HeaderTree
    bcc: Feature                 # detail: version, or why it does not import
    kprobes: Feature
    kprobe_targets: dict[str, bool]  # function -> listed in /proc/kallsyms; {}: not looked up
    fentry: Feature
    tracepoints: Feature         # ok: every REQUIRED_TRACEPOINTS exists
    tracepoint_presence: dict[str, bool]  # "sock/inet_sock_set_state" -> exists
    ringbuf: Feature
    load_tested: bool = False    # whether test programs were loaded
    notes: list[str] = field(default_factory=list)
    # hooked tracepoint -> the fields connscope reads that its record lacks here
    # (only from tracefs, as root; {} when not checked)
    tracepoint_fields_missing: dict[str, list[str]] = field(default_factory=dict)
    # how HOOKED_TRACEPOINTS are hooked: "btf" (tp_btf), "raw" or "classic",
    # and why, one line (choose_tracepoint_hooks)
    tracepoint_hooks: str = "classic"
    tracepoint_hooks_why: str = ""

    def missing_kprobe_targets(self, required_only: bool = False) -> list[str]:
        names = REQUIRED_KPROBE_TARGETS if required_only else KPROBE_TARGETS
        return [n for n in names if not self.kprobe_targets.get(n, False)]

    def missing_tracepoints(self, required_only: bool = False) -> list[str]:
        names = REQUIRED_TRACEPOINTS if required_only else TRACEPOINTS
        return [n for n in names if not self.tracepoint_presence.get(n, False)]


# --- small readers --------------------------------------------------------------

def _names_in(env: str) -> set[str]:
    return {w.strip() for w in os.environ.get(env, "").split(",") if w.strip()}


def hidden_functions() -> set[str]:
    """Functions CONNSCOPE_HIDE_FUNCTIONS makes count as absent (a test hook)."""
    return _names_in(HIDE_FUNCTIONS_ENV)


def failing_loads() -> set[str]:
    """Backends whose load CONNSCOPE_FAIL_LOAD makes fail after detection
    found them usable, as a kernel can (a verifier or attach refusal): a
    test hook for `auto`'s fallback."""
    return _names_in(FAIL_LOAD_ENV) & set(AUTO_ORDER)


# the CONNSCOPE_FAIL_LOAD name of each kind of hook for the shared tracepoints
_FAIL_LOAD_HOOKS = {"raw": "raw_tracepoints", "btf": "tp_btf"}


def hooks_made_to_fail(kind: str) -> bool:
    """CONNSCOPE_FAIL_LOAD=raw_tracepoints (or tp_btf): that kind of hook's
    load fails as a kernel's refusal would (a test hook for the fall back to
    classic, or raw, ones)."""
    return kind in _FAIL_LOAD_HOOKS and _FAIL_LOAD_HOOKS[kind] in _names_in(FAIL_LOAD_ENV)


def hidden_features() -> set[str]:
    """Features CONNSCOPE_HIDE_FEATURES makes count as unavailable (a test hook)."""
    return _names_in(HIDE_FEATURES_ENV) & set(HIDEABLE_FEATURES)


def raw_tracepoints_forced() -> bool:
    """CONNSCOPE_RAW_TRACEPOINTS=1: hook with raw tracepoints even where BTF
    ones load (a test and benchmark hook)."""
    return os.environ.get(RAW_TRACEPOINTS_ENV, "").strip() not in ("", "0")


def classic_tracepoints_forced() -> bool:
    """CONNSCOPE_CLASSIC_TRACEPOINTS=1: hook with classic tracepoints even
    where raw ones would do (a test and benchmark hook)."""
    return os.environ.get(CLASSIC_TRACEPOINTS_ENV, "").strip() not in ("", "0")


def choose_tracepoint_hooks(has_btf: bool, undescribed: list[str],
                            forced_classic: bool = False, tp_btf: Optional[Feature] = None,
                            forced_raw: bool = False) -> tuple[str, str]:
    """("btf", "raw" or "classic", why in one line) for the tracepoints every
    backend hooks. Raw tracepoints read the socket's fields at BTF offsets
    and take their arguments as BTF describes them (btf_trace_<name>), so
    they need BTF that describes each of them; classic ones read the trace
    record, which the format file describes. BTF tracepoints (tp_btf) are
    raw ones whose arguments the verifier knows the types of, so the fields
    are plain loads instead of a helper call each: where a test program of
    that kind loads and attaches (tp_btf, None: not tested)."""
    if forced_classic:
        return "classic", f"classic tracepoints: forced by {CLASSIC_TRACEPOINTS_ENV} (a test hook)"
    if not has_btf:
        return "classic", "classic tracepoints: no kernel BTF, so fields come from the trace records"
    if undescribed:
        return "classic", (f"classic tracepoints: BTF does not describe "
                           f"{', '.join(undescribed)} (no btf_trace_ typedef)")
    if forced_raw:
        return "raw", (f"raw tracepoints (fields read at BTF offsets, no trace record filled): "
                       f"BTF ones turned off by {RAW_TRACEPOINTS_ENV} (a test and benchmark hook)")
    if tp_btf is not None and tp_btf.ok:
        return "btf", ("BTF tracepoints (tp_btf: fields read by plain loads at BTF offsets, "
                       "no trace record filled)")
    return "raw", ("raw tracepoints (fields read at BTF offsets, no trace record filled)"
                   + (f"; not BTF ones: {tp_btf.detail}" if tp_btf is not None else ""))


# The kernel's BTF describes all of its tracepoints (btf_trace_<name>
# typedefs, 5.5+) or none: one stands for the others (each look-up costs
# ~2.5 ms of start-up), whose presence the tracefs check covers.
BTF_DESCRIBED_TRACEPOINT = "inet_sock_set_state"


def _tracepoint_hooks(btf: Optional[BTF], can_load: bool, is_root: bool) -> tuple[str, str]:
    undescribed = []
    tp_btf = None
    if btf is not None:
        try:
            btf.tracepoint_params(BTF_DESCRIBED_TRACEPOINT)
        except BTFError:
            undescribed.append(BTF_DESCRIBED_TRACEPOINT)
    forced_classic, forced_raw = classic_tracepoints_forced(), raw_tracepoints_forced()
    if btf is not None and not undescribed and not (forced_classic or forced_raw):
        tp_btf = (_test_tp_btf(btf.tracepoint_id(BTF_DESCRIBED_TRACEPOINT)) if can_load
                  else _not_load_tested(is_root))
    return choose_tracepoint_hooks(btf is not None, undescribed, forced_classic, tp_btf, forced_raw)


def _hiding_notes() -> list[str]:
    notes = []
    functions = hidden_functions()
    if functions:
        notes.append(f"{HIDE_FUNCTIONS_ENV} (a test hook) makes {', '.join(sorted(functions))} "
                     f"count as absent")
    asked = _names_in(HIDE_FEATURES_ENV)
    if asked:
        known = sorted(asked & set(HIDEABLE_FEATURES))
        unknown = sorted(asked - set(HIDEABLE_FEATURES))
        note = f"{HIDE_FEATURES_ENV} (a test hook) makes {', '.join(known) or 'nothing'} count as unavailable"
        if unknown:
            note += f"; ignored unknown {', '.join(unknown)} (known: {', '.join(HIDEABLE_FEATURES)})"
        notes.append(note)
    return notes


_HIDDEN = f"hidden by {HIDE_FEATURES_ENV} (a test hook)"


def kernel_version(release: str) -> tuple[int, int, int]:
    """'6.18.44-fc-v657' -> (6, 18, 44); missing parts are 0."""
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", release)
    if not m:
        return (0, 0, 0)
    return tuple(int(x or 0) for x in m.groups())  # type: ignore[return-value]


def effective_capabilities(status_text: str) -> int:
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", status_text, re.M)
    return int(m.group(1), 16) if m else 0


def kernel_config(release: str) -> Optional[dict[str, str]]:
    """CONFIG_* values from /proc/config.gz or /boot/config-<release>; None if neither."""
    for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{release}", open)):
        try:
            with opener(path, "rt") as f:
                text = f.read()
        except OSError:
            continue
        config = {}
        for line in text.splitlines():
            m = re.match(r"(CONFIG_\w+)=(.*)", line)
            if m:
                config[m.group(1)] = m.group(2)
            else:
                m = re.match(r"# (CONFIG_\w+) is not set", line)
                if m:
                    config[m.group(1)] = "n"
        return config
    return None


def kallsyms_names(wanted: set[str], path: str = KALLSYMS) -> set[str]:
    """Which of `wanted` are symbol names in /proc/kallsyms (readable without root).

    The file lists every kernel symbol (~120k lines, 5 MB); the kernel takes
    ~40 ms to produce it, and splitting it into lines in Python took as long
    again. So it is read once as bytes and searched for each wanted name, which
    must be the third field of its line, as in "ffffffff82008730 T inet_csk_accept".
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return set()
    return {name for name in wanted if name and _is_symbol(data, name.encode())}


def _is_symbol(kallsyms: bytes, name: bytes) -> bool:
    pos = kallsyms.find(name)
    while pos != -1:
        end = pos + len(name)
        if end == len(kallsyms) or kallsyms[end:end + 1].isspace():
            line_start = kallsyms.rfind(b"\n", 0, pos) + 1
            before = kallsyms[line_start:pos]
            if before[-1:].isspace() and len(before.split()) == 2:
                return True
        pos = kallsyms.find(name, pos + 1)
    return False


def _tracefs_root() -> Optional[str]:
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    return None


# --- individual checks -----------------------------------------------------------

def _check_privileges(is_root: bool) -> Feature:
    try:
        with open("/proc/self/status") as f:
            caps = effective_capabilities(f.read())
    except OSError:
        caps = 0
    has = {name: bool(caps >> bit & 1) for name, bit in
           (("CAP_SYS_ADMIN", CAP_SYS_ADMIN), ("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON))}
    held = [n for n, v in has.items() if v]
    ok = has["CAP_SYS_ADMIN"] or (has["CAP_BPF"] and has["CAP_PERFMON"])
    who = "root" if is_root else f"uid {os.geteuid()}"
    if ok:
        return Feature(True, f"{who} with {', '.join(held)}")
    return Feature(False, f"{who} without CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN: "
                          f"tracing needs root (sudo)")


def _check_btf(path: str) -> tuple[Feature, Optional[BTF]]:
    if not os.path.exists(path):
        return Feature(False, f"no {path} (kernel built without CONFIG_DEBUG_INFO_BTF)"), None
    try:
        btf = kernel_btf() if path == BTF_PATH else BTF.load(path)
    except BTFError as e:
        return Feature(False, str(e)), None
    return Feature(True, f"{path}"), btf


def _check_bcc() -> Feature:
    """Is bcc there to compile with? Found, not imported: importing it maps
    libbcc and LLVM (60 MB) into a process that, with the compile cache,
    never compiles (tracer/probes/compiler.py runs in a child)."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError) as e:
        spec, why = None, str(e)
    else:
        why = "no module named 'bcc'"
    if spec is None or not spec.origin:
        return Feature(False, f"python3 cannot import bcc ({why}); install python3-bpfcc")
    version = "unknown version"
    try:
        with open(os.path.join(os.path.dirname(spec.origin), "version.py")) as f:
            m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read())
        if m:
            version = m.group(1)
    except OSError:
        pass
    return Feature(True, f"bcc {version}")


def _check_kprobes(config: Optional[dict[str, str]]) -> Feature:
    # bcc attaches through the kprobe PMU (perf_event_open) and falls back to
    # kprobe_events in tracefs; either is enough.
    root = _tracefs_root()
    events = root is not None and os.path.exists(os.path.join(root, "kprobe_events"))
    pmu = os.path.isdir(KPROBE_PMU)
    if pmu or events:
        how = " and ".join(w for w, ok in (("kprobe PMU", pmu), ("kprobe_events in tracefs", events)) if ok)
        return Feature(True, f"{how} present")
    if config is not None:
        if config.get("CONFIG_KPROBES", "n") == "n":
            return Feature(False, "CONFIG_KPROBES is off")
        if config.get("CONFIG_KPROBE_EVENTS", "n") == "n":
            return Feature(False, "CONFIG_KPROBE_EVENTS is off")
    where = "tracefs" if root else "tracefs (not mounted or not readable)"
    return Feature(False, f"no kprobe PMU in /sys/bus/event_source/devices and no kprobe_events in {where}")


def format_fields(text: str) -> set[str]:
    """The field names of a tracepoint's format file ("field:__u16 sport;
    offset:...", arrays as "saddr[4]")."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("field:"):
            decl = line[len("field:"):].split(";", 1)[0].strip()
            name = decl.rsplit(None, 1)[-1] if decl else ""
            names.add(name.split("[", 1)[0].lstrip("*"))
    return names


def missing_fields(root: str, tracepoints: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """tracepoint -> the wanted fields its format file (under tracefs `root`)
    does not list; tracepoints without a format file are left out."""
    out = {}
    for tp, wanted in tracepoints.items():
        try:
            with open(os.path.join(root, "events", tp, "format"), "rb") as f:
                text = f.read(1 << 16).decode("utf-8", "replace")
        except OSError:
            continue
        have = format_fields(text)
        lacking = [name for name in wanted if name not in have]
        if lacking:
            out[tp] = lacking
    return out


def _check_tracepoints(is_root: bool, raw: bool = False) -> tuple[Feature, dict[str, bool], dict[str, list[str]]]:
    """raw: the shared tracepoints are hooked as raw ones, which read the
    socket rather than the record: a hooked record's missing field is no
    problem then."""
    root = _tracefs_root()
    lacking: dict[str, list[str]] = {}
    if root is not None:
        presence = {tp: os.path.exists(os.path.join(root, "events", tp, "format")) for tp in TRACEPOINTS}
        lacking = missing_fields(root, {**HOOKED_TRACEPOINTS, **ACCEPT_SYSCALL_TRACEPOINTS})
        source = f"{root}/events"
    else:
        # Without root tracefs is not readable; kallsyms names every
        # tracepoint's iterator (__traceiter_<name>, 5.10+) or the tracepoint
        # itself. Not the syscall ones: those are taken as present.
        plain = [tp for tp in TRACEPOINTS if not tp.startswith("syscalls/")]
        names = {tp.split("/")[1] for tp in plain}
        syms = kallsyms_names({p + n for n in names for p in ("__traceiter_", "__tracepoint_")})
        if not syms:
            return (Feature(False, "cannot check: tracefs is not readable and /proc/kallsyms "
                                   "lists no tracepoints" + ("" if is_root else " (run as root)"), tested=False),
                    {tp: False for tp in TRACEPOINTS}, {})
        presence = {tp: tp.startswith("syscalls/") or
                    any(p + tp.split("/")[1] in syms for p in ("__traceiter_", "__tracepoint_"))
                    for tp in TRACEPOINTS}
        source = "from /proc/kallsyms, record fields unchecked; tracefs needs root"
    missing = [tp for tp in TRACEPOINTS if not presence[tp]]
    required_missing = [tp for tp in REQUIRED_TRACEPOINTS if not presence[tp]]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    problems += [f"{tp.replace('/', ':')} lacks {', '.join(names)}"
                 + (" (not needed: raw tracepoints)" if raw and tp in HOOKED_TRACEPOINTS else "")
                 for tp, names in lacking.items()]
    detail = (f"{'; '.join(problems)} ({source})" if problems
              else f"all {len(TRACEPOINTS)} present"
              + (" with the fields read" if root is not None else "") + f" ({source})")
    broken = required_missing or (not raw and any(tp in HOOKED_TRACEPOINTS for tp in lacking))
    return Feature(not broken, detail), presence, lacking


# Raw bpf(2): the two load tests need no compiler, so they cost well under a
# millisecond (a bcc compile of the same program takes 0.2 s here and 30 s in
# a TCG guest) and work before any header tree exists.
_RETURN_0 = struct.pack("<QQ", 0x00000000000000B7, 0x0000000000000095)  # r0 = 0; exit


def _create_ringbuf_map() -> Optional[int]:
    """Create and close a BPF ring buffer map; None on success, else errno."""
    try:
        fd = sc.map_create(sc.MAP_RINGBUF, 0, 0, 4096)
    except OSError as e:
        return e.errno
    os.close(fd)
    return None


def _test_fentry(fn: str = FENTRY_TEST_FUNCTION, btf_id: Optional[int] = None) -> Feature:
    """Load `r0 = 0; exit` as an fentry program on `fn` and attach it, as bcc's
    KFUNC_PROBE does (BPF_PROG_LOAD, then BPF_RAW_TRACEPOINT_OPEN), then detach.
    btf_id: `fn`'s id in the kernel BTF if known; else libbpf looks it up, which
    costs ~10 ms (it parses the kernel BTF again)."""
    if btf_id is None:
        btf_id = find_vmlinux_btf_id(fn, sc.TRACE_FENTRY)
    if btf_id <= 0:
        return Feature(False, f"not tested: no BTF id for {fn} (libbpf: "
                              f"{sc.errno_text(-btf_id) if btf_id < 0 else 'none'})", tested=False)
    return _test_tracing(sc.TRACE_FENTRY, btf_id, f"fentry program on {fn}")


def _test_tp_btf(btf_id: int, tp: str = BTF_DESCRIBED_TRACEPOINT) -> Feature:
    """Load `r0 = 0; exit` as a BTF tracepoint program (tp_btf) on `tp` and
    attach it, as the loader does, then detach. (This host's kernel loads
    these where fentry is refused: no trampoline is involved.)"""
    if btf_id <= 0:
        return Feature(False, f"not tested: BTF has no btf_trace_{tp}", tested=False)
    return _test_tracing(sc.TRACE_RAW_TP, btf_id, f"tp_btf program on {tp}")


def _not_load_tested(is_root: bool) -> Feature:
    """A test program that was not loaded, and why."""
    return Feature(False, "not tested: loading a test program needs root" if not is_root
                   else "not tested (load tests were not asked for)", tested=False)


def _test_tracing(attach_type: int, btf_id: int, what: str) -> Feature:
    """Load `r0 = 0; exit` as a BPF_PROG_TYPE_TRACING program of attach_type
    at btf_id, attach it (BPF_RAW_TRACEPOINT_OPEN at attach_btf_id), detach."""
    try:
        prog, _ = sc.prog_load(sc.PROG_TRACING, _RETURN_0, expected_attach_type=attach_type,
                               attach_btf_id=btf_id, log_size=4096)
    except OSError as e:
        verifier = getattr(e, "log", "").splitlines()
        as_root = ", even as root" if e.errno == errno.EPERM and os.geteuid() == 0 else ""
        return Feature(False, f"{sc.errno_text(e.errno)} when loading a BPF_PROG_TYPE_TRACING program"
                              f" ({what}){as_root}" + (f": {verifier[-1]}" if verifier else ""))
    try:
        try:
            link = sc.raw_tracepoint_open(prog, None)
        except OSError as e:
            return Feature(False, f"a test {what} loaded but attaching it fails with "
                                  f"{sc.errno_text(e.errno)}")
        os.close(link)
    finally:
        os.close(prog)
    return Feature(True, f"a test {what} loaded and attached")


def _check_ringbuf(release: str, btf: Optional[BTF], load_tests: bool, is_root: bool) -> Feature:
    version = kernel_version(release)
    if version < RINGBUF_MIN_KERNEL:
        return Feature(False, f"kernel {release} is older than 5.8 (falls back to the perf buffer)")
    if btf is not None:
        try:
            btf.enum_value("bpf_map_type", "BPF_MAP_TYPE_RINGBUF")
        except BTFError:
            return Feature(False, "BTF has no BPF_MAP_TYPE_RINGBUF (falls back to the perf buffer)")
    if not load_tests:
        why = "not load-tested" + ("" if is_root else ": needs root")
        return Feature(True, f"kernel >= 5.8 ({why})", tested=False)
    err = _create_ringbuf_map()
    if err is None:
        return Feature(True, "a test ring buffer map was created")
    return Feature(False, f"creating a ring buffer map fails with {sc.errno_text(err)}; "
                          f"falls back to the perf buffer")


def _check_fentry(btf: Optional[BTF], load_tests: bool, is_root: bool) -> Feature:
    if platform.machine() not in ("x86_64", "aarch64"):
        return Feature(False, f"no BPF trampolines on {platform.machine()}")
    if btf is None:
        return Feature(False, "needs kernel BTF, which this kernel lacks")
    if not btf.has_function(FENTRY_TEST_FUNCTION):
        return Feature(False, f"BTF does not describe {FENTRY_TEST_FUNCTION}")
    if not load_tests:
        return _not_load_tested(is_root)
    return _test_fentry(FENTRY_TEST_FUNCTION, btf.function_id(FENTRY_TEST_FUNCTION))


# --- everything -----------------------------------------------------------------

def probe_features(load_tests: Optional[bool] = None, *, release: Optional[str] = None,
                   tree: Optional[HeaderTree] = None, only_to_choose: bool = False) -> Features:
    """Probe the host. load_tests: load tiny test programs (fentry, ring buffer);
    None means "when root". As root this also mounts tracefs/debugfs if needed.

    only_to_choose: skip what cannot change which backend works or why not, for
    start-up (doctor shows everything): /proc/kallsyms (~40 ms) when neither
    kprobes nor fentry work, since no backend then needs its hooks listed;
    kprobe_targets is then empty.
    """
    is_root = os.geteuid() == 0
    if load_tests is None:
        load_tests = is_root
    release = release or os.uname().release
    notes: list[str] = _hiding_notes()
    hidden = hidden_features()
    if is_root:
        try:
            headers_mod.ensure_tracefs()
        except headers_mod.TracefsUnavailable as e:
            notes.append(str(e))
    privileges = _check_privileges(is_root)
    btf_feature, btf = _check_btf(BTF_PATH)
    tree = tree if tree is not None else headers_mod.find_header_tree(release)
    bcc = _check_bcc()
    config = kernel_config(release)
    kprobes = Feature(False, _HIDDEN) if "kprobes" in hidden else _check_kprobes(config)
    can_load = load_tests and privileges.ok
    hooks, hooks_why = _tracepoint_hooks(btf, can_load, is_root)
    tracepoints, presence, lacking = _check_tracepoints(is_root, raw=hooks != "classic")
    fentry = Feature(False, _HIDDEN) if "fentry" in hidden else _check_fentry(btf, can_load, is_root)
    kprobe_targets: dict[str, bool] = {}
    if kprobes.ok or fentry.ok or not only_to_choose:
        targets = kallsyms_names(set(KPROBE_TARGETS) - hidden_functions())
        kprobe_targets = {name: name in targets for name in KPROBE_TARGETS}
    ringbuf = (Feature(False, f"{_HIDDEN}; falls back to the perf buffer") if "ringbuf" in hidden
               else _check_ringbuf(release, btf, can_load, is_root))
    return Features(is_root=is_root, privileges=privileges, kernel_release=release, btf=btf_feature,
                    headers=tree, bcc=bcc, kprobes=kprobes, kprobe_targets=kprobe_targets,
                    fentry=fentry, tracepoints=tracepoints, tracepoint_presence=presence,
                    tracepoint_fields_missing=lacking,
                    ringbuf=ringbuf, load_tested=can_load, notes=notes,
                    tracepoint_hooks=hooks, tracepoint_hooks_why=hooks_why)


# --- backend choice ---------------------------------------------------------------

def _toolchain_problem(f: Features) -> Optional[str]:
    """What every backend needs: bcc, a header tree, and a way to place struct fields."""
    release = f.kernel_release
    if not f.bcc.ok:
        return "bcc is not installed: install python3-bpfcc (apt-get install python3-bpfcc)"
    if f.headers.path is None:
        if f.headers.kind == "unmerged":
            return (f"the kernel headers found ({f.headers.version}) must be merged into connscope's "
                    f"cache first: run as root")
        return (f"no kernel headers for bcc to compile against: install linux-headers-{release}, "
                f"or any linux-headers package when there is none for this kernel "
                f"(struct offsets then come from BTF)")
    if not f.btf.ok and not f.headers.matches_running_kernel:
        return (f"this kernel has no BTF and the installed headers are for {f.headers.version}, "
                f"not {release}: struct offsets cannot be known; install linux-headers-{release}")
    return None


def _alternatives(f: Features, exclude: str) -> str:
    """'; use --backend tracepoint or --backend kprobe' for the backends that work."""
    works = [b for b in ("tracepoint", "kprobe", "fentry") if b != exclude and _backend_problem(b, f, False) is None]
    if not works:
        return ""
    return "; use " + " or ".join(f"--backend {b}" for b in works)


def _hooked_tracepoint_problem(f: Features) -> Optional[str]:
    """Every backend hooks HOOKED_TRACEPOINTS: as classic tracepoints, one
    whose record lacks a field read would fail to compile, so no backend
    works (the reason is the kernel's own format file). Raw tracepoints read
    the socket instead: only absent tracepoints matter to them."""
    lacking = {tp: names for tp, names in f.tracepoint_fields_missing.items()
               if tp in HOOKED_TRACEPOINTS and f.tracepoint_hooks == "classic"}
    absent = [tp for tp in HOOKED_TRACEPOINTS if not f.tracepoint_presence.get(tp, False)]
    if f.tracepoints.tested and absent and absent != list(HOOKED_TRACEPOINTS):
        # (none at all: tracefs could not be read, said elsewhere)
        return (f"this kernel lacks the {', '.join(tp.replace('/', ':') for tp in absent)} "
                f"tracepoint{'s' if len(absent) > 1 else ''} every backend hooks "
                f"(Linux 4.16 or newer has them): connscope cannot trace here")
    if not lacking:
        return None
    what = "; ".join(f"{tp.replace('/', ':')} has no {', '.join(names)}"
                     for tp, names in lacking.items())
    hooks = f"; {f.tracepoint_hooks_why}" if f.tracepoint_hooks_why else ""
    return (f"this kernel's tracepoint records lack fields every backend reads ({what}, "
            f"by its format files{hooks}): connscope cannot trace here")


def _backend_problem(backend: str, f: Features, suggest: bool = True) -> Optional[str]:
    """Why `backend` cannot work here, or None. Assumes the toolchain is fine."""
    alt = (lambda: _alternatives(f, backend)) if suggest else (lambda: "")
    shared = _hooked_tracepoint_problem(f)
    if shared and backend in BACKENDS:
        return shared
    if backend == "kprobe":
        if f.kprobes.detail == _HIDDEN:
            return f"kprobes are {_HIDDEN}{alt()}"
        if not f.kprobes.ok:
            return f"kprobes are not available on this kernel ({f.kprobes.detail}){alt()}"
        missing = f.missing_kprobe_targets(required_only=True)
        if missing:
            return (f"the kprobe backend hooks {', '.join(missing)}, which /proc/kallsyms does not "
                    f"list (inlined or renamed in this kernel){alt()}")
        return None
    if backend == "fentry":
        if f.fentry.detail == _HIDDEN:
            return f"fentry (BPF trampolines) is {_HIDDEN}{alt()}"
        if not f.fentry.ok:
            if not f.fentry.tested:
                why = f.fentry.detail.replace("not tested: ", "", 1)
                return f"fentry (BPF trampolines) could not be tested: {why}"
            return f"fentry (BPF trampolines) does not load on this kernel: {f.fentry.detail}{alt()}"
        missing = f.missing_kprobe_targets(required_only=True)
        if missing:
            return (f"the fentry backend hooks {', '.join(missing)}, which /proc/kallsyms does not "
                    f"list (inlined or renamed in this kernel){alt()}")
        return None
    if backend == "tracepoint":
        if not f.tracepoints.ok:
            if not f.tracepoints.tested:
                why = f.tracepoints.detail.replace("cannot check: ", "", 1)
                return f"tracepoints could not be checked: {why}"
            missing = f.missing_tracepoints(required_only=True)
            return (f"the tracepoint backend needs the {', '.join(missing)} "
                    f"tracepoint{'s' if len(missing) > 1 else ''}, which this kernel does not "
                    f"have (it needs Linux 4.16 or newer){alt()}")
        syscalls = [tp for tp in ACCEPT_SYSCALL_TRACEPOINTS
                    if not f.tracepoint_presence.get(tp, False)
                    or tp in f.tracepoint_fields_missing]
        if f.tracepoints.tested and syscalls:
            return (f"the tracepoint backend sees accept() through {', '.join(syscalls)}, which "
                    f"this kernel lacks or records without the fields read "
                    f"(CONFIG_FTRACE_SYSCALLS){alt()}")
        return None
    raise BackendUnavailable(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")


def choose_backend(requested: str, features: Features) -> str:
    """The backend to load for `--backend requested`; raises BackendUnavailable with the reason.

    auto picks the first that works of fentry (cheapest per event), kprobe,
    tracepoint.
    """
    if requested not in BACKENDS:
        raise BackendUnavailable(f"unknown backend '{requested}': choose one of {', '.join(BACKENDS)}")
    problem = _toolchain_problem(features)
    if problem:
        raise BackendUnavailable(problem)
    if requested != "auto":
        problem = _backend_problem(requested, features)
        if problem:
            raise BackendUnavailable(problem)
        return requested
    for backend in AUTO_ORDER:
        if _backend_problem(backend, features, suggest=False) is None:
            return backend
    raise BackendUnavailable("no backend works here: " + "; ".join(
        _backend_problem(b, features, suggest=False) or "" for b in AUTO_ORDER))


def backends_to_try(requested: str, features: Features) -> list[str]:
    """The backends start() loads in turn: the one asked for, or for `auto`
    every usable one, cheapest first (a load can still fail where detection
    saw nothing wrong: the next is tried then)."""
    first = choose_backend(requested, features)
    if requested != "auto":
        return [first]
    return [b for b in AUTO_ORDER if _backend_problem(b, features, suggest=False) is None]


def _short_problem(backend: str, f: Features) -> str:
    if backend == "fentry":
        if not f.fentry.ok:
            return f.fentry.detail
        return f"{', '.join(f.missing_kprobe_targets(required_only=True))} not in /proc/kallsyms"
    if backend == "kprobe":
        if not f.kprobes.ok:
            return f.kprobes.detail
        return f"{', '.join(f.missing_kprobe_targets(required_only=True))} not in /proc/kallsyms"
    return f.tracepoints.detail


def auto_reason(features: Features) -> str:
    """What auto picks and why the faster ones were passed over, one line: for doctor."""
    try:
        chosen = choose_backend("auto", features)
    except BackendUnavailable as e:
        return f"nothing: {e}"
    skipped = [f"{b}: {_short_problem(b, features)}" for b in AUTO_ORDER[:AUTO_ORDER.index(chosen)]]
    if not skipped:
        return f"{chosen}: works here and costs least per event"
    return f"{chosen} ({'; '.join(skipped)})"


def backend_visibility(backend: str, features: Features) -> list[str]:
    """What `backend` can and cannot see on this host, one short line each."""
    f = features
    lines: list[str] = []
    problem = _toolchain_problem(f) or _backend_problem(backend, f, suggest=False)
    if problem:
        lines.append(f"not usable here: {problem}")
    tp = f.tracepoint_presence

    def has(name: str) -> bool:
        return tp.get(name, False)

    if backend == "tracepoint":
        lines.append("connects: caller pid at sock:inet_sock_set_state CLOSE->SYN_SENT, "
                     "which runs inside connect()")
        lines.append("connect latency and outcome: inet_sock_set_state SYN_SENT->ESTABLISHED/CLOSE")
        lines.append("errors connect() returns before any SYN (no route, a policy's "
                     "EACCES/EPERM): syscalls:sys_{enter,exit}_connect (not io_uring's connects)")
        lines.append("accepts: acceptor pid and accept wait via syscalls:sys_{enter,exit}_accept{,4} "
                     "(enabling any syscall tracepoint adds a small cost to every syscall)")
        lines.append("accept-queue drops: ACK-time drops at skb:kfree_skb (TCP_LISTEN_OVERFLOW, "
                     "kernels with rx_sk); SYN-time drops from the listener's sk_drops via "
                     "sock_diag, so only for the network namespace connscope runs in")
    elif backend in ("kprobe", "fentry"):
        how = "kprobes" if backend == "kprobe" else "BPF trampolines (cheaper per hit than kprobes)"
        present = [n for n in KPROBE_TARGETS if f.kprobe_targets.get(n)]
        lines.append(f"hooks {', '.join(present) or 'nothing'} directly, through {how}")
        missing = f.missing_kprobe_targets()
        if missing:
            lines.append(f"cannot hook {', '.join(missing)}: not in /proc/kallsyms (inlined or renamed)")
        lines.append("connects: pid and start time at the connect function itself")
        lines.append("errors connect() returns before any SYN (no route, a policy's "
                     "EACCES/EPERM, a cgroup connect hook): inet_stream_connect entry and return")
        lines.append("accept-queue drops: at the drop points (tcp_conn_request, "
                     "tcp_v4_syn_recv_sock, tcp_v6_syn_recv_sock)")
    else:
        raise BackendUnavailable(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS[1:])}")
    # Tracepoints every backend uses for the rest.
    lines.append("SYN retransmits: " + ("tcp:tcp_retransmit_skb" if has("tcp/tcp_retransmit_skb")
                                        else "not seen (no tcp:tcp_retransmit_skb)"))
    lines.append("connect outcome: the socket's own error (sk_err, at a BTF offset) when it "
                 "leaves SYN_SENT: refused, timeout, unreachable; closed with no error: "
                 "abandoned by the application, or connect() found no local port "
                 "(error, errno 99)")
    from tracer.probes.session import STALE_CONNECT_S   # (session imports this module)
    lines.append(f"in-flight connects: an entry whose end was missed (BPF recursion) is removed "
                 f"after {STALE_CONNECT_S} s with no SYN sent and counted with the lost "
                 f"connects")
    if not has("skb/kfree_skb"):
        lines.append("drop reasons: not seen (no skb:kfree_skb)")
    return lines
