"""Fingerprints: which inputs each task's stored outcome stands for.

The last registration wins: it stores each task's fingerprint and reopens completed
tasks whose fingerprint changed, with every task depending on them (running ones too). A worker that
started earlier may hold older inputs: it checks the tasks it claims and those it
finishes against its own fingerprints (``changed_fingerprints``), hands back a claim
whose fingerprint is another one, and reopens rather than completes a task whose
fingerprint changed while it ran (``reopen_changed``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from laufband.store.records import _ranges, chunks, placeholders
from laufband.store.tasks import TaskOperations

CHANGED = "its fingerprint changed"
CHANGED_WHILE_RUNNING = "its fingerprint changed while it ran"
DEPENDENCY_CHANGED = "a task it depends on changed its fingerprint"


class FingerprintOperations(TaskOperations):
    """Storing fingerprints, and the tasks a change of one runs again."""

    def refingerprint(self, wf: int, given: dict[int, bytes]) -> list[int]:
        """Store the fingerprints of registered tasks; run again what they invalidate.

        A completed task whose stored fingerprint differs from the one given becomes
        pending, and so does every completed task depending on it, transitively (an
        ``invalidated`` event each). A running task takes the new fingerprint too: its
        worker runs it with the old one, and reopens it as it finishes
        (``reopen_changed``). A task without a stored fingerprint adopts the one given
        and is not run again. Return the tasks made pending.
        """
        if not given:
            return []
        seqs = sorted(given)
        for lo, hi in _ranges(seqs):
            self._rows_within(wf, lo, hi)
        self.materialize(wf, seqs[-1] + 1)
        changed: list[int] = []
        for part in chunks(seqs):
            for seq, old, state in self._db.execute(
                    "SELECT seq, fingerprint, state FROM tasks WHERE wf = ?"
                    f" AND seq IN ({placeholders(len(part))})", (wf, *part)).fetchall():
                if old == given[seq]:
                    continue
                self._db.execute("UPDATE tasks SET fingerprint = ? WHERE wf = ? AND seq = ?",
                                 (given[seq], wf, seq))
                if old is not None and state == "completed":
                    changed.append(seq)
        if not changed:
            return []
        return self._invalidate(wf, changed)

    def changed_fingerprints(self, wf: int, given: dict[int, bytes]) -> list[int]:
        """Return the tasks among ``given`` whose stored fingerprint is another one.

        A worker's own fingerprints, for tasks it claimed or finished: those another
        worker registered anew since (with newer inputs) are its to run.
        """
        changed: list[int] = []
        for lo, hi in _ranges(list(given)):  # claims and batches are mostly one run
            changed += [seq for seq, stored in self._db.execute(
                "SELECT seq, fingerprint FROM tasks WHERE wf = ? AND seq BETWEEN ? AND ?",
                (wf, lo, hi))
                if seq in given and stored is not None and stored != given[seq]]
        return sorted(changed)

    def reopen_changed(self, wf: int, worker: int, seqs: Sequence[int]) -> None:
        """Make tasks ``worker`` ran with an outdated fingerprint pending, not completed.

        Their fingerprint changed while they ran: a worker with the new one runs them.
        An ``invalidated`` event each.
        """
        if not seqs:
            return
        self.release(wf, worker, seqs)
        self._event_many(wf, seqs, "invalidated", CHANGED_WHILE_RUNNING)
        self._db.execute("UPDATE workflows SET invalidated = invalidated + ? WHERE id = ?",
                         (len(seqs), wf))

    def dependents(self, wf: int, seqs: Sequence[int]) -> set[int]:
        """Return every task depending on one of ``seqs``, transitively (not ``seqs``)."""
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS changed(seq INTEGER PRIMARY KEY)")
        self._db.execute("DELETE FROM temp.changed")
        self._db.executemany("INSERT INTO temp.changed VALUES (?)", ((s,) for s in seqs))
        below = {seq for (seq,) in self._db.execute(
            "WITH RECURSIVE down(seq) AS (SELECT seq FROM temp.changed UNION"
            " SELECT d.seq FROM deps d JOIN down ON d.wf = ? AND d.dep = down.seq)"
            " SELECT seq FROM down EXCEPT SELECT seq FROM temp.changed", (wf,))}
        self._db.execute("DELETE FROM temp.changed")
        return below

    def _invalidate(self, wf: int, changed: list[int]) -> list[int]:
        """Make completed tasks ``changed`` and their dependents pending.

        Dependents running now too: they read the old outcome. Their worker's finish
        then finds them not running under it and completes nothing; they run again
        once ``changed`` have.
        """
        below = self.dependents(wf, changed)
        reopened: list[int] = []
        for part in chunks(sorted({*changed, *below})):
            reopened += [seq for (seq,) in self._retry(
                wf, ("completed", "running"), f" AND seq IN ({placeholders(len(part))})",
                part)]
        now = time.time()
        mine = set(changed)
        self._event_many(wf, [s for s in reopened if s in mine], "invalidated", CHANGED, now)
        self._event_many(wf, [s for s in reopened if s not in mine], "invalidated",
                         DEPENDENCY_CHANGED, now)
        self._db.execute("UPDATE workflows SET invalidated = invalidated + ? WHERE id = ?",
                         (len(reopened), wf))
        return sorted(reopened)
