"""The recorder's event rows turned into Arrow columns by the compiled path
(tracer/_fastpath.c arrow_columns, through table_writer.columns_of_rows)
against pyarrow's own conversion of the same Python values, the reference:
every column must be the same array, or both must refuse the rows with the
same kind of error. The rows hold what a hostile process can put into them
(any comm text, non-ASCII and lone surrogates included) and values of the
wrong type or out of a column's range, which the compiled path leaves to
pa.array."""
from __future__ import annotations

import random

import pyarrow as pa
import pytest

from tracer import fastpath
from tracer.clock import Clock
from tracer.events import Accept, Connect
from tracer.schema import schema
from tracer.sinks import recorder, table_writer
from tracer.sinks.table_writer import columns_of_rows, rows_to_batch

native = fastpath.native
needs_native = pytest.mark.skipif(native is None, reason=f"compiled path: {fastpath.STATUS}")

I8, I32, I64 = (-2**7, 2**7 - 1), (-2**31, 2**31 - 1), (-2**63, 2**63 - 1)


def _int(rng, lo, hi):
    return rng.choice([lo, hi, 0, -1, 1, rng.randint(lo, hi), rng.randint(0, min(hi, 2**16))])


def _value(rng, type_):
    """A value pa.array takes for a column of this type (None included)."""
    if rng.random() < 0.15:
        return None
    if type_ == pa.int8():
        return _int(rng, *I8)
    if type_ == pa.int32():
        return _int(rng, *I32)
    if type_ in (pa.int64(), pa.timestamp("us", tz="UTC")):
        return _int(rng, *I64)
    if type_ == pa.float64():
        return rng.choice([rng.uniform(-1e9, 1e9), 0.0, -0.0, float("inf"), 1e-300,
                           rng.randint(-2**53, 2**53), 2**53, -2**53])
    if type_ == pa.string():
        return rng.choice(["", "curl", "10.0.0.1", "::ffff:127.0.0.1", "nginx: worker",
                           "é\u00a0\u4e2d\u6587", "\U0001f600x", "a\x00b\x1b[31m",
                           "".join(chr(rng.randint(1, 0x2fff)) for _ in range(rng.randint(0, 15)))])
    raise AssertionError(type_)


# values pa.array refuses or converts in ways of its own, one per kind
_ODD = {
    "int": [True, 2**63, -2**63 - 1, 2**31, 2**7, 1.0, "1", b"1"],
    "float": [2**53 + 1, -(2**53) - 1, 2**70, True, "1.5", None],
    "string": ["\ud800", "ok\udfff", b"bytes", 5, None],
}


def _reference(fields, types, rows):
    """{field: pa.array} or the exception pa.array raises for the first bad column."""
    out = {}
    for i, (f, t) in enumerate(zip(fields, types)):
        out[f] = pa.array([r[i] for r in rows], type=t)
    return out


def _same(table, fields, rows):
    types = [schema(table).field(f).type for f in fields]
    try:
        want = _reference(fields, types, rows)
    except Exception as e:       # pa.array refused them: so must the compiled path
        with pytest.raises(type(e)):
            columns_of_rows(table, fields, rows)
        return None
    got = columns_of_rows(table, fields, rows)
    assert list(got) == list(fields)
    for f in fields:
        got[f].validate(full=True)
        assert got[f].type == want[f].type, f
        assert got[f].equals(want[f]), (f, got[f].to_pylist()[:5], want[f].to_pylist()[:5])
        assert got[f].null_count == want[f].null_count, f
    return got


@pytest.mark.parametrize("table,fields", [("connects", recorder.CONNECT_FIELDS),
                                          ("accepts", recorder.ACCEPT_FIELDS)])
@pytest.mark.parametrize("seed", range(12))
def test_random_rows_give_the_arrays_pa_array_gives(table, fields, seed):
    rng = random.Random(seed)
    types = [schema(table).field(f).type for f in fields]
    n = rng.choice([1, 2, 7, 8, 9, 63, 64, 65, 1000, 4096])
    rows = [tuple(_value(rng, t) for t in types) for _ in range(n)]
    _same(table, fields, rows)


