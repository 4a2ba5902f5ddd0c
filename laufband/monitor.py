"""Monitor: views of a state directory (what ``laufband status`` shows), and its upkeep.

Views are read in one read-only transaction (:class:`~laufband.store.StateReader`)
from maintained counters and small indexed tables, so they are consistent, write
nothing (a directory the user can only read works too) and answer at once however
many tasks the workflows have. ``retry``, ``reset`` and ``prune`` open the store for
writing when called.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, NamedTuple

from laufband.errors import StateError
from laufband.inflight import read_record
from laufband.legacy import MONITOR_REPLACED, refuse_replaced
from laufband.liveness import DeadWorkerDetector, looks_dead
from laufband.options import resolve
from laufband.settings import HEARTBEAT_TIMEOUT, MAX_KILLED_RETRIES
from laufband.store import (
    HOST,
    STATES,
    StateDirectory,
    StateReader,
    Store,
    Transaction,
    WorkerRecord,
)

RECENT_EVENTS = 5
RECENT_FAILURES = 5  # failures each workflow's status carries (``failures()``: all)
# Seconds one holder may keep the state lock before a view gives up and names it
# (a frozen process): `laufband status` answers instead of blocking behind it.
PATIENCE = 5.0
# What status counts: the store's running tasks split into those a worker runs now
# and those claimed in a batch but not started yet.
COUNTED = ("pending", "claimed", "running", "completed", "failed", "killed", "blocked")


class WorkerStatus(NamedTuple):
    """One worker as the store knows it."""

    identifier: str
    host: str
    pid: int
    rank: int | None
    labels: list[str]
    state: str  # online, offline or dead (also when it looks dead but is not reaped yet)
    current: str | None  # the task it runs now (as of its latest flush), if any
    done: int  # tasks it completed
    last_seen: float  # seconds since its last heartbeat or flush
    current_info: dict[str, Any]  # Task.info of ``current`` ({} if none)
    rate: float | None  # tasks it completed per second since it started


class EventStatus(NamedTuple):
    """A transition off the happy path: failed, killed, blocked or retried."""

    task: str
    state: str
    error: str | None
    time: float
    worker: str | None
    info: dict[str, Any]  # Task.info of ``task`` ({} if none)


class FailureStatus(NamedTuple):
    """A failure (or death) of a task, kept while the task is not completed or retried."""

    task: str  # its id: Task.id, the key= value, or the position
    item: str | None  # a short repr of a positional item
    state: str  # "failed" (it raised) or "killed" (its worker died)
    outcome: str  # the task's state after it: "pending" when it brought a retry
    attempt: int | None  # 1 for its first run (since `laufband retry` last reset its count)
    retry: int | None  # the retry it brought, if any
    retries: int | None  # the retries allowed (max_failed_retries / max_killed_retries)
    error: str | None  # one line
    traceback: str | None
    worker: str | None
    host: str | None
    time: float
    info: dict[str, Any]  # Task.info of ``task`` ({} if none)

    def what(self) -> str:
        """Say what happened: ``failed``, ``died, retry 1 of 1``, ``killed`` ..."""
        word = "died" if self.state == "killed" else "failed"
        if self.outcome == "pending" and self.retry is not None:
            return f"{word}, retry {self.retry} of {self.retries}"
        return "killed" if self.state == "killed" else word

    def named(self) -> str:
        """Name the task as the user knows it: its id, and its item if positional."""
        return self.task + (f" {self.item}" if self.item else "")


class WorkflowStatus(NamedTuple):
    """A workflow: its size, tasks per state, rate, workers and latest failures."""

    name: str
    total: int
    counts: dict[str, int]  # COUNTED: claimed + running are what workers hold
    workers: list[WorkerStatus]
    events: list[EventStatus]
    failures: list[FailureStatus]  # the newest RECENT_FAILURES
    failure_count: int  # all it keeps (``Monitor.failures``)
    rate: float | None  # tasks completed per second over the last minute
    eta: float | None  # seconds until the tasks left are done at that rate (None: no
    # worker online, or no rate yet)
    stores_results: bool  # pmap's or the joblib backend's (``Monitor.results``)
    invalidated: int = 0  # tasks a changed fingerprint runs again, not completed since
    invalidated_tasks: tuple[str, ...] = ()  # the newest RECENT_FAILURES of them

    @property
    def finished(self) -> int:
        """Tasks that will not run again: completed, failed, killed or blocked."""
        counts = self.counts
        return self.total - counts["pending"] - counts["claimed"] - counts["running"]

    def to_json(self) -> dict[str, Any]:
        """Return the documented JSON shape of ``laufband status --json``."""
        return {
            "name": self.name,
            "total": self.total,
            "counts": dict(self.counts),
            "rate": self.rate,
            "eta": self.eta,
            "workers": [w._asdict() for w in self.workers],
            "events": [e._asdict() for e in self.events],
            "failures": [f._asdict() for f in self.failures],
            "failure_count": self.failure_count,
            "stores_results": self.stores_results,
            "invalidated": self.invalidated,
            "invalidated_tasks": list(self.invalidated_tasks),
        }


class Monitor:
    """Read (and, for the CLI, retry, reset or prune) the workflows of a state directory.

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
        self._reader = StateReader(self.state, PATIENCE)
        self._store: Store | None = None  # opened for retry, reset and prune only
        # As workers resolve them (LAUFBAND_HEARTBEAT_TIMEOUT): when a worker of another
        # host is shown dead, and when `retry` reaps it.
        self._timeout = resolve("heartbeat_timeout", None, HEARTBEAT_TIMEOUT, float)

    def workflows(self) -> list[str]:
        """Return the names of all workflows, oldest first."""
        with self._reader.transaction() as tx:
            return tx.workflow_names()

    def status(self, workflow: str | None = None) -> list[WorkflowStatus]:
        """Return every workflow (or only ``workflow``), read in one transaction."""
        now = time.time()
        with self._reader.transaction() as tx:
            names = tx.workflow_names() if workflow is None else [workflow]
            return [self._workflow(tx, name, now) for name in names]

    def failures(self, workflow: str) -> list[FailureStatus]:
        """Return every failure ``workflow`` keeps, newest first."""
        with self._reader.transaction() as tx:
            return _failures(tx, self._number(tx, workflow))

    def results(self, workflow: str) -> list[Any]:
        """Return the stored results of a workflow, in input order.

        That is the order the items (or tasks) were first given in; items without a
        result (failed, not computed yet) are left out: :meth:`failures` says why.
        For ``pmap`` and the joblib backend each is the result; for a loop
        (``Laufband``, ``Graphband``) each is ``{"task": id, "result": value}``, for
        the tasks whose body saved one (``worker.save``).

        Raises:
            StateError: The workflow stores no results (a loop whose body saved none).
        """
        from laufband.outcomes import read_results  # pickle and friends: not for status

        with self._reader.transaction() as tx:
            wf = self._number(tx, workflow)
            if not tx.stores_results(wf):
                msg = (f"workflow {workflow!r} in {self.path} is a loop's (Laufband or"
                       " Graphband) whose body saved no results, only which tasks ran: call"
                       " worker.save(value) in the loop body to keep one per task")
                raise StateError(msg, path=self.path)
            return read_results(tx, self.state, wf, named=not tx.maps_items(wf))

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
        with self._writer().transaction() as tx:
            return tx.retry(self._number(tx, workflow), states, tasks)

    def unknown_tasks(self, workflow: str, tasks: tuple[str, ...]) -> list[str]:
        """Return those of ``tasks`` (ids as views name them) that ``workflow`` lacks."""
        with self._reader.transaction() as tx:
            return tx.unknown_tasks(self._number(tx, workflow), tasks)

    def reap_gone(self) -> list[tuple[str, str, int, int]]:
        """Reap online workers that are gone, as a worker's reaper would; say who.

        Gone: on this host, its process is; elsewhere, its heartbeat is older than the
        heartbeat timeout. Their tasks go back to pending (the one each ran counts a
        kill). Returns each reaped worker's identifier, host, pid and tasks returned.
        """
        detector = DeadWorkerDetector(self._timeout, self.state)
        retries = resolve("max_killed_retries", None, MAX_KILLED_RETRIES, int)
        with self._writer().transaction() as tx:
            reaped = detector.reap_gone(tx, retries)
        return [(w.identifier, w.host, w.pid, count) for w, count in reaped]

    def reset(self, workflow: str) -> None:
        """Delete everything stored for ``workflow``, result files included."""
        with self._writer().transaction() as tx:
            wf = self._number(tx, workflow)
            tx.reset(wf)
        shutil.rmtree(self.state.results_of(wf), ignore_errors=True)

    def prune(self, names: list[str], listed: float) -> list[str]:
        """Delete ``names`` in one transaction; return those deleted.

        A workflow that a worker is online on, or that was used after ``listed`` (when
        the caller read :meth:`activity`), is kept: someone runs it now.
        """
        removed = []
        with self._writer().transaction() as tx:
            for name in names:
                wf = tx.find_workflow(name)
                if wf is not None and not tx.touched_since(wf, listed):
                    tx.reset(wf)
                    removed.append((name, wf))
        for _, wf in removed:
            shutil.rmtree(self.state.results_of(wf), ignore_errors=True)
        return [name for name, _ in removed]

    def activity(self) -> list[tuple[str, float, int]]:
        """Return each workflow's name, last activity (Unix time) and online workers.

        The activity is when a worker last touched it, or a caller (a pmap call, a
        loop) last opened it, or its creation.
        """
        with self._reader.transaction() as tx:
            return tx.workflow_activity()

    def close(self) -> None:
        """Close the database connections."""
        self._reader.close()
        if self._store is not None:
            self._store.close()

    def _writer(self) -> Store:
        if self._store is None:
            self._store = Store(self.state, patience=PATIENCE)
        return self._store

    def _workflow(self, tx: Transaction, name: str, now: float) -> WorkflowStatus:
        wf = self._number(tx, name)
        held = tx.counts(wf)
        rows = self._running_now(tx, wf, [self._as_seen(row, now) for row in tx.workers(wf)])
        latest = tx.latest_events(wf, RECENT_EVENTS)
        infos = tx.task_infos(wf, {r[6] for r in rows if r[6]} | {e[0] for e in latest})
        workers = [_worker(row, infos, now) for row in rows]
        running = min(held["running"], sum(w.state == "online" and w.current is not None
                                           for w in workers))
        counts = {"pending": held["pending"], "claimed": held["running"] - running,
                  "running": running, **{s: held[s] for s in STATES[2:]}}
        total = sum(held.values())
        rate = tx.rate(wf, held["completed"], now)
        left = held["pending"] + held["running"]
        # No worker online: nothing runs, whatever the last minute's rate was.
        working = any(w.state == "online" for w in workers)
        eta = left / rate if rate and left and working else (0.0 if not left else None)
        invalidated, again = tx.invalidated(wf, RECENT_FAILURES)
        events = [EventStatus(task, state, error, at, worker, infos.get(task, {}))
                  for task, state, error, at, worker in latest]
        return WorkflowStatus(name, total, counts, workers, events,
                              _failures(tx, wf, RECENT_FAILURES), tx.failure_count(wf),
                              rate, eta, tx.stores_results(wf), invalidated, tuple(again))

    def _as_seen(self, row: tuple[Any, ...], now: float) -> tuple[Any, ...]:
        """Show an online worker that looks dead as dead (its reaping is a worker's job)."""
        if row[5] != "online":
            return row
        ident, host, pid, seen, number, token = row[0], row[1], row[2], row[8], row[10], row[11]
        if looks_dead(WorkerRecord(number, ident, host, pid, token or "", 0, seen or now), now,
                      self._timeout):
            return (*row[:5], "dead", *row[6:])
        return row

    def _running_now(self, tx: Transaction, wf: int,
                     rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Give workers on this host the task their in-flight record says runs now.

        The store's ``current`` is as of a worker's latest flush; the record (a
        memory-mapped file, coherent on one host) is exact: None between tasks.
        """
        found = {}
        for row in rows:
            if row[5] == "online" and row[1] == HOST:
                record = read_record(self.state, row[10])
                if record is not None:
                    found[row[10]] = record.running
        names = tx.task_names(wf, [seq for seq in found.values() if seq is not None])

        def current(row: tuple[Any, ...]) -> str | None:
            if row[5] != "online":
                return None  # gone: it runs nothing (its record may say otherwise)
            if row[10] not in found:
                return str(row[6]) if row[6] is not None else None  # as of its last flush
            seq = found[row[10]]
            return None if seq is None else names[seq]

        return [(*row[:6], current(row), *row[7:]) for row in rows]

    def _number(self, tx: Transaction, workflow: str) -> int:
        """Return the number of ``workflow``, refusing a name the state does not hold."""
        wf = tx.find_workflow(workflow)
        if wf is None:
            known = ", ".join(repr(n) for n in tx.workflow_names()) or "none"
            msg = f"no workflow {workflow!r} in {self.path} (known: {known})"
            raise StateError(msg, path=self.path)
        return wf


def _worker(row: tuple[Any, ...], infos: dict[str, dict[str, Any]], now: float) -> WorkerStatus:
    ident, host, pid, rank, labels, state, current, done, seen, started, _, _ = row
    last = now if state == "online" else (seen or now)
    span = last - (started or last)
    return WorkerStatus(ident, host, pid, rank, json.loads(labels or "[]"), state, current,
                        done, max(0.0, now - (seen or now)),
                        infos.get(current, {}) if current else {},
                        done / span if span >= 1.0 else None)


def _failures(tx: Transaction, wf: int, limit: int | None = None) -> list[FailureStatus]:
    found = tx.failures(wf, limit)
    infos = tx.task_infos(wf, {f["task"] for f in found})
    return [FailureStatus(f["task"], f["item"], f["state"], f["outcome"], f["attempt"],
                          f["retry"], f["retries"], f["error"], f["traceback"], f["worker"],
                          f["host"], f["time"], infos.get(f["task"], {})) for f in found]
