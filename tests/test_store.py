"""Store transitions in isolation: the claim floor, scopes, multi-worker tasks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from laufband import Graphband, Monitor, Task
from laufband.errors import StateError, TaskGraphError
from laufband.store import (
    SCHEMA_VERSION,
    FailureRecord,
    NewTask,
    Scope,
    Store,
    Transaction,
    WorkerRecord,
)
from tests.helpers.procs import assert_counters_match, task_states


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
        assert tx.number_keys(wf, list(range(10))) == ({i: i for i in range(10)}, 10)
        assert tx.number_keys(wf, list(range(10, 20)))[0][10] == 10  # tasks 10-19: no rows yet
        late = worker(tx, "late", wf)
        assert tx.claim(wf, late, 4, [], Scope(start=10, limit=20)) == [10, 11, 12, 13]
        assert tx.unfinished(wf, Scope(limit=10)) == dict.fromkeys(range(10), "pending")
        early = worker(tx, "early", wf)
        assert tx.claim(wf, early, 100, [], Scope(limit=10)) == list(range(10))
        assert tx.claim(wf, early, 100, [], Scope()) == list(range(14, 20))


def test_restricted_claims_take_only_their_tasks(store: Store) -> None:
    with store.transaction() as tx:
        wf = tx.open_workflow("w", keyed=True).id
        tx.number_keys(wf, [f"k{i}" for i in range(10)])
        tx.restrict_to([2, 5, 7])  # tasks without rows yet: claims give them rows
        a = worker(tx, "a", wf)
        assert tx.claim(wf, a, 100, [], Scope(start=2, limit=8, restricted=True)) == [2, 5, 7]
        tx.finish(wf, a, [2, 5])
        tx.fail(wf, a, FailureRecord(7, "boom"), max_failed_retries=0)
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
        tx.fail(wf, a, FailureRecord(7, "boom"), max_failed_retries=1)  # pending again
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
        assert tx.fail(wf, a, FailureRecord(0, "boom"), max_failed_retries=0) == "failed"
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
        assert tx.fail(wf, b, FailureRecord(0, "not mine"), max_failed_retries=0) == "running"
        assert tx.task_states(wf)["m"] == "running"


def test_multi_task_pending_after_failure_is_not_over_admitted(store: Store) -> None:
    with store.transaction() as tx:
        wf = multi_workflow(tx)
        a, b, c, d = (worker(tx, name, wf) for name in "abcd")
        tx.claim(wf, a, 1, [], Scope())
        tx.claim(wf, b, 1, [], Scope())
        assert tx.fail(wf, a, FailureRecord(0, "flaky"), max_failed_retries=1) == "pending"
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
        wf, a, _ = two_workers_with_five_tasks_each(tx)
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


# -- keys: one mapping (key blocks) for every keyed workflow -----------------------------


def keyed(tx: Transaction, name: str, tasks: list[NewTask]) -> dict[str, int]:
    """Register ``tasks`` in keyed workflow ``name`` as a Graphband run does."""
    workflow = tx.open_workflow(name, keyed=True)
    wanted = {t.key for t in tasks} | {d for t in tasks for d in t.dependencies}
    return tx.register_keyed(workflow, tasks, tx.task_numbers(workflow.id, wanted))


def database_rows(state: Path, table: str) -> int:
    with sqlite3.connect(state / "state.db") as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608


def test_a_dependency_on_an_earlier_runs_task_waits_for_it(store: Store) -> None:
    with store.transaction() as tx:
        first = keyed(tx, "g", [NewTask("a"), NewTask("b")])  # plain: no rows
    with store.transaction() as tx:
        later = keyed(tx, "g", [NewTask("c", ("a",)), NewTask("d", ("c",))])
        assert first == {"a": 0, "b": 1}
        assert later == {"a": 0, "c": 2, "d": 3}
        wf = tx.find_workflow("g")
        assert wf is not None
        w = worker(tx, "w", wf)
        assert tx.claim(wf, w, 10, [], Scope()) == [0, 1]  # not c: a is not completed
        assert tx.claim(wf, w, 10, [], Scope()) == []
        tx.finish(wf, w, [0])
        assert tx.claim(wf, w, 10, [], Scope()) == [2]
        tx.finish(wf, w, [2])
        assert tx.claim(wf, w, 10, [], Scope()) == [3]


def test_a_dependency_without_a_row_yet_does_not_count_as_completed(
        store: Store, state: Path) -> None:
    with store.transaction() as tx:
        # x depends on y, registered after it; z and w are plain and after both.
        numbers = keyed(tx, "g", [NewTask("x", ("y",)), NewTask("y"), NewTask("z"),
                                  NewTask("w")])
        wf = tx.find_workflow("g")
        assert wf is not None
        assert tx.task_states(wf) == dict.fromkeys("xyzw", "pending")
        a = worker(tx, "a", wf)
        assert tx.claim(wf, a, 10, [], Scope()) == [numbers[k] for k in "yzw"]
        assert tx.may_get_work(wf, a, [], Scope())  # x waits for y, running here
        tx.finish(wf, a, [numbers["y"]])
        assert tx.claim(wf, a, 10, [], Scope()) == [numbers["x"]]
    # z and w were claimed as one run: no rows of their own
    assert database_rows(state, "tasks") == 2
    assert database_rows(state, "runs") == 1


def test_plain_tasks_after_the_last_that_needs_a_row_stay_without_one(
        store: Store, state: Path) -> None:
    with store.transaction() as tx:
        keyed(tx, "g", [NewTask("m", max_workers=2), *(NewTask(f"p{i}") for i in range(5))])
    assert database_rows(state, "tasks") == 1  # only the multi-worker task
    with store.transaction() as tx:
        wf = tx.find_workflow("g")
        assert wf is not None
        a, b = worker(tx, "a", wf), worker(tx, "b", wf)
        assert tx.claim(wf, a, 3, [], Scope()) == [0, 1, 2]  # rows first, then plain ones
        assert tx.claim(wf, b, 10, [], Scope()) == [0, 3, 4, 5]  # the second slot of m
        tx.finish(wf, a, [0, 1, 2])
        tx.finish(wf, b, [0, 3, 4, 5])
        assert set(tx.task_states(wf).values()) == {"completed"}


def test_a_hundred_thousand_keys_register_as_one_block(store: Store, state: Path) -> None:
    keys = [f"item-{i}" for i in range(100_000)]
    with store.transaction() as tx:
        workflow = tx.open_workflow("k", keyed=True)
        assert tx.task_numbers(workflow.id, keys) == {}
        numbers = tx.register_keys(workflow, keys, {})
        assert numbers == {key: i for i, key in enumerate(keys)}
    assert (database_rows(state, "key_blocks"), database_rows(state, "tasks")) == (1, 0)
    again = Store(state)  # another process: nothing cached
    with again.transaction() as tx:
        wf = tx.open_workflow("k", keyed=True).id
        assert tx.task_numbers(wf, keys) == numbers  # the same block: no index built
        assert tx.task_numbers(wf, {"item-7", "new"}) == {"item-7": 7}
        assert tx.progress(wf) == (100_000, 0)
    again.close()
    assert database_rows(state, "key_blocks") == 1


def test_number_keys_numbers_only_new_keys(store: Store) -> None:
    with store.transaction() as tx:
        wf = tx.open_workflow("pmap-f", keyed=True).id
        first = [3, "a", b"\x01digest"]
        assert tx.number_keys(wf, first) == ({3: 0, "a": 1, b"\x01digest": 2}, 3)
        assert tx.number_keys(wf, first) == ({3: 0, "a": 1, b"\x01digest": 2}, 0)
        numbers, new = tx.number_keys(wf, ["a", 4, 3])
        assert (numbers, new) == ({"a": 1, 4: 3, 3: 0}, 1)
        assert tx.progress(wf) == (4, 0)


def test_another_store_sees_blocks_appended_since_it_read(store: Store, state: Path) -> None:
    other = Store(state)
    with store.transaction() as tx:
        wf = tx.open_workflow("k", keyed=True).id
        tx.number_keys(wf, ["a", "b"])
    with other.transaction() as tx:
        assert tx.number_keys(wf, ["a", "b"]) == ({"a": 0, "b": 1}, 0)  # cached now
    with store.transaction() as tx:
        tx.number_keys(wf, ["c"])
    with other.transaction() as tx:
        assert tx.number_keys(wf, ["c", "a"]) == ({"c": 2, "a": 0}, 0)
    other.close()


def append_then_fail(store: Store, wf: int) -> None:
    """Number two keys, then fail: the transaction rolls back."""
    with store.transaction() as tx:
        assert tx.number_keys(wf, ["a", "b"]) == ({"a": 0, "b": 1}, 2)
        raise RuntimeError("undone")


def test_a_rolled_back_block_is_forgotten(store: Store) -> None:
    with store.transaction() as tx:
        wf = tx.open_workflow("k", keyed=True).id
    with pytest.raises(RuntimeError, match="undone"):
        append_then_fail(store, wf)
    with store.transaction() as tx:
        assert tx.task_numbers(wf, ["a", "b"]) == {}
        assert tx.number_keys(wf, ["b", "c"]) == ({"b": 0, "c": 1}, 2)


def test_a_reset_workflow_is_forgotten(store: Store) -> None:
    with store.transaction() as tx:
        old = tx.open_workflow("k", keyed=True).id
        tx.number_keys(old, ["a", "b"])
        tx.reset(old)
        new = tx.open_workflow("k", keyed=True).id
        assert new != old
        assert tx.task_numbers(old, ["a"]) == {}
        assert tx.number_keys(new, ["b"]) == ({"b": 0}, 1)


def test_views_name_keyed_tasks_by_key_and_others_by_number(store: Store) -> None:
    with store.transaction() as tx:
        numbers = keyed(tx, "g", [NewTask("a", info={"lr": 0.1}), NewTask("b", ("a",)),
                                  NewTask("c")])
        wf = tx.find_workflow("g")
        assert wf is not None
        w = worker(tx, "w", wf)
        assert tx.claim(wf, w, 1, [], Scope()) == [numbers["a"]]
        assert tx.workers(wf)[0][6] is None  # claimed, not started
        tx.set_current(w, numbers["a"])
        assert tx.workers(wf)[0][6] == "a"  # the current task
        failure = FailureRecord(numbers["a"], "boom", "Traceback ...\nboom", "'item'")
        assert tx.fail(wf, w, failure, max_failed_retries=0) == "failed"
        [kept] = tx.failures(wf)
        assert (kept["task"], kept["error"], kept["traceback"], kept["item"]) == (
            "a", "boom", "Traceback ...\nboom", "'item'")
        assert (kept["state"], kept["outcome"], kept["attempt"], kept["worker"]) == (
            "failed", "failed", 1, "w")
        tx.block_unreachable(wf)
        assert tx.task_states(wf) == {"a": "failed", "b": "blocked", "c": "pending"}
        assert tx.failed_tasks(wf, limit=5) == ["a"]
        assert [e[:2] for e in tx.events(wf)] == [("a", "failed"), ("b", "blocked")]
        assert [e[:2] for e in tx.latest_events(wf, 1)] == [("b", "blocked")]
        assert tx.task_infos(wf, {"a", "b", "0", "nope"}) == {"a": {"lr": 0.1}}
        assert tx.retry(wf, ("failed",), ["0", "nope"]) == 0  # "0" names no task here
        assert tx.retry(wf, ("failed",), ["a"]) == 1
        assert tx.task_states(wf) == dict.fromkeys("abc", "pending")
        assert tx.failures(wf) == []  # retried: it runs anew
        pm = tx.open_workflow("pmap-f", keyed=True).id
        tx.number_keys(pm, ["x", 7])
        p = worker(tx, "p", pm)
        assert tx.claim(pm, p, 1, [], Scope()) == [0]
        tx.fail(pm, p, FailureRecord(0, "boom"), max_failed_retries=0)
        assert tx.task_states(pm) == {"0": "failed", "1": "pending"}  # pmap's: numbers
        tx.set_current(p, 1)
        assert tx.workers(pm)[0][6] == "1"  # pmap's tasks by number
        assert tx.retry(pm, ("failed",), ["x"]) == 0
        assert tx.retry(pm, ("failed",), ["0"]) == 1


def test_a_restricted_worker_claims_only_its_tasks_without_rows(store: Store) -> None:
    with store.transaction() as tx:
        numbers = keyed(tx, "g", [NewTask(k) for k in "abcde"])
        wf = tx.find_workflow("g")
        assert wf is not None
        w = worker(tx, "w", wf)
        tx.restrict_to([numbers["b"], numbers["d"]])  # a later run with only b and d
        scope = Scope(restricted=True)
        assert tx.claim(wf, w, 10, [], scope) == [numbers["b"], numbers["d"]]
        tx.finish(wf, w, [numbers["b"], numbers["d"]])
        assert not tx.may_get_work(wf, w, [], scope)  # a, c and e are not ours
        assert tx.may_get_work(wf, w, [], Scope())


def test_no_worker_is_stuck_on_labels_while_plain_tasks_wait(store: Store) -> None:
    with store.transaction() as tx:
        keyed(tx, "g", [NewTask("gpu", requirements=("gpu",)), NewTask("after", ("gpu",)),
                        NewTask("plain")])
        wf = tx.find_workflow("g")
        assert wf is not None
        w = worker(tx, "w", wf)
        assert tx.stuck_on_labels(wf, w, [], Scope()) is None  # "plain" can run here
        assert tx.claim(wf, w, 10, [], Scope()) == [2]
        stuck = tx.stuck_on_labels(wf, w, [], Scope())
        assert stuck is not None
        assert stuck.tasks == ["after"]  # "gpu" is none of ours
        assert stuck.labels == [["gpu"]]


@pytest.mark.parametrize("version", ["4", "99", "garbage"])
def test_a_database_of_another_schema_version_is_refused(state: Path, version: str) -> None:
    Store(state).close()
    with Store(state).transaction():  # creates the database
        pass
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    with pytest.raises(StateError, match=f"has schema version {version}, this laufband reads"
                       f" version {SCHEMA_VERSION}: use the laufband version") as caught, \
            Store(state).transaction():
        pass
    assert caught.value.path == str(state / "state.db")


def test_an_unknown_dependency_names_workflow_and_task(store: Store) -> None:
    with pytest.raises(TaskGraphError, match="depends on unknown task 'nope'") as caught, \
            store.transaction() as tx:
        keyed(tx, "g", [NewTask("a", ("nope",))])
    assert (caught.value.workflow, caught.value.task) == ("g", "a")


def test_graphband_runs_depend_on_tasks_earlier_runs_registered(state: Path) -> None:
    quiet = {"disable": True}
    earlier = Store(state)
    with earlier.transaction() as tx:  # a run that registered a and b, then stopped
        keyed(tx, "g", [NewTask("a"), NewTask("b")])
    earlier.close()
    ran = [t.id for t in Graphband([Task("d", dependencies=["c"]), Task("c", dependencies=["a"]),
                                    Task("a")], path=state, name="g", tqdm_kwargs=quiet)]
    assert ran == ["a", "c", "d"]  # b is not this run's: left alone
    assert [t.id for t in Graphband([Task("e", dependencies=["b", "d"]), Task("b")],
                                    path=state, name="g", tqdm_kwargs=quiet)] == ["b", "e"]
    [flow] = Monitor(state).status("g")
    assert flow.counts["completed"] == flow.total == 5
    assert task_states(state, "g") == dict.fromkeys("abcde", "completed")
