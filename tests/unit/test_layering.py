"""Data flows one way: the TUI renders what it is given and never imports
replay (replay starts the TUI); the domain layer is pure (no I/O libraries,
nothing above it)."""
import ast
import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path

TRACER = Path(__file__).resolve().parents[2] / "tracer"


def _runtime_imports(path: Path) -> set[str]:
    """Modules imported outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", None) == "TYPE_CHECKING"
            for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_tui_never_imports_replay():
    for path in (TRACER / "tui").glob("*.py"):
        bad = {m for m in _runtime_imports(path) if m.startswith("tracer.replay")}
        assert not bad, f"{path.name} imports {bad}"


def test_importing_the_tui_loads_no_replay_module():
    code = ("import sys, tracer.tui.app; "
            "print(sorted(m for m in sys.modules if m.startswith('tracer.replay')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def _is_stdlib(name: str) -> bool:
    known = getattr(sys, "stdlib_module_names", None)    # 3.10+
    if known is not None:
        return name in known
    # Python 3.9 has no list: where the module comes from decides
    if name in sys.builtin_module_names:
        return True
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec else None
    return origin in ("built-in", "frozen") or bool(
        origin and origin.startswith(sysconfig.get_paths()["stdlib"])
        and "site-packages" not in origin)


def test_the_domain_layer_imports_only_the_standard_library_and_itself():
    for path in (TRACER / "domain").glob("*.py"):
        for m in _runtime_imports(path):
            assert _is_stdlib(m.split(".")[0]) or m.startswith("tracer.domain"), \
                f"{path.name} imports {m}"


def test_the_standard_library_test_tells_apart():
    assert _is_stdlib("errno") and _is_stdlib("math") and _is_stdlib("__future__")
    assert not _is_stdlib("pyarrow") and not _is_stdlib("tracer")
