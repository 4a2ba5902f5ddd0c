"""Claims: which tasks are ready for a worker, and taking a batch of them.

Simple workflows (no dependencies, requirements or multi-worker tasks) are claimed by
number range from ``workflows.floor`` on, without reading rows one by one; tasks
without a row yet (from ``materialized`` up to ``total``) are claimed as one run
(:mod:`laufband.store.runs`).
Other workflows are claimed through ``_READY``, then topped up with tasks without a
row (plain ones: registration writes rows up to the last task that needs one).
A restricted worker (``restrict_to``) claims rows only, so its tasks get rows first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from laufband.store.runs import RunOperations

if TYPE_CHECKING:
    from laufband.store.records import Scope

# A task is ready for `me` when it is within the worker's scope (numbers below
# :limit, and temp.mine when restricted), pending (or a multi-worker task with a
# free slot this worker has not taken: at most max_workers workers in all run it,
# those that finished included), its requirements are within the worker's labels
# and every dependency is completed (a dependency always has a row: see
# TaskOperations.register_keyed).
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
    AND (t.not_before IS NULL OR t.not_before <= :now)
"""
# A failed task waiting for its retry (``retry_delay``) is not claimable before then.
_NOT_DELAYED = " AND (t.not_before IS NULL OR t.not_before <= ?)"
MINE = " AND t.seq IN (SELECT seq FROM temp.mine)"
# Tasks a worker could still get: within its scope, pending or running elsewhere, and
# its labels cover their requirements.
COULD_RUN = """
    t.wf = :wf AND t.seq >= :start AND t.seq < :limit AND t.state IN ('pending', 'running')
    AND NOT (t.state = 'running' AND t.worker = :me AND t.max_workers = 1)
    AND NOT EXISTS (SELECT 1 FROM holders h WHERE h.wf = t.wf AND h.seq = t.seq
                    AND h.worker = :me)
    AND (t.requirements IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(t.requirements) r
         WHERE r.value NOT IN (SELECT value FROM json_each(:labels))))
"""


def could_run_params(wf: int, worker: int, labels: Sequence[str],
                     scope: Scope) -> dict[str, Any]:
    """Return the parameters of ``COULD_RUN``."""
    return {"wf": wf, "me": worker, "labels": json.dumps(list(labels)),
            "start": scope.start, "limit": scope.limit}


