"""Both caches under /var/cache/connscope against another local user.

The traps are set by an unprivileged user (uid 65534, via setpriv) in a
directory that user owns, or, where that user could never write (inside a
root-owned directory), by root handing the entry over with chown to stand
for "got there somehow". Each must be a miss with a reason that doctor
shows; the planted content is never used, read through a link, or compiled
against. Needs root (chown, setpriv): skipped, with that reason, otherwise.
"""

from __future__ import annotations
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tracer import doctor, trusted_fs
from tracer.probes import compiled, headers
from tests.unit.test_compiled_cache import program
from tests.unit.test_doctor import DEFAULTS, fake_debian_headers, make

NOBODY = 65534

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chowns entries to another user and drops to it"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed"),
]


def as_nobody(*argv: str) -> None:
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
                   check=True, cwd="/", timeout=30)


@pytest.fixture
def base():
    """A root-owned 0755 directory in /tmp (sticky, root's): a trusted place
    that uid 65534 can reach, unlike pytest's 0700 tmp_path."""
    d = tempfile.mkdtemp(prefix="connscope-trust-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def nobody_dir(base):
    d = base / "nobody"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    return d


def planted_entry(key: str) -> str:
    """A well-formed entry: if any of these were used, load() would return it."""
    d = program().to_json()
    d["key"] = key
    return json.dumps(d)


def miss(directory, key="k1") -> str:
    prog, why = compiled.lookup(key, str(directory))
    assert prog is None
    assert compiled.load(key, str(directory)) is None
    return why


def doctor_line(monkeypatch, directory) -> dict:
    """The program cache row of `connscope doctor` (the rest of the report
    from a made-up host), checked to be on the screen as well."""
    monkeypatch.setenv(compiled.CACHE_ENV, str(directory))
    r = doctor.collect(make(), sysctls=DEFAULTS, nofile=(1024, 4096))["program_cache"]
    assert f"  prog cache   {'ok' if r['ok'] else 'no'}  {r['detail']}" in doctor_text(make())
    return r


def doctor_text(features) -> str:
    return doctor.render_text(doctor.collect(features, sysctls=DEFAULTS, nofile=(1024, 4096)))


# --- the program cache ----------------------------------------------------------

def test_trusted_cache_round_trip(base):
    cache = base / "var" / "programs"
    assert compiled.store("k1", program(), str(cache))
    assert compiled.lookup("k1", str(cache)) == (program(), "")
    assert os.stat(base / "var").st_mode & 0o777 == 0o755     # parents made 0755, by fd
    assert os.stat(cache).st_mode & 0o777 == 0o700


def test_cache_dir_owned_by_another_user(base, monkeypatch):
    cache = base / "programs"
    cache.mkdir(mode=0o700)
    os.chown(cache, NOBODY, NOBODY)          # handed over somehow; the rest is nobody's doing
    as_nobody("/usr/bin/python3", "-c", f"open({str(cache / 'k1.json')!r}, 'w').write({planted_entry('k1')!r})")
    assert miss(cache) == f"program cache ignored: {cache} is owned by uid {NOBODY}"
    assert compiled.store("k1", program(), str(cache)) is None     # nor written into
    r = doctor_line(monkeypatch, cache)
    assert not r["ok"] and f"{cache} is owned by uid {NOBODY}" in r["detail"]


def test_a_parent_owned_by_another_user(nobody_dir, monkeypatch):
    """The cache directory and entry are root's, but a parent is not: its
    owner could swap the whole subtree for another."""
    cache = nobody_dir / "programs"
    cache.mkdir(mode=0o700)
    (cache / "k1.json").write_text(planted_entry("k1"))
    os.chmod(cache / "k1.json", 0o600)
    assert miss(cache) == f"program cache ignored: {nobody_dir} is owned by uid {NOBODY}"
    assert compiled.store("k2", program(), str(cache)) is None
    assert f"{nobody_dir} is owned by uid {NOBODY}" in doctor_line(monkeypatch, cache)["detail"]


def test_made_by_another_user_all_the_way(nobody_dir):
    cache = nobody_dir / "programs"
    as_nobody("mkdir", "-m", "0700", str(cache))
    as_nobody("/usr/bin/python3", "-c", f"open({str(cache / 'k1.json')!r}, 'w').write({planted_entry('k1')!r})")
    assert miss(cache) == f"program cache ignored: {nobody_dir} is owned by uid {NOBODY}"


@pytest.mark.parametrize("mode, who", [(0o770, "group"), (0o707, "others")])
def test_cache_dir_writable_by_group_or_others(base, mode, who):
    cache = base / "programs"
    compiled.store("k1", program(), str(cache))
    os.chmod(cache, mode)
    assert miss(cache) == f"program cache ignored: {cache} is writable by {who} (mode {mode:04o})"


def test_a_world_writable_parent_without_sticky_bit(base):
    cache = base / "open" / "programs"
    compiled.store("k1", program(), str(cache))
    os.chmod(base / "open", 0o777)
    assert miss(cache) == f"program cache ignored: {base / 'open'} is writable by group and others (mode 0777)"
    os.chmod(base / "open", 0o1777)    # root-owned and sticky, like /tmp: others cannot move root's entries
    assert compiled.load("k1", str(cache)) == program()


def test_a_symlinked_parent_made_by_another_user_is_not_followed(nobody_dir, base):
    real = base / "real"
    compiled.store("k1", program(), str(real / "programs"))
    as_nobody("ln", "-s", str(real), str(nobody_dir / "link"))
    assert miss(nobody_dir / "link" / "programs").startswith(f"program cache ignored: {nobody_dir} is owned")


def test_a_root_made_symlinked_parent_is_followed(base):
    compiled.store("k1", program(), str(base / "real" / "programs"))
    os.symlink("real", base / "link")
    assert compiled.load("k1", str(base / "link" / "programs")) == program()


@pytest.fixture
def cache(base):
    """A trusted cache directory holding k1, a program someone else could want replaced."""
    d = base / "programs"
    compiled.store("k1", program(), str(d))
    return d


def test_entry_that_is_a_symlink_is_not_followed(cache, nobody_dir, monkeypatch):
    target = nobody_dir / "evil.json"
    as_nobody("/usr/bin/python3", "-c", f"open({str(target)!r}, 'w').write({planted_entry('k2')!r})")
    os.symlink(target, cache / "k2.json")   # root's directory: only root could have put it there
    assert miss(cache, "k2") == f"cache entry ignored: {cache / 'k2.json'} is a symbolic link"
    r = doctor_line(monkeypatch, cache)
    assert not r["ok"] and "1 compiled program;" in r["detail"]
    assert f"1 entry ignored: {cache / 'k2.json'} is a symbolic link" in r["detail"]


def test_entry_that_is_a_fifo_does_not_block(cache, monkeypatch):
    os.mkfifo(cache / "k2.json", 0o600)
    signal.alarm(10)   # an open() that blocks on the FIFO fails the test instead of hanging it
    try:
        assert miss(cache, "k2") == f"cache entry ignored: {cache / 'k2.json'} is not a regular file"
        assert "is not a regular file" in doctor_line(monkeypatch, cache)["detail"]
    finally:
        signal.alarm(0)


def test_entry_owned_by_another_user(cache, monkeypatch):
    (cache / "k2.json").write_text(planted_entry("k2"))
    os.chmod(cache / "k2.json", 0o600)
    os.chown(cache / "k2.json", NOBODY, NOBODY)
    assert miss(cache, "k2") == f"cache entry ignored: {cache / 'k2.json'} is owned by uid {NOBODY}"
    assert f"owned by uid {NOBODY}" in doctor_line(monkeypatch, cache)["detail"]


def test_entry_writable_by_others(cache):
    os.chmod(cache / "k1.json", 0o606)
    assert miss(cache) == f"cache entry ignored: {cache / 'k1.json'} is writable by others (mode 0606)"


def test_entry_too_large(cache):
    with open(cache / "k1.json", "r+b") as f:
        f.truncate(compiled.MAX_ENTRY_BYTES + 1)
    assert miss(cache) == (f"cache entry ignored: {cache / 'k1.json'} is "
                           f"{compiled.MAX_ENTRY_BYTES + 1} bytes, more than {compiled.MAX_ENTRY_BYTES}")


def _entry(**change) -> dict:
    d = json.loads(planted_entry("k1"))
    for path, value in change.items():
        obj, *keys = path.split("__")
        target = d if obj == "top" else d[obj][0]
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return d


@pytest.mark.parametrize("content, reason", [
    ("[]", "is not a compiled program (no key)"),
    ("null", "is not a compiled program (no key)"),
    ('{"format": 1, "key": "k1", "functions": [', "is not a compiled program (Expecting value"),
    (b'{"key": "\xff"}', "is not a compiled program ('utf-8' codec can't decode"),
    ("[" * 100000 + "]" * 100000, "is not a compiled program ("),
    (_entry(top__key="k9"), "is not a compiled program (stored under another key)"),
    (_entry(top__maps={}), "is not a compiled program (maps is a dict, not a list)"),
    (_entry(top__functions=[[]]), "is not a compiled program (function is a list, not an object)"),
    (_entry(maps__type="27"), "is not a compiled program (map type is '27', not a 32-bit unsigned integer)"),
    (_entry(maps__max_entries=True), "is not a compiled program (map max_entries is True, not"),
    (_entry(maps__evil=1), "is not a compiled program (map: unknown ['evil'])"),
    (_entry(top__kern_version=-1), "is not a compiled program (kern_version is -1"),
    (_entry(top__license=None), "is not a compiled program (license is a NoneType, not a string)"),
    (_entry(functions__insns="!!"), "is not a compiled program (insns are not base64"),
    (_entry(functions__insns="AAAA"), "is not a compiled program (insns of 3 bytes: not whole instructions)"),
    (_entry(functions__relocs=[[99, "events"]]), "is not a compiled program (reloc (99, 'events') outside"),
    (_entry(functions__relocs=[[1, "nosuchmap"]]), "is not a compiled program (reloc (1, 'nosuchmap') outside"),
    (_entry(functions__relocs=[1]), "is not a compiled program (a reloc is not an [index, map] pair)"),
    (_entry(top__format=2), "is not a compiled program (compiled program format 2, expected 1)"),
], ids=lambda v: v[:40] if isinstance(v, str) else None)
def test_root_owned_entry_of_the_wrong_shape_is_a_named_miss(cache, content, reason, monkeypatch):
    data = content if isinstance(content, (str, bytes)) else json.dumps(content)
    with open(cache / "k1.json", "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    why = miss(cache)
    assert why.startswith(f"cache entry ignored: {cache / 'k1.json'} {reason}"), why
    r = doctor_line(monkeypatch, cache)
    assert not r["ok"] and "1 entry ignored" in r["detail"]


def test_the_unchanged_entry_is_a_hit(cache):
    """The shape checks above accept what store() writes."""
    assert compiled.lookup("k1", str(cache)) == (program(), "")


# --- the merged header tree -----------------------------------------------------

def evil_headers(where: Path) -> Path:
    """Headers uid 65534 would like root to compile against."""
    as_nobody("mkdir", "-p", str(where / "include" / "linux"))
    as_nobody("sh", "-c", f"echo '#error planted' > {where}/include/linux/kconfig.h")
    return where


def find(src: Path, cache: Path) -> headers.HeaderTree:
    return headers.find_header_tree("6.18.0-test", str(cache), modules_dir=str(src / "none"),
                                    usr_src=str(src), kheaders=str(src / "none.tar.xz"))


def links_under(tree: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(tree):
        for name in dirs + files:
            p = os.path.join(root, name)
            if os.path.islink(p):
                out.append(os.path.normpath(os.readlink(p)))
    return out


def assert_only_links_into(tree: Path, src: Path) -> None:
    links = links_under(tree)
    assert links and all(l.startswith(str(src) + "/") for l in links), links


def test_header_cache_owned_by_another_user_is_not_used(base, nobody_dir):
    src = base / "src"
    fake_debian_headers(src, "6.1.0-9")
    evil = evil_headers(nobody_dir / "evil")
    cache = nobody_dir / "kernel-tree"
    farm = cache / "6.1.0-9-cloud-amd64"
    # A farm that looks finished, made by nobody: links to nobody's headers.
    as_nobody("mkdir", "-p", str(farm / "include"))
    as_nobody("ln", "-s", str(evil / "include" / "linux"), str(farm / "include" / "linux"))
    tree = find(src, cache)
    assert tree.path is None and tree.kind == "unmerged"
    assert tree.how.endswith(f"the merged tree cache is not used: {nobody_dir} is owned by uid {NOBODY}")
    assert headers.bcc_environment(tree) == {}
    assert os.listdir(farm) == ["include"]    # not built into, not removed: just not used
    assert f"headers      no  {tree.how}" in doctor_text(make(tree=tree))


def test_planted_farm_in_roots_cache_is_rebuilt_not_used(base, nobody_dir):
    """A farm under the final name that connscope did not check (here owned
    by nobody, who filled it with links to their headers and copied the
    stamp) is moved away and a fresh one built."""
    src = base / "src"
    fake_debian_headers(src, "6.1.0-9")
    cache = base / "kernel-tree"
    good = find(src, cache)
    farm = Path(good.path)
    evil = evil_headers(nobody_dir / "evil")
    stamp = (farm / headers._STAMP).read_text()
    checked = (farm / headers._CHECKED).read_bytes()
    shutil.rmtree(farm)
    farm.mkdir()
    os.chown(farm, NOBODY, NOBODY)            # how it got there is beside the point
    as_nobody("mkdir", "-p", str(farm / "include"))
    as_nobody("ln", "-s", str(evil / "include" / "linux"), str(farm / "include" / "linux"))
    as_nobody("/usr/bin/python3", "-c", f"open({str(farm / headers._STAMP)!r}, 'w').write({stamp!r})")
    as_nobody("/usr/bin/python3", "-c", f"open({str(farm / headers._CHECKED)!r}, 'wb').write({checked!r})")
    tree = find(src, cache)
    assert tree.path == str(farm) and tree.kind == "merged"
    assert os.stat(farm).st_uid == 0
    assert_only_links_into(farm, src)
    assert (farm / "include" / "linux" / "kconfig.h").read_text() == "/* kconfig */\n"
    assert sorted(os.listdir(cache)) == ["6.1.0-9-cloud-amd64"]   # the planted one is gone


@pytest.mark.parametrize("tamper", ["writable", "unchecked", "symlink"])
def test_root_owned_farm_not_provably_ours_is_rebuilt(base, tamper):
    """Reuse checks the farm's top (and the path to it): the rest was checked
    link by link when it was built, and only root can change what is below a
    root-owned directory nobody else can write."""
    src = base / "src"
    fake_debian_headers(src, "6.1.0-9")
    cache = base / "kernel-tree"
    farm = Path(find(src, cache).path)
    inode = os.stat(farm).st_ino
    if tamper == "writable":
        os.chmod(farm, 0o777)
    elif tamper == "unchecked":     # built by a version that did not check its links
        (farm / headers._CHECKED).unlink()
    else:                           # the farm's name is a link to a tree elsewhere
        os.rename(farm, base / "elsewhere")
        os.symlink(base / "elsewhere", farm)
    tree = find(src, cache)
    assert tree.path == str(farm) and tree.kind == "merged"
    assert not os.path.islink(farm) and os.stat(farm).st_ino != inode
    assert os.stat(farm).st_mode & 0o777 == 0o755 and os.stat(farm).st_uid == 0
    assert_only_links_into(farm, src)


def test_farm_check_refuses_links_elsewhere_and_foreign_directories(base, nobody_dir):
    src = base / "src"
    arch, common = fake_debian_headers(src, "6.1.0-9")
    farm = base / "farm"
    (farm / "include").mkdir(parents=True)
    os.symlink(arch / "Makefile", farm / "Makefile")
    roots = (str(arch), str(common))

    def check():
        fd = os.open(farm, os.O_RDONLY | os.O_DIRECTORY)
        try:
            headers._check_farm(fd, str(farm), roots)
        finally:
            os.close(fd)

    check()
    os.symlink("/etc/shadow", farm / "include" / "x.h")
    with pytest.raises(trusted_fs.Untrusted, match="x.h points to /etc/shadow, outside"):
        check()
    (farm / "include" / "x.h").unlink()
    os.symlink(f"{arch}/../../evil", farm / "include" / "y.h")
    with pytest.raises(trusted_fs.Untrusted, match="y.h points to"):
        check()
    (farm / "include" / "y.h").unlink()
    os.chown(farm / "include", NOBODY, NOBODY)
    with pytest.raises(trusted_fs.Untrusted, match=f"include is owned by uid {NOBODY}"):
        check()
    os.chown(farm / "include", 0, 0)
    (farm / "include" / "z.h").write_text("")
    with pytest.raises(trusted_fs.Untrusted, match="z.h is neither a link nor a directory"):
        check()


def test_usr_src_tree_owned_by_another_user_is_not_compiled_against(base, nobody_dir):
    fake_debian_headers(base / "model", "6.1.0-9")
    src = nobody_dir / "src"
    as_nobody("cp", "-r", str(base / "model"), str(src))   # nobody's copy, with nobody's edits to come
    tree = find(src, base / "kernel-tree")
    assert tree.path is None and tree.kind == "none"
    assert not (base / "kernel-tree").exists()
