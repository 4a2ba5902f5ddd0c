"""Ranges, not rows: claims and completions of consecutive tasks are stored as runs;
a task gets a row of its own only when something unusual happens to it (a failure, a
hand-back, a dead worker, a dependency), and counters and views stay exact."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from laufband import Graphband, Laufband, Task
from laufband.store import SCHEMA_VERSION, FailureRecord, NewTask, Scope, Store, Transaction
from tests.helpers.procs import assert_counters_match


@pytest.fixture
def store(state: Path) -> Iterator[Store]:
    opened = Store(state)
    yield opened
    with opened.transaction() as tx:
        assert_counters_match(tx)  # every transition kept the counters right
    opened.close()


def rows(state: Path, table: str) -> int:
    with sqlite3.connect(state / "state.db") as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608


def positions(tx: Transaction, total: int) -> tuple[int, int]:
    """A positional workflow of ``total`` tasks and one worker on it."""
    wf = tx.open_workflow("w", keyed=False).id
    tx.register_positions(wf, total)
    return wf, tx.register_worker("a", wf, "h", 1, "", None, [])


def test_a_plain_run_writes_no_task_rows(state: Path) -> None:
    for _ in Laufband(range(50_000), path=state, name="plain", tqdm_kwargs={"disable": True}):
        pass
    assert rows(state, "tasks") == 0
    assert rows(state, "runs") <= 3  # completed runs join their neighbours
    store = Store(state)
    try:
        with store.transaction() as tx:
            wf = tx.open_workflow("plain", keyed=False).id
            assert tx.counts(wf)["completed"] == 50_000
            assert set(tx.task_states(wf).values()) == {"completed"}
            assert_counters_match(tx)
    finally:
        store.close()


def test_a_flush_mid_batch_completes_a_prefix_and_a_hand_back_makes_rows(
        store: Store, state: Path) -> None:
    with store.transaction() as tx:
        wf, a = positions(tx, 100)
        assert tx.claim(wf, a, 60, [], Scope()) == list(range(60))
        assert tx.finish(wf, a, list(range(20))) == 20  # a flush mid-batch
        assert tx.finish(wf, a, list(range(30, 40))) == 10  # any part, not only a prefix
        tx.release(wf, a, list(range(40, 60)))  # Ctrl-C: the unstarted rest goes back
        states = tx.task_states(wf)
        # 40 never claimed, 20 handed back; 20-29 run on; 0-19 and 30-39 finished
        assert tx.counts(wf) == {"pending": 60, "running": 10, "completed": 20 + 10,
                                 "failed": 0, "killed": 0, "blocked": 0}
        b = tx.register_worker("b", wf, "h", 2, "", None, [])
        assert tx.claim(wf, b, 100, [], Scope()) == list(range(40, 60))  # the rows
        assert tx.claim(wf, b, 100, [], Scope()) == list(range(60, 100))  # a fresh run
    assert [states[str(i)] for i in (0, 19, 20, 29, 30, 39, 40, 59, 60)] == [
        "completed", "completed", "running", "running", "completed", "completed",
        "pending", "pending", "pending"]
    assert rows(state, "tasks") == 20  # only the handed-back tasks got rows


def test_a_failure_inside_a_run_gives_that_task_alone_a_row(store: Store, state: Path) -> None:
    with store.transaction() as tx:
        wf, a = positions(tx, 10)
        tx.claim(wf, a, 10, [], Scope())
        assert tx.fail(wf, a, FailureRecord(4, "ValueError: no"), max_failed_retries=0) == "failed"
        assert tx.finish(wf, a, [0, 1, 2, 3, 5, 6, 7, 8, 9]) == 9
        assert tx.finish(wf, a, [4]) == 0  # failed: a stale finish completes nothing
        assert tx.failed_tasks(wf, limit=5) == ["4"]
        assert tx.counts(wf)["completed"] == 9
    assert rows(state, "tasks") == 1


def test_a_dead_workers_run_comes_back_and_its_finished_part_stays(store: Store) -> None:
    with store.transaction() as tx:
        wf, a = positions(tx, 30)
        tx.claim(wf, a, 30, [], Scope())
        dead = next(w for w in tx.online_workers(exclude=-1) if w.id == a)
        # Its in-flight record: 0-9 finished since its last flush, 10 ran when it died.
        tx.reap(dead, max_killed_retries=1, in_flight=10, finished=list(range(10)))
        counts = tx.counts(wf)
        states = tx.task_states(wf)
    assert counts["completed"] == 10
    assert counts["running"] == 0
    assert states["10"] == "pending"  # killed once, retried (max_killed_retries=1)
    assert {states[str(i)] for i in range(11, 30)} == {"pending"}


def test_tasks_of_a_worker_gone_offline_without_handing_back_are_swept(store: Store) -> None:
    with store.transaction() as tx:
        wf, a = positions(tx, 8)
        tx.claim(wf, a, 8, [], Scope())
        tx.set_offline(a)  # a hand-back cut short in a way nobody foresaw
        assert tx.return_orphans(wf) == 8
        assert tx.counts(wf)["pending"] == 8


def test_a_dependency_on_a_task_run_without_a_row_waits_for_it(
        store: Store, state: Path) -> None:
    with store.transaction() as tx:
        workflow = tx.open_workflow("g", keyed=True)
        first = tx.register_keyed(workflow, [NewTask("a"), NewTask("b")], {})
        a = tx.register_worker("a", workflow.id, "h", 1, "", None, [])
        assert tx.claim(workflow.id, a, 2, [], Scope()) == [0, 1]  # one run, no rows
        later = tx.register_keyed(workflow, [NewTask("c", ("a",))],
                                  tx.task_numbers(workflow.id, {"c", "a"}))
        b = tx.register_worker("b", workflow.id, "h", 2, "", None, [])
        assert tx.claim(workflow.id, b, 5, [], Scope()) == []  # a still runs
        assert tx.may_get_work(workflow.id, b, [], Scope())
        tx.finish(workflow.id, a, [first["a"]])
        assert tx.claim(workflow.id, b, 5, [], Scope()) == [later["c"]]


def test_a_version_5_state_directory_gains_runs_when_opened(state: Path) -> None:
    Graphband([Task("x")], path=state, name="old")  # creates the database
    store = Store(state)
    try:
        with store.transaction():
            pass
    finally:
        store.close()
    with sqlite3.connect(state / "state.db") as conn:  # as laufband 5 left it
        for table in ("runs", "failures", "samples"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    assert [t.id for t in Graphband([Task("x")], path=state, name="old")] == ["x"]
    with sqlite3.connect(state / "state.db") as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    assert SCHEMA_VERSION == 8

