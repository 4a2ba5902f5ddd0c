"""Runs: claims and completions of consecutive tasks stored as ranges, not rows.

A fresh claim (tasks from ``workflows.materialized`` on, which have no row) is one
``runs`` row ``(lo, hi, worker, 'running')``; finishing any part of it turns that part
into a ``'completed'`` run. Nothing else happens on the happy path, so a claim or a
completion costs a row or two however many tasks it covers. Below ``materialized``,
a task without a row lies in exactly one run; at and above it, tasks are pending.

Anything unusual (a failure, a hand-back, a dead or vanished worker, a workflow that
gains dependencies, a restricted worker) first gives the tasks concerned rows of
their own (``_unrun``, ``_rows_below``), and the row operations take over.
"""

from __future__ import annotations

from laufband.store.base import TransactionBase


class RunOperations(TransactionBase):
    """Running and completed ranges of tasks that have no rows."""

    def _start_run(self, wf: int, lo: int, hi: int, worker: int) -> None:
        """Record tasks ``lo..hi`` (no rows) as running on ``worker``."""
        self._db.execute("INSERT INTO runs(wf, lo, hi, worker, state) VALUES (?, ?, ?, ?,"
                         " 'running')", (wf, lo, hi, worker))

    def _carve(self, wf: int, worker: int, lo: int, hi: int) -> list[tuple[int, int]]:
        """Take the parts of ``lo..hi`` out of ``worker``'s running runs; return them."""
        found = self._db.execute(
            "DELETE FROM runs WHERE wf = ? AND worker = ? AND state = 'running'"
            " AND lo <= ? AND hi >= ? RETURNING lo, hi", (wf, worker, hi, lo)).fetchall()
        parts = []
        for run_lo, run_hi in sorted(found):
            part = (max(run_lo, lo), min(run_hi, hi))
            parts.append(part)
            if run_lo < part[0]:
                self._start_run(wf, run_lo, part[0] - 1, worker)
            if part[1] < run_hi:
                self._start_run(wf, part[1] + 1, run_hi, worker)
        return parts

    def _complete_runs(self, wf: int, worker: int, lo: int, hi: int) -> int:
        """Complete the parts of ``lo..hi`` running on ``worker`` without rows; how many."""
        done = 0
        for part_lo, part_hi in self._carve(wf, worker, lo, hi):
            done += part_hi - part_lo + 1
            # Extend the completed run just before, if any: the table stays short.
            if not self._db.execute(
                    "UPDATE runs SET hi = ? WHERE wf = ? AND state = 'completed' AND hi = ?",
                    (part_hi, wf, part_lo - 1)).rowcount:
                self._db.execute("INSERT INTO runs(wf, lo, hi, worker, state)"
                                 " VALUES (?, ?, ?, NULL, 'completed')", (wf, part_lo, part_hi))
        return done

    def _unrun(self, wf: int, worker: int, lo: int, hi: int) -> None:
        """Give the tasks of ``lo..hi`` running on ``worker`` without rows running rows."""
        for part_lo, part_hi in self._carve(wf, worker, lo, hi):
            self._insert_rows(wf, part_lo, part_hi, "running", worker)

    def _rows_within(self, wf: int, lo: int, hi: int) -> None:
        """Give every task of ``lo..hi`` lying in a run (of any state) a row."""
        found = self._db.execute(
            "DELETE FROM runs WHERE wf = ? AND lo <= ? AND hi >= ?"
            " RETURNING lo, hi, worker, state", (wf, hi, lo)).fetchall()
        for run_lo, run_hi, worker, state in found:
            part = (max(run_lo, lo), min(run_hi, hi))
            for rest_lo, rest_hi in ((run_lo, part[0] - 1), (part[1] + 1, run_hi)):
                if rest_lo <= rest_hi:
                    self._db.execute("INSERT INTO runs(wf, lo, hi, worker, state)"
                                     " VALUES (?, ?, ?, ?, ?)",
                                     (wf, rest_lo, rest_hi, worker, state))
            self._insert_rows(wf, *part, state, worker)

    def _unrun_worker(self, worker: int, where: str = "", params: tuple[int, ...] = ()) -> None:
        """Give every task running on ``worker`` without a row a running row."""
        runs = self._db.execute(
            "DELETE FROM runs WHERE worker = ? AND state = 'running'" + where
            + " RETURNING wf, lo, hi", (worker, *params)).fetchall()
        for wf, lo, hi in runs:
            self._insert_rows(wf, lo, hi, "running", worker)

    def _unrun_orphans(self, wf: int) -> None:
        """Give tasks running without a row on a worker that is not online running rows."""
        for (worker,) in self._db.execute(
                "SELECT DISTINCT worker FROM runs WHERE wf = ? AND state = 'running'"
                " AND worker NOT IN (SELECT id FROM workers WHERE state = 'online')",
                (wf,)).fetchall():
            self._unrun_worker(worker, " AND wf = ?", (wf,))

    def _rows_below(self, wf: int, upto: int) -> None:
        """Give every task below ``upto`` a row (claims read rows: dependencies, restricted)."""
        runs = self._db.execute(
            "DELETE FROM runs WHERE wf = ? AND lo < ? RETURNING lo, hi, worker, state",
            (wf, upto)).fetchall()
        for lo, hi, worker, state in runs:
            self._insert_rows(wf, lo, hi, state, worker)
        self.materialize(wf, upto)

    def _materialize_mine(self, wf: int) -> None:
        """Give the tasks of a restricted worker rows: its claims and views read rows only."""
        self._load_mine()
        top = self._db.execute("SELECT max(seq) FROM temp.mine").fetchone()[0]
        if top is not None:
            self._rows_below(wf, top + 1)

    def _runs_elsewhere(self, wf: int, worker: int, start: int, limit: int) -> bool:
        """Whether tasks within ``start..limit-1`` run without rows on another worker."""
        return self._db.execute(
            "SELECT 1 FROM runs WHERE wf = ? AND state = 'running' AND worker != ?"
            " AND hi >= ? AND lo < ? LIMIT 1", (wf, worker, start, limit)).fetchone() is not None

    def _run_states(self, wf: int) -> list[tuple[int, int, str]]:
        """Every run of a workflow: ``(lo, hi, state)``."""
        return self._db.execute(
            "SELECT lo, hi, state FROM runs WHERE wf = ?", (wf,)).fetchall()
