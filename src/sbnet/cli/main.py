"""Entry point of the `sbnet` command: one typer app, each command in its own module."""

import typer

class BadInput(Exception):
    """A file or argument the command cannot use: one line, exit code 2."""


class _App(typer.Typer):
    """The typer app, except that a bad file or argument ends the command with one line
    naming it and the reason, and exit code 2, never a traceback."""

    def __call__(self, *args, **kwargs):
        import sys
        try:
            return super().__call__(*args, **kwargs)
        except (BadInput, OSError, UnicodeError, EOFError, RecursionError) as exc:
            name = getattr(exc, "filename", None)
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            line = f"{name}: {reason}" if name else reason.splitlines()[0]
            print(f"sbnet: error: {line}", file=sys.stderr)
            sys.exit(2)


app = _App(no_args_is_help=True, add_completion=False,
           help="sbnet: accelerated server-based networking.")


def _register() -> None:
    # Each command module adds its commands to `app`; importing them here keeps
    # one place that knows the command set while heavy imports stay inside commands.
    from sbnet.cli import commands  # noqa: F401


_register()
