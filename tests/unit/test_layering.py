"""Data flows one way: the TUI renders what it is given and never imports
replay (replay starts the TUI); the domain layer is pure (no I/O libraries,
nothing above it)."""
import ast
import subprocess
import sys
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


def test_the_domain_layer_imports_only_the_standard_library_and_itself():
    stdlib = getattr(sys, "stdlib_module_names", None) or {   # Python 3.9 has no list
        "__future__", "math", "dataclasses", "typing", "enum", "ipaddress", "collections"}
    for path in (TRACER / "domain").glob("*.py"):
        for m in _runtime_imports(path):
            assert m.split(".")[0] in stdlib or m.startswith("tracer.domain"), \
                f"{path.name} imports {m}"
