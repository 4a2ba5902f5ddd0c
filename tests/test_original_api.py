"""The tests of the original laufband (0.2.1), ported to this laufband's public API.

Each test names the original it ports (``tests/test_graphband.py::test_x`` of 0.2.1).
What the originals checked through database rows (sqlalchemy sessions, flufl locks)
is checked here through ``Monitor``, ``laufband status`` and what the loops yield;
``db=`` becomes ``path=``. Where this laufband deliberately behaves differently, the
test says so (docs/migrating.md lists every difference).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import filelock
import networkx as nx
import pytest

from laufband import Graphband, Laufband, Monitor, StateError, Task, TaskGraphError
from tests.helpers.procs import RUN_DEADLINE, STARTUP_DEADLINE, Processes, wait_for

pytestmark = pytest.mark.timeout(180)
NAME = "original"  # the workflow every test uses (0.2.1 had one per database file)
CTX = multiprocessing.get_context("spawn")  # fresh interpreters, as separate scripts are
QUIET = {"disable": True}


# -- the task generators of 0.2.1's tests ------------------------------------------------


def sequential_task() -> Iterator[Task]:
    for i in range(10):
        yield Task(id=f"task_{i}", data={"value": i})


def sequential_multi_worker_task() -> Iterator[Task]:
    for i in range(10):
        yield Task(id=f"task_{i}", data={"value": i}, max_parallel_workers=2)


def sequential_task_with_labels() -> Iterator[Task]:
    for i in range(5):
        yield Task(id=f"task_{i}", data={"value": i}, requirements={"cpu"})
    for i in range(5, 10):
        yield Task(id=f"task_{i}", data={"value": i}, requirements={"gpu"})


def graph_task() -> Iterator[Task]:
    digraph = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("b", "e"), ("c", "f"),
                          ("c", "g")])
    for node in ("b", "d", "e"):
        digraph.nodes[node]["requirements"] = {"b-branch"}
    for node in nx.topological_sort(digraph):
        yield Task(id=node, data=node, dependencies=set(digraph.predecessors(node)),
                   requirements=digraph.nodes[node].get("requirements", {"main"}))


def multi_dependency_graph_task() -> Iterator[Task]:
    digraph = nx.DiGraph([("a", "c"), ("b", "c"), ("c", "e"), ("d", "e")])
    for node in nx.topological_sort(digraph):
        yield Task(id=node, data=node, dependencies=set(digraph.predecessors(node)))


def blocked_dependency_graph_task() -> Iterator[Task]:
    digraph = nx.DiGraph([("a", "b"), ("b", "c")])
    digraph.nodes["b"]["requirements"] = {"special-worker"}
    for node in nx.topological_sort(digraph):
        yield Task(id=node, data=node, dependencies=set(digraph.predecessors(node)),
                   requirements=digraph.nodes[node].get("requirements", {"main"}))


GRAPH_DEPENDENCIES = {"a": [], "b": ["a"], "c": ["a"], "d": ["b"], "e": ["b"], "f": ["c"],
                      "g": ["c"]}


# -- real worker processes ----------------------------------------------------------------


def task_worker(tasks: Callable[[], Iterator[Task]], state: str, log: str, pause: float,
                barrier: Any = None, break_on: str | None = None, outcome: str | None = None,
                env: dict[str, str] | None = None, lock_file: str | None = None,
                **options: Any) -> None:
    """0.2.1's ``task_worker``: for each task, append "ID - IDENTIFIER" to ``log`` under
    ``worker.lock``, then sleep ``pause``. ``break_on`` leaves the loop at that task id
    ("*": the first); ``outcome`` receives "done" or the exception that ended the loop;
    ``lock_file`` is passed as ``lock=filelock.FileLock(lock_file)``."""
    os.environ.update(env or {})
    if lock_file is not None:
        options["lock"] = filelock.FileLock(lock_file)
    worker = Graphband(tasks(), path=state, name=NAME, tqdm_kwargs=QUIET, **options)
    if barrier is not None:
        barrier.wait(STARTUP_DEADLINE)
    try:
        for task in worker:
            with worker.lock, Path(log).open("a") as out:
                out.write(f"{task.id} - {worker.identifier}\n")
            if break_on in (task.id, "*"):
                break
            time.sleep(pause)
    except RuntimeError as error:
        if outcome is None:
            raise
        Path(outcome).write_text(f"{type(error).__name__}: {error}")
        return
    if outcome is not None:
        Path(outcome).write_text("done")


def hold_user_lock(state: str, flags: str) -> None:
    """Hold ``worker.lock`` from ``flags/held`` until ``flags/release`` appears."""
    worker = Graphband(sequential_task(), path=state, name=NAME, tqdm_kwargs=QUIET)
    with worker.lock:
        (Path(flags) / "held").touch()
        wait_for((Path(flags) / "release").exists, RUN_DEADLINE, "the release flag")


@pytest.fixture
def spawn(procs: Processes) -> Callable[..., BaseProcess]:
    """Start ``task_worker`` (or ``target=``) in a real process, reaped by ``procs``."""

    def start(*args: Any, target: Callable[..., None] = task_worker,
              **kwargs: Any) -> BaseProcess:
        return procs.process(CTX, target, *args, **kwargs)

    return start


def join(procs: list[BaseProcess], deadline: float = RUN_DEADLINE) -> None:
    end = time.monotonic() + deadline
    for proc in procs:
        proc.join(max(0.0, end - time.monotonic()))
        assert proc.exitcode == 0, f"worker {proc.pid} ended with exit code {proc.exitcode}"


def read_log(log: Path) -> list[tuple[str, str]]:
    """(task id, worker identifier) per line of a ``task_worker`` log."""
    if not log.exists():
        return []
    return [tuple(line.split(" - ")) for line in log.read_text().splitlines()]  # type: ignore[misc]


def status(state: Path) -> Any:
    monitor = Monitor(state)
    try:
        [flow] = monitor.status(NAME)
    finally:
        monitor.close()
    return flow


def graphband(state: Path, tasks: Iterator[Task] | None = None, **options: Any) -> Graphband:
    return Graphband(sequential_task() if tasks is None else tasks, path=state, name=NAME,
                     tqdm_kwargs=QUIET, **options)


# -- tests/test_laufband.py ---------------------------------------------------------------


def runs_only_once_retried(state: Path, worker: Graphband, kind: str) -> list[str]:
    """A task failed or killed for good is not picked up by a worker with higher retry
    limits (as 0.2.1 did) until ``laufband retry``; return the ids it then runs."""
    assert worker.has_more_jobs is False
    monitor = Monitor(state)
    assert monitor.retry(NAME, (kind,)) == 1
    monitor.close()
    assert worker.has_more_jobs is True
    ran = [x.id for x in worker]
    assert worker.has_more_jobs is False
    return ran


def test_laufband_length_with_list(state: Path) -> None:
    worker = Laufband(list(range(10)), path=state, name=NAME, tqdm_kwargs=QUIET)
    assert len(worker) == 10
    assert len(list(worker)) == 10


def test_laufband_length_with_generator_raises_error(state: Path) -> None:
    worker = Laufband((x for x in range(10)), path=state, name=NAME, tqdm_kwargs=QUIET)
    with pytest.raises(TypeError, match="object of type 'generator' has no len"):
        len(worker)
    results = list(worker)
    assert sorted(results) == list(range(10))


def test_laufband_iter_none(state: Path) -> None:
    worker = Laufband((None for _ in range(10)), path=state, name=NAME, tqdm_kwargs=QUIET)
    assert list(worker) == [None] * 10


# -- tests/test_monitor.py ----------------------------------------------------------------


def test_monitor(state: Path) -> None:
    worker = graphband(state, (Task(f"task_{i}", data=i, info={"value": i}) for i in range(10)))
    for item in worker:
        if item.id == "task_5":
            break
    flow = status(state)
    [shown] = flow.workers
    assert shown.identifier == worker.identifier
    assert shown.state == "offline"
    assert shown.done == 5
    # 0.2.1 stored a task once a worker reached it (6); all 10 are registered here.
    assert flow.total == 10
    assert flow.counts == {"pending": 4, "claimed": 0, "running": 0, "completed": 5,
                           "failed": 1, "killed": 0, "blocked": 0}
    [event] = flow.events
    assert (event.task, event.state, event.worker) == ("task_5", "failed", worker.identifier)
    assert event.info == {"value": 5}  # Task.info, as 0.2.1's Task(info=...) took it


def test_monitor_refuses_the_original_db_and_lock(state: Path) -> None:
    with pytest.raises(TypeError, match="path="):
        Monitor(lock=filelock.FileLock(str(state.parent / "graphband.lock")),
                db="sqlite:///graphband.sqlite")


def test_task_info_in_status_json_and_text(state: Path, procs: Processes) -> None:
    tasks = [Task("train", info={"lr": 0.1, "epochs": [1, 2]}), Task("plain")]
    for task in graphband(state, iter(tasks)):
        if task.id == "train":
            break
    result = procs.python("-m", "laufband", "status", state, "--json")
    assert result.returncode == 0, result.stderr
    [flow] = json.loads(result.stdout)["workflows"]
    [event] = flow["events"]
    assert event["task"] == "train"
    assert event["info"] == {"lr": 0.1, "epochs": [1, 2]}
    assert all(w["current_info"] == {} for w in flow["workers"])
    text = procs.python("-m", "laufband", "status", state, env={"COLUMNS": "160"})
    assert 'failed train {"lr": 0.1, "epochs": [1, 2]}' in text.stdout


def test_task_info_of_running_tasks(state: Path) -> None:
    worker = graphband(state, (Task(f"t{i}", info={"i": i}) for i in range(3)))
    seen = []
    for task in worker:
        [shown] = status(state).workers
        seen.append(task.id)
        assert shown.state == "online"
        # current: the task it runs (its in-flight record says), with its info
        assert shown.current_info == {"i": int(shown.current[1:])}
    assert seen == ["t0", "t1", "t2"]


def test_task_info_must_be_json() -> None:
    with pytest.raises(TypeError, match=r"Task 'x': info must be a JSON-serialisable dict"):
        Task("x", info={"when": object()})
    with pytest.raises(TypeError, match="Task 'y'"):
        Task("y", info=["not", "a", "dict"])  # type: ignore[arg-type]
    assert Task("z", info={"a": 1}) == Task("z", info={"a": 1}) != Task("z")
    assert "info={'a': 1}" in repr(Task("z", info={"a": 1}))


# -- tests/test_graphband.py --------------------------------------------------------------


def test_graphband_sequential_success(state: Path) -> None:
    pbar = graphband(state)
    with pbar:
        items = list(pbar)
        assert [x.id for x in items] == [f"task_{i}" for i in range(10)]
        assert status(state).counts["completed"] == 10
        assert list(pbar) == []  # iterating again yields nothing
    [worker] = status(state).workers
    assert worker.state == "offline"
    assert worker.done == 10
    assert list(graphband(state, identifier="2nd-worker")) == []


def test_graphband_sequential_close_and_resume(state: Path) -> None:
    pbar = graphband(state)
    items = []
    for item in pbar:
        items.append(item)
        if item.id == "task_5":
            pbar.close()  # task_5 counts as completed
    assert len(items) == 6
    assert status(state).counts["completed"] == 6
    items.extend(pbar)
    assert len(items) == 10
    assert len({x.id for x in items}) == 10
    assert status(state).counts["completed"] == 10


def test_graphband_sequential_break_and_resume(state: Path) -> None:
    pbar = graphband(state)
    items = []
    for item in pbar:
        if item.id == "task_5":
            break  # task_5 counts as failed
        items.append(item)
    assert len(items) == 5
    flow = status(state)
    assert (flow.counts["completed"], flow.counts["failed"]) == (5, 1)
    items.extend(pbar)
    assert len(items) == 9
    assert "task_5" not in {x.id for x in items}
    flow = status(state)
    assert (flow.counts["completed"], flow.counts["failed"]) == (9, 1)
    assert [(e.task, e.state) for e in flow.events] == [("task_5", "failed")]


def test_graphband_sequential_break_and_retry(state: Path) -> None:
    pbar = graphband(state, max_failed_retries=2)
    items = []
    for item in pbar:
        if item.id == "task_5":
            break
        items.append(item)
    assert len(items) == 5
    items.extend(pbar)  # the failed task runs again
    assert sorted(x.id for x in items) == sorted(f"task_{i}" for i in range(10))
    assert status(state).counts["completed"] == 10


def test_duplicate_worker(state: Path) -> None:
    # 0.2.1 refused a second Graphband with the identifier of one not offline when it
    # was built (ValueError); here a worker registers when it starts iterating, so the
    # second one is refused then, while the first still runs.
    first = graphband(state)
    loop = iter(first)
    next(loop)
    with pytest.raises(StateError, match="in use by a live worker"):
        next(iter(graphband(state, identifier=first.identifier)))
    assert len(list(loop)) == 9


@pytest.mark.parametrize("num_processes", [1, 2, 4])
def test_multiprocessing_sequential_task(state: Path, tmp_path: Path, num_processes: int,
                                         spawn: Callable[..., BaseProcess]) -> None:
    log = tmp_path / "output.txt"
    barrier = CTX.Barrier(num_processes)
    join([spawn(sequential_task, str(state), str(log), num_processes * 0.3, barrier)
          for _ in range(num_processes)])
    lines = read_log(log)
    assert len({worker for _, worker in lines}) == num_processes
    assert Counter(task for task, _ in lines) == {f"task_{i}": 1 for i in range(10)}


def test_sequential_multi_worker_task(state: Path, tmp_path: Path,
                                      spawn: Callable[..., BaseProcess]) -> None:
    log = tmp_path / "output.txt"
    num_processes = 4
    barrier = CTX.Barrier(num_processes)
    join([spawn(sequential_multi_worker_task, str(state), str(log), num_processes * 0.2,
                barrier) for _ in range(num_processes)])
    lines = read_log(log)
    assert len({worker for _, worker in lines}) == num_processes
    assert {task for task, _ in lines} == {f"task_{i}" for i in range(10)}
    # Each task by at most 2 workers in all (a 3rd may not join once one finished):
    # with this pause, by 2.
    assert 18 <= len(lines) <= 20, f"expected ~20 task executions, got {len(lines)}"
    runs = Counter(lines)
    assert max(runs.values()) == 1, "a worker ran a task twice"
    assert max(Counter(task for task, _ in lines).values()) <= 2
    assert status(state).counts["completed"] == 10


def test_kill_sequential_task_worker(state: Path, tmp_path: Path,
                                     spawn: Callable[..., BaseProcess]) -> None:
    """Also 0.2.1's test_has_more_jobs_with_killed_workers."""
    log = tmp_path / "output.txt"
    doomed = spawn(sequential_task, str(state), str(log), RUN_DEADLINE,
                   identifier="killed-worker", heartbeat_interval=1, heartbeat_timeout=2)
    wait_for(lambda: read_log(log) == [("task_0", "killed-worker")], STARTUP_DEADLINE,
             "the first worker to start task_0")
    doomed.kill()
    doomed.join(STARTUP_DEADLINE)
    [worker] = status(state).workers
    # Nobody has reaped it yet, but status sees its process is gone (this host).
    assert worker.state == "dead"
    # 0.2.1 never re-ran a killed task by default (max_killed_retries=0); the default
    # here is 1. With 0, the dead worker's task is killed (on this host: at once).
    no_retries = graphband(state, identifier="no-retries-worker", max_killed_retries=0)
    assert no_retries.has_more_jobs is True
    assert len(list(no_retries)) == 9
    assert no_retries.has_more_jobs is False
    flow = status(state)
    assert (flow.counts["completed"], flow.counts["killed"]) == (9, 1)
    assert {w.identifier: w.state for w in flow.workers} == {
        "killed-worker": "dead", "no-retries-worker": "offline"}
    assert [(e.task, e.state, e.worker) for e in flow.events] == [
        ("task_0", "killed", "killed-worker")]
    # 0.2.1 re-ran it for any worker with a higher max_killed_retries; here a killed
    # task is final until it is retried (laufband retry --killed).
    retries = graphband(state, identifier="retries-worker", max_killed_retries=2)
    assert runs_only_once_retried(state, retries, "killed") == ["task_0"]
    assert status(state).counts["completed"] == 10


