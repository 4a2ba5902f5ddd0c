"""No slow tail behind a fast start: a batch claimed while tasks were fast hands its
unstarted rest back once its tasks turn slow, and idle workers (pmap's helpers too)
wait for such work instead of leaving.

Scientific work is heterogeneous (molecules of every size): many small items, then a
few large ones, must not leave the large ones queued behind each other on one process
while another one idles.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

import laufband
from laufband.store import Store

SLOW = 0.5  # seconds: the large items


def sleep_then_pid(item: tuple[int, float]) -> int:
    """pmap's function: sleep as long as the item says; tell which process ran it."""
    time.sleep(item[1])
    return os.getpid()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_pmap_spreads_slow_items_after_fast_ones_over_its_processes(
        state: Path, start_method: str) -> None:
    """Forked helpers start at once; spawned ones (a caller with threads) when what is
    left is worth them, which slow items after fast ones make it."""
    durations = [0.0002] * 1000 + [SLOW] * 6
    data = list(enumerate(durations))  # distinct items (equal ones are one task)
    pids = laufband.pmap(sleep_then_pid, data, n=2, path=state, start_method=start_method)
    slow = Counter(pids[1000:])
    assert len(slow) == 2, f"all six slow items ran in one process: {slow}"
    # A spawned helper takes a moment to start: the caller may run a third meanwhile.
    assert min(slow.values()) >= (2 if start_method == "fork" else 1), slow
    assert len(set(pids)) == 2  # the caller and its one helper ran everything


LOOP_WORKER = textwrap.dedent("""
    import os, sys, time
    from laufband import Laufband
    state, log = sys.argv[1], sys.argv[2]
    data = [0.001] * 400 + [0.5] * 6
    with open(log, "a") as out:
        for index in Laufband(range(len(data)), path=state, name="tail",
                              tqdm_kwargs={"disable": True}):
            time.sleep(data[index])
            out.write(f"{index}\\n")
            out.flush()
""")


def test_loop_workers_take_over_the_slow_rest_of_a_batch(state: Path, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(LOOP_WORKER)
    logs = [tmp_path / f"{i}.log" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), str(state), str(log)])
             for log in logs]
    assert [proc.wait(timeout=60) for proc in procs] == [0, 0]
    ran = [[int(line) for line in log.read_text().split()] for log in logs]
    assert sorted(ran[0] + ran[1]) == list(range(406))  # every item once
    slow = [sum(index >= 400 for index in indices) for indices in ran]
    assert min(slow) >= 2, f"slow items per process: {slow}"


def test_one_worker_reaps_per_interval_however_many_ask(state: Path) -> None:
    store = Store(state)
    try:
        with store.transaction() as tx:
            turns = [tx.take_reap_turn(60.0) for _ in range(5)]
        with store.transaction() as tx:
            again = tx.take_reap_turn(0.0)  # an interval of none: due at once
    finally:
        store.close()
    assert turns == [True, False, False, False, False]
    assert again


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from laufband import Laufband
    state, log, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    with open(log, "w") as out:
        for index in Laufband(range(4000), path=state, name="held",
                              tqdm_kwargs={"disable": True}):
            start = time.time()
            if index == 2500:
                marker.touch()
                time.sleep(4.0)
            else:
                time.sleep(0.0002)
            out.write(f"{index} {start!r} {time.time()!r}\\n")
            out.flush()
""")


def test_tasks_claimed_behind_a_slow_one_go_to_another_worker_while_it_runs(
        state: Path, tmp_path: Path) -> None:
    """One worker, many fast tasks (large batches), then one that runs 4 s: the tasks
    it claimed behind that one go back while it runs, and a second worker started
    then runs them at once rather than after the slow one ends."""
    script = tmp_path / "worker.py"
    script.write_text(HOLDER)
    marker = tmp_path / "slow-started"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = subprocess.Popen([sys.executable, str(script), str(state), str(logs[0]),
                              str(marker)])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert first.poll() is None, "the first worker ended before its slow task"
        assert time.monotonic() < deadline, "no slow task began"
        time.sleep(0.01)
    second = subprocess.Popen([sys.executable, str(script), str(state), str(logs[1]),
                               str(tmp_path / "unused")])
    assert [first.wait(timeout=60), second.wait(timeout=60)] == [0, 0]
    runs = {}
    for log in logs:
        for line in log.read_text().splitlines():
            index, start, end = line.split()
            assert int(index) not in runs, f"task {index} ran twice"
            runs[int(index)] = (float(start), float(end))
    assert sorted(runs) == list(range(4000))
    slow_end = runs[2500][1]
    late = [index for index in range(2501, 4000) if runs[index][0] > slow_end]
    assert not late, (f"{len(late)} tasks (first {late[0]}) waited for the slow one to end"
                      " on the worker that had claimed them")


def test_every_task_runs_once_while_slow_tasks_keep_handing_back_the_rest(
        state: Path, tmp_path: Path) -> None:
    """Four workers, a slow task every 40 fast ones: the overrun watch hands back what
    waits behind each, over and over, while the loops take tasks from the same batches."""
    script = tmp_path / "worker.py"
    script.write_text(LOOP_WORKER.replace("[0.001] * 400 + [0.5] * 6",
                                          "[0.3 if i % 40 == 39 else 0.0005 for i in range(800)]"))
    logs = [tmp_path / f"{i}.log" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, str(script), str(state), str(log)])
             for log in logs]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0, 0, 0]
    ran = Counter(int(line) for log in logs for line in log.read_text().split())
    assert sorted(ran) == list(range(800))
    assert set(ran.values()) == {1}, [index for index, count in ran.items() if count > 1]


LATE_CLAIMS = textwrap.dedent("""
    import sys, time
    import laufband.workerloop
    from laufband import Laufband
    state, log = sys.argv[1], sys.argv[2]
    turn = laufband.workerloop.WorkerLoop._turn
    def late_turn(self, *args, **kwargs):  # a claim ahead starts late (a long lock queue,
        if kwargs.get("claim"):            # a thread not scheduled): fault injection
            time.sleep(0.4)
        return turn(self, *args, **kwargs)
    laufband.workerloop.WorkerLoop._turn = late_turn
    with open(log, "a") as out:
        for index in Laufband(range(300), path=state, name="late",
                              tqdm_kwargs={"disable": True}):
            time.sleep(0.6 if index % 50 == 7 else 0.0005)
            out.write(f"{index}\\n")
            out.flush()
""")


def test_tasks_handed_back_behind_a_slow_one_and_claimed_again_run_once(
        tmp_path: Path) -> None:
    """The overrun watch hands back what waits behind a slow task while a late claim
    ahead takes those same tasks again: the loop must neither hand back its new batch
    nor run tasks it no longer holds (a task ran twice in 1 run of 3 of this test)."""
    script = tmp_path / "worker.py"
    script.write_text(LATE_CLAIMS)
    # Three runs at once, each in a state directory of its own (mostly sleeping).
    runs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"state{attempt}"),
                              str(tmp_path / f"{attempt}.log")]) for attempt in range(3)]
    assert [run.wait(timeout=60) for run in runs] == [0, 0, 0]
    for attempt in range(3):
        ran = Counter(int(line) for line in (tmp_path / f"{attempt}.log").read_text().split())
        assert sorted(ran) == list(range(300))
        assert [index for index, count in ran.items() if count > 1] == []
