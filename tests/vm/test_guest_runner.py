"""The QEMU guest runner (vagrant/guest.py): the guest really runs Debian's
6.1 cloud kernel with kprobes and fentry, commands' output, exit codes and
result files come back, and a hung guest is killed."""
from __future__ import annotations

import json
import re
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import guest  # on sys.path through conftest.py
import guest_image
import guest_packages
import guest_run
import guest_wheels
from guest import Package, VersionMismatch, check_kernel_headers

PROJECT_DIR = Path(__file__).resolve().parents[2]


# --- no VM needed -------------------------------------------------------------

def test_every_kernel_test_file_is_run_by_the_guests_or_says_why_not():
    from guest_suite import KERNEL_SUITE, NOT_IN_GUEST_CI
    files = {str(p.relative_to(PROJECT_DIR)) for p in (PROJECT_DIR / "tests/kernel").glob("test_*.py")}
    assert not set(KERNEL_SUITE) & set(NOT_IN_GUEST_CI)
    assert files == set(KERNEL_SUITE) | set(NOT_IN_GUEST_CI), \
        "a kernel test file goes into guest_suite.KERNEL_SUITE or NOT_IN_GUEST_CI with its reason"
    for path, why in NOT_IN_GUEST_CI.items():
        assert why.startswith(("host only: ", "by hand: ")) and len(why) > 20, (path, why)


def test_a_missing_build_tool_is_one_error_line_naming_it(monkeypatch, tmp_path):
    """A shell without /usr/sbin on PATH (debootstrap, mke2fs): guest.py says
    which tool and where, not a FileNotFoundError traceback."""
    monkeypatch.setenv("PATH", str(tmp_path))     # an empty directory: nothing is found
    with pytest.raises(guest_image.GuestError, match=r"^debootstrap bookworm: debootstrap was not "
                                                     r"found on PATH.*/usr/sbin"):
        guest_image._run(["debootstrap", "--version"], "debootstrap bookworm")


def test_version_check_rejects_headers_of_another_kernel():
    image = Package("linux-image-6.1.0-50-cloud-amd64", "6.1.176-1")
    with pytest.raises(VersionMismatch, match="differ"):
        check_kernel_headers(image, Package("linux-headers-6.1.0-49-cloud-amd64", "6.1.170-1"))
    # Same ABI name, another upload: struct layouts may still differ.
    with pytest.raises(VersionMismatch, match="differ"):
        check_kernel_headers(image, Package("linux-headers-6.1.0-50-cloud-amd64", "6.1.176-2"))


def test_version_check_accepts_the_matching_headers():
    image = Package("linux-image-6.1.0-50-cloud-amd64-unsigned", "6.1.176-1")
    headers = Package("linux-headers-6.1.0-50-cloud-amd64", "6.1.176-1")
    assert check_kernel_headers(image, headers) == "6.1.0-50-cloud-amd64"


def test_kernel_version_is_read_from_the_meta_package_dependency():
    show = ("Package: linux-image-cloud-amd64\nVersion: 6.1.176-1\n"
            "Depends: linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)\n\n"
            "Package: linux-headers-cloud-amd64\nVersion: 6.1.176-1\n"
            "Depends: linux-headers-6.1.0-50-cloud-amd64 (= 6.1.176-1)\n")
    assert guest_packages._depends_on(show, "linux-headers-cloud-amd64") == \
        Package("linux-headers-6.1.0-50-cloud-amd64", "6.1.176-1")


