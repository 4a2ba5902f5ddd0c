"""Under mpiexec every rank is a worker, with no code change."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.procs import HELPERS, completions, task_states

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(180)]


def mpiexec() -> str:
    """The mpiexec beside this Python (the mpich wheel), else on PATH; in CI, required."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("mpiexec is missing in CI: install the 'mpi' extra (mpich wheel)")
        pytest.skip("mpiexec not found: pip install 'laufband[mpi]'")
    return found


def test_plain_loop_under_mpiexec_four_ranks(state: Path) -> None:
    logs = state.parent / "logs"
    result = subprocess.run(
        [mpiexec(), "-n", "4", sys.executable, str(HELPERS / "worker.py"), str(state),
         str(logs), "--items", "200", "--sleep", "0.01"],
        capture_output=True, text=True, timeout=150,
    )
    assert result.returncode == 0, result.stderr
    assert completions(logs) == Counter({str(i): 1 for i in range(200)})
    ranks_that_worked = [log for log in logs.glob("*.done") if log.read_text()]
    assert len(ranks_that_worked) == 4
    assert set(task_states(state, "work").values()) == {"completed"}
