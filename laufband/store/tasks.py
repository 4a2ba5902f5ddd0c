"""Tasks: workflows, registration, and the transitions a worker makes.

Registration numbers tasks (positions, or keys through key blocks: see
:mod:`laufband.store.keys`) and writes a task row only where claims must read one;
finishing, failing, releasing and blocking move tasks between states and keep the
per-state counters of ``workflows`` in step (``_shift``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from laufband.errors import TaskGraphError
from laufband.store.failures import FailureOperations, FailureRecord
from laufband.store.records import NewTask, Workflow, _ranges
from laufband.store.runs import RunOperations


class TaskOperations(FailureOperations, RunOperations):
    """Workflows, registration and the transitions of tasks."""

    # -- workflows -------------------------------------------------------------------

    def open_workflow(self, name: str, *, keyed: bool) -> Workflow:
        """Return the workflow ``name``, creating it when new; note its use now.

        The use (``meta`` row ``used:<number>``) is what ``laufband prune`` calls its
        activity: a pmap call that finds every result stored runs no worker.
        """
        now = time.time()
        self._db.execute(
            "INSERT OR IGNORE INTO workflows(name, keyed, created) VALUES (?, ?, ?)",
            (name, int(keyed), now),
        )
        row = self._db.execute(
            "SELECT id, name, keyed, total, completed, simple FROM workflows WHERE name = ?",
            (name,),
        ).fetchone()
        self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET"
                         " value = excluded.value", (f"used:{row[0]}", repr(now)))
        return Workflow(row[0], row[1], bool(row[2]), row[3], row[4], bool(row[5]))

    def workflow_names(self) -> list[str]:
        """Return the names of every workflow, oldest first."""
        return [name for (name,) in self._db.execute("SELECT name FROM workflows ORDER BY id")]

    def fingerprint(self, wf: int) -> bytes | None:
        """Return the digests of the data a positional workflow was registered with."""
        fingerprint: bytes | None = self._db.execute(
            "SELECT fingerprint FROM workflows WHERE id = ?", (wf,)).fetchone()[0]
        return fingerprint

    def set_fingerprint(self, wf: int, fingerprint: bytes) -> None:
        """Store the data digests a later run checks its data against."""
        self._db.execute(
            "UPDATE workflows SET fingerprint = ? WHERE id = ?", (fingerprint, wf))

    # -- registration -----------------------------------------------------------------

    def register_positions(self, wf: int, total: int) -> None:
        """Make tasks ``0 .. total-1`` exist (pending, rows created on first claim)."""
        self._db.execute(
            "UPDATE workflows SET total = max(total, ?) WHERE id = ?", (total, wf)
        )

    def register_keyed(
        self, workflow: Workflow, tasks: Sequence[NewTask], known: dict[str, int]
    ) -> dict[str, int]:
        """Register the tasks whose keys are not in ``known``; return every key's number.

        ``known`` comes from ``task_numbers`` (the tasks' keys and their dependencies'),
        in the same transaction. The new keys are one key block. Claims read rows for
        tasks with dependencies, requirements or several workers, and for their
        dependencies (a dependency without a row would count as completed), and views
        read ``info`` from rows:
        rows are written up to the last task that needs one; the plain tasks after it
        stay pending without a row until claimed.

        Raises:
            TaskGraphError: A task depends on a task that is neither new nor known.
        """
        wf = workflow.id
        fresh = [task for task in tasks if task.key not in known]
        first = self._total(wf)
        numbers = dict(known)
        numbers.update(zip([t.key for t in fresh], range(first, first + len(fresh)),
                           strict=True))
        _check_dependencies(workflow.name, fresh, numbers)
        if not fresh:
            return numbers
        self._append_block(wf, [task.key for task in fresh], named=True)
        if any(t.priority for t in fresh):
            self._db.execute("UPDATE workflows SET prioritized = 1 WHERE id = ?", (wf,))
        self._write_rows(wf, fresh, numbers, first)
        self._db.executemany(
            "INSERT OR IGNORE INTO deps(wf, seq, dep) VALUES (?, ?, ?)",
            ((wf, numbers[t.key], numbers[dep]) for t in fresh for dep in t.dependencies),
        )
        if any(t.dependencies or t.requirements or t.max_workers > 1 or t.priority
               for t in fresh):
            self._db.execute("UPDATE workflows SET simple = 0 WHERE id = ?", (wf,))
        return numbers

    def register_keys(self, workflow: Workflow, keys: Sequence[str],
                      known: dict[str, int]) -> dict[str, int]:
        """Register plain tasks for the keys not in ``known``; map every key to its number.

        The fast path of ``register_keyed`` (no dependencies, requirements or info):
        one key block, no rows.
        """
        fresh = [key for key in keys if key not in known]
        numbers = dict(known)
        if fresh:
            first = self._append_block(workflow.id, fresh, named=True)
            numbers.update(zip(fresh, range(first, first + len(fresh)), strict=True))
        return numbers

    def _write_rows(self, wf: int, fresh: list[NewTask], numbers: dict[str, int],
                    first: int) -> None:
        """Write the rows claims need among new tasks numbered from ``first``.

        That is every task below the last that needs one (and its dependencies), as
        rows exist below ``materialized`` only.
        """
        # Prioritized: every task gets a row, as claims take rows by priority before
        # the tasks without one (priority 0), which must not pass a negative priority.
        needy = fresh if self.is_prioritized(wf) else [t for t in fresh if t.needs_row()]
        if not needy:
            return
        upto = 1 + max(numbers[key] for task in needy for key in (task.key, *task.dependencies))
        self._rows_below(wf, min(upto, first))  # older tasks: rows (pending if new)
        if upto <= first:
            return
        self._db.executemany(
            "INSERT INTO tasks(wf, seq, max_workers, requirements, info, priority, fingerprint)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((wf, seq, t.max_workers,
              json.dumps(sorted(t.requirements)) if t.requirements else None,
              json.dumps(t.info) if t.info else None, t.priority, t.fingerprint)
             for seq, t in enumerate(fresh[:upto - first], start=first)),
        )
        self._db.execute("UPDATE workflows SET materialized = ? WHERE id = ?", (upto, wf))

    def is_prioritized(self, wf: int) -> bool:
        """Whether any task of the workflow was registered with a priority."""
        row = self._db.execute("SELECT prioritized FROM workflows WHERE id = ?", (wf,)).fetchone()
        return bool(row[0])

    def dependency_edges(self, wf: int) -> list[tuple[int, int]]:
        """All ``(task, dependency)`` pairs of a workflow, by task number."""
        return self._db.execute("SELECT seq, dep FROM deps WHERE wf = ? ORDER BY seq, dep",
                                (wf,)).fetchall()

    # -- transitions ------------------------------------------------------------------

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
        if completed:  # tasks with rows: some may have failed before
            self._forget_failures(wf, runs)
        completed += sum(self._complete_runs(wf, worker, lo, hi) for lo, hi in runs)
        self._shift(wf, completed, "running", "completed")
        self._sample(wf)
        if not self._is_simple(wf):
            completed += self._finish_multi(wf, worker, runs)
        self._db.execute(
            "UPDATE workers SET done = done + ?, seen = ? WHERE id = ?",
            (completed, time.time(), worker),
        )
        return completed

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

    def fail(self, wf: int, worker: int, failure: FailureRecord,
             max_failed_retries: int, retry_delay: float = 0.0) -> str:
        """Record a failure of a task; return its new state (pending while retries are left).

        With ``retry_delay``, a task with retries left is claimable again only after
        ``retry_delay * 2 ** (attempt - 1)`` seconds.
        """
        seq = failure.seq
        self._unrun(wf, worker, seq, seq)
        held = self._db.execute(
            "DELETE FROM holders WHERE wf = ? AND seq = ? AND worker = ? AND done = 0",
            (wf, seq, worker),
        ).rowcount
        row = self._db.execute(
            "UPDATE tasks SET failures = failures + 1, worker = NULL,"
            " state = CASE WHEN failures + 1 <= ? THEN 'pending' ELSE 'failed' END"
            " WHERE wf = ? AND seq = ? AND state = 'running'"
            " AND ((max_workers = 1 AND worker = ?) OR (max_workers > 1 AND ?))"
            " RETURNING state, failures, failures + kills",
            (max_failed_retries, wf, seq, worker, held),
        ).fetchone()
        state = row[0] if row else "running"
        if row:
            self._shift(wf, 1, "running", state)
            retry = row[1] if state == "pending" else None
            self._record_failure(wf, failure, worker,
                                 ("failed", state, retry, max_failed_retries, row[2]))
        self._event(wf, seq, worker, "failed", time.time(), failure.error)
        if state == "pending":
            if retry_delay > 0:
                self._delay(wf, seq, time.time() + retry_delay * 2 ** (row[1] - 1))
            self._lower_floor(wf, seq)
        return state

    def _delay(self, wf: int, seq: int, until: float) -> None:
        """Keep pending task ``seq`` from being claimed before ``until`` (wall clock)."""
        self._db.execute("UPDATE tasks SET not_before = ? WHERE wf = ? AND seq = ?",
                         (until, wf, seq))
        self._db.execute("UPDATE workflows SET delayed = 1 WHERE id = ?", (wf,))

    def release(self, wf: int, worker: int, seqs: Sequence[int]) -> None:
        """Put claimed tasks this worker has not run back to pending."""
        runs = _ranges(seqs)
        if not runs:
            return
        for lo, hi in runs:
            self._unrun(wf, worker, lo, hi)
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

    def release_running(self, wf: int, worker: int) -> int:
        """Put every single-worker task still running on ``worker`` back to pending.

        A stopping worker calls it after ``release``: whatever its own bookkeeping says,
        it leaves nothing running (what it finished it has written first).
        """
        self._unrun_worker(worker, " AND wf = ?", (wf,))
        return len(self._pend_running(wf, " AND worker = ?", (worker,)))

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
            "UPDATE tasks SET state = 'pending', failures = 0, kills = 0, worker = NULL,"
            f" not_before = NULL WHERE wf = ? AND state IN ({', '.join('?' * len(states))}){where}"
            " RETURNING seq",
            (wf, *states, *params),
        ).fetchall()
        self._db.executemany(  # a multi-worker task run anew has every slot free
            "DELETE FROM holders WHERE wf = ? AND seq = ?", ((wf, seq) for (seq,) in rows))
        self._drop_failures(wf, [seq for (seq,) in rows])
        if rows:
            self._lower_floor(wf, min(seq for (seq,) in rows))
        return rows

    def _retry_orphans(self, wf: int, where: str = "",
                       params: Sequence[object] = ()) -> list[tuple[int]]:
        """Make running single-worker tasks whose worker is not online pending again."""
        self._unrun_orphans(wf)
        return self._pend_running(
            wf, " AND coalesce(worker, -1) NOT IN (SELECT id FROM workers WHERE state ="
            " 'online')" + where, params)

    def _pend_running(self, wf: int, where: str,
                      params: Sequence[object]) -> list[tuple[int]]:
        """Make running single-worker tasks (rows) matching ``where`` pending again."""
        rows = self._db.execute(
            "UPDATE tasks SET state = 'pending', worker = NULL WHERE wf = ? AND state ="
            f" 'running' AND max_workers = 1{where} RETURNING seq", (wf, *params)).fetchall()
        self._shift(wf, len(rows), "running", "pending")
        if rows:
            self._lower_floor(wf, min(seq for (seq,) in rows))
        return rows


def _check_dependencies(name: str, fresh: list[NewTask], numbers: dict[str, int]) -> None:
    """Refuse a dependency on a task that is neither registered nor new."""
    for task in fresh:
        for dep in task.dependencies:
            if dep not in numbers:
                msg = (f"task {task.key!r} of workflow {name!r} depends on unknown task"
                       f" {dep!r}: yield a Task with id={dep!r} too")
                raise TaskGraphError(msg, workflow=name, task=task.key)
