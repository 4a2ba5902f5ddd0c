"""Failures of pmap and joblib calls as `laufband failures` lists them: the item as the
user wrote it (a joblib call as ``f(3)``), the traceback from the user's code on."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from tests.helpers.procs import Processes

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-m", "laufband"]
SCRIPT = """
import sys
from joblib import Parallel, delayed, parallel_config
from laufband import pmap
import laufband.joblib_backend

def invert(x, scale=1):
    return scale / (x - 3)

pmap(invert, range(5), n=1, path=sys.argv[1], name="pmapped", on_error="skip")
try:
    with parallel_config(backend="laufband", path=sys.argv[1], name="joblibbed"):
        Parallel(n_jobs=1)(delayed(invert)(x, scale=2) for x in range(5))
except ZeroDivisionError:
    pass
"""


def failures(procs: Processes, state: Path, name: str) -> dict[str, Any]:
    listed = procs.run([*CLI, "failures", "--path", state, "-w", name, "--json"])
    assert listed.returncode == 0, listed.stderr
    [failure] = json.loads(listed.stdout)["failures"]
    found: dict[str, Any] = failure
    return found


def test_pmap_and_joblib_failures_name_the_item_and_start_in_user_code(
        procs: Processes, tmp_path: Path, state: Path) -> None:
    script = tmp_path / "calls.py"
    script.write_text(SCRIPT)
    ran = procs.python(script, state)
    assert ran.returncode == 0, ran.stderr
    pmapped, joblibbed = failures(procs, state, "pmapped"), failures(procs, state, "joblibbed")
    assert pmapped["item"] == "3"
    assert joblibbed["item"] == "invert(3, scale=2)"
    for failure in (pmapped, joblibbed):
        trace = failure["traceback"]
        assert trace.startswith("Traceback (most recent call last):\n  File"), trace
        assert "laufband" not in trace.splitlines()[1], trace
        assert ", in invert\n" in trace
        assert trace.rstrip().endswith("ZeroDivisionError: division by zero")
