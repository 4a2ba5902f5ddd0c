"""Start, wait for and always clean up real worker processes."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from laufband.store import Store, Transaction

HELPERS = Path(__file__).parent
STARTUP_DEADLINE = 30.0  # seconds a process may take to reach a given point
RUN_DEADLINE = 90.0  # seconds a group of workers may take to finish


class Processes:
    """Launches python processes and guarantees they are gone at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, *args: str | os.PathLike[str], env: dict[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None) -> subprocess.Popen[str]:
        """Run ``python ARGS...`` in the background."""
        proc = subprocess.Popen(
            [sys.executable, *map(str, args)], env={**os.environ, **(env or {})}, cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.started.append(proc)
        return proc

    def start_logged(self, script: Path, *args: object, stderr: Path,
                     env: dict[str, str] | None = None,
                     new_session: bool = False) -> subprocess.Popen[str]:
        """Run ``python SCRIPT ARGS...`` with its stderr in a file that can be read while
        it runs (and, with ``new_session``, in a process group of its own)."""
        with open(stderr, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(script), *map(str, args)], stdout=subprocess.DEVNULL,
                stderr=err, env={**os.environ, **(env or {})}, text=True,
                start_new_session=new_session)
        self.started.append(proc)
        return proc

    def worker(self, *args: object, **kwargs: object) -> subprocess.Popen[str]:
        """Run ``tests/helpers/worker.py ARGS...``."""
        return self.start(HELPERS / "worker.py", *map(str, args), **kwargs)  # type: ignore[arg-type]

    def wait_all(self, procs: list[subprocess.Popen[str]] | None = None,
                 deadline: float = RUN_DEADLINE) -> list[tuple[int, str, str]]:
        """Wait for processes; return (returncode, stdout, stderr) of each."""
        results = []
        for proc in procs if procs is not None else self.started:
            out, err = proc.communicate(timeout=deadline)
            results.append((proc.returncode, out, err))
        return results

    def cleanup(self) -> list[int]:
        """Kill whatever still runs; return the pids that had to be killed."""
        leftovers = []
        for proc in self.started:
            if proc.poll() is None:
                leftovers.append(proc.pid)
                proc.kill()
            proc.communicate()
        return leftovers


def kill_at_random(workers: list[subprocess.Popen[str]],
                   start: Callable[[], subprocess.Popen[str]], kills: int,
                   pause: Callable[[], float], rng: random.Random) -> int:
    """SIGKILL a random live worker after each ``pause()`` and start a replacement at
    once, ``kills`` times or until none is left alive; return how many were killed."""
    done = 0
    while done < kills:
        time.sleep(pause())
        alive = [w for w in workers if w.poll() is None]
        if not alive:
            break
        victim = rng.choice(alive)
        victim.kill()
        victim.wait()
        done += 1
        workers.append(start())
    return done


def wait_for(condition: Callable[[], bool], deadline: float = STARTUP_DEADLINE,
             what: str = "condition") -> float:
    """Poll ``condition`` until true; return the seconds it took, fail after ``deadline``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > deadline:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def read_log(path: Path) -> list[str]:
    """Lines a worker appended to its log (missing file: none)."""
    return path.read_text().split() if path.exists() else []


def completions(log_dir: Path, kind: str = "done") -> Counter[str]:
    """How often each item was logged as done (or as started, ``kind="start"``) across
    all worker logs in ``log_dir``."""
    counts: Counter[str] = Counter()
    for log in log_dir.glob(f"*.{kind}"):
        counts.update(read_log(log))
    return counts


def task_states(path: Path, workflow: str) -> dict[str, str]:
    """Task id -> state of a workflow, read from the store; checks its state counters."""
    store = Store(path)
    try:
        with store.transaction() as tx:
            assert_counters_match(tx)
            return tx.task_states(tx.open_workflow(workflow, keyed=False).id)
    finally:
        store.close()


def assert_counters_match(tx: Transaction) -> None:
    """The maintained per-state counters of every workflow equal a scan of its tasks."""
    for name in tx.workflow_names():
        wf = tx.open_workflow(name, keyed=False).id
        assert tx.counts(wf) == tx.scan_counts(wf), f"counters of workflow {name!r} drifted"


def task_events(path: Path, workflow: str) -> list[tuple[str, str, str | None]]:
    """(task id, state, error) of every event of a workflow."""
    store = Store(path)
    try:
        with store.transaction() as tx:
            return tx.events(tx.open_workflow(workflow, keyed=False).id)
    finally:
        store.close()


def online_workers(path: Path, lock: str = "file") -> int:
    """How many workers the store lists as online (taking the lock kind they use)."""
    store = Store(path, soft_lock=lock == "soft")
    try:
        with store.transaction() as tx:
            return len(tx.online_workers(exclude=-1))
    finally:
        store.close()


def integrity(path: Path) -> str:
    """SQLite's integrity check of the state database ("ok" when sound)."""
    store = Store(path)
    try:
        with store.transaction() as tx:
            return tx.integrity()
    finally:
        store.close()


def orphans(path: Path) -> list[tuple[str, int, int, str | None]]:
    """Running tasks whose worker is not online: (workflow, task, worker, its state).

    The invariant: none, ever, once workers have stopped or been reaped. Read with
    plain SQL so the check does not trust the store it checks.
    """
    with sqlite3.connect(path / "state.db") as conn:
        return conn.execute(
            "SELECT f.name, t.seq, t.worker, w.state FROM tasks t JOIN workflows f"
            " ON f.id = t.wf LEFT JOIN workers w ON w.id = t.worker"
            " WHERE t.state = 'running' AND coalesce(w.state, '') != 'online'").fetchall()
