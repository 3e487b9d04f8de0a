"""Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (Debian 11's 5.10
refused connscope's maps under its default): the loader lifts the limit
first, to unlimited where the process may (CAP_SYS_RESOURCE), else the soft
limit to the hard one. Run in a child whose limits prlimit lowered, which
needs no privilege."""
import shutil
import subprocess
import sys

import pytest

CODE = ("import resource; from tracer.probes import loader; loader.raise_memlock_limit(); "
        "print(*resource.getrlimit(resource.RLIMIT_MEMLOCK))")


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) not installed")
def test_the_soft_memlock_limit_is_lifted_as_far_as_the_process_may():
    out = subprocess.run(["prlimit", "--memlock=65536:131072", sys.executable, "-c", CODE],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    soft, hard = map(int, out)
    assert soft == hard
    assert hard in (131072, -1)     # -1: RLIM_INFINITY, where the hard limit could be lifted
