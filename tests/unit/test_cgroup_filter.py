"""--cgroup PATH and --container ID resolved to cgroup v2 ids (no root): a
directory tree made here stands in for the v2 mount (the resolver takes its
root as an argument; the real mount is only found in mountinfo). Paths are
hostile input: links and `..` must not lead the walk anywhere else."""
from __future__ import annotations

import os
import secrets

import pytest
from click.testing import CliRunner

from tests.hostile_fs import ROOT, needs_root, needs_setpriv, nobody_home, plant_link  # noqa: F401
from tests.hostile_fs import tree as fs_tree
from tracer.cli import cli
from tracer.domain.containers import Attribution, container_cgroups, container_prefix
from tracer.filters import MAX_CGROUPS, CgroupTarget, FilterError, Filters
from tracer.probes import cgroup_filter
from tracer.probes.cgroups import Hierarchies
from tracer.probes.program import BuildOptions, cflags

A, B = secrets.token_hex(32), secrets.token_hex(32)


@pytest.fixture
def tree(tmp_path):
    """A v2-shaped hierarchy: a docker container, a kubepods one with a child,
    a conmon cgroup, a service."""
    root = tmp_path / "cg"
    for d in (f"system.slice/docker-{A}.scope/inner", f"kubepods/burstable/pod{'1' * 8}-"
              f"1111-1111-1111-{'1' * 12}/{B}", f"machine.slice/libpod-conmon-{B}.scope",
              "system.slice/cron.service"):
        (root / d).mkdir(parents=True)
    return root


def test_a_path_under_the_mount_or_as_proc_shows_it_gives_the_directorys_inode(tree):
    want = os.stat(tree / "system.slice" / f"docker-{A}.scope").st_ino
    by_cgroup = cgroup_filter.resolve_path(f"/system.slice/docker-{A}.scope", str(tree))
    by_fs = cgroup_filter.resolve_path(f"{tree}/system.slice/docker-{A}.scope/", str(tree))
    assert (by_cgroup.id, by_cgroup.level, by_cgroup.path) == (
        want, 2, f"/system.slice/docker-{A}.scope")
    assert (by_fs.id, by_fs.level, by_fs.path) == (by_cgroup.id, 2, by_cgroup.path)
    assert by_fs.label == f"cgroup {tree}/system.slice/docker-{A}.scope/"
    root = cgroup_filter.resolve_path("/", str(tree))
    assert (root.id, root.level, root.path) == (os.stat(tree).st_ino, 0, "/")


def test_a_symbolic_link_on_the_way_is_refused_not_followed(tree, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "x").mkdir(parents=True)
    os.symlink(elsewhere, tree / "system.slice" / "trap")
    os.symlink(elsewhere / "x", tree / "leaf")
    for arg in ("/system.slice/trap/x", "/leaf", f"{tree}/leaf"):
        with pytest.raises(FilterError, match="symbolic link or not a directory"):
            cgroup_filter.resolve_path(arg, str(tree))


@pytest.mark.parametrize("arg,message", [
    ("/system.slice/../system.slice", "no '.', '..' or empty component"),
    ("/system.slice//cron.service", "no '.', '..' or empty component"),
    ("/./system.slice", "no '.', '..' or empty component"),
    ("system.slice", "give an absolute path"),
    ("/nope", "not a cgroup under"),
    ("/system.slice/cron.service/cgroup.procs", "not a cgroup under"),
])
def test_bad_paths_are_refused_with_a_reason(tree, arg, message):
    (tree / "system.slice" / "cron.service" / "cgroup.procs").write_text("")
    with pytest.raises(FilterError, match=message) as e:
        cgroup_filter.resolve_path(arg, str(tree))
    assert str(e.value).startswith("--cgroup ")
    assert "\n" not in str(e.value)


def test_a_v1_hierarchy_is_refused_by_name(tree):
    with pytest.raises(FilterError, match="not under the cgroup v2 mount .* v2 ids"):
        cgroup_filter.resolve_path("/sys/fs/cgroup/memory/system.slice", str(tree))


