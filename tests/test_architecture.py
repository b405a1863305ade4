"""Imports point down: a walk over every import of the package (lazy ones inside functions too).

The layers are read from docs/architecture.md ("Layers" table), so the picture there and the
rule enforced here are the same thing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "matra_hpc"
DOC = ROOT / "docs" / "architecture.md"

# The layer of each top-level name under matra_hpc, lowest first; the doc must say the same.
LAYERS = {
    "base": ["util", "errors", "shards", "context"],
    "library": ["tokens", "model", "sample", "launch"],
    "stage": ["data", "train", "generate", "screen", "dft", "evaluate"],
    "cli": ["cli", "__main__"],
}
RANK = {name: rank for rank, names in enumerate(LAYERS.values()) for name in names}
LIBRARY_ORDER = LAYERS["library"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(target module, imported name or None, line) for every import of matra_hpc in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.startswith("matra_hpc")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("matra_hpc"):
                continue
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                # `from pkg import submodule` imports the submodule, `from mod import name` the module
                found.append((submodule, None, node.lineno) if submodule in MODULES
                             else (module, alias.name, node.lineno))
    return found


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _edges() -> list[tuple[str, str, str | None, int]]:
    return [(name, target, imported, line)
            for name, path in MODULES.items()
            for target, imported, line in _imports(name, path)]


def _is_private(target: str, imported: str | None) -> bool:
    names = target.split(".")[2:] + ([imported] if imported else [])
    return any(part.startswith("_") and not part.startswith("__") for part in names)


def test_every_package_has_a_layer() -> None:
    tops = {_top(m) for m in MODULES} - {"__init__"}
    assert not tops - set(RANK), f"give these a layer in docs/architecture.md and here: {sorted(tops - set(RANK))}"


def _layer(top: str) -> str:
    return next(layer for layer, names in LAYERS.items() if top in names)


def _problems(edges: list[tuple[str, str, str | None, int]]) -> list[str]:
    problems = []
    for source, target, imported, line in edges:
        src, dst = _top(source), _top(target)
        where = f"{source}:{line} imports {target}{'.' + imported if imported else ''}"
        if src == dst or dst == "__init__":
            continue
        if src == "__init__":
            problems.append(f"{where}: the package root imports nothing of its subpackages")
        elif RANK[dst] > RANK[src]:
            problems.append(f"{where}: {src} ({_layer(src)}) may not import {dst} ({_layer(dst)})")
        elif _layer(src) == _layer(dst) == "library" and LIBRARY_ORDER.index(dst) > LIBRARY_ORDER.index(src):
            problems.append(f"{where}: library {src} may import only the libraries before it")
        elif _layer(src) == "stage" and dst == "launch":
            problems.append(f"{where}: stages get a RunContext; only cli uses the launch layer")
        elif _layer(src) == _layer(dst) == "stage" and _is_private(target, imported):
            problems.append(f"{where}: a stage uses only another stage's public names")
    return problems


def _circles(edges: list[tuple[str, str, str | None, int]]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for source, target, _imported, _line in edges:
        graph.setdefault(source, set())
        if target != source:
            graph[source].add(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return circles


def test_imports_point_down() -> None:
    problems = _problems(_edges())
    assert not problems, "\n".join(problems)


def test_no_import_circles() -> None:
    circles = _circles(_edges())
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_layer_list_matches_the_architecture_doc() -> None:
    text = DOC.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] in LAYERS:
            documented[cells[0]] = re.findall(r"`([\w.]+)`", cells[1])
    assert documented == LAYERS


def test_the_checks_can_fail() -> None:
    """Made-up imports of each forbidden kind are caught (lazy ones inside functions too)."""
    up = _problems([("matra_hpc.tokens.encode", "matra_hpc.cli", "main", 1)])
    sideways = _problems([("matra_hpc.model.transformer", "matra_hpc.sample.sampler", None, 1)])
    stage_launch = _problems([("matra_hpc.screen.stage", "matra_hpc.launch.submit", "submit_stage", 1)])
    private = _problems([("matra_hpc.generate.stage", "matra_hpc.data.readers", "_Rejected", 1)])
    private_module = _problems([("matra_hpc.generate.stage", "matra_hpc.data._internal", None, 1)])
    public = _problems([("matra_hpc.generate.stage", "matra_hpc.data.store", "open_token_store", 1)])
    assert [len(up), len(sideways), len(stage_launch), len(private), len(private_module), len(public)] == [
        1, 1, 1, 1, 1, 0]
    assert _circles([("a", "b", None, 1), ("b", "c", None, 1), ("c", "a", None, 1)]) == [["a", "b", "c", "a"]]
    assert _circles([("a", "b", None, 1), ("b", "c", None, 1)]) == []


def test_lazy_imports_are_walked(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from matra_hpc.cli import main\n    from .. import errors\n")
    found = _imports("matra_hpc.tokens.probe", probe)
    assert ("matra_hpc.cli", "main", 2) in found
    assert ("matra_hpc.errors", None, 3) in found


def test_every_stage_package_has_a_stage_module_with_run_functions() -> None:
    """``stage.py`` holds the entry ``run_<stage>(config, ctx)`` of every stage package."""
    missing = []
    for name in LAYERS["stage"]:
        package = PACKAGE / name
        if not package.is_dir():
            continue  # listed ahead of being built
        stage = package / "stage.py"
        tree = ast.parse(stage.read_text()) if stage.is_file() else ast.Module(body=[], type_ignores=[])
        entries = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("run_")
                   and [a.arg for a in f.args.args] == ["config", "ctx"]]
        if not entries:
            missing.append(name)
    assert not missing, f"stage packages without stage.py:run_<stage>(config, ctx): {missing}"
