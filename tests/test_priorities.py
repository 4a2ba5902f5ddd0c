"""Task(priority=...): workers claim the highest priorities first, ties in input order."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from laufband import Graphband, Monitor, Task
from laufband.store import NewTask, Scope, Store
from tests.helpers.procs import HELPERS, Processes, wait_for

pytestmark = pytest.mark.timeout(120)
QUIET = {"disable": True}
WORKERS = 4
TASKS = 40


def run_workers(state: Path, tmp_path: Path, procs: Processes, priorities: list[int],
                sleep: float) -> list[tuple[str, float]]:
    """Run WORKERS processes released together over tasks of ``priorities``, each task
    sleeping ``sleep`` s; return (task, start time) of every start, as logged."""
    log, go = tmp_path / "starts.log", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(WORKERS)]
    workers = [procs.start(HELPERS / "features_worker.py", "priorities", state,
                           "--priorities", json.dumps(priorities), "--log", log,
                           "--ready", ready[i], "--go", go, "--sleep", sleep)
               for i in range(WORKERS)]
    wait_for(lambda: all(path.exists() for path in ready))
    go.touch()
    results = procs.wait_all(workers)
    assert [code for code, _, _ in results] == [0] * WORKERS, results
    return [(task, float(at)) for task, at in
            (line.split() for line in log.read_text().splitlines())]


def test_four_workers_start_the_highest_priorities_first(state: Path, tmp_path: Path,
                                                         procs: Processes) -> None:
    priorities = list(range(TASKS))
    random.Random(19).shuffle(priorities)
    starts = sorted((at, task) for task, at in
                    run_workers(state, tmp_path, procs, priorities, sleep=0.15))
    assert sorted(task for _, task in starts) == sorted(f"t{i}" for i in range(TASKS))
    # rank 0: the highest priority
    rank = {f"t{i}": TASKS - 1 - p for i, p in enumerate(priorities)}
    order = [rank[task] for _, task in starts]
    # Workers claim a few tasks at once (batches), so the order is not exact; but the
    # first tasks to start are of the highest priorities, and every task of the top
    # quarter starts before any of the lower half.
    assert set(order[:WORKERS]) <= set(range(2 * WORKERS)), order
    first_low = min(at for at, task in starts if rank[task] >= TASKS // 2)
    last_high = max(at for at, task in starts if rank[task] < TASKS // 4)
    assert last_high < first_low, order


def test_with_priorities_no_worker_starts_a_lower_one_before_a_higher_one(
        state: Path, tmp_path: Path, procs: Processes) -> None:
    # Each worker claims one task at a time and none ahead: every claim takes the
    # highest priority ready. Start times of tasks claimed one after the other by
    # different workers may swap by a few milliseconds, never by a task's duration.
    priorities = [0, 5, -3, 2**62, 5, 7, 0, -(2**62), 7, 1, 3, 2, 9, 4, 6, 8]
    start = dict(run_workers(state, tmp_path, procs, priorities, sleep=0.3))
    assert sorted(start) == sorted(f"t{i}" for i in range(len(priorities)))
    early = [(low, high) for low, p_low in enumerate(priorities)
             for high, p_high in enumerate(priorities)
             if p_high > p_low and start[f"t{low}"] < start[f"t{high}"] - 0.15]
    assert early == [], (early, sorted(start, key=start.__getitem__))


def test_a_batched_claim_takes_the_highest_ready_priorities(state: Path) -> None:
    store = Store(state)
    try:
        with store.transaction() as tx:
            workflow = tx.open_workflow("batch", keyed=True)
            tasks = [NewTask(f"t{i}", priority=p)
                     for i, p in enumerate([0, 5, -1, 5, 3, 0, 9, -1, 3, 0])]
            numbers = tx.register_keyed(workflow, tasks, {})
            me = tx.register_worker("w", workflow.id, "h", 1, "", None, [])
            names = {seq: key for key, seq in numbers.items()}
            first = [names[s] for s in tx.claim(workflow.id, me, 5, [], Scope())]
            second = [names[s] for s in tx.claim(workflow.id, me, 5, [], Scope())]
    finally:
        store.close()
    assert first == ["t6", "t1", "t3", "t4", "t8"]  # 9, 5, 5, 3, 3: ties in input order
    assert second == ["t0", "t5", "t9", "t2", "t7"]  # then 0, 0, 0 before -1, -1


def test_plain_tasks_registered_later_come_before_negative_priorities(state: Path) -> None:
    first = Graphband([Task("low", priority=-1), Task("a")], path=state, name="later",
                      tqdm_kwargs=QUIET)
    for task in first:
        assert task.id == "a"
        first.close()  # "a" completed, "low" left pending
    ran = [t.id for t in Graphband([Task("low", priority=-1), Task("b"), Task("c")],
                                   path=state, name="later", tqdm_kwargs=QUIET)]
    assert ran == ["b", "c", "low"]


@pytest.mark.parametrize(("priority", "message"), [
    (1.5, "Task 'x': priority must be an integer (higher runs first), got 1.5 (float)"),
    ("high", "Task 'x': priority must be an integer (higher runs first), got 'high' (str)"),
    (True, "Task 'x': priority must be an integer (higher runs first), got True (bool)"),
])
def test_a_priority_that_is_no_integer_is_refused(priority: object, message: str) -> None:
    with pytest.raises(TypeError) as caught:
        Task("x", priority=priority)  # type: ignore[arg-type]
    assert str(caught.value) == message + ": use int(...)"


@pytest.mark.parametrize("priority", [2**63, -(2**63) - 1, 10**30])
def test_a_priority_out_of_sqlites_integer_range_is_refused(priority: int) -> None:
    with pytest.raises(ValueError, match=r"^Task 'x': priority must be within -2\*\*63"
                       r" \.\. 2\*\*63-1 \(a 64-bit integer\), got -?\d+$"):
        Task("x", priority=priority)


def test_the_extreme_priorities_run_in_order(state: Path) -> None:
    tasks = [Task("mid"), Task("low", priority=-(2**63)), Task("high", priority=2**63 - 1)]
    ran = [t.id for t in Graphband(tasks, path=state, name="extremes", tqdm_kwargs=QUIET)]
    assert ran == ["high", "mid", "low"]


def test_equal_priorities_keep_input_order(state: Path) -> None:
    tasks = [Task(f"t{i}", priority=i % 2) for i in range(6)]
    ran = [t.id for t in Graphband(tasks, path=state, name="ties", tqdm_kwargs=QUIET)]
    assert ran == ["t1", "t3", "t5", "t0", "t2", "t4"]


def test_a_worker_whose_own_tasks_have_no_priority_still_claims_one_at_a_time(
        state: Path) -> None:
    """Priorities are the workflow's: a worker that joins with the same tasks but no
    priorities of its own must not batch-claim them past the higher ones."""
    ids = [f"t{i}" for i in range(20)]
    first = Graphband([Task(i, priority=n % 3) for n, i in enumerate(ids)], path=state,
                      name="mixed", tqdm_kwargs=QUIET)
    for _ in first:
        break  # registered with priorities (a break fails the task it left)
    first.close()
    joining = Graphband([Task(i) for i in ids], path=state, name="mixed", tqdm_kwargs=QUIET)
    held = []
    for _ in joining:
        [flow] = Monitor(state).status("mixed")
        held.append(flow.counts["claimed"] + flow.counts["running"])
    assert held == [1] * (len(ids) - 1)


def test_numpy_integers_are_priorities() -> None:
    numpy = pytest.importorskip("numpy")
    sizes = numpy.array([3, 1, 2])
    tasks = [Task(f"t{i}", priority=size) for i, size in enumerate(sizes)]
    assert [(t.priority, type(t.priority)) for t in tasks] == [(3, int), (1, int), (2, int)]
