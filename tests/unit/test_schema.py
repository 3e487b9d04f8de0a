"""The recording schema against SPEC.md "Parquet recordings" (names and types copied from it)."""

import re

import pyarrow as pa
import pytest

from tracer import schema as sch

TS = pa.timestamp("us", tz="UTC")
I8, I32, I64, F64, STR = pa.int8(), pa.int32(), pa.int64(), pa.float64(), pa.string()

# Transcribed from SPEC.md: "Every table has ts (timestamp, microseconds, UTC), host
# (string) and run_id (string). Ports are int32, counts int64 unless noted, latencies
# float64 in microseconds, addresses strings, family int8, pid int32, comm string."
SPEC_COMMON = {"ts": TS, "host": STR, "run_id": STR}
SPEC_TABLES = {
    "connects": {
        "pid": I32, "comm": STR, "family": I8, "saddr": STR, "sport": I32, "daddr": STR,
        "dport": I32, "latency_us": F64, "outcome": STR, "syn_retransmits": I32,
    },
    "accepts": {
        "pid": I32, "comm": STR, "family": I8, "laddr": STR, "lport": I32, "raddr": STR,
        "rport": I32, "queue_wait_us": F64, "backlog_len": I32, "backlog_max": I32,
    },
    "overflows": {
        "family": I8, "laddr": STR, "lport": I32, "pid": I32, "comm": STR, "drops": I64,
        "syn_drops": I64, "backlog_max": I32, "backlog_peak": I32,
    },
    "listeners": {
        "family": I8, "laddr": STR, "lport": I32, "pid": I32, "comm": STR, "backlog_max": I32,
        "queue_len": I32, "queue_peak": I32, "overflows_total": I64,
    },
    "sockets": {
        "pid": I32, "comm": STR, "established": I32, "syn_sent": I32, "listen": I32,
        "close_wait": I32, "other": I32, "opened": I64, "closed": I64, "fds": I32,
        "fd_limit": I64,
    },
}
# SPEC says these may be null ("null if it never resolved", "null if unknown").
SPEC_NULLABLE = {
    "connects": {"latency_us"},
    "accepts": {"queue_wait_us"},
    "overflows": {"pid", "comm"},
}


def test_tables_are_the_spec_tables_and_our_additions():
    # SPEC's five, plus `pools` (the pool advice, issue 5), `tcp_memory` and `edges` (issue 18)
    assert set(sch.TABLES) == set(SPEC_TABLES) | {"pools", "tcp_memory", "edges"}


@pytest.mark.parametrize("table", sorted(SPEC_TABLES))
def test_every_spec_column_has_the_spec_type(table):
    s = sch.schema(table)
    for name, type_ in {**SPEC_COMMON, **SPEC_TABLES[table]}.items():
        assert name in s.names, f"{table} lacks SPEC column {name}"
        assert s.field(name).type == type_, f"{table}.{name}: {s.field(name).type} != {type_}"


@pytest.mark.parametrize("table", sorted(SPEC_TABLES))
def test_nullability(table):
    s = sch.schema(table)
    for name in SPEC_NULLABLE.get(table, ()):
        assert s.field(name).nullable, f"SPEC allows null in {table}.{name}"
    for name in SPEC_COMMON:
        assert not s.field(name).nullable, f"{table}.{name} must always be set"


@pytest.mark.parametrize("table", sorted(SPEC_TABLES))
def test_metadata_and_descriptions(table):
    s = sch.schema(table)
    assert s.metadata[b"connscope.schema_version"] == sch.SCHEMA_VERSION.encode()
    assert s.metadata[b"connscope.table"] == table.encode()
    assert len(s.names) == len(set(s.names))
    for f in s:
        assert f.metadata and f.metadata.get(b"description"), f"{table}.{f.name} undocumented"


def test_schema_is_built_once():
    assert sch.schema("connects") is sch.schema("connects")


def test_unknown_table():
    with pytest.raises(sch.UnknownTable, match="unknown table 'connect'; the tables are connects"):
        sch.schema("connect")


def test_describe_markdown_lists_every_column_with_its_type():
    md = sch.describe_markdown()
    found: dict[str, dict[str, str]] = {}
    table = None
    for line in md.splitlines():
        m = re.fullmatch(r"### `(\w+)`", line)
        if m:
            table = m.group(1)
            found[table] = {}
            continue
        m = re.fullmatch(r"\| `(\w+)` \| ([^|]+) \| (yes|) \| ([^|]+) \|", line)
        if m:
            found[table][m.group(1)] = m.group(2).strip()
            assert m.group(4).strip()
    assert list(found) == list(sch.TABLES)
    for t in sch.TABLES:
        s = sch.schema(t)
        assert list(found[t]) == s.names
        names = {"ts": "timestamp[us, tz=UTC]", "latency_us": "float64", "pid": "int32",
                 "family": "int8", "comm": "string"}
        for col, shown in names.items():
            if col in found[t]:
                assert found[t][col] == shown
    assert f"Schema version {sch.SCHEMA_VERSION}" in md
