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
