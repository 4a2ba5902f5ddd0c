"""A worker's life in one process: online while it loops, offline once it is done,
closed, or left by an error (the context manager records it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from laufband import Laufband
from tests.helpers.procs import online_workers, task_events, task_states

QUIET = {"disable": True}


def fail_first(worker: Laufband) -> None:
    """Use ``worker`` as a context manager; its first item fails."""
    with worker:
        for item in worker:
            raise KeyError(item)


def test_context_manager_records_error_and_goes_offline(state: Path) -> None:
    with pytest.raises(KeyError, match="'a'"):
        fail_first(Laufband(["a", "b"], path=state, name="ctx", tqdm_kwargs=QUIET))
    assert task_events(state, "ctx") == [("0", "failed", "KeyError: 'a'")]
    assert task_states(state, "ctx") == {"0": "failed", "1": "pending"}
    assert online_workers(state) == 0


def test_has_more_jobs(state: Path) -> None:
    worker = Laufband([1, 2], path=state, tqdm_kwargs=QUIET)
    assert worker.has_more_jobs
    assert list(worker) == [1, 2]
    assert not worker.has_more_jobs
    worker.close()
    assert online_workers(state) == 0
