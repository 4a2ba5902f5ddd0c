"""Graphband in one process: tasks come as ``Task`` objects with their data, and a
later run of a grown graph adds the new tasks and keeps what was completed."""

from __future__ import annotations

from pathlib import Path

from laufband import Graphband, Task

QUIET = {"disable": True}


def test_graphband_tasks_yield_task_objects_with_data(state: Path) -> None:
    tasks = [Task("x", data={"value": 1}), Task("y", data=[2], dependencies=["x"])]
    got = list(Graphband(tasks, path=state, tqdm_kwargs=QUIET))
    assert [(t.id, t.data) for t in got] == [("x", {"value": 1}), ("y", [2])]


def test_later_graph_run_adds_tasks_and_keeps_completed(state: Path) -> None:
    assert [t.id for t in Graphband([Task("a")], path=state, name="g", tqdm_kwargs=QUIET)] \
        == ["a"]
    grown = [Task("a"), Task("b", dependencies=["a"])]
    assert [t.id for t in Graphband(grown, path=state, name="g", tqdm_kwargs=QUIET)] == ["b"]
