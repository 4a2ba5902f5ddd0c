"""The state directory: SQLite schema and every transaction on it.

This is the only module that speaks SQL. Every transaction runs inside one
``filelock`` lock (``state.lock``), so the database also works on shared
filesystems where SQLite's own locking is unreliable; the journal is the classic
rollback journal because WAL needs shared memory, which NFS does not have.

Task life cycle and who writes each transition::

              claim (worker)              finish (worker)
    pending ------------------> running -----------------> completed
       ^  ^                     |  |  |
       |  |  release (worker:   |  |  | fail (worker: break / exception)
       |  +--- Ctrl-C, unstarted)  |  +-------------------> failed  (retries left: pending)
       |                           |
       +-- reap (any worker) ------+----------------------> killed  (its worker died;
                                                                     kills left: pending)
    pending --(a dependency failed or was killed for good)--> blocked

Invariant: no task is ``running`` unless a worker that is online (or not yet found
dead) holds it. A worker goes offline (``set_offline``) only in the transaction that
releases what it holds; ``reap`` returns a dead worker's tasks in the transaction
that marks it dead; ``return_orphans`` is the safety net for anything else.

Routine claims and completions are not logged; transitions off the happy path
are rows in ``events``. Every transition also moves a per-state counter in
``workflows`` (``_shift``; pending = total minus the others), so progress and
status never scan the task table.

Positional tasks (a Laufband without ``key=``) get their row when first claimed:
numbers from ``workflows.materialized`` up to ``total`` are pending without a row,
so registering a million of them costs one UPDATE. ``workflows.floor`` is a number
below which no row is pending, so claims never rescan finished work.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple

from laufband.errors import StateError, TaskGraphError
from laufband.statelock import StateLock

# 3: workflow and worker numbers are never reused (AUTOINCREMENT): a worker still
# running after ``laufband reset`` must not write into the new workflow's rows.
# 4: the fingerprint digests every item (a BLOB); tasks keep the user's info.
SCHEMA_VERSION = 4
DB_NAME = "state.db"

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE workflows(
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, keyed INTEGER NOT NULL,
    total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0,
    running INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    killed INTEGER NOT NULL DEFAULT 0, blocked INTEGER NOT NULL DEFAULT 0,
    floor INTEGER NOT NULL DEFAULT 0, simple INTEGER NOT NULL DEFAULT 1,
    materialized INTEGER NOT NULL DEFAULT 0,
    fingerprint BLOB, created REAL NOT NULL);
CREATE TABLE tasks(
    wf INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT,
    state TEXT NOT NULL DEFAULT 'pending', worker INTEGER,
    kills INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    max_workers INTEGER NOT NULL DEFAULT 1, requirements TEXT, info TEXT,
    PRIMARY KEY (wf, seq)) WITHOUT ROWID;
CREATE UNIQUE INDEX task_keys ON tasks(wf, key) WHERE key IS NOT NULL;
CREATE TABLE deps(
    wf INTEGER NOT NULL, seq INTEGER NOT NULL, dep INTEGER NOT NULL,
    PRIMARY KEY (wf, seq, dep)) WITHOUT ROWID;
CREATE TABLE holders(
    wf INTEGER NOT NULL, seq INTEGER NOT NULL, worker INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (wf, seq, worker)) WITHOUT ROWID;
CREATE TABLE workers(
    id INTEGER PRIMARY KEY AUTOINCREMENT, identifier TEXT NOT NULL UNIQUE, wf INTEGER,
    host TEXT, pid INTEGER, token TEXT, rank INTEGER, labels TEXT, current TEXT,
    state TEXT NOT NULL, beat INTEGER NOT NULL DEFAULT 0, seen REAL,
    started REAL, done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE key_blocks(
    wf INTEGER NOT NULL, first INTEGER NOT NULL, keys BLOB NOT NULL,
    PRIMARY KEY (wf, first)) WITHOUT ROWID;
CREATE TABLE result_chunks(
    id INTEGER PRIMARY KEY, wf INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    payload BLOB NOT NULL);
CREATE INDEX result_chunks_by_wf ON result_chunks(wf, lo);
CREATE TABLE events(
    id INTEGER PRIMARY KEY, wf INTEGER, seq INTEGER, worker INTEGER,
    state TEXT NOT NULL, time REAL NOT NULL, error TEXT);
"""

# A task is ready for `me` when it is within the worker's scope (numbers below
# :limit, and temp.mine when restricted), pending (or a multi-worker task with a
# free slot this worker has not taken: at most max_workers workers in all run it,
# those that finished included), its requirements are within the worker's labels
# and every dependency is completed.
_READY = """
    t.wf = :wf AND t.seq >= :floor AND t.seq < :limit
    AND (t.state = 'pending' OR (t.max_workers > 1 AND t.state = 'running'))
    AND (t.max_workers = 1 OR (SELECT count(*) FROM holders h WHERE h.wf = t.wf
         AND h.seq = t.seq) < t.max_workers)
    AND NOT EXISTS (SELECT 1 FROM holders h WHERE h.wf = t.wf AND h.seq = t.seq
                    AND h.worker = :me)
    AND (t.requirements IS NULL OR NOT EXISTS (
         SELECT 1 FROM json_each(t.requirements) r
         WHERE r.value NOT IN (SELECT value FROM json_each(:labels))))
    AND NOT EXISTS (SELECT 1 FROM deps d JOIN tasks u ON u.wf = d.wf AND u.seq = d.dep
                    WHERE d.wf = t.wf AND d.seq = t.seq AND u.state != 'completed')
"""
_MINE = " AND t.seq IN (SELECT seq FROM temp.mine)"
# Tasks a worker could still get: within its scope, pending or running elsewhere, and
# its labels cover their requirements.
_COULD_RUN = """
    t.wf = :wf AND t.seq >= :start AND t.seq < :limit AND t.state IN ('pending', 'running')
    AND NOT (t.state = 'running' AND t.worker = :me AND t.max_workers = 1)
    AND NOT EXISTS (SELECT 1 FROM holders h WHERE h.wf = t.wf AND h.seq = t.seq
                    AND h.worker = :me)
    AND (t.requirements IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(t.requirements) r
         WHERE r.value NOT IN (SELECT value FROM json_each(:labels))))
"""


def _could_run_params(wf: int, worker: int, labels: Sequence[str],
                      scope: Scope) -> dict[str, Any]:
    return {"wf": wf, "me": worker, "labels": json.dumps(list(labels)),
            "start": scope.start, "limit": scope.limit}



class Workflow(NamedTuple):
    """A workflow row: tasks are numbered ``0 .. total-1`` in registration order."""

    id: int
    name: str
    keyed: bool
    total: int
    completed: int
    simple: bool


