"""connscope: eBPF TCP connection tracer."""

__version__ = "0.1.0"
