"""Calling the CLI in-process and checking its one-line errors."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from modelshield.cli.app import app

runner = CliRunner()


def invoke(*args: Any, env: dict[str, str] | None = None) -> Any:
    """``modelshield --threads 1 ARGS...`` in-process (arguments str()-ed); the click Result."""
    return runner.invoke(app, ["--threads", "1", *(str(a) for a in args)], env=env)


def one_error_line(result: Any, code: int | None = 2) -> str:
    """The single non-blank stderr line of a failed command, checked to be the documented error:
    exit ``code`` (None: any), one line starting ``error:``, no traceback, not an internal error."""
    if code is not None:
        assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback (most recent call last)" not in result.output
    assert code == 3 or "internal error" not in lines[0], lines[0]
    line: str = lines[0]
    return line
