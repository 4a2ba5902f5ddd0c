"""Many real processes on one state directory: every task runs exactly once."""

from __future__ import annotations

import subprocess
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from laufband import Laufband
from tests.helpers.procs import (
    HELPERS,
    RUN_DEADLINE,
    Processes,
    completions,
    online_workers,
    read_log,
    task_states,
    wait_for,
)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workers=st.integers(1, 4), items=st.integers(1, 60), data=st.data())
@pytest.mark.timeout(300)
@pytest.mark.parametrize("lock", ["file", "soft"])  # LAUFBAND_LOCK: flock, or lock files
def test_every_task_runs_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, procs: Processes, workers: int, items: int,
    data: st.DataObject, lock: str,
) -> None:
    fail_on = data.draw(st.sets(st.integers(0, items - 1), max_size=3), label="fail_on")
    root = tmp_path_factory.mktemp("run")
    state, logs = root / "state", root / "logs"
    fail_args = ["--fail-on", *map(str, sorted(fail_on))] if fail_on else []
    started = [procs.worker(state, logs, "--items", items, "--sleep", 0.002, *fail_args,
                            env={"LAUFBAND_LOCK": lock}) for _ in range(workers)]
    results = procs.wait_all(started)
    assert [code for code, _, _ in results] == [0] * workers, results

    done = completions(logs)
    assert done == Counter({str(i): 1 for i in range(items) if i not in fail_on})
    starts = Counter(line for log in logs.glob("*.start") for line in read_log(log))
    assert starts == Counter({str(i): 1 for i in range(items)})  # failures are not retried
    states = task_states(state, "work")
    assert states == {str(i): "failed" if i in fail_on else "completed" for i in range(items)}


