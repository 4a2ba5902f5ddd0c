"""Under mpiexec every rank is a worker, with no code change."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from laufband.batching import MIN_FLUSH
from tests.helpers.procs import HELPERS, Processes, completions, task_states

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(180)]
PROGRAMS = HELPERS / "mpi_programs.py"
MPI_DEADLINE = 150.0  # seconds one mpiexec run may take


def mpiexec() -> str:
    """The mpiexec beside this Python (the mpich wheel), else on PATH; in CI, required."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("mpiexec is missing in CI: install the 'mpi' extra (mpich wheel)")
        pytest.skip("mpiexec not found: pip install 'laufband[mpi]'")
    return found


def run(procs: Processes, *args: str, ranks: int = 4,
        flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS...`` under ``mpiexec -n RANKS``, to its end."""
    return procs.run([mpiexec(), *flags, "-n", str(ranks), sys.executable, *args],
                     timeout=MPI_DEADLINE)


def rank_outputs(result: subprocess.CompletedProcess, logs: Path) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(path.read_text()) for path in sorted(logs.glob("rank*.json"))]


def test_plain_loop_under_mpiexec_four_ranks(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    result = run(procs, str(HELPERS / "worker.py"), str(state), str(logs), "--items", "200",
                 "--sleep", "0.01")
    assert result.returncode == 0, result.stderr
    assert completions(logs) == Counter({str(i): 1 for i in range(200)})
    ranks_that_worked = [log for log in logs.glob("*.done") if log.read_text()]
    assert len(ranks_that_worked) == 4
    assert set(task_states(state, "work").values()) == {"completed"}


def test_pmap_every_rank_gets_the_full_list(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    outputs = rank_outputs(run(procs, str(PROGRAMS), "pmap", str(state), str(logs)), logs)
    assert sorted(o["rank"] for o in outputs) == ["0", "1", "2", "3"]
    assert all(o["results"] == [x * x for x in range(80)] for o in outputs)
    assert completions(logs) == Counter({str(i): 1 for i in range(80)})
    assert len(list(logs.glob("*.done"))) == 4  # no pool: the four ranks did the work


def test_joblib_backend_every_rank_gets_every_result(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    outputs = rank_outputs(run(procs, str(PROGRAMS), "joblib", str(state), str(logs)), logs)
    assert len(outputs) == 4
    assert all(o["results"] == [x * x for x in range(80)] for o in outputs)
    assert completions(logs) == Counter({str(i): 1 for i in range(80)})


def test_graphband_dependencies_across_ranks(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    result = run(procs, str(PROGRAMS), "graph", str(state), str(logs))
    assert result.returncode == 0, result.stderr
    lines = [line.split() for log in logs.glob("*.log") for line in log.read_text().splitlines()]
    start = {task: float(t) for kind, task, t in lines if kind == "start"}
    end = {task: float(t) for kind, task, t in lines if kind == "end"}
    assert len(start) == 12
    assert len([1 for kind, *_ in lines if kind == "start"]) == 12
    for layer in (1, 2):
        for i in range(4):
            assert all(end[f"{layer - 1}-{j}"] <= start[f"{layer}-{i}"] for j in range(4))


def test_a_crashing_rank_does_not_stop_the_others(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    result = run(procs, str(PROGRAMS), "crash-exit", str(state), str(logs))
    assert result.returncode != 0  # rank 1 died mid-task without any cleanup
    crashed_on = (logs / "crashed-on").read_text()
    done = completions(logs)
    assert set(done) == {str(i) for i in range(120)}  # the other ranks took over
    assert done[crashed_on] == 1
    # At most rank 1's unflushed tail (up to 1.5 x MIN_FLUSH of 20 ms tasks) and its
    # task in flight ran twice.
    assert sum(done.values()) - 120 <= int(1.5 * MIN_FLUSH / 0.02) + 1
    assert set(task_states(state, "crash").values()) == {"completed"}


def test_hydra_teardown_leaves_state_a_rerun_can_finish(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    # A rank killed by a signal makes Hydra SIGKILL every other rank.
    result = run(procs, str(PROGRAMS), "crash-kill", str(state), str(logs))
    assert result.returncode != 0
    before = completions(logs)
    assert len(before) < 120
    states = task_states(state, "crash")
    assert set(states.values()) <= {"completed", "running", "pending"}
    rerun = run(procs, str(HELPERS / "worker.py"), str(state), str(logs), "--items", "120",
                "--name", "crash", ranks=2)
    assert rerun.returncode == 0, rerun.stderr
    assert set(task_states(state, "crash").values()) == {"completed"}
    done = completions(logs)
    assert set(done) == {str(i) for i in range(120)}
    # Hydra killed all 4 ranks: each ran twice at most its unflushed tail (up to 1.5 x
    # MIN_FLUSH of 20 ms tasks) and its task in flight.
    assert sum(done.values()) - 120 <= 4 * (int(1.5 * MIN_FLUSH / 0.02) + 1)
