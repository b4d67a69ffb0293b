"""Imports run one way: launch -> api, dispatch, workers -> usecases -> db -> core.

``scheduler.wire`` and ``scheduler.core`` are leaves that render nodes import, so a node
never loads the database; the API never imports a render node. Checked on the source
(every import statement, those inside functions too) and by importing a node's entry
module in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = {"scheduler", "scheduler.core", "scheduler.settings", "scheduler.errors"}
# What each layer may import of the project, besides itself and SHARED.
ALLOWED: dict[str, set[str]] = {
    "scheduler.core": set(),
    "scheduler.wire": set(),
    "scheduler.db": set(),
    "workers": {"scheduler.wire"},
    "scheduler.usecases": {"scheduler.db", "scheduler.wire"},
    "scheduler.dispatch": {"scheduler.db", "scheduler.wire", "scheduler.usecases"},
    "api": {"scheduler.db", "scheduler.usecases"},
    "scheduler.launch": {
        "api", "workers", "scheduler.db", "scheduler.wire", "scheduler.usecases",
        "scheduler.dispatch",
    },
}  # fmt: skip
PROJECT = ("scheduler", "workers", "api")


def _layer_of(module: str) -> str | None:
    """The longest layer name that ``module`` is, or is inside of."""
    layers = [*ALLOWED, *SHARED]
    found = [name for name in layers if module == name or module.startswith(name + ".")]
    return max(found, key=len) if found else None


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PROJECT}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for top in PROJECT:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found.append((module.removesuffix(".__init__"), path))
    return found


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_imports_follow_the_layers(module: str, path: Path) -> None:
    layer = _layer_of(module)
    if layer is None or layer in SHARED:
        return  # the shared leaves are checked by their own rule below
    wrong = []
    for name in _imports(path):
        target = _layer_of(name)
        if target in (None, layer) or target in SHARED or target in ALLOWED[layer]:
            continue
        wrong.append(name)
    assert not wrong, f"{module} ({layer}) may not import {wrong}"


def test_shared_leaves_import_only_the_core() -> None:
    for module, path in _modules():
        if _layer_of(module) in ("scheduler.settings", "scheduler.errors"):
            assert {n for n in _imports(path) if _layer_of(n) != "scheduler.core"} == set()


@pytest.mark.parametrize("entry", ["workers.node", "workers.runner", "scheduler.wire.celery_app"])
def test_a_render_node_loads_no_database_or_web_package(entry: str) -> None:
    script = f"import json, sys, {entry}\nprint(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", script], text=True))
    forbidden = ("sqlalchemy", "sqlmodel", "alembic", "psycopg", "fastapi", "starlette", "api")
    leaked = [m for m in loaded if m.split(".")[0] in forbidden or m.startswith("scheduler.db")]
    assert entry in loaded
    assert not leaked
