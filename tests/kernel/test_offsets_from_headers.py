"""Without BTF the struct offsets come from the running kernel's own headers
(tracer/probes/offsets.py, -DOFFSETS_FROM_HEADERS). No kernel this suite runs
on lacks BTF, so nothing else compiles that way: this test does, for each
backend that can work without BTF, against the header tree connscope would
use here. (It had stopped compiling: bpf/common.h defined IPPROTO_TCP and the
TCP states as macros before the kernel headers declared them as enum
constants.) Loading is not tried: the tree here need not be this kernel's,
and its offsets are only right for a kernel it belongs to."""
import pytest

from tracer.filters import Filters
from tracer.probes import headers, program

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("backend", ["kprobe", "tracepoint"])
def test_programs_compile_with_offsets_from_headers(backend):
    tree = headers.find_header_tree()
    if tree.kind in ("none", "unmerged"):
        pytest.skip(f"no kernel header tree to compile against: {tree.how}")
    flags = program.cflags(program.BuildOptions(backend, Filters()), ["-DOFFSETS_FROM_HEADERS"])
    compiled = program.compile_in_child(program.source_text(), flags,
                                        headers.bcc_environment(tree))
    assert compiled.functions, "compiled, but no programs in it"
