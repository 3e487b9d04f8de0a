"""The CONTAINER column of the connects, listeners and processes views: what each row
says (one container, several, the host), that it appears only where some
row is in a container, and that names others chose are escaped and cut to
the column."""
from dataclasses import replace

import pytest

from tests.tui import synthetic
from tests.unit.test_connect_table import connect
from tracer.aggregate.connects import SEVERAL, ConnectTable
from tracer.domain.containers import HOST, Attribution, group_label
from tracer.tui import table_views
from tracer.tui.app import build_app
from tracer.tui.table_views import (CONTAINER_WIDTH, column_widths, in_containers, join_cells)

ID = "ab" * 32
UID = "6b4f1c2e-8a3d-4e5f-9a1b-2c3d4e5f6a7b"
POD = Attribution(4242, f"/kubepods/pod{UID}/{ID}", "cri", ID, UID, "shop", "web-1", "nginx")
DOCKER = Attribution(77, f"/docker/{'ef' * 32}", "docker", "ef" * 32)


def test_each_row_names_its_container_several_or_none():
    t = ConnectTable()
    t.add(connect(pid=1, daddr="10.0.0.1"), group_label(POD))
    t.add(connect(pid=1, daddr="10.0.0.2"), group_label(POD))
    t.add(connect(pid=2, daddr="10.0.0.2"), group_label(DOCKER))
    t.add(connect(pid=3, daddr="10.0.0.3"), group_label(None))       # the host
    t.add(connect(pid=4, daddr="10.0.0.4"), HOST)
    t.add(connect(pid=4, daddr="10.0.0.4"), group_label(DOCKER))
    t.roll(1.0)
    dest = {r.label: r.container for r in t.by_destination()}
    assert dest == {"10.0.0.1:80": "shop/web-1/nginx", "10.0.0.2:80": SEVERAL,
                    "10.0.0.3:80": None, "10.0.0.4:80": SEVERAL}
    proc = {r.key[0]: r.container for r in t.by_process()}
    assert proc == {1: "shop/web-1/nginx", 2: f"docker:{'ef' * 6}", 3: None,
                    4: f"docker:{'ef' * 6}"}


def test_without_resolved_containers_rows_have_none_and_idle_keys_let_go():
    t = ConnectTable(idle_intervals=1)
    t.add(connect(pid=1))
    t.roll(1.0)
    assert [r.container for r in t.by_destination() + t.by_process()] == [None, None]
    t.add(connect(pid=5, daddr="10.0.0.9"), group_label(POD))
    t.roll(1.0)
    t.roll(1.0)     # idle: the keys (and what the column knew of them) go
    assert t.by_destination() == [] or all(r.label == "other" for r in t.by_destination())
    assert not t._dest_where and not t._proc_where


def _snapshot_in_containers():
    base = synthetic.last()
    t = ConnectTable()
    t.add(connect(pid=4242, daddr="10.0.0.1"), group_label(POD))
    t.roll(1.0)
    procs = tuple(replace(p, container=POD if i == 0 else None)
                  for i, p in enumerate(base.processes))
    return replace(base, destinations=tuple(t.by_destination()) + base.destinations,
                   processes=procs)


def test_the_column_is_there_only_where_some_row_is_in_a_container():
    assert not in_containers(synthetic.last())
    assert in_containers(_snapshot_in_containers())
    spec = table_views.PROCESSES_IN_CONTAINERS
    assert [c.title for c in spec.columns][:3] == ["PID", "CONTAINER", "COMM"]
    p = _snapshot_in_containers().processes[0]
    assert spec.cells(p)[1] == "shop/web-1/nginx"
    assert spec.cells(p)[0:1] + spec.cells(p)[2:] == table_views.PROCESSES.cells(p)


@pytest.mark.parametrize("spec", [table_views.CONNECTS_BY_DEST_IN_CONTAINERS,
                                  table_views.CONNECTS_BY_PROC_IN_CONTAINERS])
def test_a_hostile_label_is_escaped_and_cut_to_the_column(spec):
    t = ConnectTable()
    t.add(connect(pid=9), "\x1b]0;owned\x07\x1b[31m" + "x" * 80)
    t.roll(1.0)
    row = spec.items(replace(synthetic.last(), destinations=tuple(t.by_destination()),
                             processes_connects=tuple(t.by_process())))[0]
    widths = column_widths(spec, 200)
    assert widths[1] == CONTAINER_WIDTH
    cells = [c.title for c in spec.columns]
    line = join_cells(spec, spec.cells(row), widths).plain
    assert "\x1b" not in line and "\x07" not in line
    start = sum(widths[:1]) + 2
    assert line[start:start + CONTAINER_WIDTH].startswith("\\e]0;owned\\x07")
    assert len(line[start:start + CONTAINER_WIDTH].rstrip()) <= CONTAINER_WIDTH
    assert cells[1] == "CONTAINER"


def test_at_80_columns_the_container_column_folds_first_of_what_matters():
    spec = table_views.PROCESSES_IN_CONTAINERS
    kept = [c.title for c, w in zip(spec.columns, column_widths(spec, 80 - 5)) if w]
    assert "CONTAINER" not in kept and {"PID", "COMM", "ESTAB"} <= set(kept)
    wide = [c.title for c, w in zip(spec.columns, column_widths(spec, 160)) if w]
    assert "CONTAINER" in wide


def test_snapshot_with_containers(snap_compare):
    """Processes at 150 columns with a pod's rows: the column is shown."""
    app = build_app(synthetic.HEADER)
    app.post_snapshot(_snapshot_in_containers())
    assert snap_compare(app, press=("4",), terminal_size=(150, 30))


def test_snapshot_connects_with_containers(snap_compare):
    app = build_app(synthetic.HEADER)
    app.post_snapshot(_snapshot_in_containers())
    assert snap_compare(app, press=("2",), terminal_size=(150, 30))


def test_listeners_name_their_owners_container():
    base = synthetic.last()
    lis = tuple(replace(r, container=POD if i == 0 else None)
                for i, r in enumerate(base.listeners))
    snap = replace(base, listeners=lis)
    assert not in_containers(replace(base, listeners=tuple(replace(r, container=None)
                                                           for r in base.listeners)))
    assert in_containers(snap)      # a listener in a pod is enough
    spec = table_views.LISTENERS_IN_CONTAINERS
    assert [c.title for c in spec.columns][:3] == ["LISTENER", "CONTAINER", "OWNER"]
    assert spec.cells(lis[0])[1] == "shop/web-1/nginx"
    assert spec.cells(lis[1])[1] == ""
    assert spec.cells(lis[0])[0:1] + spec.cells(lis[0])[2:] == table_views.LISTENERS.cells(lis[0])
    # at 80 columns the listener, queue, drops and wait p99 stay; the container folds
    kept = [c.title for c, w in zip(spec.columns, column_widths(spec, 80 - 5)) if w]
    assert "CONTAINER" not in kept and {"LISTENER", "ACCEPT QUEUE", "DROP/s", "WAIT p99"} <= set(kept)


def test_snapshot_listeners_with_containers(snap_compare):
    """Listeners at 150 columns, the first owned by a pod's process."""
    base = synthetic.last()
    lis = tuple(replace(r, container=POD if i == 0 else None)
                for i, r in enumerate(base.listeners))
    app = build_app(synthetic.HEADER)
    app.post_snapshot(replace(base, listeners=lis))
    assert snap_compare(app, press=("3",), terminal_size=(150, 30))