def test_no_cgroup_v2_is_an_error_saying_so(monkeypatch):
    monkeypatch.setattr(cgroup_filter, "hierarchies", lambda: Hierarchies(None, ("memory",)))
    with pytest.raises(FilterError, match="need a cgroup v2 hierarchy .* none mounted "
                                          r"\(cgroups: v1\)"):
        cgroup_filter.resolve(["/x"], ())
    assert cgroup_filter.resolve((), ()) == ()     # no filter, nothing asked of the host


@pytest.mark.parametrize("text,want", [
    (A[:12], A[:12]), (A.upper()[:20], A[:20]), (A, A),
    (A[:11], None), (A + "0", None), ("g" * 12, None), ("", None), (f"{A[:12]}/..", None),
])
def test_container_prefix_is_twelve_to_sixty_four_hex_digits(text, want):
    assert container_prefix(text) == want


def test_a_containers_cgroup_is_the_shallowest_naming_it_and_conmon_is_not_one():
    paths = [f"/system.slice/docker-{A}.scope/inner", f"/system.slice/docker-{A}.scope",
             f"/machine.slice/libpod-conmon-{B}.scope", "/system.slice/cron.service",
             f"/kubepods/burstable/pod{'1' * 8}-1111-1111-1111-{'1' * 12}/{B}"]
    assert container_cgroups(A[:12], paths) == {A: f"/system.slice/docker-{A}.scope"}
    assert container_cgroups(B[:12], paths) == {
        B: f"/kubepods/burstable/pod{'1' * 8}-1111-1111-1111-{'1' * 12}/{B}"}
    assert container_cgroups("0" * 12 if not A.startswith("0" * 12) else "f" * 12, paths) == {}


def test_container_ids_resolve_to_one_cgroup_or_a_one_line_error(tree):
    got = cgroup_filter.resolve_container(A[:12], str(tree))
    assert got.id == os.stat(tree / "system.slice" / f"docker-{A}.scope").st_ino
    assert (got.level, got.label) == (2, f"container {A[:12]}")
    pod = cgroup_filter.resolve_container(B.upper(), str(tree))    # not the conmon cgroup
    assert pod.path.endswith(f"/{B}") and pod.level == 4
    with pytest.raises(FilterError, match="not a container id .*12"):
        cgroup_filter.resolve_container(A[:8], str(tree))
    other = "0" * 64 if not A.startswith("0" * 12) else "f" * 64
    with pytest.raises(FilterError, match="no container with that id"):
        cgroup_filter.resolve_container(other, str(tree))
    twin = A[:12] + ("0" if A[12] != "0" else "1") + A[13:]
    (tree / "system.slice" / f"docker-{twin}.scope").mkdir()
    with pytest.raises(FilterError, match="2 containers have ids starting so .* more digits"):
        cgroup_filter.resolve_container(A[:12], str(tree))
    assert cgroup_filter.resolve_container(A, str(tree)).id == got.id


def test_the_walk_does_not_follow_links_out_of_the_tree(tree, tmp_path):
    outside = tmp_path / "outside" / f"docker-{'e' * 64}.scope"
    outside.mkdir(parents=True)
    os.symlink(tmp_path / "outside", tree / "planted")
    assert not any("planted" in p for p in cgroup_filter.cgroup_paths(str(tree)))
    with pytest.raises(FilterError, match="no container with that id"):
        cgroup_filter.resolve_container("e" * 12, str(tree))


def _target(path: str, cid: int = 7) -> CgroupTarget:
    return CgroupTarget(cid, path.count("/"), path, f"cgroup {path}")


def test_filters_keep_rows_in_the_selected_cgroups_and_below():
    f = Filters.build(cgroups=[_target("/a/b"), _target("/a/b", 7), _target("/c", 9)])
    assert len(f.cgroups) == 2 and f.active
    assert f.describe() == "cgroup /a/b; cgroup /c"
    assert Filters.build(pids=[3], cgroups=[_target("/a")]).describe() == "pid 3; cgroup /a"
    assert f.as_dict()["cgroups"] == [{"id": 7, "path": "/a/b", "label": "cgroup /a/b"},
                                      {"id": 9, "path": "/c", "label": "cgroup /c"}]
    keeps = f.keeps_container
    assert keeps(Attribution(7, "/a/b")) and keeps(Attribution(70, "/a/b/x/y"))
    assert keeps(Attribution(9, "/gone-but-same-id")) and keeps(Attribution(None, "/c"))
    assert not keeps(Attribution(8, "/a/bc")) and not keeps(Attribution(8, "/a"))
    assert not keeps(None)
    assert Filters().keeps_container(None)
    assert _target("/").covers("/anything")


