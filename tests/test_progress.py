"""The progress bar: global progress of the workflow, and a bar that works whatever
is asked of the loop before it runs."""

from __future__ import annotations

import io
from pathlib import Path

from laufband import Graphband, Laufband, Task

QUIET = {"disable": True}


def test_global_progress_in_the_bar(state: Path) -> None:
    assert list(Laufband(list(range(30)), path=state, name="p", tqdm_kwargs=QUIET))[:1] == [0]
    more = Laufband(list(range(40)), path=state, name="p",
                    tqdm_kwargs={"file": io.StringIO(), "desc": "second"})
    bar = more.iterator
    assert bar.desc == "second"
    assert bar.total == 40
    assert list(more) == list(range(30, 40))
    assert more.iterator.n == 40  # the first run's 30 completions count too


def test_graphband_generator_survives_early_bar_access(state: Path) -> None:
    def tasks():
        yield Task("a")
        yield Task("b", dependencies=["a"])

    worker = Graphband(tasks(), path=state, tqdm_kwargs=QUIET)
    assert worker.iterator.total == 2  # reads the generator, and keeps what it read
    assert [t.id for t in worker] == ["a", "b"]


def test_has_more_jobs_before_the_loop_keeps_a_working_bar(state: Path) -> None:
    worker = Laufband(list(range(5)), path=state, tqdm_kwargs={"file": io.StringIO()})
    assert worker.has_more_jobs
    assert list(worker) == list(range(5))
    assert worker.iterator.n == 5
