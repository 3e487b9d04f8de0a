"""`connscope report`: a recording read back (reader.py), summarized and rendered.

ReportError is defined here rather than in reader.py so that the CLI can catch
it without importing pyarrow (tracer/errors.py).
"""


class ReportError(Exception):
    """A recording cannot be reported on; the message is one line."""


# Rows one report (or replay) reads, all tables together: files beyond are
# skipped and named, so a huge or hostile directory costs a line, not the
# host's memory. The summary works on whole tables: about 400 MB of peak RSS
# per million rows, and each distinct destination, listener or process costs
# as much as 8 rows (data_file.KEY_COST; BENCHMARKS.md). `report --max-rows`
# changes it.
MAX_REPORT_ROWS = 5_000_000
