"""The TUI's pure parts: charts, ranking, sort/filter/slice, cells. No app runs here."""
from dataclasses import replace

import pytest
from rich.text import Text

from tests.tui import synthetic
from tracer.aggregate.histogram import Histogram
from tracer.tui import table_views as tv
from tracer.tui.problems import CRIT, WARN, find_problems
from tracer.tui.text_charts import bar, coarse_buckets, histogram_lines, sparkline
from tracer.tui.units import fmt_clock, fmt_count, fmt_rate


@pytest.fixture(scope="module")
def snap():
    return synthetic.last()


@pytest.fixture(scope="module")
def big():
    return synthetic.last(intervals=5, extra_destinations=10_000, extra_processes=2_000)


# ---------------------------------------------------------------- charts

def test_bar_fills_in_eighths_and_keeps_its_width():
    assert bar(0.0, 4) == "    "
    assert bar(1.0, 4) == "████"
    assert bar(0.5, 4) == "██  "
    assert bar(1 / 32, 4) == "▏   "          # one eighth of one cell
    assert bar(1e-9, 4) == "▏   "             # anything above zero stays visible
    assert bar(7.0, 3) == "███"               # clamped


def test_sparkline_marks_gaps_and_spikes():
    (line,) = sparkline([1.0, None, 1.0, 10.0], 4)
    assert line[1] == " "                     # no sample in that interval
    assert line[3] == "█"                     # the spike reaches the top
    assert line[0] == line[2] != " "          # steady values are low but visible


def test_sparkline_of_a_steady_series_sits_at_half_height():
    lines = sparkline([5.0] * 6, 6, height=2)
    assert lines == ["      ", "██████"]


def test_sparkline_keeps_the_newest_values_and_pads():
    (line,) = sparkline(list(range(1, 21)), 5)      # 16..20
    assert len(line) == 5
    assert list(line) == sorted(line, key=" ▁▂▃▄▅▆▇█".index)
    assert sparkline([], 3) == ["   "]


def test_histogram_bins_are_powers_of_two_covering_every_count():
    h = Histogram()
    for v, n in ((300.0, 5), (700.0, 3), (1_500_000.0, 1)):
        h.add(v, n)
    bins = coarse_buckets(h.buckets(), max_rows=30)
    assert sum(n for *_, n in bins) == 9
    for low, high, _ in bins:
        assert high == 2 * low or low == 0
    assert bins[0][0] <= 300 < bins[0][1]
    assert bins[-1][0] <= 1_500_000 < bins[-1][1]
    merged = coarse_buckets(h.buckets(), max_rows=4)
    assert len(merged) <= 4 and sum(n for *_, n in merged) == 9
    lines = histogram_lines(h.buckets(), 10, 4)
    assert max(len(b) for _, b, _ in lines) == 10
    assert histogram_lines((), 10) == []


def test_units():
    assert fmt_clock(synthetic.T0_US + 3_723_000_000) == "01:02:03"
    assert fmt_count(99_999) == "99,999"
    assert fmt_count(123_456) == "123k"
    assert fmt_count(2_500_000) == "2.5M"
    assert fmt_rate(0) == "0" and fmt_rate(0.25) == "0.2" and fmt_rate(12.4) == "12"
    assert fmt_rate(12_345) == "12.3k"


# ---------------------------------------------------------------- the Overview's ranking

def test_problems_rank_the_synthetic_scene_worst_first(snap):
    problems = find_problems(snap)
    kinds = [(p.severity, p.kind, p.subject) for p in problems]
    assert kinds[0] == (CRIT, "listener dropping", "0.0.0.0:8080 nginx[812]")
    assert kinds[5] == (CRIT, "events lost", "tracer")      # last of the crits
    subjects = {p.subject: p for p in problems}
    assert subjects["10.0.0.40:80"].kind == "connects failing"      # every attempt timed out
    assert subjects["10.0.0.20:6379"].severity == CRIT                # 30 % refused
    assert subjects["10.0.0.10:5432"].kind == "slow connects"
    assert subjects["java[3003]"].kind == "near fd limit"
    assert subjects["php-fpm[2001]"].kind == "connection churn"
    assert subjects["python3[4004]"].kind == "CLOSE_WAIT pile-up"
    assert "10.0.0.30:443" not in subjects and "nginx[812]" not in subjects    # healthy
    ranks = [p.rank for p in problems]
    assert ranks == sorted(ranks)
    assert [p.severity for p in problems] == sorted((p.severity for p in problems),
                                                    key=[CRIT, WARN].index)


def test_a_quiet_snapshot_has_no_problems():
    assert find_problems(synthetic.quiet()) == []


def test_a_failing_destination_with_no_current_traffic_is_only_a_warning(snap):
    refusing = next(r for r in snap.destinations if r.key[1:] == synthetic.REFUSING)
    quiet = replace(snap, destinations=(replace(refusing, rate=0.0),), listeners=(),
                    processes=(), lost_events=0)
    (p,) = find_problems(quiet)
    assert p.severity == WARN and "no attempts this interval" in p.detail


# ---------------------------------------------------------------- sort, filter, slice

def test_visible_sorts_filters_and_slices(big):
    rows, total = tv.visible(tv.CONNECTS_BY_DEST, big.destinations)
    assert total == 10_005 and len(rows) == tv.ROW_LIMIT
    # worst first: the timeouts, then the refusals
    assert rows[0].key[1:] == synthetic.BLACKHOLE
    assert rows[1].key[1:] == synthetic.REFUSING
    by_p99, _ = tv.visible(tv.CONNECTS_BY_DEST, big.destinations, sort=1)
    assert by_p99[0].key[1:] == synthetic.SLOW_DB
    p99s = [r.p99_us or -1 for r in by_p99]
    assert p99s == sorted(p99s, reverse=True)
    one, matched = tv.visible(tv.CONNECTS_BY_DEST, big.destinations, "10.1.39.15:")
    assert matched == 1 and one[0].label == "10.1.39.15:8000"
    # terms are ANDed and case-insensitive
    procs, n = tv.visible(tv.PROCESSES, big.processes, "SVC3 1000")
    assert n and all("svc3" in p.comm and "1000" in str(p.pid) for p in procs)


