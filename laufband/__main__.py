"""``python -m laufband``: the command line."""

from laufband.cli import app

app(prog_name="laufband")
