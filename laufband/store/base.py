"""What every group of store operations shares.

The connection of the transaction, the per-state counters, events, task rows made on
demand, and the cache of key blocks.
"""

from __future__ import annotations

import sqlite3
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from laufband.store.records import STATES, Scope

if TYPE_CHECKING:
    from laufband.store.layout import StateDirectory

_COUNTED = frozenset(STATES[1:])  # columns of workflows; pending is what is left


class Blocks:
    """One workflow's key blocks as this process has read them.

    Blocks are only ever appended, and a workflow's number is never reused (``laufband
    reset`` deletes the workflow), so what was read stays true; a transaction that
    rolls back clears the whole cache (``Store.transaction``).
    """

    __slots__ = ("counts", "firsts", "index", "indexed", "keys", "named", "recent")

    def __init__(self) -> None:
        self.firsts: list[int] = []  # first task number of each block, ascending
        self.counts: list[int] = []
        self.named: list[bool] = []  # whether its keys name its tasks in views
        self.keys: list[list[Any] | None] = []  # unpickled on demand
        self.index: dict[Any, int] = {}  # key -> task number, of blocks[:indexed]
        self.indexed = 0
        # Names views gave out lately -> task number: `laufband status` looks up the
        # info of the tasks it names without indexing a million keys.
        self.recent: dict[str, int] = {}

    @property
    def end(self) -> int:
        """The number after the last block's last task."""
        return self.firsts[-1] + self.counts[-1] if self.firsts else 0

    def add(self, first: int, count: int, keys: list[Any] | None, *, named: bool) -> None:
        """Append a block (its keys if known, else read when needed)."""
        self.firsts.append(first)
        self.counts.append(count)
        self.named.append(named)
        self.keys.append(keys)

    def find(self, seq: int) -> int | None:
        """Return the position of the block holding task ``seq``, if any."""
        i = bisect_right(self.firsts, seq) - 1
        return i if i >= 0 and seq < self.firsts[i] + self.counts[i] else None

    def is_named(self, seq: int) -> bool:
        """Whether a named block holds task ``seq`` (views call it by its key)."""
        i = self.find(seq)
        return i is not None and self.named[i]


class KeyCache:
    """A store's unpickled key blocks, per workflow number (see :class:`Blocks`)."""

    def __init__(self) -> None:
        self._blocks: dict[int, Blocks] = {}

    def get(self, wf: int) -> Blocks:
        """Return the blocks read so far of workflow ``wf``."""
        blocks = self._blocks.get(wf)
        if blocks is None:
            blocks = self._blocks[wf] = Blocks()
        return blocks

    def drop(self, wf: int) -> None:
        """Forget workflow ``wf`` (it was reset)."""
        self._blocks.pop(wf, None)

    def clear(self) -> None:
        """Forget everything (a transaction that may have added blocks rolled back)."""
        self._blocks.clear()


class Restriction:
    """The only tasks a store's worker may claim, when restricted (``restrict_to``).

    One per store, for the connection of every thread: a temporary table belongs to
    one connection, so each loads it before its first restricted query.
    """

    def __init__(self) -> None:
        self.seqs: list[int] | None = None
        # id of an open connection -> the list its temp.mine holds (Store.close forgets)
        self.loaded: dict[int, list[int]] = {}


class TransactionBase:
    """The connection and the helpers every operation uses.

    Args:
        conn: The connection, inside ``BEGIN IMMEDIATE``.
        state: The state directory (named in errors), if known.
        keys: The store's cache of key blocks (a private one if None).
        restriction: The store's restriction of claims (a private one if None).
    """

    def __init__(self, conn: sqlite3.Connection, state: StateDirectory | None = None,
                 keys: KeyCache | None = None, restriction: Restriction | None = None) -> None:
        self._db = conn
        self.state = state
        self._keys = KeyCache() if keys is None else keys
        self._restriction = Restriction() if restriction is None else restriction
        self.committed: list[Callable[[], None]] = []  # run once the transaction commits

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once this transaction has committed (not if it rolls back)."""
        self.committed.append(action)

    def materialize(self, wf: int, upto: int) -> None:
        """Give tasks from ``workflows.materialized`` to below ``upto`` a pending row.

        Tasks from ``workflows.materialized`` up to ``total`` are pending without a
        row: registering a million of them costs one UPDATE. (Tasks below it lie in
        runs or have rows: ``RunOperations._rows_below`` gives them all rows.)
        """
        materialized = self._db.execute(
            "SELECT materialized FROM workflows WHERE id = ?", (wf,)).fetchone()[0]
        if upto > materialized:
            self._insert_rows(wf, materialized, upto - 1, "pending", None)
            self._db.execute("UPDATE workflows SET materialized = ? WHERE id = ?", (upto, wf))

    def _load_mine(self) -> None:
        """Fill this connection's ``temp.mine`` with the store's restriction, if not yet."""
        seqs = self._restriction.seqs
        if seqs is None or self._restriction.loaded.get(id(self._db)) is seqs:
            return
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS mine(seq INTEGER PRIMARY KEY)")
        self._db.execute("DELETE FROM temp.mine")
        self._db.executemany("INSERT INTO temp.mine VALUES (?)", ((s,) for s in seqs))
        self._restriction.loaded[id(self._db)] = seqs  # Store.transaction forgets it on rollback

    def _insert_rows(self, wf: int, lo: int, hi: int, state: str, worker: int | None) -> None:
        # A recursive CTE inserts in C: ~1 us per task, no Python loop.
        self._db.execute(
            "WITH RECURSIVE s(x) AS (SELECT ? UNION ALL SELECT x + 1 FROM s WHERE x < ?)"
            " INSERT INTO tasks(wf, seq, state, worker) SELECT ?, x, ?, ? FROM s",
            (lo, hi, wf, state, worker),
        )

    def _lazy_within(self, wf: int, scope: Scope) -> bool:
        """Tell whether tasks without a row (pending, plain) lie within ``scope``.

        Never for a restricted scope: its tasks all have rows (``_materialize_mine``).
        """
        if scope.restricted:
            return False
        lazy: int = self._db.execute(
            "SELECT max(materialized, ?) < min(total, ?) FROM workflows WHERE id = ?",
            (scope.start, scope.limit, wf)).fetchone()[0]
        return lazy == 1

    def _total(self, wf: int) -> int:
        return int(self._db.execute(
            "SELECT total FROM workflows WHERE id = ?", (wf,)).fetchone()[0])

    def _is_simple(self, wf: int) -> bool:
        row = self._db.execute("SELECT simple FROM workflows WHERE id = ?", (wf,)).fetchone()
        return bool(row[0])

    def _shift(self, wf: int, count: int, source: str, target: str) -> None:
        """Move ``count`` tasks from one state's counter to another's."""
        if not count or source == target:
            return
        sets = [f"{column} = {column} {sign} ?" for column, sign in ((source, "-"), (target, "+"))
                if column in _COUNTED]  # names from a fixed set, never from input
        self._db.execute(f"UPDATE workflows SET {', '.join(sets)} WHERE id = ?",
                         (*[count] * len(sets), wf))

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
