"""The one compiled part: tracer/_fastpath.c (see tracer/fastpath.py).

Optional: without a C compiler or Python's headers the build goes on
without it and connscope runs its pure-Python event path.
Everything else about the package is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "tracer._fastpath", ["tracer/_fastpath.c"],
    # bpf/event.h is included from the package's own copy: one layout
    include_dirs=["tracer"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers"],
    optional=True)])
