"""Entry point of the `sbnet` command: one typer app, each command in its own module."""

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="sbnet: accelerated server-based networking.")


def _register() -> None:
    # Each command module adds its commands to `app`; importing them here keeps
    # one place that knows the command set while heavy imports stay inside commands.
    from sbnet.cli import commands  # noqa: F401


_register()
