"""`connscope report`: a recording read back (reader.py), summarized and rendered.

ReportError is defined here rather than in reader.py so that the CLI can catch
it without importing pyarrow (tracer/errors.py).
"""


class ReportError(Exception):
    """A recording cannot be reported on; the message is one line."""
