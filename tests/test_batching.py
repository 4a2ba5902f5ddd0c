"""Batches: their size grows for fast tasks and stays one for slow ones, and a batch's
tasks are finished or handed back by number, in any order."""

from __future__ import annotations

from pathlib import Path

from laufband.batching import JUMP, BatchSizer, Pace
from laufband.store import Scope, Store


def test_batches_grow_for_fast_tasks_and_stay_single_for_slow_ones() -> None:
    fast = BatchSizer()
    for _ in range(20):
        size = fast.next_size(remaining=1_000_000, workers=1)
        fast.observe_tasks(size, size * 1e-6)
    assert fast.size >= 4096
    # Few left: two transactions' worth of work (fewer, larger claims on a busy lock),
    # but never more than half of them (the last tasks may be slow ones; the overrun
    # watch hands back what waits behind a slow one).
    assert fast.next_size(remaining=10, workers=2) == 5
    assert fast.next_size(remaining=16, workers=8) == 8
    assert fast.next_size(remaining=16, workers=1) == 16
    medium = BatchSizer()
    medium.observe_tasks(1, 0.01)
    assert medium.next_size(remaining=10, workers=2) == 2  # guided: unclaimed / (2 x workers)
    assert medium.next_size(remaining=10, workers=2, all_counted=True) == 5  # / workers
    jump = BatchSizer()
    jump.observe_tasks(1, 1e-4)  # timed: growth jumps to 50 ms of work, past doubling
    assert jump.next_size(remaining=1_000_000, workers=1) == int(JUMP / 1e-4)
    slow = BatchSizer()
    for _ in range(10):
        slow.observe_transaction(0.002)
        slow.observe_tasks(slow.next_size(remaining=1000, workers=8), 2.0)
    assert slow.next_size(remaining=1000, workers=8) == 1


def test_a_batch_finished_out_of_order_completes_exactly_those_tasks(state: Path) -> None:
    """Finished and handed-back task numbers arrive in any order, with gaps (helpers
    finish out of order): exactly those tasks change state."""
    store = Store(state)
    try:
        with store.transaction() as tx:
            wf = tx.open_workflow("batches", keyed=False).id
            tx.register_positions(wf, 12)
            worker = tx.register_worker("w0", wf, "host", 1, "", None, [])
            assert tx.claim(wf, worker, 10, [], Scope()) == list(range(10))
            assert tx.finish(wf, worker, []) == 0
            assert tx.finish(wf, worker, [7, 1, 2, 9, 8]) == 5
            assert tx.finish(wf, worker, [3, 4, 5]) == 3
            tx.release(wf, worker, [6, 0])
            states = tx.task_states(wf)
    finally:
        store.close()
    assert states == {**dict.fromkeys(["0", "6", "10", "11"], "pending"),
                      **dict.fromkeys(["1", "2", "3", "4", "5", "7", "8", "9"], "completed")}


def test_a_batch_far_behind_its_plan_hands_back_its_rest() -> None:
    """Pace: slow tasks after many fast ones show at the next check; a batch that runs
    somewhat slower than planned (a busy machine) keeps its tasks."""
    sizer = BatchSizer()
    sizer.observe_tasks(100, 100 * 0.0002)  # planned: 0.2 ms per task
    pace = Pace(sizer, 506, now=0.0)
    assert not pace.overran(400, now=0.08)  # as planned
    assert not pace.overran(497, now=0.2)  # twice as slow as planned: a busy machine
    assert pace.overran(498, now=0.7)  # one task took 0.5 s: give the rest back
    assert not pace.overran(506, now=5.0)  # nothing left to give back
    unplanned = Pace(BatchSizer(), 10, now=0.0)
    assert not unplanned.overran(5, now=0.05)  # the first check makes the plan: 10 ms
    assert not unplanned.overran(6, now=0.07)
    assert unplanned.overran(7, now=1.0)
