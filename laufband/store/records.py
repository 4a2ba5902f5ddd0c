"""What the store's operations take and return: rows as named tuples, task states."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

STATES = ("pending", "running", "completed", "failed", "killed", "blocked")


class Workflow(NamedTuple):
    """A workflow row: tasks are numbered ``0 .. total-1`` in registration order."""

    id: int
    name: str
    keyed: bool
    total: int
    completed: int
    simple: bool


class WorkerRecord(NamedTuple):
    """An online worker as another worker sees it when deciding whether it is dead."""

    id: int
    identifier: str
    host: str
    pid: int
    token: str
    beat: int
    seen: float = 0.0  # its last heartbeat or flush, wall clock of its host


class Scope(NamedTuple):
    """The tasks a worker has data for.

    Numbers from ``start`` to below ``limit``; when ``restricted``, only its own
    (``Transaction.restrict_to``).
    """

    limit: int = 2**62
    restricted: bool = False
    start: int = 0


class NewTask(NamedTuple):
    """A keyed task to register."""

    key: str
    dependencies: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    max_workers: int = 1
    info: dict[str, Any] | None = None  # Task.info, stored as JSON
    priority: int = 0
    fingerprint: bytes | None = None  # a digest of Task.fingerprint

    def needs_row(self) -> bool:
        """Tell whether claims must read this task's row.

        A plain task is pending until claimed and needs none (see
        ``TaskOperations.register_keyed``).
        """
        return bool(self.dependencies or self.requirements or self.max_workers > 1
                    or self.info or self.priority or self.fingerprint is not None)


class Stuck(NamedTuple):
    """Tasks a worker could run that wait for tasks needing labels no online worker has."""

    tasks: list[str]
    labels: list[list[str]]  # the label sets missing


def _ranges(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Fold distinct task numbers into inclusive ``(lo, hi)`` runs: one statement per run."""
    if not seqs:
        return []
    lo, hi = min(seqs), max(seqs)
    if hi - lo + 1 == len(seqs):  # distinct numbers filling [lo, hi]: the usual batch
        return [(lo, hi)]
    runs: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def within(scope: Scope) -> tuple[str, tuple[int, ...]]:
    """Return the SQL condition and parameters for the tasks (``seq``) within a scope."""
    mine = " AND seq IN (SELECT seq FROM temp.mine)" if scope.restricted else ""
    return " AND seq >= ? AND seq < ?" + mine, (scope.start, scope.limit)


def chunks(seqs: Sequence[int], size: int = 500) -> list[Sequence[int]]:
    """Cut ``seqs`` into pieces of ``size``: SQLite limits the variables of a statement."""
    return [seqs[start:start + size] for start in range(0, len(seqs), size)]


def placeholders(count: int) -> str:
    """Return ``?, ?, ?`` for ``count`` values."""
    return ", ".join("?" * count)
