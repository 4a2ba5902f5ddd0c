"""Views and administration: what ``laufband status`` shows, ``retry`` and ``reset`` change.

Counts come from the per-state counters of ``workflows``, never from scanning tasks
or events. Views name a task by its key when a named key block holds it (a
Graphband's or a keyed Laufband's tasks), else by its number (positional tasks,
pmap's).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

from laufband.store.claims import COULD_RUN, MINE, could_run_params
from laufband.store.fingerprints import FingerprintOperations
from laufband.store.records import STATES, Scope, Stuck, chunks, placeholders

if TYPE_CHECKING:
    from laufband.store.failures import FailureRecord

# A workflow f's last activity: its creation, a worker's latest beat or flush, or a
# caller opening it (open_workflow), whichever is newest; wall clock.
_ACTIVITY = ("max(f.created, coalesce((SELECT max(k.seen) FROM workers k WHERE k.wf = f.id),"
             " 0), coalesce((SELECT CAST(value AS REAL) FROM meta WHERE key = 'used:' || f.id),"
             " 0))")

class ViewOperations(FingerprintOperations):
    """Read-only views of a workflow, and retry/reset."""

    # -- counters ----------------------------------------------------------------------

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
        for lo, hi, state in self._run_states(wf):
            found[state] = found.get(state, 0) + hi - lo + 1
        materialized, total = self._db.execute(
            "SELECT materialized, total FROM workflows WHERE id = ?", (wf,)).fetchone()
        found["pending"] = found.get("pending", 0) + total - materialized
        return {state: found.get(state, 0) for state in STATES}

    def progress(self, wf: int) -> tuple[int, int]:
        """``(total, completed)`` tasks of a workflow, from maintained counters."""
        total, completed = self._db.execute(
            "SELECT total, completed FROM workflows WHERE id = ?", (wf,)).fetchone()
        return total, completed

    # -- tasks, events, workers ----------------------------------------------------------

    def task_states(self, wf: int) -> dict[str, str]:
        """Task id -> state for a whole workflow."""
        states = dict(self._db.execute("SELECT seq, state FROM tasks WHERE wf = ?", (wf,)))
        for lo, hi, state in self._run_states(wf):
            states.update(zip(range(lo, hi + 1), repeat(state)))
        materialized, total = self._db.execute(
            "SELECT materialized, total FROM workflows WHERE id = ?", (wf,)).fetchone()
        states.update(zip(range(materialized, total), repeat("pending")))
        names = self._names(wf, states)
        return {names[seq]: state for seq, state in states.items()}

    def events(self, wf: int) -> list[tuple[str, str, str | None]]:
        """Task id, state and error text of every event of a workflow, oldest first."""
        rows = self._db.execute(
            "SELECT seq, state, error FROM events WHERE wf = ? ORDER BY id", (wf,)).fetchall()
        names = self._names(wf, {seq for seq, _, _ in rows})
        return [(names[seq], state, error) for seq, state, error in rows]

    def latest_events(self, wf: int, limit: int) -> list[tuple[Any, ...]]:
        """Return the ``limit`` newest events: task id, state, error text, time, worker."""
        rows = self._db.execute(
            "SELECT e.seq, e.state, e.error, e.time, w.identifier FROM events e"
            " LEFT JOIN workers w ON w.id = e.worker WHERE e.wf = ?"
            " ORDER BY e.id DESC LIMIT ?", (wf, limit)).fetchall()
        names = self._names(wf, {row[0] for row in rows})
        return [(names[row[0]], *row[1:]) for row in rows]

    def workers(self, wf: int) -> list[tuple[Any, ...]]:
        """Return the workers of a workflow, online ones first.

        Each is identifier, host, pid, rank, labels, state, current task (the one it
        runs, as of its latest flush), tasks done, last heartbeat and start (wall
        clock), its number (that of its in-flight record) and its process token.
        """
        rows = self._db.execute(
            "SELECT identifier, host, pid, rank, labels, state, current, done, seen, started,"
            " id, token"
            " FROM workers WHERE wf = ? ORDER BY state != 'online', id DESC", (wf,)
        ).fetchall()
        names = self._names(wf, {row[6] for row in rows if row[6] is not None})
        return [(*row[:6], names.get(row[6]), *row[7:]) for row in rows]

    def task_names(self, wf: int, seqs: Collection[int]) -> dict[int, str]:
        """Map task numbers to the names views give them (keys, else numbers)."""
        return self._names(wf, seqs)

    def task_infos(self, wf: int, task_ids: Collection[str]) -> dict[str, dict[str, Any]]:
        """``Task.info`` of those of ``task_ids`` that have any (keyed tasks only)."""
        numbers = self._named_numbers(wf, task_ids)
        name_of = {seq: name for name, seq in numbers.items()}
        infos = {}
        for part in chunks(sorted(name_of)):
            for seq, info in self._db.execute(
                    "SELECT seq, info FROM tasks WHERE wf = ? AND info IS NOT NULL"
                    f" AND seq IN ({placeholders(len(part))})", (wf, *part)):
                infos[name_of[seq]] = json.loads(info)
        return infos

    def failed_tasks(self, wf: int, limit: int) -> list[str]:
        """Ids of up to ``limit`` tasks that failed or were killed for good."""
        counts = self.counts(wf)
        if not counts["failed"] and not counts["killed"]:  # the counters spare a scan
            return []
        seqs = [seq for (seq,) in self._db.execute(
            "SELECT seq FROM tasks WHERE wf = ? AND state IN ('failed', 'killed')"
            " ORDER BY seq LIMIT ?", (wf, limit))]
        names = self._names(wf, seqs)
        return [names[seq] for seq in seqs]

    def stuck_on_labels(self, wf: int, worker: int, labels: Sequence[str],
                        scope: Scope) -> Stuck | None:
        """Say which tasks are stuck waiting for labels that no online worker has.

        That is when every task this worker could run waits (through its dependencies)
        for a pending task needing labels no online worker has; else return None. Call
        it only when ``may_get_work`` is true and nothing is ready: it reads every open
        task of the workflow.
        """
        if (self._is_simple(wf) or self._lazy_within(wf, scope)
                or self._runs_elsewhere(wf, worker, scope.start, scope.limit)):
            return None  # no requirements, no dependencies (or plain tasks): reachable
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
        unreachable = self._unreachable(wf, open_tasks, missing)
        if scope.restricted:
            self._materialize_mine(wf)
        ours = [seq for (seq,) in self._db.execute(
            "SELECT t.seq FROM tasks t WHERE" + COULD_RUN + (MINE if scope.restricted else ""),
            could_run_params(wf, worker, labels, scope))]
        if any(seq not in unreachable for seq in ours):
            return None
        names = self._names(wf, ours)
        return Stuck([names[seq] for seq in ours], sorted(sorted(req) for req in missing))

    def _unreachable(self, wf: int, open_tasks: dict[int, tuple[str, frozenset[str]]],
                     missing: set[frozenset[str]]) -> set[int]:
        """Return the pending tasks that need ``missing`` labels, and those waiting for them."""
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
        return unreachable

    def describe_failure(self, wf: int, worker: int, failure: FailureRecord) -> None:
        """Attach error text and traceback to the latest failure of a task by ``worker``."""
        self._db.execute(
            "UPDATE events SET error = ? WHERE id = (SELECT max(id) FROM events"
            " WHERE wf = ? AND seq = ? AND worker = ? AND state = 'failed')",
            (failure.error, wf, failure.seq, worker),
        )
        self._db.execute(
            "UPDATE failures SET error = ?, traceback = ? WHERE id = (SELECT max(id)"
            " FROM failures WHERE wf = ? AND seq = ? AND worker = ? AND state = 'failed')",
            (failure.error, failure.traceback or None, wf, failure.seq, worker),
        )

    # -- administration ------------------------------------------------------------------

    def retry(self, wf: int, states: Sequence[str], task_ids: Sequence[str] = ()) -> int:
        """Put tasks in ``states`` back to pending; return how many were retried.

        Only ``task_ids``, if given (views' names); tasks blocked by them are unblocked.
        """
        if not task_ids:
            retried = self._retry(wf, states)
        else:
            retried = []
            for part in chunks(sorted(set(self._named_numbers(wf, task_ids).values()))):
                where = f" AND seq IN ({placeholders(len(part))})"
                retried += self._retry(wf, states, where, part)
                # a task named by id may also be stuck on a worker that is gone
                retried += self._retry_orphans(wf, where, part)
        if retried:  # blocked tasks may be runnable now; they block again if not
            self._retry(wf, ("blocked",))
            self._event_many(wf, [seq for (seq,) in retried], "retried")
        return len(retried)

    def unknown_tasks(self, wf: int, task_ids: Sequence[str]) -> list[str]:
        """Return those of ``task_ids`` (views' names) that name no task of ``wf``."""
        total = self.counts(wf)
        found = self._named_numbers(wf, task_ids)
        return [name for name in task_ids
                if name not in found or found[name] >= sum(total.values())]

    def reset(self, wf: int) -> None:
        """Delete a workflow and everything stored for it."""
        for table in ("tasks", "runs", "deps", "holders", "key_blocks", "result_chunks",
                      "events", "failures", "samples", "workers"):
            self._db.execute(f"DELETE FROM {table} WHERE wf = ?", (wf,))  # fixed names
        self._db.execute("DELETE FROM workflows WHERE id = ?", (wf,))
        self._db.execute("DELETE FROM meta WHERE key = ?", (f"used:{wf}",))
        self._keys.drop(wf)

    def stores_results(self, wf: int) -> bool:
        """Whether a workflow keeps results.

        That is pmap's, the joblib backend's, or a loop's whose body saved some.
        """
        found: int = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM key_blocks WHERE wf = ? AND named = 0)"
            " OR EXISTS (SELECT 1 FROM result_chunks WHERE wf = ?)", (wf, wf)).fetchone()[0]
        return found == 1

    def invalidated(self, wf: int, limit: int) -> tuple[int, list[str]]:
        """Tasks a changed fingerprint made run again that have not completed since.

        Return how many, and the ids of the ``limit`` most recently invalidated.
        """
        if not self._db.execute("SELECT invalidated FROM workflows WHERE id = ?",
                                (wf,)).fetchone()[0]:  # the counter spares a scan
            return 0, []
        seqs = [seq for (seq,) in self._db.execute(
            "SELECT e.seq FROM events e JOIN tasks t ON t.wf = e.wf AND t.seq = e.seq"
            " WHERE e.wf = ? AND e.state = 'invalidated' AND t.state != 'completed'"
            " GROUP BY e.seq ORDER BY max(e.id) DESC", (wf,))]
        names = self._names(wf, seqs[:limit])
        return len(seqs), [names[seq] for seq in seqs[:limit]]

    def maps_items(self, wf: int) -> bool:
        """Whether a workflow is pmap's or the joblib backend's (its keys name no task)."""
        found: int = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM key_blocks WHERE wf = ? AND named = 0)",
            (wf,)).fetchone()[0]
        return found == 1

    def workflow_activity(self) -> list[tuple[str, float, int]]:
        """Return each workflow's name, last activity and online workers, oldest first.

        The activity is when a worker last touched it or a caller last opened it (or
        its creation), wall clock.
        """
        return self._db.execute(
            f"SELECT f.name, {_ACTIVITY}, (SELECT count(*) FROM workers k WHERE k.wf = f.id"
            " AND k.state = 'online') FROM workflows f ORDER BY f.id").fetchall()

    def touched_since(self, wf: int, since: float) -> bool:
        """Whether a worker is online on ``wf`` or it was active after ``since``."""
        row = self._db.execute(
            f"SELECT {_ACTIVITY} > ? OR EXISTS (SELECT 1 FROM workers k WHERE k.wf = f.id"
            " AND k.state = 'online') FROM workflows f WHERE f.id = ?", (since, wf)).fetchone()
        return bool(row and row[0])

    def has_workflow(self, wf: int) -> bool:
        """Whether workflow number ``wf`` still exists (``laufband reset`` deletes it)."""
        row = self._db.execute("SELECT 1 FROM workflows WHERE id = ?", (wf,)).fetchone()
        return row is not None

    def find_workflow(self, name: str) -> int | None:
        """Return the number of workflow ``name``, or None."""
        row = self._db.execute("SELECT id FROM workflows WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def integrity(self) -> str:
        """SQLite's own check of the database file: "ok" when it is sound."""
        return "; ".join(row[0] for row in self._db.execute("PRAGMA integrity_check"))
