"""The errors a user can cause or fix, gathered for the CLI boundary, which
prints them as one 'Error:' line (tracebacks only with --debug)."""
from __future__ import annotations

from tracer.filters import FilterError
from tracer.probes.startup import STARTUP_ERRORS
from tracer.replay import ReplayError
from tracer.report.reader import ReportError
from tracer.sinks.parquet_writer import RecordingError

USER_ERRORS = (FilterError, RecordingError, ReportError, ReplayError, *STARTUP_ERRORS)
