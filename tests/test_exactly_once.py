"""A loop body that finished is never run again, even when its worker is SIGKILLed
before it wrote its finished work to the store (same host): only the task in flight
runs again."""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.procs import (
    HELPERS,
    Processes,
    completions,
    kill_at_random,
    task_states,
)


def rows_of(path: Path) -> Counter[int]:
    """How often each item appears in the shared output file."""
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(int(line.split()[0]) for line in lines)


@pytest.mark.timeout(180)
def test_fast_tasks_finished_before_a_sigkill_do_not_run_again(
        state: Path, procs: Processes) -> None:
    """2 ms tasks: a worker finishes ~100 between two flushes. Each SIGKILL may make
    only the task in flight run again (on main: every task since the last flush)."""
    logs = state.parent / "logs"
    rng = random.Random(5)
    args = (state, logs, "--items", 4000, "--sleep", 0.002, "--max-killed-retries", 100)
    workers = [procs.worker(*args) for _ in range(2)]
    kills = kill_at_random(workers, lambda: procs.worker(*args), 8,
                           lambda: rng.uniform(0.3, 0.6), rng)
    finished = procs.wait_all([w for w in workers if w.poll() is None])
    assert all(code == 0 for code, _, _ in finished), finished
    done = completions(logs)
    again = sum(done.values()) - len(done)
    assert kills >= 6
    assert len(done) == 4000
    assert set(task_states(state, "work").values()) == {"completed"}
    assert again <= kills, f"{again} finished bodies ran again after {kills} SIGKILLs"


@pytest.mark.timeout(180)
def test_rows_written_under_worker_lock_are_unique_after_sigkills(
        state: Path, procs: Processes) -> None:
    """The issue's scenario: 150 items of 0.1 s, 4 workers, 8 SIGKILLs, each body
    appends a row under worker.lock. On main: ~160 rows for 150 items."""
    rows = state.parent / "rows.txt"
    rng = random.Random(11)

    def start() -> subprocess.Popen[str]:
        return procs.start(HELPERS / "rows_worker.py", state, rows, 150, 0.1,
                           env={"LAUFBAND_MAX_KILLED_RETRIES": "20"})

    workers = [start() for _ in range(4)]
    kills = kill_at_random(workers, start, 8, lambda: rng.uniform(0.2, 0.5), rng)
    finished = procs.wait_all([w for w in workers if w.poll() is None])
    assert all(code == 0 for code, _, _ in finished), finished
    assert kills == 8
    counts = rows_of(rows)
    assert sorted(counts) == list(range(150))
    duplicated = {item: n for item, n in counts.items() if n > 1}
    assert not duplicated, f"rows written twice after {kills} SIGKILLs: {duplicated}"


REAPER = """
import os, signal, sys, time
from laufband import Laufband

state, log = sys.argv[1], sys.argv[2]
if sys.argv[3] == "die-while-reaping":  # the worst moment: reaped, not yet committed
    import laufband.liveness as liveness

    reap = liveness.DeadWorkerDetector._reap

    def reap_then_die(self, tx, dead, retries):
        reap(self, tx, dead, retries)
        os.kill(os.getpid(), signal.SIGKILL)

    liveness.DeadWorkerDetector._reap = reap_then_die
worker = Laufband(list(range(300)), path=state, name="reap", tqdm_kwargs={"disable": True})
with open(log, "a", buffering=1) as out:
    for item in worker:
        time.sleep(0.003)
        out.write(f"{item}\\n")
"""


@pytest.mark.timeout(120)
def test_a_reaper_killed_before_its_reap_commits_loses_no_record(
        state: Path, procs: Processes) -> None:
    """A dead worker's record is removed only once the reap has committed (on main it
    was removed first: a reaper killed in between made every task the dead worker had
    finished since its last flush run again)."""
    script = state.parent / "reaper.py"
    script.write_text(REAPER)
    log = state.parent / "done.txt"
    first = procs.start(script, state, log, "normal")
    time.sleep(0.9)
    first.kill()
    first.wait()
    reaper = procs.start(script, state, log, "die-while-reaping")
    assert procs.wait_all([reaper])[0][0] == -9
    last = procs.start(script, state, log, "normal")
    assert procs.wait_all([last])[0][0] == 0
    rows = log.read_text().split()
    assert sorted(set(rows), key=int) == [str(i) for i in range(300)]
    again = len(rows) - len(set(rows))
    assert again <= 2, f"{again} finished bodies ran again after 2 SIGKILLs"