class WorkerRecord(NamedTuple):
    """An online worker as another worker sees it when deciding whether it is dead."""

    id: int
    identifier: str
    host: str
    pid: int
    token: str
    beat: int


class Scope(NamedTuple):
    """The tasks a worker has data for: numbers from ``start`` to below ``limit``, and
    only its own (``Transaction.restrict_to``) when ``restricted``."""

    limit: int = 2**62
    restricted: bool = False
    start: int = 0


class NewTask(NamedTuple):
    """A keyed task to register."""

    key: str
    dependencies: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    max_workers: int = 1
    info: dict[str, Any] | None = None  # Task.info, stored as JSON


class Stuck(NamedTuple):
    """Tasks a worker could run that wait for tasks needing labels no online worker has."""

    tasks: list[str]
    labels: list[list[str]]  # the label sets missing


STATES = ("pending", "running", "completed", "failed", "killed", "blocked")
_COUNTED = frozenset(STATES[1:])  # columns of workflows; pending is what is left


def _within(scope: Scope) -> tuple[str, tuple[int, ...]]:
    """SQL condition and parameters for the tasks (``seq``) within a scope."""
    mine = " AND seq IN (SELECT seq FROM temp.mine)" if scope.restricted else ""
    return " AND seq >= ? AND seq < ?" + mine, (scope.start, scope.limit)