def test_at_most_so_many_cgroups():
    with pytest.raises(FilterError, match=f"at most {MAX_CGROUPS} cgroups"):
        Filters.build(cgroups=[_target(f"/c{i}", i + 1) for i in range(MAX_CGROUPS + 1)])


def test_the_kernel_switches():
    f = Filters.build(cgroups=[_target("/a")])
    on = cflags(BuildOptions("tracepoint", f), [])
    assert "-DFILTER_CGROUP" in on and "-DCGROUP_ANCESTORS" in on
    exact = cflags(BuildOptions("tracepoint", f, cgroup_ancestors=False), [])
    assert "-DFILTER_CGROUP" in exact and "-DCGROUP_ANCESTORS" not in exact
    assert "-DFILTER_CGROUP" not in cflags(BuildOptions("tracepoint", Filters()), [])


def test_the_coverage_notes_say_what_is_filtered_where():
    assert "below them" in cgroup_filter.coverage_note(True)
    assert "softirq" in cgroup_filter.coverage_note(True)
    note = cgroup_filter.coverage_note(False, "refused (EINVAL)")
    assert "themselves only" in note and "refused (EINVAL)" in note


@pytest.mark.parametrize("args,message", [
    (["--container", "abc"], "Error: --container abc: not a container id"),
    (["--cgroup", "/connscope-no-such-cgroup-" + secrets.token_hex(4)], "Error: --cgroup "),
    (["--cgroup", "/a/../b"], "Error: --cgroup /a/../b: a cgroup path has no"),
])
@pytest.mark.parametrize("command", ["top", "record", "serve"])
def test_the_commands_refuse_a_bad_selection_in_one_line(command, args, message):
    extra = {"record": ["--out", "/nonexistent-connscope-dir"],
             "serve": ["--metrics", "127.0.0.1:1"]}.get(command, [])
    r = CliRunner().invoke(cli, [command, *extra, *args])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    if "need a cgroup v2 hierarchy" in r.output:     # a host without v2: said so instead
        assert lines == [lines[0]] and lines[0].startswith("Error: --cgroup/--container need")
        return
    assert len(lines) == 1 and lines[0].startswith(message), r.output


def test_doctor_says_what_the_filter_can_do_here():
    assert cgroup_filter.support(None, None) == (
        False, "--cgroup/--container unavailable: no cgroup v2 mounted (the kernel's cgroup "
               "ids are v2 ids)")
    ok, line = cgroup_filter.support("/sys/fs/cgroup", (True, ""))
    assert ok and line.endswith("the selected cgroups and those below them")
    ok, line = cgroup_filter.support("/sys/fs/cgroup", (False, "refused (EINVAL)"))
    assert ok and line.endswith("themselves only, not those below them (refused (EINVAL))")
    assert "load-tested as root" in cgroup_filter.support("/x", None)[1]


@needs_root
@needs_setpriv
def test_a_link_another_user_planted_is_not_followed_by_root(nobody_home, tmp_path):
    """nobody plants links to the real cgroup v2 mount, to a v1 hierarchy and
    to /etc; `connscope record --cgroup LINK` as root refuses each in one line,
    makes no recording directory, and leaves nobody's directory as it was."""
    import subprocess
    import sys

    from tracer.probes.cgroups import hierarchies

    v2 = hierarchies().v2
    targets = {"v2": v2 or "/sys/fs/cgroup", "v1": "/sys/fs/cgroup/memory", "etc": "/etc"}
    for name, target in targets.items():
        plant_link(target, nobody_home / name)
    planted = fs_tree(nobody_home)
    for name in targets:
        out = tmp_path / f"rec-{name}"
        r = subprocess.run([sys.executable, "-m", "tracer", "record", "--out", str(out),
                            "--duration", "1", "--cgroup", f"{nobody_home}/{name}/"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: --cgroup"), r.stderr
        if v2:      # taken as a cgroup path, which no cgroup has: never followed
            assert f"not a cgroup under {v2}" in lines[0], lines
        assert not out.exists()
    assert fs_tree(nobody_home) == planted
