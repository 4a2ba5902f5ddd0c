"""Keys: the one mapping from task keys to task numbers.

A keyed workflow (a Graphband's task ids, a Laufband's ``key=``, pmap's item keys)
numbers its tasks in registration order. Each registration that brings new keys
appends one *key block*: the pickled list of those keys and the number of the first.
A 100,000-item pmap call costs one row, not 100,000; task rows are written only when
claims need them (see ``TaskOperations.register_keyed``). Blocks of a Graphband or a
Laufband are *named*: views call those tasks by their key; pmap's keys (ints, strs,
digests) are not, and views call its tasks by number, as positional ones.

Blocks are appended, never changed, so a store keeps what it unpickled
(:class:`~laufband.store.base.KeyCache`) and reads only blocks added since.
"""

from __future__ import annotations

import pickle
from collections.abc import Collection, Hashable, Sequence
from typing import Any

from laufband.store.base import Blocks, TransactionBase

_RECENT = 256  # views naming at most this many tasks remember the names (Blocks.recent)


class KeyOperations(TransactionBase):
    """Numbers of keys, and names of tasks."""

    def number_keys(self, wf: int, keys: Sequence[Hashable]) -> tuple[dict[Any, int], int]:
        """Give ``keys`` (distinct) task numbers in workflow ``wf``, appending those it lacks.

        Keys the workflow has keep their numbers; the others become plain pending
        tasks, appended as one key block (pmap: one row per call, task rows only when
        claimed). Views name these tasks by number.

        Returns:
            Key -> task number for every key, and how many of them were new (numbered
            from the workflow's total before the call, in the order given).
        """
        known = self.task_numbers(wf, keys)
        if len(known) == len(keys):
            return known, 0
        fresh = [key for key in keys if key not in known]
        first = self._append_block(wf, fresh, named=False)
        known.update(zip(fresh, range(first, first + len(fresh)), strict=True))
        return known, len(fresh)

    def task_numbers(self, wf: int, keys: Collection[Any]) -> dict[Any, int]:
        """Map those of ``keys`` that workflow ``wf`` has to their task numbers."""
        blocks = self._blocks(wf)
        if not blocks.firsts:
            return {}
        if isinstance(keys, list):
            same = self._same_block(wf, blocks, keys)
            if same is not None:
                return same
        index = self._index(wf, blocks)
        return {key: index[key] for key in keys if key in index}

    def all_task_numbers(self, wf: int) -> dict[Any, int]:
        """Map every key of a keyed workflow to its task number."""
        return dict(self._index(wf, self._blocks(wf)))

    # -- names of tasks -----------------------------------------------------------

    def _names(self, wf: int, seqs: Collection[int]) -> dict[int, str]:
        """Map task numbers to how views name the tasks.

        A task's name is its key if a named block holds it, else its number.
        """
        blocks = self._blocks(wf)
        if not any(blocks.named):
            return {seq: str(seq) for seq in seqs}
        names = {}
        for seq in seqs:
            i = blocks.find(seq)
            if i is not None and blocks.named[i]:
                names[seq] = str(self._load(wf, blocks, i)[seq - blocks.firsts[i]])
            else:
                names[seq] = str(seq)
        if len(seqs) <= _RECENT:  # a view of a few tasks: remember them for their info
            if len(blocks.recent) > 16 * _RECENT:
                blocks.recent.clear()
            blocks.recent.update((name, seq) for seq, name in names.items()
                                 if blocks.is_named(seq))
        return names

    def _named_numbers(self, wf: int, names: Collection[str]) -> dict[str, int]:
        """Map the names views give tasks to their numbers (the unknown left out)."""
        blocks = self._blocks(wf)
        found = {name: blocks.recent[name] for name in names if name in blocks.recent}
        if len(found) == len(names) or not any(blocks.named):
            index: dict[Any, int] = {}
        else:
            index = self._index(wf, blocks)
        for name in names:
            if name in found:
                continue
            seq = index.get(name)
            if seq is not None and blocks.is_named(seq):
                found[name] = seq
            elif name.isascii() and name.isdigit() and str(int(name)) == name \
                    and not blocks.is_named(int(name)):
                found[name] = int(name)  # a number names a task of no named block
        return found

    # -- blocks ----------------------------------------------------------------------

    def _blocks(self, wf: int) -> Blocks:
        """Return the workflow's blocks, with those appended since we last looked."""
        row = self._db.execute("SELECT total FROM workflows WHERE id = ?", (wf,)).fetchone()
        if row is None:  # reset: nothing is left of it
            self._keys.drop(wf)
            return Blocks()
        blocks = self._keys.get(wf)
        if blocks.end < row[0]:  # new tasks: maybe new blocks (or positional tasks)
            for first, count, named in self._db.execute(
                    "SELECT first, count, named FROM key_blocks WHERE wf = ? AND first >= ?"
                    " ORDER BY first", (wf, blocks.end)):
                blocks.add(first, count, None, named=bool(named))
        return blocks

    def _load(self, wf: int, blocks: Blocks, i: int) -> list[Any]:
        """Return the keys of block ``i``, unpickled once per store."""
        keys = blocks.keys[i]
        if keys is None:
            (packed,) = self._db.execute(
                "SELECT keys FROM key_blocks WHERE wf = ? AND first = ?",
                (wf, blocks.firsts[i])).fetchone()
            keys = blocks.keys[i] = pickle.loads(packed)
        return keys

    def _index(self, wf: int, blocks: Blocks) -> dict[Any, int]:
        """Map every key to its task number (built once, extended as blocks come)."""
        for i in range(blocks.indexed, len(blocks.firsts)):
            first = blocks.firsts[i]
            keys = self._load(wf, blocks, i)
            blocks.index.update(zip(keys, range(first, first + len(keys)), strict=True))
        blocks.indexed = len(blocks.firsts)
        return blocks.index

    def _same_block(self, wf: int, blocks: Blocks, keys: list[Any]) -> dict[Any, int] | None:
        """Return the numbers of ``keys`` if one block holds exactly them, in that order.

        That is the usual re-run, found without building an index of every key.
        """
        for i, count in enumerate(blocks.counts):
            if count == len(keys) and self._load(wf, blocks, i) == keys:
                first = blocks.firsts[i]
                return dict(zip(keys, range(first, first + count), strict=True))
        return None

    def _append_block(self, wf: int, keys: list[Any], *, named: bool) -> int:
        """Append tasks for new ``keys`` (none known yet); return the first's number."""
        blocks = self._blocks(wf)
        first = self._total(wf)
        self._insert_block(wf, first, len(keys), pickle.dumps(keys, pickle.HIGHEST_PROTOCOL),
                           named=named)
        blocks.add(first, len(keys), keys, named=named)
        return first

    def _insert_block(self, wf: int, first: int, count: int, packed: bytes, *,
                      named: bool) -> None:
        self._db.execute(
            "INSERT INTO key_blocks(wf, first, count, named, keys) VALUES (?, ?, ?, ?, ?)",
            (wf, first, count, int(named), packed))
        self._db.execute("UPDATE workflows SET total = total + ? WHERE id = ?", (count, wf))
