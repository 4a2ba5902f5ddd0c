#!/usr/bin/env bash
# Install laufband with ASE into .venv and run examples/ase_s22.py as 4 background workers.
# This is the README's first command.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv && .venv/bin/pip install -q -e ".[examples]" && cd examples && rm -f frames.xyz && for i in 1 2 3 4; do ../.venv/bin/python ase_s22.py & done; wait
