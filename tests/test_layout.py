"""The package's import rules, read off the source: the data flows one way.

The app reads the store and runs the model; it never imports the accumulators. The
indexer never imports the app. Each indexer subpackage imports only those before it in
the data flow (corpus -> model -> kinds -> accumulate -> store), or the shared errors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What each part of the tree may import from actscope (prefixes of module names).
ALLOWED = {
    "indexer/corpus": ["actscope.indexer.errors", "actscope.indexer.corpus"],
    "indexer/model": [
        "actscope.indexer.errors",
        "actscope.indexer.model",
        "actscope.indexer.kinds",
        "actscope.indexer.bundled",
    ],
    "indexer/kinds": ["actscope.indexer.errors", "actscope.indexer.kinds", "actscope.indexer.model"],
    "indexer/accumulate": [
        "actscope.indexer.errors",
        "actscope.indexer.accumulate",
        "actscope.indexer.kinds",
        "actscope.indexer.store.writer",
    ],
    "indexer/store": ["actscope.indexer.errors", "actscope.indexer.store"],
    "app": [
        "actscope.app",
        "actscope.indexer.errors",
        "actscope.indexer.store",
        "actscope.indexer.model",
        "actscope.indexer.kinds",
        "actscope",
        "actscope.indexer",
    ],
}


def _imports(path: Path) -> list[str]:
    """Every actscope module a file imports (`from actscope.x import y` counts as
    actscope.x.y, so importing a subpackage by name is caught too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return [name for name in names if name.split(".")[0] == "actscope"]


def _allowed(name: str, prefixes: list[str]) -> bool:
    return any(
        name == p or name.startswith(p + ".") or (p == "actscope" and name == "actscope.__version__") for p in prefixes
    )


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_what_comes_before_it(part):
    wrong = []
    for path in sorted((REPO / part).rglob("*.py")):
        for name in _imports(path):
            if not _allowed(name, ALLOWED[part]):
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert wrong == []


def test_the_app_never_imports_the_accumulators_and_the_indexer_never_the_app():
    app = [name for path in (REPO / "app").rglob("*.py") for name in _imports(path)]
    indexer = [name for path in (REPO / "indexer").rglob("*.py") for name in _imports(path)]
    assert app and indexer
    assert not [name for name in app if name.startswith("actscope.indexer.accumulate")]
    assert not [name for name in indexer if name.startswith("actscope.app")]
