"""The house rule on imports, measured: no circles between the project's modules, and no arrow back up the layers
(cli -> eval -> train -> models -> pipeline -> configs; `re2pix` above them all; models import only configs and
pipeline.pca). Every import counts, also those inside functions or under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = {"configs": 0, "pipeline": 1, "models": 2, "train": 3, "eval": 4, "cli": 5, "re2pix": 6}


def modules() -> dict[str, Path]:
    found = {"cli": ROOT / "cli.py"}
    for top in RANK:
        for path in (ROOT / top).rglob("*.py") if (ROOT / top).is_dir() else []:
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def owner(name: str) -> str | None:  # the project module an import name lands in
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                targets += [base, *(f"{base}.{a.name}" for a in node.names)]
        # a module's own package __init__ is not an arrow (Python imports it on the way in)
        graph[name] = {t for t in map(owner, targets) if t and t != name and not name.startswith(t + ".")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def arrows_back_up(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in graph.items():
        for b in targets:
            ta, tb = a.split(".")[0], b.split(".")[0]
            if RANK[tb] > RANK[ta] or (ta == "models" and tb == "pipeline" and b != "pipeline.pca"):
                bad.append(f"{a} -> {b}")
    return sorted(bad)


def test_the_import_graph_has_no_circles_and_no_arrow_back_up():
    graph = import_graph()
    assert len(graph) > 90 and sum(map(len, graph.values())) > 400  # the whole project was read
    assert circles(graph) == []
    assert arrows_back_up(graph) == []


def test_the_checks_see_a_circle_and_an_arrow_up():
    graph = {"pipeline.a": {"pipeline.b"}, "pipeline.b": {"pipeline.a", "configs.x"}, "configs.x": set(),
             "models.m": {"pipeline.vfm", "pipeline.pca"}, "pipeline.vfm": set(), "pipeline.pca": {"train.t"},
             "train.t": set()}
    assert circles(graph) == [["pipeline.a", "pipeline.b"]]
    assert arrows_back_up(graph) == ["models.m -> pipeline.vfm", "pipeline.pca -> train.t"]
