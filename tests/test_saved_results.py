"""Results saved by loop bodies (worker.save / worker.result_of / laufband results)."""

from __future__ import annotations

import json
import pickle
import sys
import threading
from pathlib import Path

import pytest

from laufband import Graphband, Laufband, Monitor, NoResultError, Task
from tests.helpers.procs import HELPERS, Processes

pytestmark = pytest.mark.timeout(120)
QUIET = {"disable": True}
WORKER = HELPERS / "features_worker.py"


def test_a_result_saved_by_a_graph_task_is_read_by_its_dependent_in_another_process(
        state: Path, procs: Processes) -> None:
    first = procs.python(WORKER, "results", state, "--labels", "first")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"a": []}  # b and c need the other label
    second = procs.python(WORKER, "results", state, "--labels", "second")
    assert second.returncode == 0, second.stderr
    read = json.loads(second.stdout)
    a_result = {"id": "a", "pid": read["b"][0]["pid"], "sum": 1}
    assert read == {"b": [a_result], "c": [{"id": "b", "pid": read["c"][0]["pid"], "sum": 2}]}
    assert read["b"][0]["pid"] != read["c"][0]["pid"]  # a ran in the first process
    shown = procs.run([sys.executable, "-m", "laufband", "results", "--path", str(state),
                       "-w", "chain"], env={"COLUMNS": "100"})
    assert shown.returncode == 0, shown.stderr
    assert [(r["task"], r["result"]["sum"]) for r in json.loads(shown.stdout)] \
        == [("a", 1), ("b", 2), ("c", 3)]
    assert [r["task"] for r in Monitor(state).results("chain")] == ["a", "b", "c"]


def test_a_task_that_fails_keeps_no_result_and_says_why(state: Path) -> None:
    worker = Laufband(range(4), path=state, name="half", tqdm_kwargs=QUIET)
    for item in worker:
        with worker.catch():
            worker.save(item * 10)
            if item == 1:
                raise ValueError("no")
    assert [worker.result_of(i) for i in (0, 2, 3)] == [0, 20, 30]
    with pytest.raises(NoResultError, match=r"task 1 of workflow 'half' has no saved result:"
                       r" it is failed: results are read once a task completed") as caught:
        worker.result_of(1)
    assert (caught.value.task, caught.value.state) == ("1", "failed")
    assert pickle.loads(pickle.dumps(caught.value)).state == "failed"


def test_a_completed_task_that_saved_nothing_says_so(state: Path) -> None:
    worker = Graphband([Task("x"), Task("y")], path=state, name="some", tqdm_kwargs=QUIET)
    for task in worker:
        if task.id == "x":
            worker.save([1, 2])
    assert worker.result_of("x") == [1, 2]
    with pytest.raises(NoResultError, match=r"it completed without calling worker\.save"):
        worker.result_of("y")
    with pytest.raises(NoResultError, match="it is not a task of this workflow"):
        worker.result_of("z")
    assert Monitor(state).results("some") == [{"task": "x", "result": [1, 2]}]


def test_an_unpicklable_result_fails_its_task(state: Path) -> None:
    worker = Laufband(["x", "y", "z"], path=state, name="lock", tqdm_kwargs=QUIET)
    for item in worker:
        worker.save(threading.Lock() if item == "y" else item)
    [flow] = Monitor(state).status("lock")
    assert (flow.counts["completed"], flow.counts["failed"]) == (2, 1)
    [failure] = Monitor(state).failures("lock")
    assert "cannot pickle" in failure.error
    assert (failure.task, failure.item) == ("1", "'y'")  # as any failure names its item


def test_save_outside_the_loop_body_is_refused(state: Path) -> None:
    worker = Laufband(range(2), path=state, name="outside", tqdm_kwargs=QUIET)
    with pytest.raises(RuntimeError, match=r"worker.save\(\) belongs inside the body"):
        worker.save(1)


def test_a_disabled_loop_keeps_saved_results_in_memory(state: Path) -> None:
    worker = Graphband([Task("p"), Task("q", dependencies=["p"])], path=state,
                       disabled=True, tqdm_kwargs=QUIET)
    for task in worker:
        worker.save(task.id.upper())
    assert (worker.result_of("p"), worker.result_of("q")) == ("P", "Q")
    assert not state.exists()


def test_a_large_result_goes_to_a_file_and_is_read_back(state: Path) -> None:
    big = b"x" * (2 << 20)
    worker = Graphband([Task("big"), Task("after", dependencies=["big"])], path=state,
                       name="big", tqdm_kwargs=QUIET)
    seen = []
    for task in worker:
        if task.id == "big":
            worker.save(big)
        else:
            seen.append(len(worker.result_of("big")))
    assert seen == [len(big)]


def test_a_worker_killed_after_saving_leaves_no_task_completed_without_its_result(
        state: Path, procs: Processes) -> None:
    """Finished bodies are completed by a reaper on the same host, unless they saved a
    result that died with the worker: then they run again."""
    killed = procs.python(WORKER, "killed_after_saving", state, "--items", 10,
                          "--mode", "kill")
    assert killed.returncode == -9, killed.stderr
    again = procs.python(WORKER, "killed_after_saving", state, "--items", 10)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1]) == [x * 10 for x in range(10)]


@pytest.mark.parametrize("position", [40, 999, -1])
def test_a_position_outside_a_positional_workflow_is_not_a_task_of_it(
        state: Path, position: int) -> None:
    worker = Laufband(list(range(40)), path=state, name="forty", tqdm_kwargs=QUIET)
    for item in worker:
        worker.save(item)
    assert worker.result_of(39) == 39
    with pytest.raises(NoResultError, match=f"^task {position} of workflow 'forty' has no"
                       " saved result: it is not a task of this workflow"):
        worker.result_of(position)
