#!/usr/bin/env bash
# Install laufband with its test and MPI extras into .venv, lint and type-check it, and
# run the whole test suite. This is the README's test command (plus a byte-compile, and
# ruff and mypy, which the test extra installs); .ci/run calls it on a clean checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv && .venv/bin/pip install -q -e ".[test,mpi]"
# Where PYTHONDONTWRITEBYTECODE=1 is set (these machines), nothing caches laufband's own
# bytecode: each of the suite's many processes would compile it anew (~0.1 s each).
.venv/bin/python -m compileall -q laufband tests
# Either finding fails CI before the tests run (rules and settings: pyproject.toml).
.venv/bin/ruff check laufband tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
