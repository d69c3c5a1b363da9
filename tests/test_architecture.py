"""The package layers of docs/ARCHITECTURE.md, as a test (read from the source with
``ast``, nothing imported): who may import whom, and no import cycles between modules
at import time."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("guidance", "trackers", "models", "calibration")

#: Layers, lowest first: a layer may import its own and lower layers only.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundations", ("guidance.geometry", "guidance.records", "guidance.data",
                     "guidance.io", "trackers", "calibration", "models")),
    ("domain", ("guidance.planning", "guidance.safety", "guidance.ctscan",
                "guidance.sim", "guidance.training", "guidance.figures",
                "guidance.pacs")),
    ("loop", ("guidance.navigation", "guidance.pipeline")),
    # The composition root and what composes whole jobs from it (benchmarks, demo and
    # simulator scenarios, the before/after-procedure workflows): the CLI only parses
    # arguments, calls one of these and prints.
    ("session", ("guidance.session", "guidance.bench", "guidance.scenarios",
                 "guidance.workflows")),
    ("front ends", ("guidance.gui", "guidance.cli", "guidance.__main__", "guidance")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


MODULES = _modules()


def _imports(path: Path, *, module_level: bool) -> set[str]:
    """Project modules imported (``module_level``: only statements run at import time,
    not those inside functions or ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _layer(module: str) -> int:
    best, depth = -1, -1
    for i, (_name, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > depth:
                best, depth = i, len(p)
    assert best >= 0, f"{module} is in no layer of tests/test_architecture.py"
    return best


def test_every_module_is_in_a_layer() -> None:
    for name in MODULES:
        _layer(name)


def test_no_module_imports_a_higher_layer() -> None:
    """Anywhere in a module (lazy imports inside functions included): the loop does not
    reach into the CLI or the GUI, the domain not into the loop, the foundations (I/O,
    trackers, models, calibration) into nothing above them."""
    bad = []
    for name, path in MODULES.items():
        mine = _layer(name)
        for imported in _imports(path, module_level=False):
            target = _resolve(imported)
            if target is not None and _layer(target) > mine:
                bad.append(f"{name} ({LAYERS[mine][0]}) imports {target} "
                           f"({LAYERS[_layer(target)][0]})")
    assert not bad, "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles_at_import_time() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for imported in _imports(path, module_level=True):
            target = _resolve(imported)
            if target is not None and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    cycles = _cycles(graph)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_would_catch_a_violation(tmp_path: Path) -> None:
    """The checks themselves: a lazy import of the CLI from the I/O layer is found, and
    a cycle is found."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from guidance.cli.main import main\n")
    found = {_resolve(m) for m in _imports(f, module_level=False)}
    assert "guidance.cli.main" in found
    assert _layer("guidance.cli.main") > _layer("guidance.io.igtl")
    assert _imports(f, module_level=True) == set()  # inside a function: not at import time
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


#: The issue "the house": no module over this many lines; the CLI package at most this.
MAX_MODULE_LINES = 600
MAX_CLI_LINES = 1500


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_module_over_600_lines() -> None:
    big = {name: _lines(p) for name, p in MODULES.items() if _lines(p) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_the_cli_only_parses_and_prints() -> None:
    """The CLI package stays small: what it builds belongs in the session layer (the
    composition root and the bench/scenarios/workflows packages built on it)."""
    total = sum(_lines(p) for name, p in MODULES.items() if name.startswith("guidance.cli"))
    assert total <= MAX_CLI_LINES, f"guidance/cli has {total} lines (at most {MAX_CLI_LINES})"
