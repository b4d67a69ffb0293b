"""The core is pure: importing it loads no database, broker, web or settings package,
and its source imports no clock."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import scheduler.core

CORE = Path(scheduler.core.__file__).parent
FORBIDDEN = (
    "sqlalchemy",
    "sqlmodel",
    "celery",
    "kombu",
    "redis",
    "fastapi",
    "starlette",
    "pydantic",
    "pydantic_settings",
    "httpx",
    "psutil",
    "numpy",
    "scheduler.settings",
    "scheduler.db",
)


def test_importing_the_core_loads_nothing_impure() -> None:
    modules = sorted(f"scheduler.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", script], text=True))
    leaked = [m for m in loaded if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN]
    assert modules and not leaked


def test_the_core_never_imports_a_clock() -> None:
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not {"time", "datetime"} & {n.split(".")[0] for n in names}, path.name
