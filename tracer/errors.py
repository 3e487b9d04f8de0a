"""The errors a user can cause or fix, gathered for the CLI boundary, which
prints them as one 'Error:' line (tracebacks only with --debug).

Each class is imported from a module that is cheap to import (no pyarrow,
pandas or textual): `connscope record` and `top` load this at start-up, and
every millisecond before the probes are attached is a millisecond of missed
connections.
"""
from __future__ import annotations

from tracer.filters import FilterError
from tracer.probes.startup import STARTUP_ERRORS
from tracer.replay.controller import ReplayError
from tracer.report import ReportError
from tracer.sinks.metrics_address import MetricsError
from tracer.sinks.parquet_writer import RecordingError

USER_ERRORS = (FilterError, MetricsError, RecordingError, ReportError, ReplayError, *STARTUP_ERRORS)
