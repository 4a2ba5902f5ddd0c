"""Monitor: read-only views of a state directory (what ``laufband status`` shows).

Every view is read in one transaction from maintained counters and small tables,
so it is consistent and holds the state lock for milliseconds, however many tasks
the workflows have.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

from laufband.errors import StateError
from laufband.legacy import MONITOR_REPLACED, refuse_replaced
from laufband.resultfiles import results_of
from laufband.store import DB_NAME, STATES, Store

RECENT_EVENTS = 5
# Seconds one holder may keep the state lock before a view gives up and names it
# (a frozen process): `laufband status` answers instead of blocking behind it.
PATIENCE = 5.0


class WorkerStatus(NamedTuple):
    """One worker as the store knows it."""

    identifier: str
    host: str
    pid: int
    rank: int | None
    labels: list[str]
    state: str  # online, offline or dead
    current: str | None  # first task of its latest claim
    done: int  # tasks it completed
    last_seen: float  # seconds since its last heartbeat or flush
    current_info: dict[str, Any]  # Task.info of ``current`` ({} if none)


class EventStatus(NamedTuple):
    """A transition off the happy path: failed, killed, blocked or retried."""

    task: str
    state: str
    error: str | None
    time: float
    worker: str | None
    info: dict[str, Any]  # Task.info of ``task`` ({} if none)


class WorkflowStatus(NamedTuple):
    """A workflow: its size, tasks per state, workers and latest events."""

    name: str
    total: int
    counts: dict[str, int]
    workers: list[WorkerStatus]
    events: list[EventStatus]

    @property
    def finished(self) -> int:
        """Tasks that will not run again: completed, failed, killed or blocked."""
        return self.total - self.counts["pending"] - self.counts["running"]

    def to_json(self) -> dict[str, Any]:
        """The documented JSON shape of ``laufband status --json``."""
        return {
            "name": self.name,
            "total": self.total,
            "counts": dict(self.counts),
            "workers": [w._asdict() for w in self.workers],
            "events": [e._asdict() for e in self.events],
        }


def find_state(path: str | os.PathLike[str] | None = None) -> Path:
    """The state directory at ``path``: the directory itself or its ``.laufband``."""
    base = Path(path if path is not None else os.environ.get("LAUFBAND_PATH", "."))
    for candidate in (base, base / ".laufband"):
        if (candidate / DB_NAME).is_file():
            return candidate.absolute()
    msg = (f"no laufband state in {str(base.absolute())!r} (looked for {DB_NAME} there and in"
           " its .laufband/): run this where your workers ran, or pass the state directory")
    raise StateError(msg)


class Monitor:
    """Read (and, for the CLI, retry or reset) the workflows of a state directory.

    Args:
        path: The state directory, or a directory containing ``.laufband``
            (default: ``LAUFBAND_PATH`` or the current directory). laufband 0.2.x's
            ``db=`` and ``lock=`` are refused with a ``TypeError`` naming ``path=``.

    Example:
        >>> for workflow in Monitor(".laufband").status():  # doctest: +SKIP
        ...     print(workflow.name, workflow.counts["completed"], "/", workflow.total)
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, **original: Any) -> None:
        refuse_replaced("Monitor", original, MONITOR_REPLACED)  # 0.2.x: db=, lock=
        self.path = find_state(path)
        self._store = Store(self.path, patience=PATIENCE)

    def workflows(self) -> list[str]:
        """Names of all workflows, oldest first."""
        with self._store.transaction() as tx:
            return tx.workflow_names()

    def status(self, workflow: str | None = None) -> list[WorkflowStatus]:
        """Every workflow (or only ``workflow``), read in one transaction."""
        now = time.time()
        with self._store.transaction() as tx:
            names = tx.workflow_names()
            if workflow is not None:
                self._check_known(workflow, names)
                names = [workflow]
            found = []
            for name in names:
                wf = tx.find_workflow(name)
                assert wf is not None
                counts = tx.counts(wf)
                rows = tx.workers(wf)
                latest = tx.latest_events(wf, RECENT_EVENTS)
                infos = tx.task_infos(wf, {r[6] for r in rows if r[6]} | {e[0] for e in latest})
                workers = [
                    WorkerStatus(ident, host, pid, rank, json.loads(labels or "[]"), state,
                                 current, done, max(0.0, now - (seen or now)),
                                 infos.get(current, {}) if current else {})
                    for ident, host, pid, rank, labels, state, current, done, seen in rows
                ]
                events = [EventStatus(*row, infos.get(row[0], {})) for row in latest]
                found.append(WorkflowStatus(name, sum(counts.values()), counts, workers, events))
        return found

    def retry(self, workflow: str, states: tuple[str, ...] = ("failed", "killed"),
              tasks: tuple[str, ...] = ()) -> int:
        """Put a workflow's failed and/or killed tasks (or only ``tasks``, which may also
        be running on a worker that is not online) back to pending."""
        for state in states:
            if state not in STATES:
                msg = f"unknown task state {state!r}: use one of {', '.join(STATES)}"
                raise ValueError(msg)
        with self._store.transaction() as tx:
            self._check_known(workflow, tx.workflow_names())
            wf = tx.find_workflow(workflow)
            assert wf is not None
            return tx.retry(wf, states, tasks)

    def reset(self, workflow: str) -> None:
        """Delete everything stored for ``workflow``, result files included."""
        with self._store.transaction() as tx:
            self._check_known(workflow, tx.workflow_names())
            wf = tx.find_workflow(workflow)
            assert wf is not None
            tx.reset(wf)
        shutil.rmtree(results_of(self.path, wf), ignore_errors=True)

    def close(self) -> None:
        """Close the database connection."""
        self._store.close()

    def _check_known(self, workflow: str, names: list[str]) -> None:
        if workflow not in names:
            known = ", ".join(repr(n) for n in names) or "none"
            msg = f"no workflow {workflow!r} in {self.path} (known: {known})"
            raise StateError(msg)
