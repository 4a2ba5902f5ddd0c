"""Failures and rates: what ``laufband failures`` lists and where items/s come from.

Every failure or death of a task is a ``failures`` row (error text, traceback, the
short repr of a positional item, worker, host, time, attempt, and whether it brought
a retry) for as long as the task is not completed and not retried by hand: ``finish``
and ``_retry`` drop its rows. Rows are indexed by workflow, so listing and counting
them never scans tasks.

``samples`` keeps a workflow's completed count every ``SAMPLE_EVERY`` seconds in a
ring of ``SLOTS`` slots (one row written per slot and lap, by whichever worker
finishes tasks then): the rate over the last minute is read from two samples.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from laufband.store.keys import KeyOperations

SAMPLE_EVERY = 5.0  # seconds per slot
SLOTS = 14  # a lap of 70 s: a sample at least 60 s old is always at hand
RATE_WINDOW = 60.0  # seconds: "items/s over the last minute"


class FailureRecord(NamedTuple):
    """A failure of a task as a worker reports it."""

    seq: int
    error: str  # one line: "RuntimeError: SCF did not converge"
    traceback: str = ""  # the full traceback text, if known
    item: str | None = None  # a short repr of a positional item


class FailureOperations(KeyOperations):
    """Keeping failures while their tasks stay unfinished, and completion samples."""

    def _record_failure(self, wf: int, failure: FailureRecord, worker: int | None,
                        outcome: tuple[str, str, int | None, int | None, int]) -> None:
        """Keep a failure of a task.

        ``outcome`` is what happened, the task's state after it, the retry it brought
        (if any), the retries allowed and the attempt.
        """
        state, after, retry, retries, attempt = outcome
        self._db.execute(
            "INSERT INTO failures(wf, seq, state, outcome, attempt, retry, retries, error,"
            " traceback, item, worker, host, time) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " (SELECT host FROM workers WHERE id = ?), ?",
            (wf, failure.seq, state, after, attempt, retry, retries, failure.error,
             failure.traceback or None, failure.item, worker, worker, time.time()))

    def _forget_failures(self, wf: int, runs: Sequence[tuple[int, int]]) -> None:
        """Drop the failures of tasks in ``runs`` that completed since."""
        if self._db.execute("SELECT 1 FROM failures WHERE wf = ? LIMIT 1", (wf,)).fetchone():
            self._db.executemany(
                "DELETE FROM failures WHERE wf = ? AND seq BETWEEN ? AND ? AND EXISTS"
                " (SELECT 1 FROM tasks t WHERE t.wf = failures.wf AND t.seq = failures.seq"
                " AND t.state = 'completed')", ((wf, lo, hi) for lo, hi in runs))

    def _drop_failures(self, wf: int, seqs: Sequence[int]) -> None:
        """Drop every failure of ``seqs`` (they run anew)."""
        if seqs and self._db.execute(
                "SELECT 1 FROM failures WHERE wf = ? LIMIT 1", (wf,)).fetchone():
            self._db.executemany("DELETE FROM failures WHERE wf = ? AND seq = ?",
                                 ((wf, seq) for seq in seqs))

    def _sample(self, wf: int) -> None:
        """Keep the completed count in this moment's slot, once per slot and lap."""
        now = time.time()
        self._db.execute(
            "INSERT INTO samples(wf, slot, time, completed) SELECT ?, ?, ?, completed"
            " FROM workflows WHERE id = ? ON CONFLICT(wf, slot) DO UPDATE SET"
            " time = excluded.time, completed = excluded.completed"
            " WHERE excluded.time - samples.time >= ?",
            (wf, int(now // SAMPLE_EVERY) % SLOTS, now, wf, SAMPLE_EVERY * (SLOTS - 1)))

    # -- views -------------------------------------------------------------------------

    def failure_count(self, wf: int) -> int:
        """How many failures a workflow keeps."""
        return int(self._db.execute(
            "SELECT count(*) FROM failures WHERE wf = ?", (wf,)).fetchone()[0])

    def failures(self, wf: int, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the kept failures of a workflow, newest first (the ``limit`` newest).

        Each is a dict: task (its name), seq, state ("failed" or "killed"), outcome
        (the task's state after it: "pending" when it brought a retry), attempt,
        retry, retries, error, traceback, item, worker (identifier), host, time.
        """
        rows = self._db.execute(
            "SELECT f.seq, f.state, f.outcome, f.attempt, f.retry, f.retries, f.error,"
            " f.traceback, f.item, w.identifier, f.host, f.time FROM failures f"
            " LEFT JOIN workers w ON w.id = f.worker WHERE f.wf = ? ORDER BY f.id DESC"
            " LIMIT ?", (wf, -1 if limit is None else limit)).fetchall()
        names = self._names(wf, {row[0] for row in rows})
        fields = ("seq", "state", "outcome", "attempt", "retry", "retries", "error",
                  "traceback", "item", "worker", "host", "time")
        return [{"task": names[row[0]], **dict(zip(fields, row, strict=True))}
                for row in rows]

    def rate(self, wf: int, completed: int, now: float) -> float | None:
        """Completions per second over the last minute (None: nothing to tell it from).

        From the newest sample a minute old; after a pause (none that recent), from
        the oldest sample of the last minute, or from the workflow's creation.
        """
        old = self._db.execute(
            "SELECT time, completed FROM samples WHERE wf = ? AND time BETWEEN ? AND ?"
            " ORDER BY time DESC LIMIT 1",
            (wf, now - RATE_WINDOW - 2 * SAMPLE_EVERY, now - RATE_WINDOW)).fetchone()
        if old is None:
            created = self._db.execute(
                "SELECT created FROM workflows WHERE id = ?", (wf,)).fetchone()[0]
            old = (created, 0) if created > now - RATE_WINDOW else self._db.execute(
                "SELECT time, completed FROM samples WHERE wf = ? AND time > ?"
                " ORDER BY time LIMIT 1", (wf, now - RATE_WINDOW)).fetchone()
        if old is None or now - old[0] < 1.0:
            return None
        return max(0.0, (completed - float(old[1])) / (now - float(old[0])))
