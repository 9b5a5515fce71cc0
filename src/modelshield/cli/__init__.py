"""The ``modelshield`` command line (typer + rich); the commands are thin glue over the library."""

from __future__ import annotations

from modelshield.cli.app import app, main

__all__ = ["app", "main"]
