"""Many hosts, one analysis: recordings of several hosts, written by the real
writer and copied into one tree (one directory per host, or merged into one
folder), read as one dataset by `report`, `replay --host`, DuckDB, pandas and
polars, with per-host figures that add up to the totals.

The same on real recordings of two hosts (record in UTS namespaces, real
traffic): tests/kernel/test_fleet.py."""

import glob
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from tests.hostile_fs import (
    connscope,
    error_line,
    needs_root,
    needs_setpriv,
    nobody_home,  # noqa: F401 (fixture)
    plant_dirs,
    plant_file,
    plant_link,
    tree,
    victim,  # noqa: F401 (fixture)
)
from tracer.report.hosts import HostStats, add, bounded, host_stats
from tracer.report.html import render_html
from tracer.report.reader import read_recording
from tracer.report.summary import summarize
from tracer.report.text import render_text
from tracer.sinks.names import data_seqs, file_prefix
from tracer.sinks.parquet_writer import Recording, recover

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
T0 = 1_796_454_000_000_000          # 2026-12-05T07:00:00Z, µs
START = datetime(2026, 12, 5, 7, 0, 0, tzinfo=timezone.utc)
EVIL = "evil\x1b[2J<script>x</script>"

# what each host of the synthetic fleet did: connects by outcome, and per
# listener port the (ACK-time drops, SYN drops) of its overflow rows
PLAN = {
    "web-1": {"connects": {"established": 30, "refused": 5}, "drops": {80: (40, 4)}},
    "web-2": {"connects": {"established": 12, "timeout": 3}, "drops": {80: (7, 1), 8080: (100, 0)}},
}


def connect_rows(n, outcome, ts0=T0):
    return [dict(ts=ts0 + i * 1000, pid=100, tid=100, comm="curl", family=4,
                 saddr="127.0.0.1", sport=40000 + i, daddr="10.0.0.5", dport=5432,
                 latency_us=50.0 + i, outcome=outcome, syn_retransmits=0,
                 errno=None if outcome == "established" else 111)
            for i in range(n)]


def overflow_row(port, drops, syn_drops, ts=T0):
    return dict(ts=ts, family=4, laddr="0.0.0.0", lport=port, pid=7, comm="nginx",
                drops=drops, syn_drops=syn_drops, cookie_drops=0, backlog_max=128,
                backlog_peak=129, interval_s=1.0, synack_retransmits=0)


def record_host(directory, host, plan, start=START):
    with Recording(directory, host=host, start=start) as r:
        for outcome, n in plan["connects"].items():
            r.write("connects", connect_rows(n, outcome))
        r.write("overflows", [overflow_row(p, d, s) for p, (d, s) in plan["drops"].items()])
        return r.run_id


