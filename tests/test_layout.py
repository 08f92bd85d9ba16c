"""The package layout: no import cycles, a self-contained remote-code kernel, one owner per concern."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vitpose_hf"
# the files transformers copies beside a checkpoint for trust_remote_code: flat siblings at the package root
KERNEL = {
    "configuration_vitpose_hf",
    "modeling_vitpose_hf",
    "conversion",
    "keypoint_metadata",
    "image_processing_vitpose_hf",
    "pipeline_vitpose_hf",
    "images",
    "boxes",
    "codecs",
    "geometry",
    "devices",
    "modeling_vitpose_hf_bottom_up",
    "image_processing_vitpose_hf_bottom_up",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Package modules that `path` imports anywhere in its body (lazy imports inside functions count too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {  # `if TYPE_CHECKING:` blocks hold annotations only
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, modules) for f in files}


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ re-exports its modules; edges into an __init__ from its own modules are the cycle we forbid
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):  # a package importing its own sub-modules is not a cycle
                continue
            if state.get(nxt) == 1 and not node.startswith(nxt + "."):
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    root = tmp_path / "vitpose_hf"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("def f():\n    from .b import g\n")
    (root / "b.py").write_text("from . import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", root)
    try:
        test_no_import_cycles()
    except AssertionError as error:
        assert "vitpose_hf.a" in str(error) and "vitpose_hf.b" in str(error)
    else:
        raise AssertionError("the cycle a -> b -> a was not found")


def test_remote_code_kernel_imports_only_itself():
    graph = import_graph()
    for name in KERNEL:
        module = f"vitpose_hf.{name}"
        assert module in graph, f"{name}.py must stay at the package root"
        outside = {m for m in graph[module] if m.removeprefix("vitpose_hf.") not in KERNEL}
        assert not outside, f"{name}.py imports {sorted(outside)}, which do not travel with checkpoints"


def test_everything_else_lives_in_sub_packages():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__", "testing"}  # testing: test fixtures
    assert top <= KERNEL, f"modules outside the kernel at the package root: {sorted(top - KERNEL)}"


def test_one_position_embedding_resampler():
    """Only `resample_position_table` resizes a position table; everything else calls it."""
    resamplers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                calls = {
                    n.func.attr for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                }
                if "interpolate" in calls and ("pos" in node.name or "position" in node.name):
                    resamplers.append(f"{path.name}:{node.name}")
    assert resamplers == ["conversion.py:resample_position_table"], resamplers
