"""Workers with different data on one workflow: each claims only the tasks it has
data for, and tasks registered later by others are left to them."""

from __future__ import annotations

from pathlib import Path

from laufband import Graphband, Laufband, Task
from tests.helpers.procs import task_states

QUIET = {"disable": True}


def test_worker_does_not_claim_tasks_registered_later_by_others(state: Path) -> None:
    early = Graphband([Task("a"), Task("b")], path=state, name="g", tqdm_kwargs=QUIET)
    iterator = iter(early)
    assert next(iterator).id == "a"
    late = Graphband([Task(x) for x in "abcd"], path=state, name="g", tqdm_kwargs=QUIET)
    assert late.has_more_jobs  # registers c and d, then goes offline again
    assert [t.id for t in iterator] == ["b"]  # not c or d: no data for them
    assert [t.id for t in late] == ["c", "d"]
    assert task_states(state, "g") == dict.fromkeys("abcd", "completed")


def test_shorter_positional_run_leaves_appended_tasks_alone(state: Path) -> None:
    short = Laufband(list(range(5)), path=state, name="p", tqdm_kwargs=QUIET)
    iterator = iter(short)
    assert next(iterator) == 0
    longer = Laufband(list(range(8)), path=state, name="p", tqdm_kwargs=QUIET)
    assert longer.has_more_jobs
    assert list(iterator) == [1, 2, 3, 4]
    assert list(longer) == [5, 6, 7]
