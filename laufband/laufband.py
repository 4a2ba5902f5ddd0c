"""Laufband: a Graphband over a sequence, yielding its items."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from laufband.errors import TaskGraphError, WorkflowMismatchError
from laufband.graphband import Graphband
from laufband.itemdigest import DataDigests, covered
from laufband.store import Scope, Transaction, Workflow

T = TypeVar("T")



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
        """Make a worker over the items of ``data``, keyed by ``key`` if given."""
        self.data: Sequence[T] = data if isinstance(data, Sequence) else list(data)
        self._key = key
        self._keyed = key is not None
        self._digests: DataDigests | None = None
        # As given: len() like tqdm's (a TypeError for a generator); a numpy array is
        # digested from its bytes.
        super().__init__(data, **options)  # type: ignore[arg-type]

    def _collect(self) -> list[Any]:
        # Digest the data before the state lock is taken: pickling may run user code.
        if self._key is None and self._digests is None:
            self._digests = DataDigests(self.data, self._source)
        return []

    def _plain_items(self) -> Iterable[Any]:
        return self.data

    def _planned_total(self) -> int:
        if self._session is not None:
            return self._session.workflow.total
        return len(self.data)

    def _mismatch(self, workflow: Workflow, msg: str) -> WorkflowMismatchError:
        return WorkflowMismatchError(msg, workflow=workflow.name, path=self.path)

    def _register(self, tx: Transaction, workflow: Workflow, tasks: list[Any]) -> Scope:
        if self._key is not None:
            return self._register_keys(tx, workflow, self._key)
        if workflow.keyed:
            msg = (f"workflow {workflow.name!r} in {self.path} was run with key=; pass the same"
                   " key=, or a new name= for positional ids")
            raise self._mismatch(workflow, msg)
        if len(self.data) < workflow.total:
            msg = (f"workflow {workflow.name!r} in {self.path} has {workflow.total} tasks but the"
                   f" data has {len(self.data)} items: pass the same data, a new name=, or remove"
                   f" {self.path} to start over")
            raise self._mismatch(workflow, msg)
        self._check_fingerprint(tx, workflow)
        tx.register_positions(workflow.id, len(self.data))
        # Runs with more data may append tasks later: ours are the first len(data).
        return Scope(limit=len(self.data))

    def _check_fingerprint(self, tx: Transaction, workflow: Workflow) -> None:
        """Refuse data whose items differ from the run that created the workflow.

        Refuse data whose items differ from the run that created the workflow (an
        insert, a removal, a reordering or a changed item); store the digests of more.
        """
        digests = self._digests or DataDigests(self.data, self._source)
        stored = tx.fingerprint(workflow.id)
        if stored is not None:
            differs = digests.first_difference(stored)
            if differs is not None:
                lo, hi = differs
                msg = (f"the data differs from the run that created workflow"
                       f" {workflow.name!r} in {self.path}: one of items {lo} to"
                       f" {hi - 1} was inserted, removed, reordered or changed. Pass the"
                       f" same data, key= (stable ids from the items) to let the data"
                       f" change between runs, a new name=, or remove {self.path}")
                raise self._mismatch(workflow, msg)
        if stored is None or covered(stored) < digests.length:
            tx.set_fingerprint(workflow.id, digests.pack())
        self._digests = None  # checked: not worth its memory (a later iteration digests anew)

    def _register_keys(self, tx: Transaction, workflow: Workflow,
                       key_of: Callable[[Any], str]) -> Scope:
        if not workflow.keyed:
            msg = (f"workflow {workflow.name!r} in {self.path} has positional ids; key="
                   " changes them: use a new name= or remove the state to start over")
            raise self._mismatch(workflow, msg)
        keys = [key_of(item) for item in self.data]
        seen: dict[str, int] = {}
        for index, key in enumerate(keys):
            if not isinstance(key, str):
                msg = f"key() must return a string, got {key!r} for item {index}"
                raise TypeError(msg)
            if key in seen:
                msg = (f"key() returned {key!r} for items {seen[key]} and {index} of workflow"
                       f" {workflow.name!r}: keys must be unique")
                raise TaskGraphError(msg, workflow=workflow.name, task=key)
            seen[key] = index
        known = tx.task_numbers(workflow.id, keys)
        numbers = tx.register_keys(workflow, keys, known)
        self._index_of = {numbers[key]: index for key, index in seen.items()}
        return self._keep_scope(tx, list(self._index_of), len(numbers))

    def _described_item(self, seq: int) -> Any:
        if self._key is not None:
            return None  # its key names it
        try:
            return self.data[seq]
        except (IndexError, TypeError):
            return None

    def _timeout_name(self, seq: int) -> str:
        return f"item {seq if self._key is None else self._index_of[seq]}"

    def _item_getter(self) -> Callable[[int], Any]:
        if self._key is None:
            return self.data.__getitem__
        data, index_of = self.data, self._index_of
        return lambda seq: data[index_of[seq]]


__all__ = ["Laufband"]