def test_dependencies_complete_before_dependents_start(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    logs.mkdir()
    started = [procs.start(HELPERS / "graph_worker.py", state, logs) for _ in range(3)]
    assert [code for code, _, _ in procs.wait_all(started)] == [0, 0, 0]
    events = [line.split() for log in logs.glob("*.log") for line in read_log_lines(log)]
    start = {task: float(t) for kind, task, t in events if kind == "start"}
    end = {task: float(t) for kind, task, t in events if kind == "end"}
    assert Counter(task for kind, task, _ in events if kind == "start") == Counter(
        {f"L{layer}-{i}": 1 for layer in range(4) for i in range(3)})
    for layer in range(1, 4):
        for i in range(3):
            for j in range(3):
                assert end[f"L{layer - 1}-{j}"] <= start[f"L{layer}-{i}"]
    workers_used = sum(1 for log in logs.glob("*.log") if log.read_text())
    assert workers_used >= 2  # three tasks per layer: the work was shared


def read_log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_labels_route_tasks_to_capable_workers(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    logs.mkdir()
    gpu = procs.start(HELPERS / "graph_worker.py", state, logs, "--layers", "1",
                      "--width", "4", "--require", "gpu", "--labels", "gpu")
    cpu = procs.start(HELPERS / "graph_worker.py", state, logs, "--layers", "1",
                      "--width", "4", "--require", "gpu")
    assert [code for code, _, _ in procs.wait_all([gpu, cpu])] == [0, 0]
    ran_by = {}
    for log in logs.glob("*.log"):
        pid = int(log.stem)
        for line in read_log_lines(log):
            kind, task, _ = line.split()
            if kind == "start":
                assert task not in ran_by
                ran_by[task] = pid
    assert ran_by["L0-0"] == gpu.pid  # only the gpu worker may run the gpu task
    assert sorted(ran_by) == ["L0-0", "L0-1", "L0-2", "L0-3"]


def test_max_parallel_workers_lets_two_workers_hold_a_task(
        state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    logs.mkdir()
    args = ("--layers", "1", "--width", "1", "--multi", "2", "--sleep", "1.0")
    started = [procs.start(HELPERS / "graph_worker.py", state, logs, *args) for _ in range(3)]
    assert [code for code, _, _ in procs.wait_all(started)] == [0, 0, 0]
    runs = [line for log in logs.glob("*.log") for line in read_log_lines(log)
            if line.startswith("start")]
    # Three workers, one task that up to two may hold: exactly two ran it.
    assert len(runs) == 2
    assert task_states(state, "graph") == {"L0-0": "completed"}


@pytest.mark.timeout(120)
def test_max_parallel_workers_counts_every_worker_that_ran_the_task(
        state: Path, procs: Processes, tmp_path: Path) -> None:
    """The seed: "a maximum of 2 workers will be assigned to this job until both
    successfully finish". Two workers run the task; the first finishes, and two more
    start while the second still runs it: they must not run it (on main, a worker
    joined whenever fewer than 2 held it: the one that finished first was replaced,
    4 runs)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    one = ("--layers", "1", "--width", "1", "--multi", "2")

    def holder(name: str) -> subprocess.Popen[str]:
        return procs.start(HELPERS / "graph_worker.py", state, logs, *one,
                           "--hold-until", tmp_path / name)

    first = holder("first-done")
    wait_for(lambda: len(runs(logs)) == 1, what="the first worker to run the task")
    second = holder("second-done")
    wait_for(lambda: len(runs(logs)) == 2, what="the second worker to run the task")
    (tmp_path / "first-done").touch()
    assert procs.wait_all([first])[0][0] == 0  # finished its share; the second runs on
    late = [procs.start(HELPERS / "graph_worker.py", state, logs, *one) for _ in range(2)]
    # Registering, a worker claims in the same transaction: once both are online they
    # have tried to take the task.
    wait_for(lambda: online_workers(state) == 3, what="the late workers to register")
    (tmp_path / "second-done").touch()
    assert [code for code, _, _ in procs.wait_all([second, *late])] == [0, 0, 0]
    assert len(runs(logs)) == 2, runs(logs)
    assert task_states(state, "graph") == {"L0-0": "completed"}


def runs(logs: Path) -> list[str]:
    """Every "start" line of the graph workers' logs."""
    return [line for log in logs.glob("*.log") for line in read_log_lines(log)
            if line.startswith("start")]


@pytest.mark.timeout(60)
def test_two_workers_in_one_process_share_the_work(state: Path) -> None:
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def run(label: str) -> None:
        worker = Laufband(list(range(300)), path=state, name="shared",
                          tqdm_kwargs={"disable": True})
        for item in worker:
            seen[label].append(item)
            time.sleep(0.001)

    threads = [threading.Thread(target=run, args=(label,)) for label in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)
    assert sorted(seen["a"] + seen["b"]) == list(range(300))
    assert seen["a"]
    assert seen["b"]


@pytest.mark.timeout(60)
def test_nested_workers_in_one_process(state: Path) -> None:
    outer = Laufband(["x", "y"], path=state, name="outer", tqdm_kwargs={"disable": True})
    pairs = []
    for letter in outer:
        inner = Laufband(list(range(3)), path=state, name=f"inner-{letter}",
                         tqdm_kwargs={"disable": True})
        pairs += [(letter, number) for number in inner]
    assert pairs == [("x", 0), ("x", 1), ("x", 2), ("y", 0), ("y", 1), ("y", 2)]


def test_worker_lock_is_exclusive_across_processes(
        tmp_path: Path, procs: Processes) -> None:
    counter = tmp_path / "counter.txt"
    counter.write_text("0")
    script = tmp_path / "count.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from laufband import Laufband
        counter = Path({str(counter)!r})
        worker = Laufband(list(range(200)), path={str(tmp_path / "state")!r},
                          tqdm_kwargs={{"disable": True}})
        for item in worker:
            with worker.lock:
                with worker.lock:  # re-entrant within a thread
                    value = int(counter.read_text())
                counter.write_text(str(value + 1))
    """))
    started = [procs.start(script) for _ in range(4)]
    assert [code for code, _, _ in procs.wait_all(started)] == [0] * 4
    assert counter.read_text() == "200"


@pytest.mark.timeout(120)
def test_soft_lock_shares_work_between_processes(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    started = [procs.worker(state, logs, "--items", 60, "--sleep", 0.005,
                            env={"LAUFBAND_LOCK": "soft"}) for _ in range(3)]
    assert [code for code, _, _ in procs.wait_all(started)] == [0, 0, 0]
    assert completions(logs) == Counter({str(i): 1 for i in range(60)})


AT_ONCE = textwrap.dedent("""
    import pathlib, sys, time
    from laufband import Laufband

    marks, me = pathlib.Path(sys.argv[2]), int(sys.argv[3])
    (marks / f"ready-{me}").touch()  # imported, started: waiting for the others
    end = time.monotonic() + float(sys.argv[4])
    while not (marks / "go").exists():
        if time.monotonic() > end:
            raise SystemExit("the go file never appeared")
        time.sleep(0.001)
    time.sleep(0.002 * me)  # spread over a few milliseconds, not a synchronisation
    print(sum(Laufband(range(16), path=sys.argv[1], name="first")))
""")
CREATORS = 8


@pytest.mark.timeout(120)
def test_processes_creating_the_state_at_once_all_start(tmp_path: Path, procs: Processes) -> None:
    # Eight processes open a state directory that does not exist yet within a few
    # milliseconds of each other: one creates the database, none may see it half made.
    for round_ in range(6):
        state, marks = tmp_path / f"state{round_}", tmp_path / f"marks{round_}"
        marks.mkdir()
        started = [procs.start("-c", AT_ONCE, state, marks, i, RUN_DEADLINE)
                   for i in range(CREATORS)]
        wait_for(lambda m=marks: len(list(m.glob("ready-*"))) == CREATORS,
                 what="every process to be ready")
        (marks / "go").touch()
        results = procs.wait_all(started)
        assert [code for code, _, _ in results] == [0] * CREATORS, [e for _, _, e in results]
        assert sum(int(out) for _, out, _ in results) == sum(range(16))
        assert set(task_states(state, "first").values()) == {"completed"}
