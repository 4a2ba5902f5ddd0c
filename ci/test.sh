#!/usr/bin/env bash
# Install laufband with its test and MPI extras into .venv, lint and type-check it, and
# run the whole test suite. This is the README's test command (plus ruff and mypy, which
# the test extra installs); .ci/run calls it on a clean checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv && .venv/bin/pip install -q -e ".[test,mpi]"
# Either finding fails CI before the tests run (rules and settings: pyproject.toml).
.venv/bin/ruff check laufband tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
