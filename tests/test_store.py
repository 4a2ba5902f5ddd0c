"""Store transitions in isolation: the claim floor, scopes, multi-worker tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from laufband.store import NewTask, Scope, Store, Transaction, WorkerRecord
from tests.helpers.procs import assert_counters_match


@pytest.fixture
def store(state: Path):
    opened = Store(state)
    yield opened
    with opened.transaction() as tx:
        assert_counters_match(tx)  # every transition in each test kept the counters right
    opened.close()


def worker(tx: Transaction, name: str, wf: int) -> int:
    return tx.register_worker(name, wf, "h", 1, "", None, [])


def record(tx: Transaction, number: int) -> WorkerRecord:
    return next(w for w in tx.online_workers(exclude=-1) if w.id == number)


def test_floor_never_passes_total_so_appended_tasks_are_claimed(store: Store) -> None:
    with store.transaction() as tx:
        wf = tx.open_workflow("w", keyed=False).id
        tx.register_positions(wf, 200)
        a = worker(tx, "a", wf)
        assert tx.claim(wf, a, 300, [], Scope()) == list(range(200))  # more than is left
        tx.register_positions(wf, 210)  # a later run with more data
        b = worker(tx, "b", wf)
        assert tx.claim(wf, b, 50, [], Scope()) == list(range(200, 210))


def test_claims_stay_below_the_scope_limit(store: Store) -> None:
    with store.transaction() as tx:
        wf = tx.open_workflow("w", keyed=False).id
        tx.register_positions(wf, 20)
        short = worker(tx, "short", wf)
        assert tx.claim(wf, short, 100, [], Scope(limit=10)) == list(range(10))
        assert tx.claim(wf, short, 100, [], Scope(limit=10)) == []
        long = worker(tx, "long", wf)
        assert tx.claim(wf, long, 100, [], Scope(limit=20)) == list(range(10, 20))


def test_claims_from_a_scope_start_leave_lower_tasks_to_others(store: Store) -> None:
    with store.transaction() as tx:
        wf = tx.open_workflow("w", keyed=True).id
        assert tx.add_key_block(wf, b"first", 10) == 0  # tasks 0-9: no rows yet
        assert tx.add_key_block(wf, b"second", 10) == 10  # tasks 10-19
        late = worker(tx, "late", wf)
        assert tx.claim(wf, late, 4, [], Scope(start=10, limit=20)) == [10, 11, 12, 13]
        assert tx.unfinished(wf, Scope(limit=10)) == dict.fromkeys(range(10), "pending")
        early = worker(tx, "early", wf)
        assert tx.claim(wf, early, 100, [], Scope(limit=10)) == list(range(10))
        assert tx.claim(wf, early, 100, [], Scope()) == list(range(14, 20))
        assert [first for first, _ in tx.key_blocks(wf)] == [0, 10]


def test_restricted_claims_take_only_their_tasks(store: Store) -> None:
    with store.transaction() as tx:
        wf = tx.open_workflow("w", keyed=True).id
        tx.add_key_block(wf, b"keys", 10)
        tx.materialize(wf, 10)
        tx.restrict_to([2, 5, 7])
        a = worker(tx, "a", wf)
        assert tx.claim(wf, a, 100, [], Scope(start=2, limit=8, restricted=True)) == [2, 5, 7]
        tx.finish(wf, a, [2, 5])
        tx.fail(wf, a, 7, "boom", max_failed_retries=0)
        assert tx.unfinished(wf, Scope(start=2, limit=8, restricted=True)) == {7: "failed"}
        assert tx.retry_unfinished(wf, Scope(start=2, limit=8, restricted=True)) == 1
        assert tx.claim(wf, a, 100, [], Scope(start=2, limit=8, restricted=True)) == [7]


def test_returned_task_lowers_the_floor(store: Store) -> None:
    with store.transaction() as tx:
        wf = tx.open_workflow("w", keyed=False).id
        tx.register_positions(wf, 10)
        a = worker(tx, "a", wf)
        assert tx.claim(wf, a, 10, [], Scope()) == list(range(10))
        tx.release(wf, a, [3, 4])
        tx.fail(wf, a, 7, "boom", max_failed_retries=1)  # a retry left: pending again
        assert tx.claim(wf, a, 10, [], Scope()) == [3, 4, 7]


def multi_workflow(tx: Transaction) -> int:
    workflow = tx.open_workflow("m", keyed=True)
    tx.register_keyed(workflow, [NewTask("m", max_workers=2), NewTask("after", ("m",))], {})
    return workflow.id


def test_multi_task_completed_by_release_or_reap_is_counted(store: Store) -> None:
    with store.transaction() as tx:
        wf = multi_workflow(tx)
        a, b = worker(tx, "a", wf), worker(tx, "b", wf)
        assert tx.claim(wf, a, 1, [], Scope()) == [0]
        assert tx.claim(wf, b, 1, [], Scope()) == [0]
        tx.finish(wf, a, [0])
        assert tx.task_states(wf)["m"] == "running"  # b still holds it
        tx.reap(record(tx, b), max_killed_retries=1)
        assert tx.task_states(wf)["m"] == "completed"
        assert tx.progress(wf) == (2, 1)


def test_reaping_a_holder_does_not_revive_a_failed_multi_task(store: Store) -> None:
    with store.transaction() as tx:
        wf = multi_workflow(tx)
        a, b = worker(tx, "a", wf), worker(tx, "b", wf)
        tx.claim(wf, a, 1, [], Scope())
        tx.claim(wf, b, 1, [], Scope())
        assert tx.fail(wf, a, 0, "boom", max_failed_retries=0) == "failed"
        tx.block_unreachable(wf)
        tx.reap(record(tx, b), max_killed_retries=1)
        assert tx.task_states(wf) == {"m": "failed", "after": "blocked"}
        c = worker(tx, "c", wf)
        assert tx.claim(wf, c, 1, [], Scope()) == []


def test_only_a_holder_can_fail_a_multi_task(store: Store) -> None:
    with store.transaction() as tx:
        wf = multi_workflow(tx)
        a, b = worker(tx, "a", wf), worker(tx, "b", wf)
        tx.claim(wf, a, 1, [], Scope())
        assert tx.fail(wf, b, 0, "not mine", max_failed_retries=0) == "running"
        assert tx.task_states(wf)["m"] == "running"


def test_multi_task_pending_after_failure_is_not_over_admitted(store: Store) -> None:
    with store.transaction() as tx:
        wf = multi_workflow(tx)
        a, b, c, d = (worker(tx, name, wf) for name in "abcd")
        tx.claim(wf, a, 1, [], Scope())
        tx.claim(wf, b, 1, [], Scope())
        assert tx.fail(wf, a, 0, "flaky", max_failed_retries=1) == "pending"
        assert tx.claim(wf, c, 1, [], Scope()) == [0]  # a's slot is free again
        assert tx.claim(wf, d, 1, [], Scope()) == []  # b and c hold both slots


def two_workers_with_five_tasks_each(tx: Transaction) -> tuple[int, int, int]:
    """A workflow of 10 tasks; worker a claimed 0-4, worker b 5-9."""
    wf = tx.open_workflow("w", keyed=False).id
    tx.register_positions(wf, 10)
    a, b = worker(tx, "a", wf), worker(tx, "b", wf)
    assert tx.claim(wf, a, 5, [], Scope()) == [0, 1, 2, 3, 4]
    assert tx.claim(wf, b, 5, [], Scope()) == [5, 6, 7, 8, 9]
    return wf, a, b


def test_reaping_with_a_record_blames_the_recorded_task_or_none(store: Store) -> None:
    with store.transaction() as tx:
        wf, a, b = two_workers_with_five_tasks_each(tx)
        tx.reap(record(tx, a), max_killed_retries=1, in_flight=3)  # 0-2 ran, unflushed
        tx.reap(record(tx, b), max_killed_retries=1, in_flight=-1)  # died between tasks
        states = tx.task_states(wf)
        assert states.pop("3") == "pending"  # one kill counted, retried
        assert set(states.values()) == {"pending"}
        assert [event[:2] for event in tx.events(wf)] == [("3", "killed")]
        c = worker(tx, "c", wf)
        assert tx.claim(wf, c, 10, [], Scope()) == list(range(10))  # all claimable again
        # A record naming a task no longer running on the dead worker: nobody is blamed.
        d = worker(tx, "d", wf)
        tx.release(wf, c, [6, 7, 8, 9])
        assert tx.claim(wf, d, 4, [], Scope()) == [6, 7, 8, 9]
        tx.reap(record(tx, d), max_killed_retries=1, in_flight=2)  # 2 runs on c
        states = tx.task_states(wf)
        assert (states["2"], states["6"], states["7"]) == ("running", "pending", "pending")
        assert [event[:2] for event in tx.events(wf)] == [("3", "killed")]


def test_reaping_completes_what_the_record_says_finished(store: Store) -> None:
    with store.transaction() as tx:
        wf, a, b = two_workers_with_five_tasks_each(tx)
        # 0-2 finished but were not flushed, 3 was running; 5 "finished" is b's, not a's
        tx.reap(record(tx, a), max_killed_retries=1, in_flight=3, finished=[0, 1, 2, 5])
        states = tx.task_states(wf)
        assert [states[str(i)] for i in range(6)] == [
            "completed", "completed", "completed", "pending", "pending", "running"]
        assert [event[:2] for event in tx.events(wf)] == [("3", "killed")]
        assert tx.counts(wf) == tx.scan_counts(wf)


def test_reaping_counts_a_kill_only_for_the_task_in_flight(store: Store) -> None:
    with store.transaction() as tx:
        wf = tx.open_workflow("w", keyed=False).id
        tx.register_positions(wf, 10)
        for attempt, name in enumerate(["a", "b"]):
            number = worker(tx, name, wf)
            claimed = tx.claim(wf, number, 10, [], Scope())
            assert claimed == list(range(10) if attempt == 0 else range(3, 10))
            if attempt == 0:
                tx.finish(wf, number, [0, 1, 2])  # flushed before it died
            tx.reap(record(tx, number), max_killed_retries=1)
            states = tx.task_states(wf)
            assert states["3"] == ("pending" if attempt == 0 else "killed")
            assert {states[str(i)] for i in range(4, 10)} == {"pending"}
        assert [event[:2] for event in tx.events(wf)] == [("3", "killed"), ("3", "killed")]
        c = worker(tx, "c", wf)
        assert tx.claim(wf, c, 10, [], Scope()) == list(range(4, 10))