@needs_native
@pytest.mark.parametrize("table,fields", [("connects", recorder.CONNECT_FIELDS),
                                          ("accepts", recorder.ACCEPT_FIELDS)])
def test_ordinary_rows_are_converted_by_the_compiled_path(table, fields):
    """So the test above compares two conversions, not pa.array with itself."""
    rng = random.Random(7)
    types = [schema(table).field(f).type for f in fields]
    rows = [tuple(_value(rng, t) for t in types) for _ in range(500)]
    kinds = "".join(table_writer._KIND[t] for t in types)
    assert None not in native.arrow_columns(rows, kinds)


def _odd_cases():
    for table, fields in (("connects", recorder.CONNECT_FIELDS), ("accepts", recorder.ACCEPT_FIELDS)):
        for i, f in enumerate(fields):
            t = schema(table).field(f).type
            kind = "string" if t == pa.string() else "float" if t == pa.float64() else "int"
            for odd in _ODD[kind]:
                yield table, fields, i, odd


@pytest.mark.parametrize("case", list(_odd_cases()), ids=lambda c: f"{c[0]}.{c[1][c[2]]}={c[3]!r}")
def test_a_value_pa_array_refuses_or_treats_its_own_way_gives_its_result(case):
    """Each column, each such value, at a random row of ordinary ones."""
    table, fields, i, odd = case
    rng = random.Random(f"{table}{i}{odd!r}")
    types = [schema(table).field(f).type for f in fields]
    rows = [tuple(_value(rng, t) for t in types) for _ in range(rng.randint(1, 70))]
    at = rng.randrange(len(rows))
    row = list(rows[at])
    row[i] = odd
    rows[at] = tuple(row)
    _same(table, fields, rows)


def test_rows_that_are_not_tuples_of_the_right_length_are_left_to_pa_array():
    fields = recorder.ACCEPT_FIELDS
    types = [schema("accepts").field(f).type for f in fields]
    good = tuple(_value(random.Random(3), t) for t in types)
    assert _same("accepts", fields, [good, list(good)]) is not None   # a list row: converted
    assert _same("accepts", fields, [good, good[:3]]) is None         # a short one: refused


def test_the_recorders_rows_make_the_same_batch_with_and_without_the_compiled_path(monkeypatch):
    """End to end, from events: the batch rows_to_batch makes of the compiled
    columns equals the one it made of Python lists before."""
    clock = Clock()
    rng = random.Random(11)
    connects = [recorder.connect_values(Connect(
        10**12 + i, 10**12 + i + rng.randint(0, 10**7), rng.randint(1, 4 * 10**6),
        rng.randint(1, 4 * 10**6), rng.choice(["curl", "é\u4e2d", "x\x1b"]), rng.choice([4, 6]),
        "127.0.0.1", rng.randint(0, 65535), rng.choice(["10.0.0.1", "::1"]),
        rng.randint(0, 65535), rng.choice(["established", "refused", "timeout"]),
        rng.choice([0, 111, 110]), rng.randint(0, 6), i, rng.choice([0, 4026531840]),
        rng.choice([0, 1234])), clock) for i in range(3000)]
    accepts = [recorder.accept_values(Accept(
        10**12 + i, rng.choice([0, 10**12 + i - 500, 10**12 + i + 5]), rng.randint(1, 99999),
        rng.randint(1, 99999), "nginx", 4, "0.0.0.0", 80, "127.0.0.1", rng.randint(0, 65535),
        rng.randint(0, 4096), 4096, rng.choice([0, 4026531840]), i), clock) for i in range(3000)]
    for table, fields, rows in (("connects", recorder.CONNECT_FIELDS, connects),
                                ("accepts", recorder.ACCEPT_FIELDS, accepts)):
        got = rows_to_batch(table, columns_of_rows(table, fields, rows), host="h", run_id="r")
        monkeypatch.setattr(table_writer, "native", None)
        want = rows_to_batch(table, dict(zip(fields, map(list, zip(*rows)))), host="h",
                             run_id="r")
        plain = rows_to_batch(table, columns_of_rows(table, fields, rows), host="h", run_id="r")
        monkeypatch.undo()
        got.validate(full=True)
        assert got.equals(want) and plain.equals(want)
