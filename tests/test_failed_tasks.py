"""A failed task: retried up to ``max_failed_retries``, recorded with its error, and
blocking the tasks that depend on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from laufband import Graphband, Laufband, Task
from tests.helpers.procs import task_events, task_states

QUIET = {"disable": True}


def run_flaky(state: Path, attempts: list[int]) -> str:
    """One run in which item 1 fails; return how it ended."""
    try:
        for item in Laufband([0, 1], path=state, name="retry", max_failed_retries=1,
                              tqdm_kwargs=QUIET):
            attempts.append(item)
            if item == 1:
                raise RuntimeError("flaky")  # noqa: TRY301 - the failing loop body
    except RuntimeError as error:
        return str(error)
    return "done"


def test_failed_task_retried_up_to_max_failed_retries(state: Path) -> None:
    attempts: list[int] = []
    assert [run_flaky(state, attempts) for _ in range(3)] == ["flaky", "flaky", "done"]
    assert attempts == [0, 1, 1]  # one retry, then it stays failed
    assert task_states(state, "retry") == {"0": "completed", "1": "failed"}
    assert [event[:2] for event in task_events(state, "retry")] == [
        ("1", "failed"), ("1", "failed")]


def break_a(worker: Graphband) -> None:
    """A graph loop whose task "a" fails."""
    for task in worker:
        if task.id == "a":
            raise RuntimeError("a breaks")


def test_failed_dependency_blocks_dependents(state: Path) -> None:
    tasks = [Task("a"), Task("b", dependencies=["a"]), Task("c", dependencies=["b"]), Task("d")]
    with pytest.raises(RuntimeError, match="a breaks"):
        break_a(Graphband(tasks, path=state, name="g", tqdm_kwargs=QUIET))
    rest = [t.id for t in Graphband(tasks, path=state, name="g", tqdm_kwargs=QUIET)]
    assert rest == ["d"]  # b and c can never run: the worker does not wait for them
    assert task_states(state, "g") == {"a": "failed", "b": "blocked", "c": "blocked",
                                       "d": "completed"}