def test_mirror_is_found_in_both_apt_source_formats():
    deb822 = ("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
              "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
              "Suites: bookworm-security\nComponents: main\n")
    one_line = "deb [arch=amd64] http://other.example/debian bookworm main contrib\n"
    assert [e[0] for e in guest_packages._sources_entries(deb822, deb822=True) if "bookworm" in e[1]] == \
        ["http://mirror.example/debian"]
    assert [e[:3] for e in guest_packages._sources_entries(one_line, deb822=False)] == \
        [("http://other.example/debian", ["bookworm"], ["main", "contrib"])]


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get to resolve the kernel")
def test_unreachable_mirror_falls_back_to_cached_image_or_says_why(tmp_path, monkeypatch):
    # Port 9 on loopback refuses connections: apt really fails.
    monkeypatch.setenv("CONNSCOPE_VM_MIRROR", "http://127.0.0.1:9/debian")
    apt_conf = tmp_path / "apt.conf"
    apt_conf.write_text('Acquire::Retries "0";\n')  # read instead of /etc/apt/apt.conf
    monkeypatch.setenv("APT_CONFIG", str(apt_conf))
    with pytest.raises(guest.GuestError, match="apt-get update for bookworm .* failed"):
        guest.build_image(tmp_path)
    cached = fake_image(tmp_path / "0123456789abcdef", "bookworm")
    (tmp_path / ".tmp-fedcba9876543210-x").mkdir()  # an interrupted build is no image
    assert guest.build_image(tmp_path) == cached
    # Offline, a trixie guest is never stood in for by a bookworm image.
    with pytest.raises(guest.GuestError, match="apt-get update for trixie .* failed"):
        guest.build_image(tmp_path, suite="trixie")
    trixie = fake_image(tmp_path / "fedcba9876543210", "trixie")
    assert guest.build_image(tmp_path, suite="trixie") == trixie
    assert guest.build_image(tmp_path) == cached


def fake_image(path: Path, suite: str) -> Path:
    path.mkdir(parents=True)
    for name in ("root.img", "vmlinuz"):
        (path / name).write_text("")
    (path / "manifest.json").write_text(json.dumps({"recipe": {"suite": suite}}))
    return path


# --- the suite as a parameter ----------------------------------------------------

def test_suite_is_part_of_the_recipe_hash_and_bookworm_stays_the_default():
    image = Package("linux-image-6.1.0-50-cloud-amd64", "6.1.176-1")
    headers = Package("linux-headers-6.1.0-50-cloud-amd64", "6.1.176-1")
    default = guest_image.recipe_hash(guest_image.recipe(image, headers))
    assert default == guest_image.recipe_hash(guest_image.recipe(image, headers, "bookworm"))
    assert guest_image.recipe(image, headers)["suite"] == guest.SUITE == "bookworm"
    assert default != guest_image.recipe_hash(guest_image.recipe(image, headers, "trixie"))


def test_unknown_suite_is_refused_before_any_network_use(tmp_path):
    with pytest.raises(guest.GuestError, match="unknown guest suite 'sid'; known: bullseye, bookworm, trixie"):
        guest.build_image(tmp_path, suite="sid")
    assert list(tmp_path.iterdir()) == []


def test_cli_takes_the_suite_for_build_run_and_shell(tmp_path, capsys):
    for action in ("build", "run", "shell"):
        with pytest.raises(SystemExit) as caught:
            guest.main(["--cache", str(tmp_path), action, "--suite", "sid"])
        assert caught.value.code == 2
        assert "invalid choice: 'sid'" in capsys.readouterr().err


