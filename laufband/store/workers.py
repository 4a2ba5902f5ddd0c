"""Workers: their records, heartbeats, going offline, and reaping the dead.

A worker goes offline (``set_offline``) only in the transaction that releases what
it holds; ``reap`` returns a dead worker's tasks in the transaction that marks it
dead; ``return_orphans`` is the safety net for anything else. So no task is
``running`` unless a worker that is online (or not yet found dead) holds it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from laufband.errors import StateError
from laufband.store.failures import FailureRecord
from laufband.store.records import WorkerRecord
from laufband.store.tasks import TaskOperations


class WorkerOperations(TaskOperations):
    """Worker records and the reaping of dead workers."""

    def register_worker(  # noqa: PLR0917 - called positionally, like the worker record reads
        self, identifier: str, wf: int, host: str, pid: int, token: str,
        rank: int | None, labels: Sequence[str],
    ) -> int:
        """Insert or take over the worker record ``identifier``; return its number.

        Raises:
            StateError: A live worker holds ``identifier``.
        """
        row = self._db.execute(
            "SELECT id, state, host, pid FROM workers WHERE identifier = ?", (identifier,)
        ).fetchone()
        values = (wf, host, pid, token, rank, json.dumps(sorted(labels)), time.time())
        if row is None:
            cursor = self._db.execute(
                "INSERT INTO workers(wf, host, pid, token, rank, labels, seen, identifier,"
                " state, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'online', ?)",
                (*values, identifier, time.time()),
            )
            return int(cursor.lastrowid or 0)
        if row[1] == "online":
            msg = (
                f"worker identifier {identifier!r} is in use by a live worker"
                f" (host {row[2]}, pid {row[3]}): give each worker its own identifier="
            )
            raise StateError(msg, path=self.state)
        self._db.execute(
            "UPDATE workers SET wf = ?, host = ?, pid = ?, token = ?, rank = ?, labels = ?,"
            " seen = ?, state = 'online', beat = 0 WHERE id = ?",
            (*values, row[0]),
        )
        return int(row[0])

    def take_reap_turn(self, interval: float) -> bool:
        """Whether this worker reaps now: no worker did for ``interval`` seconds.

        Reaping is delegated this way: one worker looks at everyone's liveness per
        interval, however many workers there are (a time ahead of ours by more than
        the interval, from a host whose clock is off, does not count).
        """
        now = time.time()
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('reaped', '0')")
        return self._db.execute(
            "UPDATE meta SET value = ? WHERE key = 'reaped'"
            " AND (CAST(value AS REAL) <= ? OR CAST(value AS REAL) > ?)",
            (repr(now), now - interval, now + interval)).rowcount > 0

    def worker_state(self, worker: int) -> str | None:
        """Return ``online``, ``offline`` or ``dead``; None when the record is gone (reset)."""
        row = self._db.execute("SELECT state FROM workers WHERE id = ?", (worker,)).fetchone()
        return row[0] if row else None

    def worker_identifier(self, worker: int) -> str | None:
        """Return the identifier registered under a worker number, or None."""
        row = self._db.execute("SELECT identifier FROM workers WHERE id = ?", (worker,)).fetchone()
        return row[0] if row else None

    def set_offline(self, worker: int) -> None:
        """Mark a worker as gone cleanly.

        Its places on multi-worker tasks it had not finished are given up (its own
        tasks it hands back with ``release`` first).
        """
        self._db.execute(
            "UPDATE workers SET state = 'offline', current = NULL, seen = ?"
            " WHERE id = ? AND state = 'online'",
            (time.time(), worker),
        )
        self._unrun_worker(worker)  # none should be left: rows show them to sweepers
        for wf, seq in self._db.execute(
                "DELETE FROM holders WHERE worker = ? AND done = 0 RETURNING wf, seq",
                (worker,)).fetchall():
            self._return_multi(wf, seq)

    def return_orphans(self, wf: int) -> int:
        """Put running tasks whose worker is not online back to pending; return how many.

        No worker leaves tasks running when it goes offline, and reaping a dead one
        returns its tasks, so this finds none unless a hand-back was cut short in a
        way nobody foresaw. It scans the workflow's tasks: call it rarely (a worker
        about to wait for tasks running elsewhere does, once in a while).
        """
        rows = self._retry_orphans(wf)
        multis = self._db.execute(
            "DELETE FROM holders WHERE wf = ? AND done = 0 AND worker NOT IN"
            " (SELECT id FROM workers WHERE state = 'online') RETURNING seq", (wf,)).fetchall()
        for (seq,) in multis:
            self._return_multi(wf, seq)
        return len(rows) + len(multis)

    def set_current(self, worker: int, seq: int | None) -> None:
        """Record the task whose body runs on ``worker`` now (None: none runs).

        Written with each flush, so at most a flush interval old: ``laufband status``
        counts a task running only while a worker says it runs it; the rest of what
        workers hold is claimed.
        """
        self._db.execute("UPDATE workers SET current = ? WHERE id = ?", (seq, worker))

    def beat(self, worker: int) -> None:
        """Advance a worker's heartbeat counter (a counter: hosts' clocks disagree)."""
        self._db.execute(
            "UPDATE workers SET beat = beat + 1, seen = ? WHERE id = ?", (time.time(), worker)
        )

    def worker_of(self, wf: int, host: str, pid: int) -> int | None:
        """Return the online worker of ``wf`` that process ``pid`` on ``host`` runs."""
        row = self._db.execute(
            "SELECT id FROM workers WHERE wf = ? AND host = ? AND pid = ? AND state = 'online'"
            " ORDER BY id DESC LIMIT 1", (wf, host, pid)).fetchone()
        return None if row is None else int(row[0])

    def online_worker(self, identifier: str) -> WorkerRecord | None:
        """Return the online worker named ``identifier``, if any."""
        row = self._db.execute(
            "SELECT id, identifier, host, pid, token, beat, seen FROM workers"
            " WHERE identifier = ? AND state = 'online'", (identifier,)).fetchone()
        return WorkerRecord(*row) if row else None

    def online_workers(self, exclude: int) -> list[WorkerRecord]:
        """Every online worker except ``exclude``."""
        rows = self._db.execute(
            "SELECT id, identifier, host, pid, token, beat, seen FROM workers"
            " WHERE state = 'online' AND id != ?",
            (exclude,),
        )
        return [WorkerRecord(*row) for row in rows]

    def online_count(self, wf: int) -> int:
        """How many workers are online on a workflow."""
        return int(self._db.execute(
            "SELECT count(*) FROM workers WHERE wf = ? AND state = 'online'", (wf,)
        ).fetchone()[0])

    def reap(self, dead: WorkerRecord, max_killed_retries: int,
             in_flight: int | None = None, finished: Sequence[int] = ()) -> int:
        """Mark ``dead`` dead, complete what it finished, return or kill what it ran.

        The tasks it ``finished`` since its last flush are completed; its other running
        tasks go back to pending or become killed.

        Only the task ``in_flight`` when it died counts a kill (none for a negative
        number, or one no longer running on it: it died between tasks); the rest of
        its batch had not started, and simply returns. Without a record (``None``),
        its lowest running task counts the kill: a worker runs its batch in order.
        """
        self._db.execute("UPDATE workers SET state = 'dead' WHERE id = ?", (dead.id,))
        self._unrun_worker(dead.id)
        workflows = self._db.execute(
            "SELECT wf FROM tasks WHERE worker = ? AND state = 'running'"
            " UNION SELECT wf FROM holders WHERE worker = ? AND done = 0",
            (dead.id, dead.id),
        ).fetchall()
        blamed = []
        returned = 0
        for (wf,) in workflows:
            if finished:
                self.finish(wf, dead.id, finished)
            back, suspect = self._return_held(wf, dead.id, in_flight)
            returned += back
            if suspect is not None:
                blamed.append((wf, suspect))
        multis = self._db.execute(
            "DELETE FROM holders WHERE worker = ? AND done = 0 RETURNING wf, seq", (dead.id,)
        ).fetchall()
        now = time.time()
        error = f"worker {dead.identifier} (host {dead.host}, pid {dead.pid}) died"
        for wf, seq in blamed + multis:
            self._kill(wf, seq, dead.id, max_killed_retries, now, error)
        return returned + len(blamed) + len(multis)

    def _return_held(self, wf: int, dead: int, in_flight: int | None) -> tuple[int, int | None]:
        """Return a dead worker's tasks of ``wf`` to pending, all but the one to blame.

        Returns:
            How many came back, and the task to blame (see ``reap``), if any.
        """
        first = self._db.execute(
            "SELECT min(seq) FROM tasks WHERE wf = ? AND worker = ? AND state = 'running'"
            " AND max_workers = 1", (wf, dead)).fetchone()[0]
        if first is None:
            return 0, None
        suspect = first if in_flight is None else -1
        if in_flight is not None and in_flight >= 0 and self._db.execute(
                "SELECT 1 FROM tasks WHERE wf = ? AND seq = ? AND worker = ?"
                " AND state = 'running'", (wf, in_flight, dead)).fetchone():
            suspect = in_flight
        back = self._db.execute(
            "UPDATE tasks SET state = 'pending', worker = NULL WHERE wf = ? AND seq != ?"
            " AND worker = ? AND state = 'running' AND max_workers = 1",
            (wf, suspect, dead),
        ).rowcount
        self._shift(wf, back, "running", "pending")
        if back:
            self._lower_floor(wf, first)  # claimable again, from its lowest
        return back, (suspect if suspect >= 0 else None)

    def _kill(self, wf: int, seq: int, worker: int, retries: int, now: float, error: str) -> None:
        holders = self._db.execute(
            "SELECT count(*), sum(done) FROM holders WHERE wf = ? AND seq = ?", (wf, seq)
        ).fetchone()
        if holders[0] and holders[0] > (holders[1] or 0):
            return  # other holders of a multi-worker task still run it
        if holders[1]:
            self._complete_multi(wf, seq)
            return
        row = self._db.execute(
            "UPDATE tasks SET kills = kills + 1, worker = NULL,"
            " state = CASE WHEN kills + 1 <= ? THEN 'pending' ELSE 'killed' END"
            " WHERE wf = ? AND seq = ? AND state = 'running' RETURNING state, kills,"
            " failures + kills",
            (retries, wf, seq),
        ).fetchone()
        if row is None:
            return
        self._shift(wf, 1, "running", row[0])
        retry = row[1] if row[0] == "pending" else None
        self._record_failure(wf, FailureRecord(seq, error), worker,
                             ("killed", row[0], retry, retries, row[2]))
        self._event(wf, seq, worker, "killed", now, error)
        self._lower_floor(wf, seq)
