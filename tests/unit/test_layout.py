"""The packages import downward only (STYLE.md, the README's layout): every import statement in
each package, at module level or inside a function, checked by walking its syntax tree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "accesslog", "prefetch", "ml", "proxy")
# What each package may import of Predis's own (itself always). Read bottom-up: common is the
# floor; the access-log layer is data, read by the simulator, training and the proxy; prefetch
# (tier, policies, predictors, simulator) never imports the model, which plugs into its predictor
# registry from above (an entry point); nothing below the proxy imports it.
ALLOWED = {
    "common": set(),
    "accesslog": {"common"},
    "prefetch": {"common", "accesslog"},
    "ml": {"common", "accesslog", "prefetch"},
    "proxy": {"common", "accesslog", "prefetch", "ml"},
}


def imported_packages(path: Path) -> dict[str, int]:
    """Predis's own top-level packages that ``path`` imports, with a line of each."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES or top == "bench" or top == "tests":
                found.setdefault(top, node.lineno)
    return found


def violations(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for top, line in imported_packages(path).items():
            if top != package and top not in ALLOWED[package]:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_downward_only(package: str) -> None:
    assert violations(package) == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("import json\n\ndef f():\n    from proxy.server import ProxyServer\n    import ml.vocab\n")
    assert imported_packages(bad) == {"proxy": 4, "ml": 5}


def module_graph(package: str) -> dict[str, set[str]]:
    """Each module of ``package`` (dotted) and the modules of Predis it imports, type-checking
    imports included: a reader follows those too."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)  # (submodules)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among the graph's modules (each found once, from where the walk met it)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the walk's path, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if dep == module or dep not in graph:
                continue
            if state.get(dep) == 1:
                found.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[module] = 2

    for module in graph:
        if module not in state:
            walk(module, [module])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_both_imports_and_is_imported_by_another(package: str) -> None:
    """The modules of each package form no import cycle, type-checking imports included (the
    proxy's connection and server each used to import the other)."""
    graph = module_graph(package)
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"p.a": {"p.b"}, "p.b": {"p.c", "json"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert cycles(graph) == [["p.a", "p.b", "p.c", "p.a"]]
