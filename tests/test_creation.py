"""A first worker killed at any step of creating the state leaves it usable.

A worker SIGKILLed while it created the database used to leave a file without a
schema, and every later worker failed with "not a laufband state database (no such
table: meta)" (Hydra killing all ranks at start-up does exactly this). Here the
first worker is killed at every step of creation (each Python line of laufband and
each SQLite VM step, from the store's first line until the database is open with its
schema: ``tests/helpers/creation_killer.py``), and the next worker must finish every
item in the same directory.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.procs import HELPERS, Processes, completions, integrity

KILLER = HELPERS / "creation_killer.py"
ITEMS = 20
PROCESS_DEADLINE = 30.0  # seconds one process of a trial may take (0.3 s is usual)
RUN_DEADLINE = 600.0  # seconds a runner of many kill points may take (~0.1 s each)
POLL = 0.1  # seconds between looks at a running process's stderr
SAMPLED_TRIALS = 100  # kill points of the normal test (the slow one tries every step)
RANDOM_TRIALS = 30
RANDOM_KILL_WITHIN = 0.3  # seconds after start
PARALLEL = max(1, min(2, os.cpu_count() or 1))  # trial runners at once (one per core)


def last_line(text: str) -> str:
    """The last non-empty line of a process's output (its error, usually)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no stderr)"


def finish(proc: subprocess.Popen[str]) -> tuple[str | None, str]:
    """Wait for ``proc``; return (why it had to be killed or None, its stderr).

    Killed when past PROCESS_DEADLINE, or when it prints the same error line twice:
    worker.py runs its loop again after a RuntimeError, so a worker that cannot use
    the state retries forever.
    """
    start = time.monotonic()
    while True:
        try:
            _, err = proc.communicate(timeout=POLL)
        except subprocess.TimeoutExpired as expired:
            lines = (expired.stderr or b"").decode(errors="replace").splitlines()
        else:
            return None, err
        if len(lines) >= 2 and lines[-2] == lines[-1]:
            reason = f"keeps retrying an error (killed): {lines[-1]}"
        elif time.monotonic() - start > PROCESS_DEADLINE:
            reason = f"still running after {PROCESS_DEADLINE} s (killed)"
        else:
            continue
        proc.kill()
        _, err = proc.communicate(timeout=PROCESS_DEADLINE)
        return reason, err


def next_worker_finishes(procs: Processes, trial: Path) -> str | None:
    """Run a plain worker on ``trial/state``: None if every item is done (by it, or by
    the first worker in ``trial/first-logs``) in a sound database, else what went wrong."""
    state, logs = trial / "state", trial / "logs"
    worker = procs.worker(state, logs, "--items", ITEMS, "--name", "work")
    stuck, err = finish(worker)
    if stuck:
        return f"next worker {stuck}"
    if worker.returncode != 0:
        return f"next worker exited {worker.returncode}: {last_line(err)}"
    done = completions(logs) + completions(trial / "first-logs")
    missing = sorted(set(range(ITEMS)) - {int(item) for item in done})
    if missing:
        return f"next worker exited 0 but items {missing} were never done"
    try:
        check = integrity(state)
    except Exception as error:  # noqa: BLE001 - reported as this trial's failure
        return f"integrity check raised {type(error).__name__}: {error}"
    return None if check == "ok" else f"integrity check: {check}"


def run_trials(trials: Iterable[int], trial: Callable[[int], str | None]) -> list[str]:
    """Run ``trial`` for each key, a few at once; return the failures, labelled."""
    keys = list(trials)
    with ThreadPoolExecutor(PARALLEL) as pool:
        outcomes = list(pool.map(trial, keys))
    return [f"{key}: {outcome}" for key, outcome in zip(keys, outcomes, strict=True) if outcome]


def creation_steps(procs: Processes, root: Path) -> int:
    """How many steps (laufband lines and SQLite VM steps) creating the state takes."""
    [(code, out, err)] = procs.wait_all([procs.start(KILLER, root, "count")],
                                        deadline=PROCESS_DEADLINE)
    assert code == 0, f"counting run failed: {last_line(err)}"
    return int(out.split()[0])


def check_kill_points(procs: Processes, tmp_path: Path, stride: int) -> None:
    """Kill the first worker at every ``stride``-th step of creation (and the last);
    the next worker must finish every item in a sound database."""
    total = creation_steps(procs, tmp_path)
    assert total > 100, f"creation counted only {total} steps: is the tracing working?"
    steps = sorted({*range(1, total + 1, stride), total})
    runners = [procs.start(KILLER, tmp_path, *map(str, steps[part::PARALLEL]))
               for part in range(PARALLEL)]
    failures = []
    for code, out, err in procs.wait_all(runners, deadline=RUN_DEADLINE):
        assert code == 0, f"a trial runner failed: {last_line(err)}"
        failures += out.splitlines()
    assert not failures, (
        f"{len(failures)} of {len(steps)} kill points (of {total} steps) left the state"
        " unusable:\n" + "\n".join(f"N={failure}" for failure in failures)
    )


@pytest.mark.timeout(300)
def test_first_worker_killed_at_sampled_steps_of_creation(
    tmp_path: Path, procs: Processes
) -> None:
    """About SAMPLED_TRIALS kill points spread over all of creation."""
    check_kill_points(procs, tmp_path, stride=max(1, 1000 // SAMPLED_TRIALS))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_first_worker_killed_at_every_step_of_creation(tmp_path: Path, procs: Processes) -> None:
    """Every single step of creation is a kill point."""
    check_kill_points(procs, tmp_path, stride=1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_first_worker_killed_at_random_times_during_startup(
    tmp_path: Path, procs: Processes
) -> None:
    """A plain worker SIGKILLed 0-300 ms after it starts, 30 times: the next one finishes."""
    rng = random.Random(20240611)
    delays = [rng.uniform(0.0, RANDOM_KILL_WITHIN) for _ in range(RANDOM_TRIALS)]

    def trial(index: int) -> str | None:
        directory = tmp_path / f"r{index}"
        directory.mkdir()
        first = procs.worker(directory / "state", directory / "first-logs",
                             "--items", ITEMS, "--name", "work")
        try:
            first.wait(timeout=delays[index])  # the kill time; a fast worker may finish
        except subprocess.TimeoutExpired:
            first.send_signal(signal.SIGKILL)
        stuck, _ = finish(first)
        if stuck:
            return f"first worker {stuck}"
        outcome = next_worker_finishes(procs, directory)
        if outcome is None:
            return None
        return f"killed after {delays[index] * 1000:.0f} ms (exited {first.returncode}): {outcome}"

    failures = run_trials(range(RANDOM_TRIALS), trial)
    assert not failures, (
        f"{len(failures)} of {RANDOM_TRIALS} random start-up kills left the state unusable:\n"
        + "\n".join(f"trial {failure}" for failure in failures)
    )