def test_prune_keeps_other_suites_images(tmp_path, capsys):
    old = fake_image(tmp_path / ("1" * 16), "bookworm")
    (tmp_path / ("1" * 16 + ".tar.zst")).write_text("")
    keep = fake_image(tmp_path / ("2" * 16), "bookworm")
    other = fake_image(tmp_path / ("3" * 16), "trixie")
    (tmp_path / ("3" * 16 + ".tar.zst")).write_text("")
    guest._prune(tmp_path, keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == [keep.name, other.name, other.name + ".tar.zst"]
    assert not old.exists()


def test_kernel_package_names_of_each_release_parse():
    # Names as the three suites' indexes give them (trixie adds "+deb13").
    for name, release in (("linux-image-5.10.0-32-cloud-amd64", "5.10.0-32-cloud-amd64"),
                          ("linux-image-6.1.0-50-cloud-amd64-unsigned", "6.1.0-50-cloud-amd64"),
                          ("linux-headers-6.12.117+deb13-cloud-amd64", "6.12.117+deb13-cloud-amd64")):
        assert guest_packages.kernel_release(name) == release


def test_each_release_names_its_python_and_glibc():
    assert {s: (r.python, r.glibc) for s, r in guest.RELEASES.items()} == {
        "bullseye": ("3.9", (2, 31)), "bookworm": ("3.11", (2, 36)), "trixie": ("3.13", (2, 41))}


# --- wheels for a guest whose Python is not the venv's --------------------------

def test_guest_wheels_are_binary_for_the_guest_python_abi_and_glibc():
    argv = guest_wheels.pip_command(Path("/t"), "3.13", (2, 41), ["pyarrow>=14"])
    assert argv[-1] == "pyarrow>=14"
    assert "--only-binary=:all:" in argv
    pairs = set(zip(argv, argv[1:]))
    assert {("--python-version", "3.13"), ("--abi", "cp313"), ("--target", "/t"),
            ("--implementation", "cp")} <= pairs
    platforms = [b for a, b in zip(argv, argv[1:]) if a == "--platform"]
    assert platforms[0] == "manylinux_2_41_x86_64" and "manylinux_2_42_x86_64" not in platforms
    assert {"manylinux_2_28_x86_64", "manylinux2014_x86_64"} <= set(platforms)


def test_guest_wheels_follow_the_project_requirements_and_key_on_python():
    reqs = guest_wheels.requirements(PROJECT_DIR)
    assert any(r.startswith("pyarrow") for r in reqs) and any(r.startswith("textual") for r in reqs)
    assert any(r.startswith("pytest") for r in reqs)  # the test extra: the guest runs pytest
    keys = {guest_wheels.wheels_key(py, (2, 41), reqs) for py in ("3.9", "3.13")}
    assert len(keys) == 2


def test_same_python_guest_gets_the_venv_and_another_python_gets_cached_wheels(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / ".venv/lib/python3.11/site-packages").mkdir(parents=True)
    bookworm = fake_image(tmp_path / "cache" / ("a" * 16), "bookworm")
    (bookworm / "manifest.json").write_text(json.dumps({"python": "python3.11", "recipe": {"suite": "bookworm"}}))
    trixie = fake_image(tmp_path / "cache" / ("b" * 16), "trixie")
    (trixie / "manifest.json").write_text(json.dumps({"python": "python3.13", "recipe": {"suite": "trixie"}}))
    assert guest.venv_site_packages(project, bookworm) == project / ".venv/lib/python3.11/site-packages"
    asked = []
    monkeypatch.setattr(guest_wheels, "site_packages",
                        lambda project_dir, python, glibc, cache: asked.append((python, glibc, cache)) or cache)
    guest.venv_site_packages(project, trixie)
    assert asked == [("3.13", (2, 41), tmp_path / "cache")]


# --- in the guest --------------------------------------------------------------

PROBE_COMMAND = (
    "uname -r; "
    "test -d /sys/kernel/tracing/events && echo tracefs; "
    'python3 -c "import bcc; print(bcc.BPF.support_kfunc())"; '
    "grep -c . /sys/kernel/tracing/available_filter_functions; "
    "grep -x tcp_v4_connect /sys/kernel/tracing/available_filter_functions"
)


@pytest.mark.vm
def test_guest_runs_debian_cloud_kernel_with_kprobes_and_fentry(guest_image):
    code, output = guest.run(PROBE_COMMAND, PROJECT_DIR, timeout=300, image=guest_image)
    assert code == 0, output
    release, tracefs, kfunc, functions, kprobe_target = output.splitlines()
    assert re.fullmatch(r"6\.1\.0-\d+-cloud-amd64", release)
    assert release == guest.read_manifest(guest_image)["kernel_release"]
    assert tracefs == "tracefs"
    assert kfunc == "True"
    assert int(functions) > 10_000
    assert kprobe_target == "tcp_v4_connect"


@pytest.mark.vm
def test_exit_code_output_and_results_come_back(guest_image, tmp_path):
    chunks = []
    command = ('echo "$(uname -r)" > "$CONNSCOPE_VM_RESULTS/release"; '
               'mkdir "$CONNSCOPE_VM_RESULTS/sub" && echo nested > "$CONNSCOPE_VM_RESULTS/sub/file"; '
               "echo to-stdout; echo to-stderr >&2; exit 3")
    code, output = guest.run(command, PROJECT_DIR, timeout=300, image=guest_image,
                             results_dir=tmp_path, on_output=chunks.append)
    assert code == 3
    assert output.splitlines() == ["to-stdout", "to-stderr"]
    assert "".join(chunks) == output
    manifest = guest.read_manifest(guest_image)
    assert (tmp_path / "release").read_text() == manifest["kernel_release"] + "\n"
    assert (tmp_path / "sub" / "file").read_text() == "nested\n"


@pytest.mark.vm
def test_hung_guest_is_killed_at_the_timeout(guest_image):
    started = time.monotonic()
    # 40 s: boot takes ~3 s under TCG on an idle host, but over 15 s was seen
    # with the host's two cores busy; "started" must be out well before.
    with pytest.raises(guest.GuestTimeout, match="did not finish within 40s") as caught:
        guest.run("echo started; sleep 600", PROJECT_DIR, timeout=40, image=guest_image)
    assert time.monotonic() - started < 50
    assert caught.value.output == "started\n"


@pytest.mark.vm
@pytest.mark.slow
def test_kprobe_and_fentry_count_every_loopback_connect(guest_image):
    # One bcc program with both probe types: a compile costs ~25 s under TCG.
    code, output = guest.run("python3 tests/vm/guest_scripts/connect_counts.py 23",
                             PROJECT_DIR, timeout=600, image=guest_image)
    assert code == 0, output
    counts = json.loads(output.splitlines()[-1])
    assert (counts["kprobe"], counts["kfunc"]) == (23, 23), counts


@pytest.mark.vm
def test_pytest_session_in_guest_with_host_venv_returns_junit(guest_image, tmp_path):
    # How the kernel tests run in the guest: the project venv carries pyarrow,
    # which bookworm does not package, and the JUnit report comes back.
    site = guest.venv_site_packages(PROJECT_DIR, guest_image)
    command = ('python3 -c "import pyarrow, click, bcc" && '
               "python3 -m pytest -p no:cacheprovider -q tests/vm/test_guest_runner.py -m 'not vm' "
               '--junitxml="$CONNSCOPE_VM_RESULTS/junit.xml"')
    code, output = guest.run(command, PROJECT_DIR, timeout=600, image=guest_image,
                             site_packages=site, results_dir=tmp_path)
    assert code == 0, output
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 4 and int(suite.get("failures")) == 0, output
    assert int(suite.get("errors")) == 0 and int(suite.get("skipped")) == 0, output


def test_guest_wheels_are_checked_against_the_guest_python_not_the_host(tmp_path):
    # What pip 23 left for a 3.9 guest when run on 3.11: a click that needs
    # 3.10, and pytest without the backports its markers ask for on 3.9.
    def dist(name, version, *lines):
        info = tmp_path / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("".join(f"{line}\n" for line in
                                               (f"Name: {name}", f"Version: {version}", *lines)))
    dist("click", "8.5.0", "Requires-Python: >=3.10")
    dist("pytest", "8.4.2", "Requires-Python: >=3.9", 'Requires-Dist: exceptiongroup>=1; python_version < "3.11"',
         'Requires-Dist: colorama>=0.4; sys_platform == "win32"', 'Requires-Dist: argcomplete; extra == "dev"',
         "Requires-Dist: iniconfig>=1")
    dist("iniconfig", "2.1.0")
    assert guest_wheels.check_for_target(tmp_path, "3.9") == (["exceptiongroup>=1"], ["click!=8.5.0"])
    assert guest_wheels.check_for_target(tmp_path, "3.13") == ([], [])


def test_guest_command_gets_its_environment_and_scalar_arrow_kernels(tmp_path):
    project = tmp_path / "project"
    (project / ".venv").mkdir(parents=True)
    (project / "file").write_text("x")
    guest_run._stage(tmp_path / "disk", project, "echo hi", None, {"A": "b c"}, interactive=False)
    script = (tmp_path / "disk" / "cmd").read_text().splitlines()
    assert "export ARROW_USER_SIMD_LEVEL=NONE" in script
    assert "export A='b c'" in script and script[-1] == "echo hi"
    assert not (tmp_path / "disk" / "project" / ".venv").exists()


@pytest.mark.parametrize("nodeid", [
    "tests/kernel/test_listeners.py::test_reset[ipv4]",
    "tests/kernel/test_listeners.py::test_reset[::1]",
    "tests/kernel/test_x.py::TestGroup::test_y[a::b-::ffff:127.0.0.1]",
    "tests/kernel/sub/test_z.py::test_plain",
])
def test_junit_keys_are_the_ones_pytest_writes(nodeid):
    """Checked against pytest's own naming of JUnit test cases: a guest
    test whose parameters held "::" was reported as never run (CI of 9e4a00b)."""
    from _pytest.junitxml import mangle_test_address

    from test_backends_in_guest import junit_key

    *classname, name = mangle_test_address(nodeid)
    assert junit_key(nodeid) == (".".join(classname), name)