def _ranges(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Fold distinct task numbers into inclusive ``(lo, hi)`` runs: one statement per run."""
    if not seqs:
        return []
    lo, hi = min(seqs), max(seqs)
    if hi - lo + 1 == len(seqs):  # distinct numbers filling [lo, hi]: the usual batch
        return [(lo, hi)]
    runs: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


class Transaction:
    """Named operations on the state database, valid inside ``Store.transaction()``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._db = conn
        self.committed: list[Callable[[], None]] = []  # run once the transaction commits

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once this transaction has committed (not if it rolls back)."""
        self.committed.append(action)

    # -- workflows -----------------------------------------------------------------

    def open_workflow(self, name: str, keyed: bool) -> Workflow:
        """Return the workflow ``name``, creating it when new."""
        self._db.execute(
            "INSERT OR IGNORE INTO workflows(name, keyed, created) VALUES (?, ?, ?)",
            (name, int(keyed), time.time()),
        )
        row = self._db.execute(
            "SELECT id, name, keyed, total, completed, simple FROM workflows WHERE name = ?",
            (name,),
        ).fetchone()
        return Workflow(row[0], row[1], bool(row[2]), row[3], row[4], bool(row[5]))

    def workflow_names(self) -> list[str]:
        """Names of every workflow, oldest first."""
        return [name for (name,) in self._db.execute("SELECT name FROM workflows ORDER BY id")]

    def fingerprint(self, wf: int) -> bytes | None:
        """The digests of the data a positional workflow was registered with."""
        return self._db.execute(
            "SELECT fingerprint FROM workflows WHERE id = ?", (wf,)).fetchone()[0]

    def set_fingerprint(self, wf: int, fingerprint: bytes) -> None:
        """Store the data digests a later run checks its data against."""
        self._db.execute(
            "UPDATE workflows SET fingerprint = ? WHERE id = ?", (fingerprint, wf))

    def register_positions(self, wf: int, total: int) -> None:
        """Make tasks ``0 .. total-1`` exist (pending, rows created on first claim)."""
        self._db.execute(
            "UPDATE workflows SET total = max(total, ?) WHERE id = ?", (total, wf)
        )

    def task_numbers(self, wf: int, keys: Collection[str]) -> dict[str, int]:
        """Map those of ``keys`` that a keyed workflow already has to their numbers."""
        total = self._db.execute("SELECT total FROM workflows WHERE id = ?", (wf,)).fetchone()[0]
        if not total:
            return {}
        if total <= 2 * len(keys):
            # Most runs repeat or extend the last one: read every key rather than
            # looking these up one by one through a temporary table.
            stored = self.all_task_numbers(wf)
            return {k: stored[k] for k in keys if k in stored}
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted(key TEXT PRIMARY KEY)")
        self._db.execute("DELETE FROM temp.wanted")
        self._db.executemany(
            "INSERT OR IGNORE INTO temp.wanted VALUES (?)", ((k,) for k in keys))
        return dict(self._db.execute(
            "SELECT t.key, t.seq FROM temp.wanted w JOIN tasks t ON t.wf = ? AND t.key = w.key",
            (wf,),
        ))

    def register_keyed(
        self, workflow: Workflow, tasks: Sequence[NewTask], known: dict[str, int]
    ) -> dict[str, int]:
        """Insert the tasks whose keys are not in ``known``; return key -> number for all."""
        numbers = dict(known)
        fresh = [task for task in tasks if task.key not in known]
        for offset, task in enumerate(fresh):
            numbers[task.key] = workflow.total + offset
        for task in fresh:
            for dep in task.dependencies:
                if dep not in numbers:
                    msg = (
                        f"task {task.key!r} of workflow {workflow.name!r} depends on"
                        f" unknown task {dep!r}: yield a Task with id={dep!r} too"
                    )
                    raise TaskGraphError(msg)
        self._db.executemany(
            "INSERT INTO tasks(wf, seq, key, max_workers, requirements, info)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                (workflow.id, numbers[t.key], t.key, t.max_workers,
                 json.dumps(sorted(t.requirements)) if t.requirements else None,
                 json.dumps(t.info) if t.info else None)
                for t in fresh
            ),
        )
        self._db.executemany(
            "INSERT OR IGNORE INTO deps(wf, seq, dep) VALUES (?, ?, ?)",
            (
                (workflow.id, numbers[t.key], numbers[dep])
                for t in fresh for dep in t.dependencies
            ),
        )
        simple = not any(t.dependencies or t.requirements or t.max_workers > 1 for t in fresh)
        self._grow(workflow.id, len(fresh), simple)
        return numbers

    def register_keys(self, workflow: Workflow, keys: Sequence[str],
                      known: dict[str, int]) -> dict[str, int]:
        """Insert plain tasks (no dependencies or requirements) for the keys not in
        ``known``; return key -> number for all. The fast path of ``register_keyed``."""
        fresh = [key for key in keys if key not in known]
        first = workflow.total
        self._db.executemany(  # zip and repeat: the rows are built in C
            "INSERT INTO tasks(wf, seq, key) VALUES (?, ?, ?)",
            zip(repeat(workflow.id), range(first, first + len(fresh)), fresh),
        )
        self._grow(workflow.id, len(fresh), True)
        return {**known, **dict(zip(fresh, range(first, first + len(fresh)), strict=True))}

    def _grow(self, wf: int, count: int, simple: bool) -> None:
        self._db.execute(
            "UPDATE workflows SET total = total + ?, materialized = total + ?,"
            " simple = simple AND ? WHERE id = ?",
            (count, count, int(simple), wf),
        )

    def dependency_edges(self, wf: int) -> list[tuple[int, int]]:
        """All ``(task, dependency)`` pairs of a workflow, by task number."""
        return self._db.execute("SELECT seq, dep FROM deps WHERE wf = ?", (wf,)).fetchall()

    def restrict_to(self, seqs: Iterable[int]) -> None:
        """Limit this connection's claims to the given tasks (a worker lacking data for others)."""
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS mine(seq INTEGER PRIMARY KEY)")
        self._db.execute("DELETE FROM temp.mine")
        self._db.executemany("INSERT INTO temp.mine VALUES (?)", ((s,) for s in seqs))

    # -- workers -------------------------------------------------------------------

    def register_worker(
        self, identifier: str, wf: int, host: str, pid: int, token: str,
        rank: int | None, labels: Sequence[str],
    ) -> int:
        """Insert or take over the worker record ``identifier``; return its number."""
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
            return int(cursor.lastrowid)
        if row[1] == "online":
            msg = (
                f"worker identifier {identifier!r} is in use by a live worker"
                f" (host {row[2]}, pid {row[3]}): give each worker its own identifier="
            )
            raise StateError(msg)
        self._db.execute(
            "UPDATE workers SET wf = ?, host = ?, pid = ?, token = ?, rank = ?, labels = ?,"
            " seen = ?, state = 'online', beat = 0 WHERE id = ?",
            (*values, row[0]),
        )
        return int(row[0])

    def worker_state(self, worker: int) -> str | None:
        """Return ``online``, ``offline`` or ``dead``; None when the record is gone (its
        workflow was reset)."""
        row = self._db.execute("SELECT state FROM workers WHERE id = ?", (worker,)).fetchone()
        return row[0] if row else None

    def worker_identifier(self, worker: int) -> str | None:
        """The identifier registered under a worker number, or None."""
        row = self._db.execute("SELECT identifier FROM workers WHERE id = ?", (worker,)).fetchone()
        return row[0] if row else None

    def set_offline(self, worker: int) -> None:
        """Mark a worker as gone cleanly; its places on multi-worker tasks it had not
        finished are given up (its own tasks it hands back with ``release`` first)."""
        self._db.execute(
            "UPDATE workers SET state = 'offline', current = NULL, seen = ?"
            " WHERE id = ? AND state = 'online'",
            (time.time(), worker),
        )
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

    def beat(self, worker: int) -> None:
        """Advance a worker's heartbeat counter (a counter: hosts' clocks disagree)."""
        self._db.execute(
            "UPDATE workers SET beat = beat + 1, seen = ? WHERE id = ?", (time.time(), worker)
        )

    def online_worker(self, identifier: str) -> WorkerRecord | None:
        """The online worker named ``identifier``, if any."""
        row = self._db.execute(
            "SELECT id, identifier, host, pid, token, beat FROM workers"
            " WHERE identifier = ? AND state = 'online'", (identifier,)).fetchone()
        return WorkerRecord(*row) if row else None

    def online_workers(self, exclude: int) -> list[WorkerRecord]:
        """Every online worker except ``exclude``."""
        rows = self._db.execute(
            "SELECT id, identifier, host, pid, token, beat FROM workers"
            " WHERE state = 'online' AND id != ?",
            (exclude,),
        )
        return [WorkerRecord(*row) for row in rows]

    def reap(self, dead: WorkerRecord, max_killed_retries: int,
             in_flight: int | None = None, finished: Sequence[int] = ()) -> int:
        """Mark ``dead`` dead: complete the tasks it ``finished`` since its last flush,
        and return its other running tasks to pending or make them killed.

        Only the task ``in_flight`` when it died counts a kill (none for a negative
        number, or one no longer running on it: it died between tasks); the rest of
        its batch had not started, and simply returns. Without a record (``None``),
        its lowest running task counts the kill: a worker runs its batch in order.
        """
        self._db.execute("UPDATE workers SET state = 'dead' WHERE id = ?", (dead.id,))
        now = time.time()
        error = f"worker {dead.identifier} (host {dead.host}, pid {dead.pid}) died"
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
            first = self._db.execute(
                "SELECT min(seq) FROM tasks WHERE wf = ? AND worker = ? AND state = 'running'"
                " AND max_workers = 1", (wf, dead.id)).fetchone()[0]
            if first is None:
                continue
            suspect = first if in_flight is None else -1
            if in_flight is not None and in_flight >= 0 and self._db.execute(
                    "SELECT 1 FROM tasks WHERE wf = ? AND seq = ? AND worker = ?"
                    " AND state = 'running'", (wf, in_flight, dead.id)).fetchone():
                suspect = in_flight
            back = self._db.execute(
                "UPDATE tasks SET state = 'pending', worker = NULL WHERE wf = ? AND seq != ?"
                " AND worker = ? AND state = 'running' AND max_workers = 1",
                (wf, suspect, dead.id),
            ).rowcount
            self._shift(wf, back, "running", "pending")
            if back:
                self._lower_floor(wf, first)  # claimable again, from its lowest
            returned += back
            if suspect >= 0:
                blamed.append((wf, suspect))
        multis = self._db.execute(
            "DELETE FROM holders WHERE worker = ? AND done = 0 RETURNING wf, seq", (dead.id,)
        ).fetchall()
        for wf, seq in blamed + multis:
            self._kill(wf, seq, dead.id, max_killed_retries, now, error)
        return returned + len(blamed) + len(multis)

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
            " WHERE wf = ? AND seq = ? AND state = 'running' RETURNING state",
            (retries, wf, seq),
        ).fetchone()
        if row is None:
            return
        self._shift(wf, 1, "running", row[0])
        self._event(wf, seq, worker, "killed", now, error)
        self._lower_floor(wf, seq)

    # -- claims and results ----------------------------------------------------------

    def claim(
        self, wf: int, worker: int, k: int, labels: Sequence[str], scope: Scope
    ) -> list[int]:
        """Mark up to ``k`` ready tasks in ``scope`` running for ``worker``; return them."""
        simple, floor = self._db.execute(
            "SELECT simple, floor FROM workflows WHERE id = ?", (wf,)
        ).fetchone()
        restricted = scope.restricted
        # The shared floor only speaks for unrestricted claims from task 0 on.
        shared = not restricted and floor >= scope.start
        floor = max(floor, scope.start) if not restricted else scope.start
        if simple:
            return self._claim_run(wf, worker, k, scope, floor, shared)
        params = {"wf": wf, "me": worker, "labels": json.dumps(list(labels)),
                  "floor": floor, "k": k, "limit": scope.limit}
        query = "SELECT t.seq, t.max_workers, t.state FROM tasks t WHERE" + _READY
        rows = self._db.execute(
            query + (_MINE if restricted else "") + " ORDER BY t.seq LIMIT :k", params
        ).fetchall()
        self._db.executemany(
            "INSERT INTO holders(wf, seq, worker) VALUES (?, ?, ?)",
            ((wf, seq, worker) for seq, max_workers, _ in rows if max_workers > 1),
        )
        self._db.executemany(
            "UPDATE tasks SET state = 'running', worker = ? WHERE wf = ? AND seq = ?",
            ((worker, wf, seq) for seq, _, _ in rows),
        )
        self._shift(wf, sum(state == "pending" for _, _, state in rows), "pending", "running")
        self._mark_current(worker, wf, [seq for seq, _, _ in rows])
        return [seq for seq, _, _ in rows]

    def _claim_run(self, wf: int, worker: int, k: int, scope: Scope, floor: int,
                   shared: bool) -> list[int]:
        """Claim the next run of pending tasks by number range: no per-row Python work."""
        mine = _MINE if scope.restricted else ""
        total, materialized = self._db.execute(
            "SELECT total, materialized FROM workflows WHERE id = ?", (wf,)).fetchone()
        row = self._db.execute(
            "SELECT t.seq FROM tasks t WHERE t.wf = ? AND t.seq >= ? AND t.seq < ?"
            " AND t.state = 'pending'" + mine + " ORDER BY t.seq LIMIT 1",
            (wf, floor, scope.limit),
        ).fetchone()
        if row is None:
            return self._claim_fresh(wf, worker, k, scope, materialized, total, shared)
        lo = row[0]
        hi = min(lo + k, scope.limit, materialized) - 1
        pending = self._db.execute(
            "SELECT count(*) FROM tasks t WHERE t.wf = ? AND t.seq BETWEEN ? AND ?"
            " AND t.state = 'pending'" + mine,
            (wf, lo, hi),
        ).fetchone()[0]
        claim = (
            "UPDATE tasks AS t SET state = 'running', worker = ? WHERE t.wf = ?"
            " AND t.seq BETWEEN ? AND ? AND t.state = 'pending'" + mine
        )
        if pending == hi - lo + 1:  # the usual case: a solid run, no rows to read back
            self._db.execute(claim, (worker, wf, lo, hi))
            claimed = list(range(lo, hi + 1))
        else:  # holes (tasks running elsewhere, done, or not ours): read back what we took
            rows = self._db.execute(claim + " RETURNING seq", (worker, wf, lo, hi)).fetchall()
            claimed = sorted(seq for (seq,) in rows)
        if shared:
            # lo was the first pending task and every pending task up to hi is now
            # claimed. Never past total: tasks registered later start there.
            self._db.execute(
                "UPDATE workflows SET floor = min(?, total) WHERE id = ?", (hi + 1, wf))
        self._shift(wf, len(claimed), "pending", "running")
        self._mark_current(worker, wf, claimed)
        return claimed

    def _claim_fresh(self, wf: int, worker: int, k: int, scope: Scope, materialized: int,
                     total: int, shared: bool) -> list[int]:
        """Claim tasks that have no row yet: insert them as running."""
        lo = max(materialized, scope.start)
        hi = min(lo + k, scope.limit, total) - 1
        if hi < lo:
            return []
        self.materialize(wf, lo)  # tasks below our scope stay pending, now with rows
        self._insert_rows(wf, lo, hi, "running", worker)
        self._db.execute("UPDATE workflows SET materialized = ? WHERE id = ?", (hi + 1, wf))
        if shared and lo == materialized:
            self._db.execute("UPDATE workflows SET floor = ? WHERE id = ?", (hi + 1, wf))
        self._shift(wf, hi - lo + 1, "pending", "running")
        self._mark_current(worker, wf, [lo])
        return list(range(lo, hi + 1))

    def finish(self, wf: int, worker: int, seqs: Sequence[int]) -> int:
        """Mark tasks this worker ran as completed; return how many it completed."""
        runs = _ranges(seqs)
        if not runs:
            return 0
        before = self._db.total_changes
        self._db.executemany(
            "UPDATE tasks SET state = 'completed' WHERE wf = ? AND seq BETWEEN ? AND ?"
            " AND state = 'running' AND worker = ? AND max_workers = 1",
            ((wf, lo, hi, worker) for lo, hi in runs),
        )
        completed = self._db.total_changes - before
        self._shift(wf, completed, "running", "completed")
        if not self._is_simple(wf):
            completed += self._finish_multi(wf, worker, runs)
        self._db.execute(
            "UPDATE workers SET done = done + ?, seen = ? WHERE id = ?",
            (completed, time.time(), worker),
        )
        return completed

    def _is_simple(self, wf: int) -> bool:
        row = self._db.execute("SELECT simple FROM workflows WHERE id = ?", (wf,)).fetchone()
        return bool(row[0])

    def _finish_multi(self, wf: int, worker: int, runs: list[tuple[int, int]]) -> int:
        seqs = [
            seq
            for lo, hi in runs
            for (seq,) in self._db.execute(
                "UPDATE holders SET done = 1 WHERE wf = ? AND worker = ? AND done = 0"
                " AND seq BETWEEN ? AND ? RETURNING seq",
                (wf, worker, lo, hi),
            ).fetchall()
        ]
        return sum(self._complete_multi(wf, seq) for seq in seqs)

    def _complete_multi(self, wf: int, seq: int) -> int:
        """Complete a multi-worker task once no holder is still running it."""
        completed = self._db.execute(
            "UPDATE tasks SET state = 'completed' WHERE wf = ? AND seq = ? AND max_workers > 1"
            " AND state = 'running' AND NOT EXISTS (SELECT 1 FROM holders h"
            " WHERE h.wf = tasks.wf AND h.seq = tasks.seq AND h.done = 0)"
            " AND EXISTS (SELECT 1 FROM holders h WHERE h.wf = tasks.wf"
            " AND h.seq = tasks.seq AND h.done = 1)",
            (wf, seq),
        ).rowcount
        self._shift(wf, completed, "running", "completed")
        return completed

    def fail(
        self, wf: int, worker: int, seq: int, error: str, max_failed_retries: int
    ) -> str:
        """Record a failure of ``seq``; return its new state (pending while retries are left)."""
        held = self._db.execute(
            "DELETE FROM holders WHERE wf = ? AND seq = ? AND worker = ? AND done = 0",
            (wf, seq, worker),
        ).rowcount
        row = self._db.execute(
            "UPDATE tasks SET failures = failures + 1, worker = NULL,"
            " state = CASE WHEN failures + 1 <= ? THEN 'pending' ELSE 'failed' END"
            " WHERE wf = ? AND seq = ? AND state = 'running'"
            " AND ((max_workers = 1 AND worker = ?) OR (max_workers > 1 AND ?))"
            " RETURNING state",
            (max_failed_retries, wf, seq, worker, held),
        ).fetchone()
        state = row[0] if row else "running"
        if row:
            self._shift(wf, 1, "running", state)
        self._event(wf, seq, worker, "failed", time.time(), error)
        if state == "pending":
            self._lower_floor(wf, seq)
        return state

    def release(self, wf: int, worker: int, seqs: Sequence[int]) -> None:
        """Put claimed tasks this worker has not run back to pending."""
        runs = _ranges(seqs)
        if not runs:
            return
        before = self._db.total_changes
        self._db.executemany(
            "UPDATE tasks SET state = 'pending', worker = NULL WHERE wf = ?"
            " AND seq BETWEEN ? AND ? AND state = 'running' AND worker = ? AND max_workers = 1",
            ((wf, lo, hi, worker) for lo, hi in runs),
        )
        self._shift(wf, self._db.total_changes - before, "running", "pending")
        if not self._is_simple(wf):
            for lo, hi in runs:
                dropped = self._db.execute(
                    "DELETE FROM holders WHERE wf = ? AND worker = ? AND done = 0"
                    " AND seq BETWEEN ? AND ? RETURNING seq",
                    (wf, worker, lo, hi),
                ).fetchall()
                for (seq,) in dropped:
                    self._return_multi(wf, seq)
        self._lower_floor(wf, runs[0][0])

    def _return_multi(self, wf: int, seq: int) -> None:
        """After a holder left a multi-worker task: complete it, or make it pending again."""
        if self._complete_multi(wf, seq):
            return
        returned = self._db.execute(
            "UPDATE tasks SET state = 'pending', worker = NULL WHERE wf = ? AND seq = ?"
            " AND state = 'running' AND NOT EXISTS (SELECT 1 FROM holders h"
            " WHERE h.wf = tasks.wf AND h.seq = tasks.seq)",
            (wf, seq),
        ).rowcount
        self._shift(wf, returned, "running", "pending")

    def block_unreachable(self, wf: int) -> int:
        """Mark pending tasks whose dependency failed or was killed for good as blocked."""
        now = time.time()
        blocked = 0
        while True:
            rows = self._db.execute(
                "UPDATE tasks AS t SET state = 'blocked' WHERE t.wf = ? AND t.state = 'pending'"
                " AND EXISTS (SELECT 1 FROM deps d JOIN tasks u ON u.wf = d.wf AND u.seq = d.dep"
                " WHERE d.wf = t.wf AND d.seq = t.seq"
                " AND u.state IN ('failed', 'killed', 'blocked')) RETURNING seq",
                (wf,),
            ).fetchall()
            if not rows:
                return blocked
            blocked += len(rows)
            self._shift(wf, len(rows), "pending", "blocked")
            self._event_many(wf, [seq for (seq,) in rows], "blocked",
                             "a dependency failed or was killed", now)

    def may_get_work(self, wf: int, worker: int, labels: Sequence[str], scope: Scope) -> bool:
        """Whether a task this worker could run is pending or running elsewhere."""
        row = self._db.execute(
            "SELECT 1 FROM tasks t WHERE" + _COULD_RUN + (_MINE if scope.restricted else "")
            + " LIMIT 1", _could_run_params(wf, worker, labels, scope)).fetchone()
        if row is not None:
            return True
        return self._db.execute(
            "SELECT max(materialized, ?) < min(total, ?) FROM workflows WHERE id = ?",
            (scope.start, scope.limit, wf)).fetchone()[0] == 1

    def stuck_on_labels(self, wf: int, worker: int, labels: Sequence[str],
                        scope: Scope) -> Stuck | None:
        """If every task this worker could run waits (through its dependencies) for a
        pending task that needs labels no online worker has, say which; else None.

        Call it only when ``may_get_work`` is true and nothing is ready: it reads every
        open task of the workflow.
        """
        if self._is_simple(wf):
            return None  # no requirements, no dependencies: pending is reachable
        online = [frozenset(json.loads(found or "[]")) for (found,) in self._db.execute(
            "SELECT labels FROM workers WHERE wf = ? AND state = 'online'", (wf,))]
        open_tasks = {seq: (state, frozenset(json.loads(req or "[]")))
                      for seq, state, req in self._db.execute(
                          "SELECT seq, state, requirements FROM tasks WHERE wf = ?"
                          " AND state IN ('pending', 'running')", (wf,))}
        missing = {req for state, req in open_tasks.values()
                   if state == "pending" and not any(req <= have for have in online)}
        if not missing:
            return None
        unreachable = {seq for seq, (state, req) in open_tasks.items()
                       if state == "pending" and req in missing}
        dependents: dict[int, list[int]] = {}
        for seq, dep in self._db.execute("SELECT seq, dep FROM deps WHERE wf = ?", (wf,)):
            if seq in open_tasks:
                dependents.setdefault(dep, []).append(seq)
        todo = list(unreachable)
        while todo:  # what waits for an unreachable task is unreachable too
            for seq in dependents.get(todo.pop(), ()):
                if seq not in unreachable and open_tasks[seq][0] == "pending":
                    unreachable.add(seq)
                    todo.append(seq)
        ours = self._db.execute(
            "SELECT t.seq, coalesce(t.key, CAST(t.seq AS TEXT)) FROM tasks t WHERE"
            + _COULD_RUN + (_MINE if scope.restricted else ""),
            _could_run_params(wf, worker, labels, scope)).fetchall()
        if any(seq not in unreachable for seq, _ in ours):
            return None
        return Stuck([key for _, key in ours], sorted(sorted(req) for req in missing))

    def failed_tasks(self, wf: int, limit: int) -> list[str]:
        """Ids of up to ``limit`` tasks that failed or were killed for good."""
        counts = self.counts(wf)
        if not counts["failed"] and not counts["killed"]:  # the counters spare a scan
            return []
        return [key for (key,) in self._db.execute(
            "SELECT coalesce(key, CAST(seq AS TEXT)) FROM tasks WHERE wf = ?"
            " AND state IN ('failed', 'killed') ORDER BY seq LIMIT ?", (wf, limit))]

    def online_count(self, wf: int) -> int:
        """How many workers are online on a workflow."""
        return self._db.execute(
            "SELECT count(*) FROM workers WHERE wf = ? AND state = 'online'", (wf,)
        ).fetchone()[0]

    def describe_failure(self, wf: int, seq: int, worker: int, error: str) -> None:
        """Attach error text to the latest failure event of a task."""
        self._db.execute(
            "UPDATE events SET error = ? WHERE id = (SELECT max(id) FROM events"
            " WHERE wf = ? AND seq = ? AND worker = ? AND state = 'failed')",
            (error, wf, seq, worker),
        )

    def progress(self, wf: int) -> tuple[int, int]:
        """``(total, completed)`` tasks of a workflow, from maintained counters."""
        return self._db.execute(
            "SELECT total, completed FROM workflows WHERE id = ?", (wf,)).fetchone()

    def task_states(self, wf: int) -> dict[str, str]:
        """Task id -> state for a whole workflow (positional ids are their numbers)."""
        states = dict(self._db.execute(
            "SELECT coalesce(key, CAST(seq AS TEXT)), state FROM tasks WHERE wf = ?", (wf,)
        ))
        materialized, total = self._db.execute(
            "SELECT materialized, total FROM workflows WHERE id = ?", (wf,)).fetchone()
        states.update((str(seq), "pending") for seq in range(materialized, total))
        return states

    # -- key blocks and result chunks (pmap) ---------------------------------------

    def key_blocks(self, wf: int) -> list[tuple[int, bytes]]:
        """``(first task number, packed keys)`` of every key block of a workflow."""
        return self._db.execute(
            "SELECT first, keys FROM key_blocks WHERE wf = ? ORDER BY first", (wf,)).fetchall()

    def add_key_block(self, wf: int, keys: bytes, count: int) -> int:
        """Append ``count`` plain pending tasks whose ids are packed in ``keys``: one row
        for the block, task rows only when claimed. Return the first task's number."""
        first = self._db.execute("SELECT total FROM workflows WHERE id = ?", (wf,)).fetchone()[0]
        self._db.execute("INSERT INTO key_blocks(wf, first, keys) VALUES (?, ?, ?)",
                         (wf, first, keys))
        self._db.execute("UPDATE workflows SET total = total + ? WHERE id = ?", (count, wf))
        return first

    def materialize(self, wf: int, upto: int) -> None:
        """Give tasks below ``upto`` that have no row yet a pending row (restricted
        claims and claims above the next unclaimed task look at rows only)."""
        materialized = self._db.execute(
            "SELECT materialized FROM workflows WHERE id = ?", (wf,)).fetchone()[0]
        if upto > materialized:
            self._insert_rows(wf, materialized, upto - 1, "pending", None)
            self._db.execute("UPDATE workflows SET materialized = ? WHERE id = ?", (upto, wf))

    def _insert_rows(self, wf: int, lo: int, hi: int, state: str, worker: int | None) -> None:
        # A recursive CTE inserts in C: ~1 us per task, no Python loop.
        self._db.execute(
            "WITH RECURSIVE s(x) AS (SELECT ? UNION ALL SELECT x + 1 FROM s WHERE x < ?)"
            " INSERT INTO tasks(wf, seq, state, worker) SELECT ?, x, ?, ? FROM s",
            (lo, hi, wf, state, worker),
        )

    def store_result_chunk(self, wf: int, lo: int, hi: int, payload: bytes) -> None:
        """Keep the packed outcomes of tasks ``lo .. hi`` (some of them) of one flush."""
        self._db.execute(
            "INSERT INTO result_chunks(wf, lo, hi, payload) VALUES (?, ?, ?, ?)",
            (wf, lo, hi, payload))

    def result_chunks(self, wf: int, lo: int, hi: int) -> list[bytes]:
        """Packed outcomes that may cover tasks ``lo .. hi``, oldest first."""
        return [payload for (payload,) in self._db.execute(
            "SELECT payload FROM result_chunks WHERE wf = ? AND lo <= ? AND hi >= ?"
            " ORDER BY id", (wf, hi, lo))]

    def reopen(self, wf: int, seqs: Sequence[int]) -> None:
        """Make completed tasks pending again: their results were lost."""
        for start in range(0, len(seqs), 500):  # SQLite limits variables per statement
            part = seqs[start:start + 500]
            self._retry(wf, ("completed",), f" AND seq IN ({', '.join('?' * len(part))})", part)

    def retry_unfinished(self, wf: int, scope: Scope) -> int:
        """Make failed and killed tasks within ``scope`` pending again (a new pmap call)."""
        counts = self.counts(wf)
        if not counts["failed"] and not counts["killed"]:  # the counters spare a scan
            return 0
        where, params = _within(scope)
        return len(self._retry(wf, ("failed", "killed"), where, params))

    def unfinished(self, wf: int, scope: Scope) -> dict[int, str]:
        """Number -> state of the tasks within ``scope`` that are not completed."""
        total, completed = self.progress(wf)
        if completed == total:  # the counters spare a scan
            return {}
        where, params = _within(scope)
        states = dict(self._db.execute(
            "SELECT seq, state FROM tasks WHERE wf = ? AND state != 'completed'" + where,
            (wf, *params)))
        materialized, total = self._db.execute(
            "SELECT materialized, total FROM workflows WHERE id = ?", (wf,)).fetchone()
        if not scope.restricted:  # restricted scopes are materialized (pmap does)
            lazy = range(max(materialized, scope.start), min(total, scope.limit))
            states.update(zip(lazy, repeat("pending")))
        return states

    def _retry(self, wf: int, states: Sequence[str], where: str = "",
               params: Sequence[object] = ()) -> list[tuple[int]]:
        """Make tasks in ``states`` pending again with fresh retry counts."""
        found = self._db.execute(
            "SELECT state, count(*) FROM tasks WHERE wf = ? AND state IN"
            f" ({', '.join('?' * len(states))}){where} GROUP BY state",
            (wf, *states, *params),
        ).fetchall()
        for state, count in found:
            self._shift(wf, count, state, "pending")
        rows = self._db.execute(
            "UPDATE tasks SET state = 'pending', failures = 0, kills = 0, worker = NULL"
            f" WHERE wf = ? AND state IN ({', '.join('?' * len(states))}){where}"
            " RETURNING seq",
            (wf, *states, *params),
        ).fetchall()
        self._db.executemany(  # a multi-worker task run anew has every slot free
            "DELETE FROM holders WHERE wf = ? AND seq = ?", ((wf, seq) for (seq,) in rows))
        if rows:
            self._lower_floor(wf, min(seq for (seq,) in rows))
        return rows

    def all_task_numbers(self, wf: int) -> dict[str, int]:
        """Key -> number for every task of a keyed workflow."""
        return dict(self._db.execute("SELECT key, seq FROM tasks WHERE wf = ?", (wf,)).fetchall())

    def events(self, wf: int) -> list[tuple[str, str, str | None]]:
        """Task id, state and error text of every event of a workflow, oldest first."""
        return self._db.execute(
            "SELECT coalesce(t.key, CAST(e.seq AS TEXT)), e.state, e.error FROM events e"
            " JOIN tasks t ON t.wf = e.wf AND t.seq = e.seq WHERE e.wf = ? ORDER BY e.id",
            (wf,),
        ).fetchall()

    def workers(self, wf: int) -> list[tuple[Any, ...]]:
        """Workers of a workflow: identifier, host, pid, rank, labels, state, current
        task, tasks done, last heartbeat (wall clock); online ones first."""
        return self._db.execute(
            "SELECT identifier, host, pid, rank, labels, state, current, done, seen"
            " FROM workers WHERE wf = ? ORDER BY state != 'online', id DESC", (wf,)
        ).fetchall()

    def latest_events(self, wf: int, limit: int) -> list[tuple[Any, ...]]:
        """The ``limit`` newest events: task id, state, error text, time, worker."""
        return self._db.execute(
            "SELECT coalesce(t.key, CAST(e.seq AS TEXT)), e.state, e.error, e.time,"
            " w.identifier FROM events e JOIN tasks t ON t.wf = e.wf AND t.seq = e.seq"
            " LEFT JOIN workers w ON w.id = e.worker WHERE e.wf = ?"
            " ORDER BY e.id DESC LIMIT ?", (wf, limit)
        ).fetchall()

    def task_infos(self, wf: int, task_ids: Collection[str]) -> dict[str, dict[str, Any]]:
        """``Task.info`` of those of ``task_ids`` that have any (keyed tasks only)."""
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted_info(key TEXT PRIMARY KEY)")
        self._db.execute("DELETE FROM temp.wanted_info")
        self._db.executemany("INSERT OR IGNORE INTO temp.wanted_info VALUES (?)",
                             ((key,) for key in task_ids))
        rows = self._db.execute(
            "SELECT t.key, t.info FROM temp.wanted_info w JOIN tasks t ON t.wf = ?"
            " AND t.key = w.key WHERE t.info IS NOT NULL", (wf,))
        return {key: json.loads(info) for key, info in rows}

    def retry(self, wf: int, states: Sequence[str], task_ids: Sequence[str] = ()) -> int:
        """Put tasks in ``states`` (only ``task_ids``, if given) back to pending, and
        unblock tasks that were blocked by them; return how many were retried."""
        where, params = "", ()
        if task_ids:
            where = f" AND coalesce(key, CAST(seq AS TEXT)) IN ({', '.join('?' * len(task_ids))})"
            params = tuple(task_ids)
        retried = self._retry(wf, states, where, params)
        if task_ids:  # a task named by id may also be stuck on a worker that is gone
            retried += self._retry_orphans(wf, where, params)
        if retried:  # blocked tasks may be runnable now; they block again if not
            self._retry(wf, ("blocked",))
            self._event_many(wf, [seq for (seq,) in retried], "retried")
        return len(retried)

    def _retry_orphans(self, wf: int, where: str = "",
                       params: Sequence[object] = ()) -> list[tuple[int]]:
        """Make running single-worker tasks whose worker is not online pending again."""
        rows = self._db.execute(
            "UPDATE tasks SET state = 'pending', worker = NULL WHERE wf = ? AND state ="
            " 'running' AND max_workers = 1 AND coalesce(worker, -1) NOT IN (SELECT id FROM"
            f" workers WHERE state = 'online'){where} RETURNING seq", (wf, *params)).fetchall()
        self._shift(wf, len(rows), "running", "pending")
        if rows:
            self._lower_floor(wf, min(seq for (seq,) in rows))
        return rows

    def reset(self, wf: int) -> None:
        """Delete a workflow and everything stored for it."""
        for table in ("tasks", "deps", "holders", "key_blocks", "result_chunks", "events",
                      "workers"):
            self._db.execute(f"DELETE FROM {table} WHERE wf = ?", (wf,))  # fixed names
        self._db.execute("DELETE FROM workflows WHERE id = ?", (wf,))

    def has_workflow(self, wf: int) -> bool:
        """Whether workflow number ``wf`` still exists (``laufband reset`` deletes it)."""
        row = self._db.execute("SELECT 1 FROM workflows WHERE id = ?", (wf,)).fetchone()
        return row is not None

    def find_workflow(self, name: str) -> int | None:
        """The number of workflow ``name``, or None."""
        row = self._db.execute("SELECT id FROM workflows WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def integrity(self) -> str:
        """SQLite's own check of the database file: "ok" when it is sound."""
        return "; ".join(row[0] for row in self._db.execute("PRAGMA integrity_check"))

    def counts(self, wf: int) -> dict[str, int]:
        """Tasks per state, from the maintained counters."""
        row = self._db.execute(
            "SELECT total, running, completed, failed, killed, blocked FROM workflows"
            " WHERE id = ?", (wf,)).fetchone()
        counted = dict(zip(STATES[1:], row[1:], strict=True))
        return {"pending": row[0] - sum(counted.values()), **counted}

    def scan_counts(self, wf: int) -> dict[str, int]:
        """Tasks per state by scanning the task table (checks the counters in tests)."""
        found = dict(self._db.execute(
            "SELECT state, count(*) FROM tasks WHERE wf = ? GROUP BY state", (wf,)))
        materialized, total = self._db.execute(
            "SELECT materialized, total FROM workflows WHERE id = ?", (wf,)).fetchone()
        found["pending"] = found.get("pending", 0) + total - materialized
        return {state: found.get(state, 0) for state in STATES}

    def _shift(self, wf: int, count: int, source: str, target: str) -> None:
        """Move ``count`` tasks from one state's counter to another's."""
        if not count or source == target:
            return
        sets = [f"{column} = {column} {sign} ?" for column, sign in ((source, "-"), (target, "+"))
                if column in _COUNTED]  # names from a fixed set, never from input
        self._db.execute(f"UPDATE workflows SET {', '.join(sets)} WHERE id = ?",
                         (*[count] * len(sets), wf))

    def _mark_current(self, worker: int, wf: int, seqs: Sequence[int]) -> None:
        """Remember the first task of a worker's latest claim, for ``laufband watch``."""
        if seqs:
            self._db.execute(
                "UPDATE workers SET current = (SELECT coalesce(key, CAST(seq AS TEXT))"
                " FROM tasks WHERE wf = ? AND seq = ?) WHERE id = ?", (wf, seqs[0], worker))

    def _lower_floor(self, wf: int, seq: int) -> None:
        self._db.execute("UPDATE workflows SET floor = min(floor, ?) WHERE id = ?", (seq, wf))

    def _event_many(self, wf: int, seqs: Sequence[int], state: str, error: str | None = None,
                    now: float | None = None) -> None:
        stamp = time.time() if now is None else now
        self._db.executemany(
            "INSERT INTO events(wf, seq, state, time, error) VALUES (?, ?, ?, ?, ?)",
            ((wf, seq, state, stamp, error) for seq in seqs),
        )

    def _event(
        self, wf: int, seq: int, worker: int | None, state: str, now: float, error: str
    ) -> None:
        self._db.execute(
            "INSERT INTO events(wf, seq, worker, state, time, error) VALUES (?, ?, ?, ?, ?, ?)",
            (wf, seq, worker, state, now, error),
        )


class Store:
    """One process's handle on a state directory: the lock and a connection per thread.

    Args:
        path: The state directory; created (0700) when missing.
        soft_lock: Use a lock file instead of flock (filesystems without locks).
        rank: This process's MPI rank, named when others wait for it.
        patience: Give up waiting for the lock when one holder keeps it this many
            seconds (``laufband status``); None waits as long as it takes.
    """

    def __init__(self, path: str | os.PathLike[str], soft_lock: bool = False,
                 rank: int | None = None, patience: float | None = None) -> None:
        self.path = Path(path)
        self.db_path = self.path / DB_NAME
        make_directory(self.path)
        self._lock = StateLock(self.path, soft_lock, rank)
        self._patience = patience
        self._conns: dict[int, sqlite3.Connection] = {}  # the database opens lazily

    def _connection(self) -> sqlite3.Connection:
        key = threading.get_ident()
        conn = self._conns.get(key)
        if conn is None:
            conn = self._connect()
            self._conns[key] = conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        """Open the database, creating its schema when it has none (under the lock)."""
        refuse_symlink(self.db_path)
        refuse_symlink(self.db_path.with_name(DB_NAME + "-journal"))
        try:
            # Created 0600 before SQLite opens it (its journal takes the same mode).
            os.close(os.open(self.db_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=60.0)
            # A rollback journal (WAL needs shared memory, which NFS lacks), kept
            # between transactions: creating and deleting it costs ~20 % per commit.
            conn.execute("PRAGMA journal_mode = PERSIST")
            # Empty, not missing: a first worker killed while creating the schema
            # leaves an empty file (SQLite rolls a hot journal back on open), which
            # the next worker completes. Schema and version commit together.
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                conn.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA} INSERT INTO meta VALUES ('schema_version',"
                    f" '{SCHEMA_VERSION}'); COMMIT;"
                )
            row = conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.OperationalError as error:
            # "no such table": a SQLite file of someone else's; the rest (full, read-only,
            # I/O errors) says the directory does not take writes.
            raise (self._foreign(error) if "no such" in str(error)
                   else self._write_error(error)) from None
        except sqlite3.DatabaseError as error:
            raise self._foreign(error) from None
        except OSError as error:
            raise self._write_error(error) from None
        if row is None or int(row[0]) != SCHEMA_VERSION:
            found = row[0] if row else "none"
            msg = (
                f"{self.db_path} has schema version {found}, this laufband reads version"
                f" {SCHEMA_VERSION}: use the laufband version that wrote it, or another path="
            )
            raise StateError(msg)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Run the enclosed operations atomically under the state lock."""
        committed: list[Callable[[], None]] = []
        try:
            self._lock.acquire(self._patience)
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                tx = Transaction(conn)
                yield tx
                conn.execute("COMMIT")
                committed = tx.committed
            except BaseException as error:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):  # a broken file cannot even roll back
                        conn.execute("ROLLBACK")
                if isinstance(error, (sqlite3.OperationalError, OSError)):
                    raise self._write_error(error) from None
                if type(error) is sqlite3.DatabaseError:  # garbage written over the file
                    raise self._foreign(error) from None
                raise
        finally:
            self._lock.release()
        for action in committed:
            action()

    def _foreign(self, error: sqlite3.DatabaseError) -> StateError:
        msg = (
            f"{self.db_path} is not a laufband state database ({error}): point path= at"
            " another directory, or move the file away if it is yours to discard"
        )
        return StateError(msg)

    def _write_error(self, error: BaseException) -> StateError:
        """A clear error for a state directory that stopped taking writes."""
        full = "full" in str(error) or getattr(error, "errno", None) == 28  # ENOSPC
        what = "the disk is full" if full else f"the state cannot be written ({error})"
        msg = (f"{what} in {self.path}: free space or fix the directory, then run again;"
               " tasks this worker had not yet recorded as finished will run again")
        return StateError(msg)

    def close(self) -> None:
        """Close this thread's connection."""
        conn = self._conns.pop(threading.get_ident(), None)
        if conn is not None:
            conn.close()


def make_directory(path: Path) -> None:
    """Create the state directory 0700, or check that an existing one is safe to use.

    Results are pickles: whoever can write the directory can make its readers run
    code, so a directory writable by group or others, or owned by someone else, is
    refused rather than used.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a file or a dangling symlink: reported below
    except OSError as error:
        msg = (f"cannot create state directory {str(path)!r} ({error.strerror}):"
               " pass a writable path=")
        raise StateError(msg) from None
    try:
        info = os.lstat(path)
    except OSError as error:
        msg = f"cannot read state directory {str(path)!r} ({error.strerror}): pass another path="
        raise StateError(msg) from None
    if stat.S_ISLNK(info.st_mode):
        try:  # a symlink to a directory is the user's choice; check that one
            info = os.stat(path)
        except OSError:
            msg = (f"state path {str(path)!r} is a symlink to {os.readlink(path)!r}, which does"
                   " not exist: create that directory, or pass another path=")
            raise StateError(msg) from None
        path = path.resolve()
    if not stat.S_ISDIR(info.st_mode):
        msg = f"state path {str(path)!r} is a file, not a directory: pass another path="
        raise StateError(msg)
    if info.st_uid != os.geteuid():
        msg = (f"state directory {str(path)!r} belongs to another user (uid {info.st_uid}):"
               " use a directory of your own (path= or LAUFBAND_PATH)")
        raise StateError(msg)
    if info.st_mode & 0o022:
        mode = oct(stat.S_IMODE(info.st_mode))
        msg = (f"state directory {str(path)!r} is writable by group or others (mode {mode}):"
               f" run chmod go-w {str(path)!r}, or use another path=")
        raise StateError(msg)
    if not os.access(path, os.W_OK | os.X_OK):
        msg = f"state directory {str(path)!r} is not writable: pass a writable path="
        raise StateError(msg)


def refuse_symlink(path: Path) -> None:
    """Refuse a symlink where laufband keeps a file of its own (nothing in the state
    directory is followed: a planted link could make us write elsewhere)."""
    if path.is_symlink():
        msg = (f"{str(path)!r} is a symlink: laufband follows none in its state directory;"
               " remove it, or use another path=")
        raise StateError(msg)
