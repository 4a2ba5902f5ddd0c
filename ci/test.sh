#!/usr/bin/env bash
# Install laufband with its test and MPI extras into .venv and run the whole test suite.
# This is the README's test command; .ci/run calls it on a clean checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv && .venv/bin/pip install -q -e ".[test,mpi]" && .venv/bin/python -m pytest "$@"
