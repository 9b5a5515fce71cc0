"""The ``modelshield`` command: a thin typer app over the library (see each sub-command module)."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from modelshield import __version__
from modelshield.cli import _render as render
from modelshield.cli._target import torch_threads
from modelshield.cli.assess import assess, demo
from modelshield.cli.attack import attack_app
from modelshield.cli.audit import audit_app
from modelshield.cli.backdoor import backdoor_app
from modelshield.cli.data import poison, validate_data
from modelshield.cli.defend import certify, defend_app
from modelshield.cli.extract import extract
from modelshield.cli.scan import scan
from modelshield.cli.secure import manifest_app, sign, verify
from modelshield.cli.zoo import zoo_app
from modelshield.errors import ModelShieldError

__all__ = ["app", "main"]


class _ShieldGroup(TyperGroup):
    """Root group: every failure of a command becomes one red line and a documented exit code.

    A ModelShieldError (bad input) exits 2, Ctrl-C exits 130, and any other exception is a bug:
    exit 3, its traceback written to a file the line names. click's usage errors (bad option values,
    unknown options) become one line and exit 2 as well. ``--debug`` re-raises instead, so the
    traceback (or typer's usage panel) shows.
    """

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
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
app.add_typer(attack_app, name="attack")
app.add_typer(audit_app, name="audit")
app.add_typer(zoo_app, name="zoo")
app.add_typer(defend_app, name="defend")
app.add_typer(backdoor_app, name="backdoor")
app.command("assess")(assess)
app.command("certify")(certify)
app.command("demo")(demo)
app.command("extract")(extract)
app.command("poison")(poison)
app.command("validate-data")(validate_data)
app.command("scan")(scan)
app.add_typer(manifest_app, name="manifest")
app.command("sign")(sign)
app.command("verify")(verify)


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
    ctx.with_resource(torch_threads(threads))  # restored when the command ends


def main() -> None:
    """Console-script entry point."""
    app()
