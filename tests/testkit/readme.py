"""Reading the README's marked blocks and checking them against the CLI and the package.

A block lies between ``<!-- NAME -->`` and ``<!-- /NAME -->`` (each exactly once) and holds one
fenced code block. The README tests read their commands and Python from there, check that every
option is one the command has and every import exists, and (``-m slow``) run them as written.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import typer

from modelshield.cli.app import app

REPO = Path(__file__).resolve().parents[2]


def block(name: str, fence: str = "bash") -> str:
    """The body of the ```fence code block between the NAME markers of README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    assert text.count(begin) == 1 and text.count(end) == 1, f"README.md lost its {name} markers"
    body = text.split(begin, 1)[1].split(end, 1)[0]
    return body.split(f"```{fence}", 1)[1].rsplit("```", 1)[0]


def commands(name: str) -> list[str]:
    """The shell block's commands, one per line: blank lines and comments dropped."""
    return [line.strip() for line in block(name).splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def command_options(*path: str) -> set[str]:
    """Every option string (``--out``, ...) of ``modelshield PATH...`` (e.g. "attack", "physical")."""
    cmd: Any = typer.main.get_command(app)
    for name in path:
        cmd = cmd.get_command(cmd.context_class(cmd), name)  # a lazily loaded group's own lookup
        assert cmd is not None, f"modelshield has no command {' '.join(path)}"
    return {opt for p in cmd.params for opt in p.opts}


def imported_modules(source: str) -> set[str]:
    """The modules the Python source imports from, each checked to exist with every name imported."""
    imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    for node in imports:
        assert node.module is not None
        mod = importlib.import_module(node.module)
        for alias in node.names:
            found = hasattr(mod, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}")
            assert found, f"{node.module} has no {alias.name}"
    return {n.module for n in imports if n.module is not None}