def test_sort_orders_cycle_and_every_spec_renders_its_columns(snap):
    specs = [(tv.CONNECTS_BY_DEST, snap.destinations), (tv.CONNECTS_BY_PROC,
                                                        snap.processes_connects),
             (tv.LISTENERS, snap.listeners), (tv.PROCESSES, snap.processes),
             (tv.LOG, tuple(reversed(snap.notable))), (tv.OVERVIEW, find_problems(snap))]
    for spec, items in specs:
        widths = tv.column_widths(spec, 120)
        header = tv.header_line(spec, widths)
        for sort in range(len(spec.sorts)):
            rows, _ = tv.visible(spec, items, sort=sort)
            for item in rows:
                cells = spec.cells(item)
                assert len(cells) == len(spec.columns)
                line = tv.join_cells(spec, cells, widths)
                assert line.cell_len == header.cell_len, spec.name


def test_ipv6_labels_survive_as_plain_text(snap):
    v6 = next(r for r in snap.destinations if r.key[0] == 6)
    widths = tv.column_widths(tv.CONNECTS_BY_DEST, 120)
    line = tv.join_cells(tv.CONNECTS_BY_DEST, tv.CONNECTS_BY_DEST.cells(v6), widths)
    assert line.plain.startswith("[fd00::7]:8443")


def test_cells_are_cut_to_their_column():
    spec = tv.TableSpec("t", (tv.Col("A", 5, False), tv.Col("B", 4)), (tv.Sort("x", str),),
                        lambda s: (), lambda i: (i,), lambda i: i, lambda i: i)
    line = tv.join_cells(spec, ("abcdefgh", Text("12")), [5, 4])
    assert line.plain == "abcd…    12"


def test_counts_are_shortened_to_fit_never_cut(snap):
    """1,149 errors in the 3-cell ERR column read "1k", not "1,…"."""
    r = replace(snap.destinations[0], error=1_149, refused=12_345_678, pending=54_321)
    spec = tv.CONNECTS_BY_DEST
    widths = tv.column_widths(spec, 120)
    cells = tv.join_cells(spec, spec.cells(r), widths).plain
    assert "…" not in cells
    err = [c.title for c in spec.columns].index("ERR")
    at = sum(widths[:err]) + 2 * err
    assert cells[at:at + widths[err]].strip() == "1k"
    assert "12M" in cells or "12.3M" in cells


@pytest.mark.parametrize("text, width, short", [
    ("1,149", 3, "1k"), ("1,149", 4, "1149"), ("1,149", 5, "1,149"), ("12,345", 3, "12k"),
    ("999,999", 3, "1M"), ("999", 3, "999"), ("100k", 3, None), ("abc", 3, None),
])
def test_fit_count(text, width, short):
    from tracer.tui.units import fit_count

    assert fit_count(text, width) == short


@pytest.mark.parametrize("spec", [tv.OVERVIEW, tv.CONNECTS_BY_DEST, tv.CONNECTS_BY_PROC,
                                  tv.LISTENERS, tv.PROCESSES, tv.LOG], ids=lambda s: s.name)
def test_every_table_fits_120_columns(spec):
    available = 120 - 2 - 3      # cell padding, scrollbar, margin (as the app computes it)
    widths = tv.column_widths(spec, available)
    shown = [w for w in widths if w]      # a folded column draws no gap either (join_cells)
    assert sum(shown) + 2 * (len(shown) - 1) <= available
    line = tv.join_cells(spec, [c.title for c in spec.columns], widths)
    assert line.cell_len <= available


def test_status_names_blind_spots_or_points_to_help_when_they_are_long(snap):
    from tracer.tui.status import source_line

    assert "(cannot see: accept-queue wait)" in source_line(synthetic.HEADER, snap).plain
    long = replace(synthetic.HEADER, blind_spots=("accept() seen through syscall tracepoints "
                                                  "(small cost on every accept)", "SYN drops"))
    assert "(2 blind spots: press ?)" in source_line(long, snap).plain


def test_status_says_which_better_backends_failed_to_load(snap):
    from tracer.tui.status import source_line

    fell_back = replace(synthetic.HEADER, backend="tracepoint", passed_over=("fentry", "kprobe"))
    assert "backend tracepoint, fentry, kprobe failed to load" in source_line(fell_back, snap).plain
    assert "failed to load" not in source_line(synthetic.HEADER, snap).plain


def test_connects_waiting_without_an_answer_are_a_problem_before_they_time_out(snap):
    from tracer.aggregate.connects import ConnectTable
    from tracer.tui.problems import connect_problem

    t = ConnectTable()
    t.set_pending({(4, "192.0.2.9", 443): (4, 3.5), (4, "192.0.2.8", 443): (1, 0.2)})
    rows = {r.label: r for r in t.by_destination()}
    hanging = connect_problem(rows["192.0.2.9:443"])
    assert (hanging.severity, hanging.kind) == (CRIT, "connects hanging")
    assert "4 pending, oldest 3.5s" in hanging.detail
    assert connect_problem(rows["192.0.2.8:443"]) is None      # young: just in flight
    ranked, _ = tv.visible(tv.CONNECTS_BY_DEST, list(rows.values()) + list(snap.destinations))
    assert ranked[0].label == "10.0.0.40:80" and ranked[1].label == "192.0.2.9:443"