class ClaimOperations(RunOperations):
    """Claiming tasks, and whether any may still come."""

    def restrict_to(self, seqs: Iterable[int]) -> None:
        """Limit this store's claims to the given tasks (a worker lacking data for others)."""
        self._restriction.seqs = list(seqs)
        self._load_mine()

    def claim(
        self, wf: int, worker: int, k: int, labels: Sequence[str], scope: Scope
    ) -> list[int]:
        """Mark up to ``k`` ready tasks in ``scope`` running for ``worker``; return them."""
        if scope.restricted:
            self._materialize_mine(wf)
        simple, floor, total, materialized, prioritized, delayed = self._db.execute(
            "SELECT simple, floor, total, materialized, prioritized, delayed FROM workflows"
            " WHERE id = ?", (wf,)
        ).fetchone()
        # The shared floor only speaks for unrestricted claims from task 0 on.
        shared = not scope.restricted and floor >= scope.start
        floor = max(floor, scope.start) if not scope.restricted else scope.start
        if simple:
            claimed = self._claim_run(wf, worker, k, scope, floor, (total, materialized),
                                      shared=shared, delayed=bool(delayed))
        else:
            claimed = self._claim_ready(wf, worker, k, labels, scope, floor,
                                        by_priority=bool(prioritized))
            if len(claimed) < k:  # tasks without a row are plain: ready for anyone
                claimed += self._claim_fresh(wf, worker, k - len(claimed), scope,
                                             (total, materialized), shared=False)
        return claimed

    def may_get_work(self, wf: int, worker: int, labels: Sequence[str], scope: Scope) -> bool:
        """Whether a task this worker could run is pending or running elsewhere."""
        if scope.restricted:
            self._materialize_mine(wf)
        row = self._db.execute(
            "SELECT 1 FROM tasks t WHERE" + COULD_RUN + (MINE if scope.restricted else "")
            + " LIMIT 1", could_run_params(wf, worker, labels, scope)).fetchone()
        return (row is not None or self._lazy_within(wf, scope)
                or (not scope.restricted  # (restricted: its tasks all have rows)
                    and self._runs_elsewhere(wf, worker, scope.start, scope.limit)))

    def _claim_ready(self, wf: int, worker: int, k: int, labels: Sequence[str],
                     scope: Scope, floor: int, *, by_priority: bool = False) -> list[int]:
        """Claim ready tasks that have rows (a workflow that is not simple).

        ``by_priority``: the highest priorities first (then input order), so a batch
        takes lower priorities only when no higher one is ready.
        """
        params = {"wf": wf, "me": worker, "labels": json.dumps(list(labels)),
                  "floor": floor, "k": k, "limit": scope.limit, "now": time.time()}
        query = "SELECT t.seq, t.max_workers, t.state FROM tasks t WHERE" + _READY
        order = " ORDER BY t.priority DESC, t.seq" if by_priority else " ORDER BY t.seq"
        rows = self._db.execute(
            query + (MINE if scope.restricted else "") + order + " LIMIT :k", params
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
        return [seq for seq, _, _ in rows]

    def _claim_run(self, wf: int, worker: int, k: int, scope: Scope, floor: int,
                   sizes: tuple[int, int], *, shared: bool, delayed: bool = False) -> list[int]:
        """Claim the next run of pending tasks by number range: no per-row Python work.

        ``sizes``: the workflow's total and materialized. ``delayed``: some tasks may
        wait for their retry (``retry_delay``): they are skipped, and the shared floor
        stays at or below the first of them.
        """
        mine = MINE if scope.restricted else ""
        now = (time.time(),) if delayed else ()
        ready = _NOT_DELAYED if delayed else ""
        row = self._db.execute(
            "SELECT t.seq FROM tasks t WHERE t.wf = ? AND t.seq >= ? AND t.seq < ?"
            " AND t.state = 'pending'" + mine + ready + " ORDER BY t.seq LIMIT 1",
            (wf, floor, scope.limit, *now),
        ).fetchone()
        if row is None:
            if delayed:  # the floor must not pass a task waiting for its retry
                shared = shared and self._db.execute(
                    "SELECT 1 FROM tasks WHERE wf = ? AND seq >= ? AND state = 'pending'"
                    " LIMIT 1", (wf, floor)).fetchone() is None
            return self._claim_fresh(wf, worker, k, scope, sizes, shared=shared)
        lo = row[0]
        hi = min(lo + k, scope.limit, sizes[1]) - 1
        pending = self._db.execute(
            "SELECT count(*) FROM tasks t WHERE t.wf = ? AND t.seq BETWEEN ? AND ?"
            " AND t.state = 'pending'" + mine + ready,
            (wf, lo, hi, *now),
        ).fetchone()[0]
        claim = (
            "UPDATE tasks AS t SET state = 'running', worker = ? WHERE t.wf = ?"
            " AND t.seq BETWEEN ? AND ? AND t.state = 'pending'" + mine + ready
        )
        if pending == hi - lo + 1:  # the usual case: a solid run, no rows to read back
            self._db.execute(claim, (worker, wf, lo, hi, *now))
            claimed = list(range(lo, hi + 1))
        else:  # holes (tasks running elsewhere, done, or not ours): read back what we took
            rows = self._db.execute(claim + " RETURNING seq",
                                    (worker, wf, lo, hi, *now)).fetchall()
            claimed = sorted(seq for (seq,) in rows)
        if shared:
            # lo was the first pending task and every pending task up to hi is now
            # claimed (but those waiting for a retry). Never past total: tasks
            # registered later start there.
            top = hi + 1
            if delayed:
                waiting = self._db.execute(
                    "SELECT min(seq) FROM tasks WHERE wf = ? AND seq >= ? AND seq <= ?"
                    " AND state = 'pending'", (wf, floor, hi)).fetchone()[0]
                top = top if waiting is None else waiting
            self._db.execute(
                "UPDATE workflows SET floor = min(?, total) WHERE id = ?", (top, wf))
        self._shift(wf, len(claimed), "pending", "running")
        return claimed

    def _claim_fresh(self, wf: int, worker: int, k: int, scope: Scope,
                     sizes: tuple[int, int], *, shared: bool) -> list[int]:
        """Claim tasks that have no row yet: insert them as running.

        Never for a restricted worker, whose tasks all have rows. ``sizes``: the
        workflow's total and materialized.
        """
        total, materialized = sizes
        lo = max(materialized, scope.start)
        hi = min(lo + k, scope.limit, total) - 1
        if hi < lo or scope.restricted:
            return []
        self.materialize(wf, lo)  # tasks below our scope stay pending, now with rows
        self._start_run(wf, lo, hi, worker)  # one row for the whole claim
        self._db.execute("UPDATE workflows SET materialized = ? WHERE id = ?", (hi + 1, wf))
        if shared and lo == materialized:
            self._db.execute("UPDATE workflows SET floor = ? WHERE id = ?", (hi + 1, wf))
        self._shift(wf, hi - lo + 1, "pending", "running")
        return list(range(lo, hi + 1))
