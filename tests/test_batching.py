"""Batches: their size grows for fast tasks and stays one for slow ones, and a batch's
tasks are finished or handed back by number, in any order."""

from __future__ import annotations

from pathlib import Path

from laufband.batching import JUMP, BatchSizer
from laufband.store import Scope, Store


def test_batches_grow_for_fast_tasks_and_stay_single_for_slow_ones() -> None:
    fast = BatchSizer()
    for _ in range(20):
        size = fast.next_size(remaining=1_000_000, workers=1)
        fast.observe_tasks(size, size * 1e-6)
    assert fast.size >= 4096
    # Fewer left than two transactions' worth of work: all in one claim.
    assert fast.next_size(remaining=10, workers=2) == 10
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
