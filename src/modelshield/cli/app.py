"""The ``modelshield`` command: a thin typer app over the library (see each sub-command module)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from modelshield import __version__
from modelshield.cli import _render as render
from modelshield.errors import ModelShieldError

__all__ = ["app", "main"]

EXIT_SIGPIPE = 141
"""Exit status when stdout's reader went away (128 + SIGPIPE), as shells report for ``cat``."""


_COMMANDS: dict[str, tuple[str, str]] = {
    "attack": ("modelshield.cli.attack", "attack_app"),
    "audit": ("modelshield.cli.audit", "audit_app"),
    "zoo": ("modelshield.cli.zoo", "zoo_app"),
    "defend": ("modelshield.cli.defend", "defend_app"),
    "backdoor": ("modelshield.cli.backdoor", "backdoor_app"),
    "assess": ("modelshield.cli.assess", "assess"),
    "certify": ("modelshield.cli.defend", "certify"),
    "demo": ("modelshield.cli.assess", "demo"),
    "extract": ("modelshield.cli.extract", "extract"),
    "explain": ("modelshield.cli.explain", "explain"),
    "sweep": ("modelshield.cli.sweep", "sweep"),
    "poison": ("modelshield.cli.data", "poison"),
    "validate-data": ("modelshield.cli.data", "validate_data"),
    "scan": ("modelshield.cli.scan", "scan"),
    "manifest": ("modelshield.cli.secure", "manifest_app"),
    "keygen": ("modelshield.cli.secure", "keygen"),
    "sign": ("modelshield.cli.secure", "sign"),
    "verify": ("modelshield.cli.secure", "verify"),
    "serve": ("modelshield.cli.serve", "serve_app"),
}
"""Every command: ``name -> (module, attribute)``, a typer function or a typer sub-app. A command's
module is imported only when that command runs (or ``--help`` lists them all), so ``modelshield
scan`` starts without importing torch or the attacks."""


def _load_command(name: str) -> Any:
    """The click command for ``name``, built from its module (imported now)."""
    module_name, attribute = _COMMANDS[name]
    obj = getattr(importlib.import_module(module_name), attribute)
    if isinstance(obj, typer.Typer):
        group = typer.main.get_group(obj)
        group.name = name
        return group
    single = typer.Typer(add_completion=False)
    single.command(name)(obj)
    return typer.main.get_command(single)


class _ShieldGroup(TyperGroup):
    """Root group: every failure of a command becomes one red line and a documented exit code.

    A ModelShieldError (bad input) exits 2, Ctrl-C exits 130, and any other exception is a bug:
    exit 3, its traceback written to a file the line names. click's usage errors (bad option values,
    unknown options) become one line and exit 2 as well. ``--debug`` re-raises instead, so the
    traceback (or typer's usage panel) shows.
    """

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in _COMMANDS if n not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _COMMANDS:
            command = _load_command(cmd_name)
            self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, BrokenPipeError):
            raise
        except ModelShieldError as exc:
            if _debug(ctx):
                raise
            render.fail(exc, code=render.EXIT_USAGE)
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            render.fail("interrupted", code=render.EXIT_INTERRUPTED)
        except Exception as exc:  # the last resort: any other exception is a modelshield bug
            if _debug(ctx):
                raise
            names = {cls.__name__ for cls in type(exc).__mro__}
            if "NoArgsIsHelpError" in names:
                raise  # a group called without a command: click prints its help and exits 2
            if "ClickException" in names:  # e.g. --n abc, an unknown option: one line too, exit 2
                render.fail(_usage_line(exc), code=render.EXIT_USAGE)
            if isinstance(exc.__cause__, KeyboardInterrupt):  # Ctrl-C in a C extension's import
                render.fail("interrupted", code=render.EXIT_INTERRUPTED)  # ('initialization failed')
            render.crash(exc)


def _debug(ctx: Any) -> bool:
    return isinstance(ctx.obj, dict) and bool(ctx.obj.get("debug"))


def _usage_line(exc: Exception) -> str:
    """click's message for a usage error, with the command's --help as the fix. (click's exceptions
    are matched by class name: typer >= 0.20 vendors click, older typer uses the click package.)"""
    format_message = getattr(exc, "format_message", None)
    message = str(format_message() if callable(format_message) else exc).rstrip(".")
    path = getattr(getattr(exc, "ctx", None), "command_path", None)
    return f"{message}. See '{path} --help'." if path else f"{message}."


app = typer.Typer(
    name="modelshield",
    cls=_ShieldGroup,  # the help text is root's docstring (it documents the exit codes)
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
def _version(value: bool) -> None:
    if value:
        render.say(f"modelshield {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Torch CPU threads (default: "
                                       "torch's choice; 1 is often fastest for small models)."),
) -> None:
    """Attack, audit and harden machine-learning models against adversarial AI.

    Errors print one red line with the fix. Exit codes:

    0 done
    1 a --fail-under threshold missed ('assess'; the report is still written)
    2 bad usage or input (checked before the work starts)
    3 internal error, a modelshield bug: the error names the file holding the traceback (--debug prints it)
    130 interrupted (Ctrl-C)
    """
    ctx.obj = {"debug": debug}
    if threads is not None:  # torch is imported only by the commands that run a model
        from modelshield.zoo.training import torch_threads

        ctx.with_resource(torch_threads(threads))  # restored when the command ends


def main() -> None:
    """Console-script entry point.

    A reader that closes the pipe early (``modelshield scan dir --json | head``) ends the command
    quietly, as ``cat`` does, with the shell's code for SIGPIPE (141), instead of a crash report.
    """
    try:
        app()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout at exit: let that go nowhere
        sys.exit(EXIT_SIGPIPE)
