"""A loop body that finished is never run again, even when its worker is SIGKILLed
before it wrote its finished work to the store (same host): only the task in flight
runs again."""

from __future__ import annotations

import random
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.procs import (
    HELPERS,
    RUN_DEADLINE,
    Processes,
    completions,
    kill_at_random,
    read_log,
    task_states,
    wait_for,
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


PENDING_BYTE = 0x40000000  # SQLite's lock byte of a writer waiting to commit (lockingv3)
IDENTITY = {"LAUFBAND_IDENTIFIER": "node-7"}  # a restart reaps its predecessor at once


def waits_to_commit(pid: int, db: Path) -> bool:
    """Whether ``pid`` holds SQLite's PENDING lock on ``db``: it is in COMMIT, waiting
    for readers to leave (Linux /proc/locks)."""
    inode = db.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        kind, owner, device, first = fields[3], fields[4], fields[5], fields[6]
        if (kind, owner, first) == ("WRITE", str(pid), str(PENDING_BYTE)) \
                and device.endswith(f":{inode}"):
            return True
    return False


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
@pytest.mark.timeout(120)
def test_a_reaper_killed_before_its_reap_commits_loses_no_record(
        state: Path, procs: Processes) -> None:
    """A dead worker's record (which tasks it finished since its last flush) is removed
    only once the reap has committed. The reaper is held in its COMMIT by a reader and
    SIGKILLed there (on main the record was removed first: the rolled-back reap left
    nothing to say which tasks had finished, and they all ran again)."""
    logs = state.parent / "logs"
    args = (state, logs, "--items", 300, "--sleep", 0.003)
    first = procs.worker(*args, env=IDENTITY)
    wait_for(lambda: len(read_log(logs / f"{first.pid}.done")) >= 50, what="some progress")
    first.kill()  # its finished tasks since the last flush are in its record only
    first.wait(timeout=RUN_DEADLINE)
    reader = sqlite3.connect(state / "state.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM tasks").fetchall()  # a SHARED lock: no commit
        reaper = procs.worker(*args, env=IDENTITY)  # reaps its predecessor as it starts
        wait_for(lambda: waits_to_commit(reaper.pid, state / "state.db"),
                 what="the reaper to wait in its first COMMIT")
        reaper.kill()
        reaper.wait(timeout=RUN_DEADLINE)
    finally:
        reader.close()
    assert read_log(logs / f"{reaper.pid}.start") == []  # it died inside the reap
    last = procs.worker(*args, env=IDENTITY)
    [(code, _, err)] = procs.wait_all([last])
    assert code == 0, err
    done = completions(logs)
    assert set(done) == {str(i) for i in range(300)}
    again = sum(done.values()) - len(done)
    assert again <= 1, f"{again} finished bodies ran again (only the one in flight may)"
    assert set(task_states(state, "work").values()) == {"completed"}
