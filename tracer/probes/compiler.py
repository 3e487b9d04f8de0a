"""Compile bpf/main.c with bcc, in a process of its own.

    python -I -c <loader of the tracer package by path> TRACER/__init__.py \
        < request.json > compiled.json   (see program.child_command)

The request is {"source": text, "cflags": [...]}; the header tree comes in
the environment (BCC_KERNEL_SOURCE). Only the compile runs here: bcc's
clang/LLVM heap and its 60 MB of mapped libraries go away with this process,
and nothing is loaded into the kernel (the maps bcc creates while compiling
are closed on exit). The parent (tracer/probes/loader.py) creates its own
maps and loads the instructions written here.

This is the only module that imports bcc.
"""
from __future__ import annotations

import ctypes as ct
import json
import os
import struct
import sys

from tracer.probes.compiled import CompiledProgram, FunctionSpec, MapSpec

BPF_LD_IMM64 = 0x18
BPF_JMP_CALL = 0x85
PSEUDO_MAP_FD = 1


class CompileError(Exception):
    pass


def _lib():
    from bcc.libbcc import lib   # the probe layer's one bcc import
    for name, res, args in (
        ("bpf_num_tables", ct.c_ulonglong, [ct.c_void_p]),
        ("bpf_table_name", ct.c_char_p, [ct.c_void_p, ct.c_ulonglong]),
        ("bpf_table_fd_id", ct.c_int, [ct.c_void_p, ct.c_ulonglong]),
        ("bpf_table_key_size_id", ct.c_size_t, [ct.c_void_p, ct.c_ulonglong]),
        ("bpf_table_leaf_size_id", ct.c_size_t, [ct.c_void_p, ct.c_ulonglong]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def relocations(insns: bytes, fd_to_map: dict[int, str], function: str) -> list[tuple[int, str]]:
    """Where map fds sit in the instructions: every 64-bit immediate load
    with src_reg BPF_PSEUDO_MAP_FD. Anything else that needs relocation
    (map values, BPF-to-BPF calls) is refused: bcc inlines everything we
    write, and the loader could not patch it."""
    out = []
    i, n = 0, len(insns) // 8
    while i < n:
        code, regs, _off, imm = struct.unpack_from("<BBhi", insns, i * 8)
        src = regs >> 4
        if code == BPF_LD_IMM64:
            if src == PSEUDO_MAP_FD:
                if imm not in fd_to_map:
                    raise CompileError(f"{function}: instruction {i} loads unknown map fd {imm}")
                out.append((i, fd_to_map[imm]))
            elif src != 0:
                raise CompileError(f"{function}: instruction {i}: 64-bit load kind {src} is not supported")
            i += 2
            continue
        if code == BPF_JMP_CALL and src != 0:
            raise CompileError(f"{function}: instruction {i}: calls to BPF functions are not supported "
                               f"(mark helpers __always_inline)")
        i += 1
    return out


def compile_program(source: str, cflags: list[str]) -> CompiledProgram:
    lib = _lib()
    flags = (ct.c_char_p * len(cflags))(*[f.encode() for f in cflags])
    module = lib.bpf_module_create_c_from_string(source.encode(), 0, flags, len(cflags), True, None)
    if not module:
        raise CompileError("bcc could not compile bpf/main.c")
    try:
        maps, fd_to_map = [], {}
        for i in range(lib.bpf_num_tables(module)):
            name = lib.bpf_table_name(module, i).decode()
            fd_to_map[lib.bpf_table_fd_id(module, i)] = name
            maps.append(MapSpec(
                name=name, type=lib.bpf_table_type_id(module, i),
                key_size=lib.bpf_table_key_size_id(module, i),
                value_size=lib.bpf_table_leaf_size_id(module, i),
                max_entries=lib.bpf_table_max_entries_id(module, i),
                flags=lib.bpf_table_flags_id(module, i)))
        functions = []
        for i in range(lib.bpf_num_functions(module)):
            name = lib.bpf_function_name(module, i)
            start = lib.bpf_function_start(module, name)
            size = lib.bpf_function_size(module, name)
            insns = ct.string_at(start, size)
            functions.append(FunctionSpec(name.decode(), insns,
                                          relocations(insns, fd_to_map, name.decode())))
        return CompiledProgram(license=(lib.bpf_module_license(module) or b"GPL").decode(),
                               kern_version=lib.bpf_module_kern_version(module),
                               maps=maps, functions=functions)
    finally:
        lib.bpf_module_destroy(module)


def main() -> int:
    req = json.load(sys.stdin)
    # bcc and clang print to stdout too ("Unable to find kernel headers ..."):
    # all of that goes to stderr, and stdout carries only the result.
    sys.stdout.flush()
    result = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        prog = compile_program(req["source"], req["cflags"])
    except CompileError as e:
        print(f"connscope compiler: {e}", file=sys.stderr)
        return 1
    with result:
        json.dump(prog.to_json(), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
