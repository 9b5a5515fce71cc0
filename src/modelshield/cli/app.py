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
from modelshield.cli.backdoor import backdoor_app
from modelshield.cli.data import poison, validate_data
from modelshield.cli.defend import certify, defend_app
from modelshield.cli.extract import extract
from modelshield.cli.zoo import zoo_app
from modelshield.errors import ModelShieldError

__all__ = ["app", "main"]


class _ShieldGroup(TyperGroup):
    """Root group: a ModelShieldError from any command becomes one red line and exit code 2."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except ModelShieldError as exc:
            if isinstance(ctx.obj, dict) and ctx.obj.get("debug"):
                raise
            render.fail(exc)


app = typer.Typer(
    name="modelshield",
    cls=_ShieldGroup,
    help="Attack, audit and harden machine-learning models against adversarial AI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(attack_app, name="attack")
app.add_typer(zoo_app, name="zoo")
app.add_typer(defend_app, name="defend")
app.add_typer(backdoor_app, name="backdoor")
app.command("assess")(assess)
app.command("certify")(certify)
app.command("demo")(demo)
app.command("extract")(extract)
app.command("poison")(poison)
app.command("validate-data")(validate_data)


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

    Errors print one red line with the fix and exit with 2; 'assess' exits with 1 when a
    --fail-under threshold is missed.
    """
    ctx.obj = {"debug": debug}
    ctx.with_resource(torch_threads(threads))  # restored when the command ends


def main() -> None:
    """Console-script entry point."""
    app()
