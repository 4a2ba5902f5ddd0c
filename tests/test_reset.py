"""``laufband reset`` while workers run: nothing runs against the wrong data."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.procs import Processes, orphans, read_log, task_states, wait_for

RESET_WORKER = """
import os, sys, time
from pathlib import Path
from laufband import Laufband

state, logs, tag, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
logs.mkdir(exist_ok=True)
items = [f"{tag}{i}" for i in range(count)]
for item in Laufband(items, path=state, name="work", tqdm_kwargs={"disable": True}):
    time.sleep(0.05)
    with open(logs / f"{tag}-{os.getpid()}.done", "a") as log:
        log.write(f"{item}\\n")
"""


def done_by(logs: Path, tag: str) -> Counter[str]:
    """Items logged as done by the workers of one data set."""
    counts: Counter[str] = Counter()
    for log in logs.glob(f"{tag}-*.done"):
        counts.update(read_log(log))
    return counts


@pytest.mark.timeout(120)
def test_reset_while_workers_run_then_new_data(state: Path, procs: Processes,
                                               tmp_path: Path) -> None:
    """Two workers run data A; the workflow is reset and a worker starts on data B at
    once. Every item of B must be run by B's worker (old workers wrote into the new
    workflow's reused rows: B's items were recorded completed without running), and
    the old workers stop with one line saying why."""
    script = tmp_path / "reset_worker.py"
    script.write_text(RESET_WORKER)
    logs = tmp_path / "logs"
    # Far from done when the reset comes, on a loaded machine too.
    old = [procs.start(script, state, logs, "a", 400) for _ in range(2)]
    wait_for(lambda: sum(done_by(logs, "a").values()) >= 6, what="data A under way")
    reset = procs.python("-m", "laufband", "reset", "-w", "work", "--path", state, "--yes")
    assert reset.returncode == 0, reset.stderr
    new = procs.start(script, state, logs, "b", 30)
    [(code, _, err)] = procs.wait_all([new])
    assert code == 0, err
    assert done_by(logs, "b") == Counter({f"b{i}": 1 for i in range(30)})
    states = task_states(state, "work")
    assert len(states) == 30
    assert set(states.values()) == {"completed"}
    for code, _, err in procs.wait_all(old):
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert code == 1, err
        assert last.startswith("laufband.errors.StateError: workflow 'work' in "), err
        assert "was reset while this worker ran" in last
        assert err.count("Traceback") == 1
    assert orphans(state) == []


@pytest.mark.timeout(120)
def test_reset_during_pmap_calls_is_one_clear_error(state: Path) -> None:
    """`laufband reset` of a pmap workflow, again and again while calls run: each call
    either returns correct results or raises the StateError that says so (a reset
    between a call's registration and its reading of results gave a raw TypeError)."""
    import threading

    from laufband import Monitor, StateError, pmap

    pmap(abs, range(3), n=1, path=state, name="pj", progress=False)  # the state exists
    stop = threading.Event()

    def resetting() -> None:
        monitor = Monitor(state)
        while not stop.is_set():
            with contextlib.suppress(StateError):
                monitor.reset("pj")
            stop.wait(0.003)
        monitor.close()

    thread = threading.Thread(target=resetting)
    thread.start()
    outcomes: Counter[str] = Counter()
    try:
        for _ in range(150):
            try:
                result = pmap(abs, range(-20, 0), n=1, path=state, name="pj", progress=False)
            except StateError as error:
                outcomes[str(error)] += 1
            else:
                assert result == list(range(20, 0, -1))
                outcomes["ok"] += 1
    finally:
        stop.set()
        thread.join(timeout=30)
    resets = [text for text in outcomes if text != "ok"]
    assert outcomes["ok"], outcomes
    assert resets, outcomes
    assert all("was reset while" in text for text in resets), resets