def data_files(d):
    return sorted(p.relative_to(d) for p in Path(d).rglob("*.parquet"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Each host's own recording (same start second), then `fleet/<host>/`
    (copied) and `flat/` (the hosts' directories merged into one)."""
    base = tmp_path_factory.mktemp("fleet")
    for host, plan in PLAN.items():
        record_host(base / "own" / host, host, plan)
    nested, flat = base / "fleet", base / "flat"
    for host in PLAN:
        shutil.copytree(base / "own" / host, nested / host)
        shutil.copytree(base / "own" / host, flat, dirs_exist_ok=True)
    return base


def test_file_names_of_same_named_hosts_starting_in_the_same_second_differ(tmp_path):
    # cloned machines are often all called localhost; their runs may start together
    a = record_host(tmp_path / "a", "localhost", PLAN["web-1"])
    b = record_host(tmp_path / "b", "localhost", PLAN["web-2"])
    assert a != b
    names_a, names_b = set(data_files(tmp_path / "a")), set(data_files(tmp_path / "b"))
    assert names_a and names_b and not names_a & names_b
    merged = tmp_path / "merged"
    for d in ("a", "b"):
        shutil.copytree(tmp_path / d, merged, dirs_exist_ok=True)
    assert set(data_files(merged)) == names_a | names_b     # nothing overwritten
    s = summarize(read_recording(merged))
    assert s.connects.attempts == 35 + 15
    [h] = s.hosts
    assert (h.host, h.runs, h.connects, h.drops) == ("localhost", 2, 50, 147)


def test_names_with_and_without_a_run_token_parse():
    p = file_prefix("web-1", START, "qhzrtc")
    assert p == "web-1-20261205T070000Z-qhzrtc"
    assert data_seqs(f"{p}-0007.parquet") == (p, 7, 7)
    assert data_seqs(f"{p}-0003-0009.parquet") == (p, 3, 9)
    # before tokens: still read, recovered and compacted as ours
    old = file_prefix("web-1", START)
    assert data_seqs(f"{old}-0007.parquet") == (old, 7, 7)
    assert data_seqs(f"{old}-100000-100005.parquet") == (old, 100000, 100005)
    # a token is letters: never a sequence number, and digits are never a token
    assert data_seqs(f"{old}-123456-0001.parquet") == (old, 123456, 1)
    assert data_seqs(f"{old}-QHZRTC-0001.parquet") is None


def test_report_of_a_fleet_has_per_host_figures_that_add_up(fleet):
    for layout in ("fleet", "flat"):
        s = summarize(read_recording(fleet / layout))
        by_host = {h.host: h for h in s.hosts}
        assert set(by_host) == set(PLAN)
        for host, plan in PLAN.items():
            h = by_host[host]
            c = plan["connects"]
            assert (h.connects, h.established, h.refused, h.timeout) == (
                sum(c.values()), c.get("established", 0), c.get("refused", 0),
                c.get("timeout", 0))
            assert (h.drops, h.syn_drops) == tuple(map(sum, zip(*plan["drops"].values())))
            assert (h.runs, h.listeners) == (1, len(plan["drops"]))
            # the same as the report of that host's recording alone
            [alone] = summarize(read_recording(fleet / "own" / host)).hosts
            assert h == alone
        total = add("all hosts", s.hosts)
        assert total.connects == s.connects.attempts == 50
        assert total.refused == s.connects.refused and total.timeout == s.connects.timeout
        assert total.drops == 147 and total.syn_drops == 5
        text = render_text(s, str(fleet / layout))
        [row] = [line for line in text.splitlines() if line.strip().startswith("all hosts")]
        assert row.split()[2:] == ["2", "50", "42", "5", "3", "0", "3", "147", "5", "0", "0",
                                   "0"]
        assert "HOSTS (2;" in text
        assert 'id="hosts"' in render_html(s, "fleet")


def test_one_host_has_no_hosts_section(fleet):
    s = summarize(read_recording(fleet / "own" / "web-1"))
    assert "HOSTS" not in render_text(s) and 'id="hosts"' not in render_html(s)


def test_hostile_host_names_are_escaped_and_bounded(tmp_path):
    record_host(tmp_path / "fleet" / "a", EVIL, PLAN["web-1"])
    record_host(tmp_path / "fleet" / "b", "web-2", PLAN["web-2"])
    s = summarize(read_recording(tmp_path / "fleet"))
    assert {h.host for h in s.hosts} == {EVIL, "web-2"}
    text = render_text(s)
    page = render_html(s)
    assert "\x1b" not in text and "\x1b" not in page
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    # thousands of hosts (planted files can name any): 50 rows, the rest summed
    many = [HostStats(f"h{i:04d}", runs=1, connects=i) for i in range(3000)]
    rows = bounded(sorted(many, key=lambda h: -h.connects))
    assert len(rows) == 50 and rows[-1].host == "(2,951 other hosts)"
    assert add("x", rows) == add("x", many)


def test_host_stats_count_rows_without_a_manifest_and_unknown_outcomes():
    import pyarrow as pa

    from tracer.schema import schema

    rows = connect_rows(4, "established") + connect_rows(2, "abandoned") + connect_rows(1, "error")
    t = pa.Table.from_pylist([{**r, "host": "h", "run_id": "r"} for r in rows],
                             schema=schema("connects"))
    [h] = host_stats(t, [], ())
    assert (h.connects, h.established, h.timeout, h.error, h.runs) == (7, 4, 2, 1, 0)


def run_cli(*args):
    p = subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def test_replay_host_filter(fleet, tmp_path):
    from tracer.replay import load

    t = load(fleet / "fleet", "web-2")
    assert t.header.host == "web-2" and len(t.runs) == 1
    assert {r.manifest["host"] for r in t.runs} == {"web-2"}
    connects = sum(r.tables["connects"].table.num_rows for r in t.runs)
    assert connects == 15
    both = load(fleet / "fleet")
    assert both.header.host == "web-1, web-2" and len(both.runs) == 2
    notes = [n.text for n in both.snapshot(0).notable]
    assert any("2 hosts: their runs play one after another" in n for n in notes)

    code, out, err = run_cli("replay", str(fleet / "fleet"), "--host", "web-3")
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.splitlines() == [f"Error: no host 'web-3' in {fleet / 'fleet'}; hosts present: "
                                f"web-1, web-2"]
    # a host name from the files: shown escaped, never sent to the terminal
    record_host(tmp_path / "evil", EVIL, PLAN["web-1"])
    code, out, err = run_cli("replay", str(tmp_path / "evil"), "--host", "x")
    assert code == 1 and "\x1b" not in err and len(err.splitlines()) == 1
    assert "hosts present: evil\\e[2J<script>x</script>" in err


def sql_block(marker: str) -> str:
    """The ```sql block of README.md that holds `marker`: tests run the query
    the README shows, so the two cannot drift apart."""
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), re.S)
    [block] = [b for b in blocks if marker in b]
    return block


FLEET_QUERY = "-- fleet: worst listeners by overflow drops"


def test_readme_fleet_query_finds_the_worst_listener(fleet, monkeypatch):
    for layout in ("fleet", "flat"):
        # the query reads 'fleet/...': run it where that is this layout
        where = fleet / f"run-{layout}"
        where.mkdir(exist_ok=True)
        if not (where / "fleet").exists():
            (where / "fleet").symlink_to(fleet / layout)
        monkeypatch.chdir(where)
        rows = duckdb.sql(sql_block(FLEET_QUERY)).fetchall()
        assert [(h, port, dropped, syns) for h, _, _, port, _, dropped, syns, *_ in rows] == [
            ("web-2", 8080, 100, 0), ("web-1", 80, 40, 4), ("web-2", 80, 7, 1)]


def test_duckdb_pandas_polars_read_a_fleet_with_live_and_quarantined_files(fleet, tmp_path):
    tree = tmp_path / "fleet"
    shutil.copytree(fleet / "fleet", tree)
    # web-1 is being recorded: a journal and a temporary Parquet file are there
    part = next((tree / "web-1" / "connects").glob("date=*"))
    name = next(p.name for p in part.glob("*.parquet") if not p.name.endswith("-0000.parquet"))
    stem = name[: -len(".parquet")]
    (part / (stem[:-4] + "0098.arrows.inprogress")).write_bytes(b"ARROW1\x00\x00 cut short")
    shutil.copy(part / name, part / (stem[:-4] + "0099.parquet.inprogress"))
    # web-2 crashed once: recovery set an unreadable file aside
    w2 = tmp_path / "w2"
    r = Recording(w2, host="web-2", start=START)
    r.write("connects", connect_rows(6, "established"))
    r.flush()
    [journal] = list(w2.rglob("*.arrows.inprogress"))
    saved = journal.read_bytes()
    r.close()
    [final] = [p for p in journal.parent.glob("*.parquet") if not p.name.endswith("-0000.parquet")]
    final.write_bytes(b"PAR1 not a parquet file")
    journal.write_bytes(saved)
    lines = recover(w2)
    assert any(line.startswith("quarantined ") and ".quarantined)" in line for line in lines), lines
    assert list((w2 / "quarantine").rglob("*.quarantined"))
    shutil.copytree(w2, tree / "web-2-crashed")

    want = {"web-1": 35, "web-2": 15 + 6}
    q = ("select host, count(*) from read_parquet('{}/**/connects/*/*.parquet', "
         "union_by_name = true) group by host order by host")
    assert dict(duckdb.sql(q.format(tree)).fetchall()) == want
    files = glob.glob(f"{tree}/**/connects/*/*.parquet", recursive=True)
    assert not any("quarantine" in f or f.endswith("inprogress") for f in files)
    assert pd.read_parquet(files).groupby("host").size().to_dict() == want
    got = pl.read_parquet(f"{tree}/**/connects/*/*.parquet")
    assert dict(got.group_by("host").len().iter_rows()) == want
    # and the report reader (which never reads an .inprogress file) agrees
    s = summarize(read_recording(tree))
    assert {h.host: h.connects for h in s.hosts} == want


def test_recordings_of_different_versions_read_together(fleet, tmp_path):
    """A newer connscope adds nullable columns: an older host's files lack
    them. union_by_name (DuckDB) and a diagonal concat (polars, pandas) read both."""
    tree = tmp_path / "fleet"
    shutil.copytree(fleet / "fleet", tree)
    for f in (tree / "web-1" / "connects").rglob("*.parquet"):
        t = pq.read_table(f)
        pq.write_table(t.drop_columns(["errno", "netns"]), f)
    q = (f"select host, count(*), count(errno) from read_parquet("
         f"'{tree}/**/connects/*/*.parquet', union_by_name = true) group by host order by host")
    assert duckdb.sql(q).fetchall() == [("web-1", 35, 0), ("web-2", 15, 3)]
    files = sorted(glob.glob(f"{tree}/**/connects/*/*.parquet", recursive=True))
    got = pl.concat(map(pl.read_parquet, files), how="diagonal_relaxed")
    assert got.height == 50 and got["errno"].null_count() == 35 + 12
    df = pd.concat(map(pd.read_parquet, files))
    assert len(df) == 50 and df["errno"].isna().sum() == 35 + 12
    assert summarize(read_recording(tree)).connects.attempts == 50


@needs_root
@needs_setpriv
def test_a_hostile_hosts_directory_in_a_fleet(fleet, nobody_home, victim, tmp_path):
    """One host's directory of the fleet is another user's: what they put there
    (a host name with control codes and markup, a link to root's secret, a
    garbage journal, a link to /) is read as data or skipped, never obeyed."""
    made = tmp_path / "made"
    record_host(made, EVIL, PLAN["web-2"])
    fleet_dir = nobody_home
    shutil.copytree(fleet / "own" / "web-1", fleet_dir / "web-1")   # root's own
    evil = fleet_dir / "evil"
    [connects] = [p for p in made.glob("connects/*/*.parquet") if not p.name.endswith("-0000.parquet")]
    [manifest] = made.glob("runs/*.json")
    day = connects.parent.name
    plant_dirs(evil / "connects" / day, evil / "overflows" / day, evil / "runs")
    plant_file(evil / "connects" / day / connects.name, connects.read_bytes())
    plant_file(evil / "runs" / manifest.name, manifest.read_bytes())
    plant_link(victim.file, evil / "overflows" / day / connects.name)
    stem = connects.name[: -len("-0001.parquet")]
    plant_file(evil / "connects" / day / f"{stem}-0002.arrows.inprogress", b"garbage" * 50)
    plant_link("/", evil / "root-link")
    before = tree(evil)

    p = connscope("report", fleet_dir, "--html", tmp_path / "r.html")
    assert p.returncode == 0, p.stderr
    page = (tmp_path / "r.html").read_text()
    for out in (p.stdout, p.stderr, page):
        assert "\x1b" not in out and "secret-hash" not in out
    assert "<script>" not in page
    rows = {line.split()[0]: line.split()[1:] for line in p.stdout.split("HOSTS (")[1]
            .split("\n\n")[0].splitlines()[2:]}
    assert rows["web-1"][1] == "35" and rows["evil\\e[2J<script>x</script>"][1] == "15"
    assert rows["all"][2] == "50"           # "all hosts": its first word, then the counts
    assert f"{evil}/overflows/{day}/{connects.name}: a symbolic link; not followed" in p.stdout
    assert "not finalized" in p.stderr     # the journal is nobody's: root leaves it
    assert tree(evil) == before             # nothing written there
    victim.assert_untouched()

    p = connscope("replay", fleet_dir, "--host", "web-3")
    line = error_line(p)
    assert line == (f"Error: no host 'web-3' in {fleet_dir}; hosts present: "
                    f"evil\\e[2J<script>x</script>, web-1")
    assert tree(evil) == before
    victim.assert_untouched()


def test_same_named_files_of_two_hosts_from_before_run_tokens_are_both_read(tmp_path):
    """Recorded before file names had a run token: two hosts called localhost
    whose runs started in the same second wrote the same names. Copied into
    one fleet, each is read (a run copied twice is still read once)."""
    fleet_dir = tmp_path / "fleet"
    for host_dir, outcome in (("a", "refused"), ("b", "timeout")):
        d = fleet_dir / host_dir
        with Recording(d, host="localhost", start=START) as r:
            r.write("connects", connect_rows(9, outcome))
        for f in d.rglob("*.parquet"):      # the names of before: no token
            f.rename(f.with_name(re.sub(r"-[a-z]{6}-", "-", f.name)))
    a, b = (sorted((fleet_dir / h / "connects").rglob("*-0001.parquet")) for h in "ab")
    assert [p.name for p in a] == [p.name for p in b]
    assert [p.stat().st_size for p in a] == [p.stat().st_size for p in b]
    data = read_recording(fleet_dir)
    assert data.tables["connects"].num_rows == 18 and not data.problems
    shutil.copytree(fleet_dir / "a", fleet_dir / "a-again")
    data = read_recording(fleet_dir)
    assert data.tables["connects"].num_rows == 18
    assert len(data.problems) == 1 and "copied twice" in data.problems[0]
