"""Results of pmap and the joblib backend in the database, and the task states read with them.

Small outcomes are pickled outside the lock and stored in chunks, one per flush, in
the transaction that completes their tasks; large ones are files of the state
directory (``laufband/resultfiles.py``), named by ``StateDirectory.result_file``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

from laufband.store.records import Scope, _ranges, chunks, placeholders, within
from laufband.store.views import ViewOperations


class ResultOperations(ViewOperations):
    """Result chunks, and the unfinished tasks of a pmap call."""

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
        for lo, hi in _ranges(seqs):
            self._rows_within(wf, lo, hi)
        for part in chunks(seqs):
            self._retry(wf, ("completed",), f" AND seq IN ({placeholders(len(part))})", part)

    def retry_unfinished(self, wf: int, scope: Scope) -> int:
        """Make failed and killed tasks within ``scope`` pending again (a new pmap call)."""
        counts = self.counts(wf)
        if not counts["failed"] and not counts["killed"]:  # the counters spare a scan
            return 0
        if scope.restricted:
            self._load_mine()
        where, params = within(scope)
        return len(self._retry(wf, ("failed", "killed"), where, params))

    def unfinished(self, wf: int, scope: Scope) -> dict[int, str]:
        """Map the tasks within ``scope`` that are not completed to their states."""
        total, completed = self.progress(wf)
        if completed == total:  # the counters spare a scan
            return {}
        if scope.restricted:  # then rows are all there is to read
            self._materialize_mine(wf)
        where, params = within(scope)
        states = dict(self._db.execute(
            "SELECT seq, state FROM tasks WHERE wf = ? AND state != 'completed'" + where,
            (wf, *params)))
        materialized, total = self._db.execute(
            "SELECT materialized, total FROM workflows WHERE id = ?", (wf,)).fetchone()
        if not scope.restricted:  # (restricted: its tasks all have rows)
            lazy = range(max(materialized, scope.start), min(total, scope.limit))
            states.update(zip(lazy, repeat("pending")))
            for lo, hi, state in self._run_states(wf):
                if state == "running":
                    states.update((seq, state) for seq in range(max(lo, scope.start),
                                                               min(hi + 1, scope.limit)))
        return states
