"""The ``laufband`` command."""

from __future__ import annotations

import typer

import laufband

app = typer.Typer(
    help="Embarrassingly parallel, embarrassingly simple: inspect laufband state directories.",
    no_args_is_help=True,
    add_completion=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"laufband {laufband.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Embarrassingly parallel, embarrassingly simple."""
