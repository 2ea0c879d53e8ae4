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
