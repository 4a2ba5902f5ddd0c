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
from typing import Any, NamedTuple

from laufband.errors import StateError
from laufband.legacy import MONITOR_REPLACED, refuse_replaced
from laufband.store import STATES, StateDirectory, Store, Transaction

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
        """Return the documented JSON shape of ``laufband status --json``."""
        return {
            "name": self.name,
            "total": self.total,
            "counts": dict(self.counts),
            "workers": [w._asdict() for w in self.workers],
            "events": [e._asdict() for e in self.events],
        }


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
        self.state = StateDirectory.find(path)
        self.path = self.state.path
        self._store = Store(self.state, patience=PATIENCE)

    def workflows(self) -> list[str]:
        """Return the names of all workflows, oldest first."""
        with self._store.transaction() as tx:
            return tx.workflow_names()

    def status(self, workflow: str | None = None) -> list[WorkflowStatus]:
        """Return every workflow (or only ``workflow``), read in one transaction."""
        now = time.time()
        with self._store.transaction() as tx:
            names = tx.workflow_names() if workflow is None else [workflow]
            found = []
            for name in names:
                wf = self._number(tx, name)
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
                events = [EventStatus(task, state, error, at, worker, infos.get(task, {}))
                          for task, state, error, at, worker in latest]
                found.append(WorkflowStatus(name, sum(counts.values()), counts, workers, events))
        return found

    def retry(self, workflow: str, states: tuple[str, ...] = ("failed", "killed"),
              tasks: tuple[str, ...] = ()) -> int:
        """Put a workflow's failed and/or killed tasks back to pending; return how many.

        With ``tasks``, only those (by id), which may also be running on a worker that
        is not online.
        """
        for state in states:
            if state not in STATES:
                msg = f"unknown task state {state!r}: use one of {', '.join(STATES)}"
                raise ValueError(msg)
        with self._store.transaction() as tx:
            return tx.retry(self._number(tx, workflow), states, tasks)

    def reset(self, workflow: str) -> None:
        """Delete everything stored for ``workflow``, result files included."""
        with self._store.transaction() as tx:
            wf = self._number(tx, workflow)
            tx.reset(wf)
        shutil.rmtree(self.state.results_of(wf), ignore_errors=True)

    def close(self) -> None:
        """Close the database connection."""
        self._store.close()

    def _number(self, tx: Transaction, workflow: str) -> int:
        """Return the number of ``workflow``, refusing a name the state does not hold."""
        wf = tx.find_workflow(workflow)
        if wf is None:
            known = ", ".join(repr(n) for n in tx.workflow_names()) or "none"
            msg = f"no workflow {workflow!r} in {self.path} (known: {known})"
            raise StateError(msg, path=self.path)
        return wf
