"""Laufband: a Graphband over a sequence, yielding its items."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import PurePath
from typing import Any, TypeVar

from laufband.errors import TaskGraphError, WorkflowMismatchError
from laufband.graphband import Graphband
from laufband.store import Scope, Transaction

T = TypeVar("T")

_PLAIN = (type(None), bool, int, float, complex, str, bytes, PurePath)
_PLAIN_LIMIT = 1000  # elements looked at per item; bigger items are checked by type


class Laufband(Graphband[T]):
    """Iterate ``data`` together with every other process running the same loop.

    Every process (started by hand, by SLURM, by ``mpirun``) that iterates the same
    data in the same state directory gets different items; each item is processed
    once, and a later run continues with what is left. Task ids are positions in
    ``data`` unless ``key`` gives each item a stable id.

    Args:
        data: The items; a sequence (anything else is turned into a list).
        key: Optional function giving each item a unique, stable string id, so the
            data may be reordered or extended between runs.
        **options: As for :class:`Graphband` (``path``, ``name``, ``identifier``,
            ``labels``, ``max_killed_retries``, ``max_failed_retries``,
            ``tqdm_kwargs``, ...).

    Example:
        >>> worker = Laufband(list(range(100)), tqdm_kwargs={"desc": "squares"})
        >>> for item in worker:  # doctest: +SKIP
        ...     with worker.lock:
        ...         append_result(item**2)
    """

    def __init__(
        self, data: Iterable[T], *, key: Callable[[T], str] | None = None, **options: Any
    ) -> None:
        self.data: Sequence[T] = data if isinstance(data, Sequence) else list(data)
        self._key = key
        self._keyed = key is not None
        super().__init__((), **options)

    def _collect(self) -> list[Any]:
        return []

    def _plain_items(self) -> Iterable[Any]:
        return self.data

    def _planned_total(self) -> int:
        return self._workflow.total if self._workflow is not None else len(self.data)

    def _register(self, tx: Transaction, tasks: list[Any]) -> Scope:
        assert self._workflow is not None
        if self._key is not None:
            return self._register_keys(tx)
        workflow = self._workflow
        if workflow.keyed:
            msg = (f"workflow {workflow.name!r} in {self.path} was run with key=; pass the same"
                   " key=, or a new name= for positional ids")
            raise WorkflowMismatchError(msg)
        if len(self.data) < workflow.total:
            msg = (f"workflow {workflow.name!r} in {self.path} has {workflow.total} tasks but the"
                   f" data has {len(self.data)} items: pass the same data, a new name=, or remove"
                   f" {self.path} to start over")
            raise WorkflowMismatchError(msg)
        self._check_fingerprint(tx)
        tx.register_positions(workflow.id, len(self.data))
        # Runs with more data may append tasks later: ours are the first len(data).
        return Scope(limit=len(self.data))

    def _check_fingerprint(self, tx: Transaction) -> None:
        assert self._workflow is not None
        stored = self._workflow.fingerprint
        if stored is None:
            probes = _probe_positions(len(self.data))
            tx.set_fingerprint(self._workflow.id, {str(p): _digest(self.data[p]) for p in probes})
            return
        for position, digest in stored.items():
            if _digest(self.data[int(position)]) != digest:
                msg = (f"item {position} of the data differs from the run that created workflow"
                       f" {self._workflow.name!r} in {self.path}: pass the same data, key= for"
                       f" stable ids, a new name=, or remove {self.path} to start over")
                raise WorkflowMismatchError(msg)

    def _register_keys(self, tx: Transaction) -> Scope:
        assert self._workflow is not None and self._key is not None
        if not self._workflow.keyed:
            msg = (f"workflow {self._workflow.name!r} in {self.path} has positional ids; key="
                   " changes them: use a new name= or remove the state to start over")
            raise WorkflowMismatchError(msg)
        keys = [self._key(item) for item in self.data]
        seen: dict[str, int] = {}
        for index, key in enumerate(keys):
            if not isinstance(key, str):
                msg = f"key() must return a string, got {key!r} for item {index}"
                raise TypeError(msg)
            if key in seen:
                msg = (f"key() returned {key!r} for items {seen[key]} and {index} of workflow"
                       f" {self._workflow.name!r}: keys must be unique")
                raise TaskGraphError(msg)
            seen[key] = index
        known = tx.task_numbers(self._workflow.id, keys)
        numbers = tx.register_keys(self._workflow, keys, known)
        self._index_of = {numbers[key]: index for key, index in seen.items()}
        return self._keep_scope(tx, list(self._index_of), len(numbers))

    def _item_getter(self) -> Callable[[int], Any]:
        if self._key is None:
            return self.data.__getitem__
        data, index_of = self.data, self._index_of
        return lambda seq: data[index_of[seq]]


def _probe_positions(length: int) -> list[int]:
    """Positions checked on later runs: 0, 1, 3, 7, 15, ... (at most ~20 items)."""
    positions, step = [], 1
    while step - 1 < length:
        positions.append(step - 1)
        step *= 2
    return positions


def _digest(item: Any) -> str:
    """A digest that is equal across runs for equal plain data (numbers, strings, paths...).

    Other objects (whose repr may hold a memory address, whose pickle may depend on
    hash seeds) are compared by type only.
    """
    budget = [_PLAIN_LIMIT]
    text = repr(item) if _is_plain(item, budget) else f"<{type(item).__qualname__}>"
    return hashlib.blake2b(text.encode(errors="replace"), digest_size=8).hexdigest()


def _is_plain(item: Any, budget: list[int]) -> bool:
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if isinstance(item, _PLAIN):
        return True
    if isinstance(item, (list, tuple)):
        return all(_is_plain(x, budget) for x in item)
    if isinstance(item, dict):
        return all(_is_plain(k, budget) and _is_plain(v, budget) for k, v in item.items())
    return False


__all__ = ["Laufband"]