def test_sequential_task_with_labels(state: Path) -> None:
    cpu_worker = graphband(state, sequential_task_with_labels(), labels={"cpu"},
                           identifier="cpu_worker")
    gpu_worker = graphband(state, sequential_task_with_labels(), labels={"gpu"},
                           identifier="gpu_worker")
    assert [x.id for x in cpu_worker] == [f"task_{i}" for i in range(5)]
    assert [x.id for x in gpu_worker] == [f"task_{i}" for i in range(5, 10)]
    assert all(x.requirements == {"gpu"} for x in sequential_task_with_labels()
               if int(x.id[5:]) >= 5)


def test_sequential_task_with_labels_multi_label_worker(state: Path) -> None:
    worker = graphband(state, sequential_task_with_labels(), labels={"cpu", "gpu"})
    assert len(list(worker)) == 10


def test_failure_policy_stop(state: Path) -> None:
    worker = graphband(state, failure_policy="stop")
    for item in worker:
        if item.id == "task_5":
            break  # a failed task
    ran: list[str] = []
    with pytest.raises(RuntimeError, match="task_5"):
        ran.extend(item.id for item in worker)
    assert ran == []  # 0.2.1 checked before every task, the first one too


def test_failure_policy_stop_from_the_environment(state: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for item in graphband(state):
        if item.id == "task_2":
            break
    monkeypatch.setenv("LAUFBAND_FAILURE_POLICY", "stop")
    ran: list[str] = []
    with pytest.raises(RuntimeError, match="task_2"):
        ran.extend(item.id for item in graphband(state, identifier="stopping"))
    assert ran == []
    monkeypatch.setenv("LAUFBAND_FAILURE_POLICY", "continue")
    assert len(list(graphband(state))) == 7  # "continue", the default, carries on


def test_failure_policy_stop_stops_other_workers(state: Path, tmp_path: Path,
                                                 spawn: Callable[..., BaseProcess]) -> None:
    log, outcome = tmp_path / "output.txt", tmp_path / "outcome"
    barrier = CTX.Barrier(2)
    steady = spawn(sequential_task, str(state), str(log), 0.5, barrier, outcome=str(outcome),
                   identifier="steady", failure_policy="stop")
    failing = spawn(sequential_task, str(state), str(log), 0.5, barrier, break_on="*",
                    identifier="failing", failure_policy="stop")
    join([failing, steady])
    [failed] = [task for task, worker in read_log(log) if worker == "failing"]
    text = outcome.read_text()
    assert text.startswith("RuntimeError"), text
    assert failed in text, text
    assert status(state).counts["completed"] < 9


def test_graph_task(state: Path) -> None:
    w1 = graphband(state, graph_task(), labels={"b-branch"}, identifier="b-branch-worker")
    assert [x.id for x in w1] == []  # "a" needs a "main" worker, and none is online
    w2 = graphband(state, graph_task(), labels={"main"}, identifier="main-worker")
    assert [x.id for x in w2] == ["a", "c", "f", "g"]
    assert [x.id for x in w1] == ["b", "d", "e"]
    assert status(state).counts["completed"] == 7


def test_graph_task_in_parallel(state: Path, tmp_path: Path,
                                spawn: Callable[..., BaseProcess]) -> None:
    # The same graph with both workers running at once, as separate scripts: each
    # task after its dependencies, each by the worker with its labels.
    log = tmp_path / "output.txt"
    barrier = CTX.Barrier(2)
    join([spawn(graph_task, str(state), str(log), 0.05, barrier, labels={"b-branch"},
                identifier="b-branch-worker"),
          spawn(graph_task, str(state), str(log), 0.05, barrier, labels={"main"},
                identifier="main-worker")])
    lines = read_log(log)
    order = [task for task, _ in lines]
    assert len(order) == len(set(order))
    assert dict(lines).items() <= {
        **dict.fromkeys("acfg", "main-worker"), **dict.fromkeys("bde", "b-branch-worker")
    }.items()
    for task, dependencies in GRAPH_DEPENDENCIES.items():
        if task in order:
            assert all(order.index(dep) < order.index(task) for dep in dependencies)
    # A worker may leave while the other is not online yet: a rerun does the rest.
    rest = [x.id for x in graphband(state, graph_task(), labels={"main", "b-branch"})]
    assert sorted(order + rest) == list("abcdefg")
    assert status(state).counts["completed"] == 7


def test_multi_dependency_graph_task(state: Path) -> None:
    order = [x.id for x in graphband(state, multi_dependency_graph_task())]
    assert set(order) == {"a", "b", "c", "d", "e"}
    expected = {"a": [], "b": [], "c": ["a", "b"], "d": [], "e": ["c", "d"]}
    for task, dependencies in expected.items():
        assert all(order.index(dep) < order.index(task) for dep in dependencies)


def test_has_more_jobs(state: Path) -> None:
    worker = graphband(state)
    assert worker.has_more_jobs is True
    for item in worker:
        if item.id == "task_5":
            break
    assert worker.has_more_jobs is True  # 4 tasks left
    assert len(list(worker)) == 4
    assert worker.has_more_jobs is False  # the failed task is not picked up
    # 0.2.1: a worker with max_failed_retries=2 picked up a task that had failed for
    # good under max_failed_retries=0. Here the limit applies when the task fails;
    # a task failed for good runs again once retried (laufband retry --failed).
    retrier = graphband(state, max_failed_retries=2, identifier="retry-worker")
    assert runs_only_once_retried(state, retrier, "failed") == ["task_5"]
    assert graphband(state, identifier="retry-worker-2").has_more_jobs is False


def test_has_more_jobs_with_blocked_dependencies(state: Path) -> None:
    # a --> b --> c, where b needs the special worker's label and a, c the main one's.
    main = graphband(state, blocked_dependency_graph_task(), labels={"main"},
                     identifier="main-worker")
    assert main.has_more_jobs is True
    assert [x.id for x in main] == ["a"]
    assert main.has_more_jobs is True  # c is left, though this worker cannot start it
    assert list(main) == []
    assert main.has_more_jobs is True
    special = graphband(state, blocked_dependency_graph_task(), labels={"special-worker"},
                        identifier="special-worker")
    assert special.has_more_jobs is True
    assert [x.id for x in special] == ["b"]
    assert special.has_more_jobs is False
    assert main.has_more_jobs is True
    assert [x.id for x in main] == ["c"]
    assert main.has_more_jobs is False
    assert special.has_more_jobs is False


def test_resume_worker(state: Path, tmp_path: Path, spawn: Callable[..., BaseProcess]) -> None:
    worker = graphband(state, identifier="worker", heartbeat_interval=1, heartbeat_timeout=2)
    length = 0
    with worker:
        for item in worker:
            assert {w.identifier: w.state for w in status(state).workers} == {
                "worker": "online"}
            length += 1
            if item.id == "task_5":
                break
        assert length == 6
        for _ in worker:
            length += 1
        assert length == 10  # task_5 failed and is not run again
    assert [w.state for w in status(state).workers] == ["offline"]
    del worker
    join([spawn(sequential_task, str(state), str(tmp_path / "test.txt"), 0.1,
                identifier="worker")])  # the identifier, reused by another process
    assert [w.state for w in status(state).workers] == ["offline"]


def test_context_manager_protocol(state: Path) -> None:
    with graphband(state, identifier="context-worker") as worker:
        for processed, _ in enumerate(worker, 1):
            [shown] = status(state).workers
            assert (shown.identifier, shown.state) == ("context-worker", "online")
            if processed >= 3:
                break
    [shown] = status(state).workers
    assert shown.state == "offline"


def test_non_context_manager_sets_offline(state: Path) -> None:
    worker = graphband(state, identifier="non-context-worker")
    assert len(list(worker)) == 10
    assert [(w.identifier, w.state) for w in status(state).workers] == [
        ("non-context-worker", "offline")]


def test_worker_reuse_from_offline(state: Path) -> None:
    with graphband(state, identifier="reuse-worker") as first:
        assert len(list(first)) == 10
    with graphband(state, identifier="reuse-worker") as second:
        assert list(second) == []
    assert [(w.identifier, w.state) for w in status(state).workers] == [
        ("reuse-worker", "offline")]


# -- tests/test_lock_separation.py --------------------------------------------------------


def test_user_lock_does_not_block_the_state(state: Path, tmp_path: Path,
                                            spawn: Callable[..., BaseProcess]) -> None:
    """0.2.1's test_user_lock_does_not_block_heartbeat and ..._during_user_lock_hold."""
    holder = spawn(str(state), str(tmp_path), target=hold_user_lock)
    wait_for((tmp_path / "held").exists, STARTUP_DEADLINE, "the user lock to be held")
    try:
        worker = graphband(state)
        with pytest.raises(filelock.Timeout):
            worker.lock.acquire(timeout=0.2)  # held by the other process
        assert len(list(worker)) == 10  # while the user lock is held elsewhere
        assert status(state).counts["completed"] == 10
    finally:
        (tmp_path / "release").touch()
    join([holder])


def test_heartbeat_continues_during_user_lock_hold(state: Path) -> None:
    worker = graphband(state, heartbeat_interval=1, heartbeat_timeout=5)
    for _ in worker:
        with worker.lock:
            time.sleep(3)
            [shown] = status(state).workers
        assert shown.last_seen < 2.0, f"no heartbeat for {shown.last_seen:.1f} s"
        worker.close()


def test_database_lock_prevents_corruption(state: Path, tmp_path: Path,
                                           spawn: Callable[..., BaseProcess]) -> None:
    log = tmp_path / "output.txt"
    join([spawn(sequential_task, str(state), str(log), 0.0, identifier=f"worker_{i}")
          for i in range(3)])
    assert Counter(task for task, _ in read_log(log)) == {f"task_{i}": 1 for i in range(10)}
    flow = status(state)
    assert flow.counts["completed"] == 10
    assert {w.state for w in flow.workers} == {"offline"}


def test_unknown_dependency_is_refused(state: Path) -> None:
    # 0.2.1's test_failed_job_cache_coordination: task_1 depends on a task nobody
    # yields; 0.2.1 skipped it silently, here it is an error naming both.
    tasks = [Task("task_0"), Task("task_1", dependencies={"nonexistent"})]
    with pytest.raises(TaskGraphError, match=r"task_1.*nonexistent"):
        list(graphband(state, iter(tasks)))


# -- options of 0.2.1 ---------------------------------------------------------------------


@pytest.mark.parametrize("option", ["db", "db_lock"])
@pytest.mark.parametrize("cls", [Graphband, Laufband])
def test_original_db_options_name_the_replacement(state: Path, cls: type, option: str) -> None:
    value = "sqlite:///graphband.sqlite" if option == "db" else filelock.FileLock("x.lock")
    data = list(sequential_task()) if cls is Graphband else list(range(3))
    expected = {"db": "path=", "db_lock": "db_lock="}[option]  # db_lock has no replacement
    with pytest.raises(TypeError, match=expected):
        cls(data, path=state, name=NAME, **{option: value})


@pytest.mark.parametrize("make_lock", [lambda p: filelock.FileLock(str(p)),
                                       lambda p: threading.Lock()])
def test_lock_object_is_the_worker_lock(state: Path, tmp_path: Path,
                                        make_lock: Callable[[Path], Any]) -> None:
    lock = make_lock(tmp_path / "mine.lock")
    worker = graphband(state, lock=lock)
    assert worker.lock is lock
    done = []
    for task in worker:
        with worker.lock:
            done.append(task.id)
    assert len(done) == 10


@pytest.mark.parametrize("kind", ["file", "soft"])
def test_lock_kind(state: Path, kind: str) -> None:
    worker = graphband(state, lock=kind)
    for _ in worker:
        with worker.lock:
            pass
    assert status(state).counts["completed"] == 10


def test_lock_object_shared_by_processes(state: Path, tmp_path: Path,
                                         spawn: Callable[..., BaseProcess]) -> None:
    log = tmp_path / "output.txt"
    barrier = CTX.Barrier(3)
    join([spawn(sequential_task, str(state), str(log), 0.05, barrier,
                lock_file=str(tmp_path / "shared.lock")) for _ in range(3)])
    assert Counter(task for task, _ in read_log(log)) == {f"task_{i}": 1 for i in range(10)}


def test_identifier_callable(state: Path) -> None:
    worker = graphband(state, identifier=lambda: "from-a-callable")
    assert worker.identifier == "from-a-callable"
    assert len(list(worker)) == 10
    assert [w.identifier for w in status(state).workers] == ["from-a-callable"]


def test_original_environment_variables(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("IDENTIFIER", "env-worker"), ("HEARTBEAT_TIMEOUT", "60"),
                        ("HEARTBEAT_INTERVAL", "30"), ("MAX_KILLED_RETRIES", "0"),
                        ("MAX_FAILED_RETRIES", "0"), ("FAILURE_POLICY", "continue")):
        monkeypatch.setenv(f"LAUFBAND_{name}", value)
    worker = graphband(state)
    assert (worker.identifier, worker.heartbeat_timeout, worker.heartbeat_interval) == (
        "env-worker", 60, 30)
    assert len(list(worker)) == 10
    monkeypatch.setenv("LAUFBAND_DISABLED", "1")
    assert len(list(Laufband(range(4), path=state, name="disabled"))) == 4


# -- the command line of 0.2.1 ------------------------------------------------------------


@pytest.mark.parametrize("args", [["status", "--db", "laufband.sqlite"],
                                  ["watch", "--lock", "laufband.lock"],
                                  ["status", "--db=graphband.sqlite", "--lock", "x.lock"],
                                  ["retry", "--db", "laufband.sqlite"],
                                  ["reset", "--lock", "laufband.lock"]])
def test_original_cli_options_name_the_replacement(args: list[str], procs: Processes) -> None:
    result = procs.python("-m", "laufband", *args, env={"COLUMNS": "80"})
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    option = args[1].split("=")[0]
    assert line.startswith(f"error: {option} is from laufband 0.2.x")
    assert "DIR" in line
    assert "./.laufband" in line


def test_graph_traversal_protocol_is_still_importable(tmp_path: Path) -> None:
    from laufband import GraphTraversalProtocol

    class Tasks(GraphTraversalProtocol):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield Task("a")
            yield Task("b", dependencies=["a"])

    ids = [t.id for t in Graphband(Tasks(), path=tmp_path / "s", tqdm_kwargs={"disable": True})]
    assert ids == ["a", "b"]


def test_has_more_jobs_ends_the_0_2_idiom_in_a_disabled_loop(tmp_path: Path) -> None:
    worker = Laufband(list(range(3)), path=tmp_path / "s", disabled=True)
    rounds = []
    while worker.has_more_jobs:
        rounds.append(list(worker))
        assert len(rounds) < 3, "has_more_jobs stays true in a disabled loop"
    assert rounds == [[0, 1, 2]]
