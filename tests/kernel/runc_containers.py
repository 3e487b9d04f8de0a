"""Real containers for the tests: `runc run` (Debian's runc) of an OCI bundle
whose root file system is a static busybox, made here (nothing pulled from a
registry). The config is runc's own `runc spec` with what this host needs
(tests/kernel/... and /work/shared/KERNEL.md): no rlimits (root cannot set
them here), no terminal, a chosen cgroup path (`linux.cgroupsPath`, made in
every v1 controller and in v2) and, if asked, a network namespace to join.

Every container is killed and deleted at close, and the cgroup directories
runc made for it (and parents it made, such as /kubepods) are removed in
every hierarchy; a state directory of our own keeps `runc list` of others
untouched. Each container is bounded in time by the caller's `timeout_s`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available() -> str | None:
    """Why containers cannot be made here, or None."""
    for tool in ("runc", "busybox"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./run test installs runc and busybox-static)"
    if os.geteuid() != 0:
        return "runc needs root"
    version = subprocess.run(["runc", "--version"], capture_output=True, text=True,
                             timeout=10).stdout.split("\n")[0]
    if "rc" in version.split("version")[-1]:
        # Debian 11's 1.0.0~rc93, in the bullseye test guest (5.10): every `runc run`
        # failed with "nsenter: could not ensure we are a cloned binary: No such file
        # or directory"; bookworm's 1.1.5 and trixie's run them
        return f"{version.strip()} is a release candidate that cannot run the test's containers " \
               "in the bullseye guest (could not ensure we are a cloned binary); runc 1.1+ can"
    return None


def hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers and v2)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ")[0] in ("cgroup", "cgroup2"):
            out.append(Path(left.split(" ")[4]))
    return out


class Runc:
    """Containers made from one busybox bundle, all removed by close()."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.state = workdir / "runc-state"
        self.state.mkdir(parents=True)
        rootfs = workdir / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        for d in ("proc", "dev", "sys", "tmp"):
            (rootfs / d).mkdir()
        shutil.copy(shutil.which("busybox"), rootfs / "bin" / "busybox")
        for applet in ("sh", "nc", "sleep", "httpd", "wget", "cat"):
            os.symlink("busybox", rootfs / "bin" / applet)
        self.rootfs = rootfs
        self.names: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.made_dirs: list[Path] = []     # cgroup directories that did not exist before

    def _note_new_dirs(self, cgroup_path: str) -> None:
        parts = [p for p in cgroup_path.split("/") if p]
        for h in hierarchies():
            for depth in range(1, len(parts) + 1):
                d = h.joinpath(*parts[:depth])
                if not d.exists() and d not in self.made_dirs:
                    self.made_dirs.append(d)

    def run(self, name: str, args: list[str], cgroup_path: str, netns: str | None = None,
            timeout_s: float = 60) -> int:
        """Start a container running `args`; returns its init's pid (host view)."""
        bundle = self.workdir / f"bundle-{name}"
        bundle.mkdir()
        subprocess.run(["runc", "spec"], cwd=bundle, check=True, capture_output=True,
                       timeout=10)
        config = json.loads((bundle / "config.json").read_text())
        proc = config["process"]
        proc.pop("rlimits", None)
        proc["terminal"] = False
        # bounded: the container ends by itself whatever the test does
        proc["args"] = ["/bin/busybox", "timeout", str(int(timeout_s)), *args]
        config["root"] = {"path": str(self.rootfs), "readonly": True}
        config["linux"]["cgroupsPath"] = cgroup_path
        if netns is not None:
            for ns in config["linux"]["namespaces"]:
                if ns["type"] == "network":
                    ns["path"] = netns
        (bundle / "config.json").write_text(json.dumps(config))
        self._note_new_dirs(cgroup_path)
        self.names.append(name)
        p = subprocess.Popen(["runc", "--root", str(self.state), "run", "--bundle", str(bundle),
                              name], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pid = self.pid(name)
            if pid:
                return pid
            if p.poll() is not None:
                raise RuntimeError(f"runc run {name} failed: {p.stderr.read()}")
            time.sleep(0.05)
        raise RuntimeError(f"runc run {name}: no pid after 15 s")

    def pid(self, name: str) -> int | None:
        r = subprocess.run(["runc", "--root", str(self.state), "state", name],
                           capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            return None
        state = json.loads(r.stdout)
        return state.get("pid") or None

    def wait(self, name: str, timeout_s: float) -> int | None:
        p = self.procs[self.names.index(name)]
        try:
            return p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def pause(self, name: str) -> None:
        """Freeze every process of the container (its server stops accepting)."""
        subprocess.run(["runc", "--root", str(self.state), "pause", name], check=True,
                       capture_output=True, timeout=10)

    def close(self) -> None:
        for name in self.names:
            # a frozen container takes its SIGKILL only once thawed
            subprocess.run(["runc", "--root", str(self.state), "resume", name],
                           capture_output=True, timeout=10)
            subprocess.run(["runc", "--root", str(self.state), "kill", name, "KILL"],
                           capture_output=True, timeout=10)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for name in self.names:
            subprocess.run(["runc", "--root", str(self.state), "delete", "-f", name],
                           capture_output=True, timeout=10)
        # deepest first; a directory still in use (not ours after all) stays
        for d in sorted(self.made_dirs, key=lambda d: -len(d.parts)):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                time.sleep(0.2)
                try:
                    d.rmdir()
                except OSError:
                    pass
