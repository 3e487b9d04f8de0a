"""connscope benchmarks (issue 8): overhead under real load, completeness,
ceiling, start-up, overflow flood and syscall tax, side by side with bcc's
tools, all on loopback. Run `sudo bench/run` (or `--quick`); see BENCHMARKS.md.

Figures, not assertions: nothing here fails on a slow result.
"""
