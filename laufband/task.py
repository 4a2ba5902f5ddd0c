"""Task: one unit of work for Graphband, and checks on a set of tasks."""

from __future__ import annotations

import hashlib
import json
import numbers
import reprlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from laufband.errors import TaskGraphError


class Task:
    """A unit of work with an id, optional data, dependencies and requirements.

    Args:
        id: Unique string naming the task in its workflow.
        data: Anything the loop body needs; it stays in the worker's memory.
        dependencies: Ids of tasks that must be completed before this one runs.
        requirements: Labels a worker must have to run this task.
        max_parallel_workers: How many workers may hold this task at once; it is
            completed when every holder has finished it.
        info: Extra information about the task (a JSON-serialisable dict), stored with
            it and shown by ``laufband status`` and :class:`~laufband.Monitor`.
        priority: Among ready tasks, workers claim higher priorities first (ties in
            input order), one task at a time; default 0, within -2**63 .. 2**63-1.
        fingerprint: A string or bytes standing for the task's inputs (a hash of its
            data, a version): when it differs from the one stored with a completed
            task, the task runs again, and so does every task depending on it.
        timeout: Seconds the task may run before it fails with ``TimeoutError``
            (default: the worker's ``timeout=``, ``LAUFBAND_TIMEOUT``).
    """

    __slots__ = ("data", "dependencies", "fingerprint", "id", "info", "max_parallel_workers",
                 "priority", "requirements", "timeout")

    def __init__(
        self,
        id: str,
        data: Any = None,
        dependencies: Iterable[str] = (),
        requirements: Iterable[str] = (),
        max_parallel_workers: int = 1,
        info: Mapping[str, Any] | None = None,
        *,
        priority: int = 0,
        fingerprint: str | bytes | None = None,
        timeout: float | None = None,
    ) -> None:
        if not isinstance(id, str):
            msg = f"Task id must be a string, got {id!r} ({type(id).__name__}): use str(...)"
            raise TypeError(msg)
        if isinstance(max_parallel_workers, bool) or not isinstance(max_parallel_workers, int) \
                or max_parallel_workers < 1:
            msg = (f"Task {id!r}: max_parallel_workers must be an integer >= 1,"
                   f" got {max_parallel_workers!r}")
            if isinstance(max_parallel_workers, Mapping):  # laufband 0.2.x's argument order
                msg += ": pass info= by keyword"
            raise ValueError(msg)
        self.id = id
        self.data = data
        # Materialise iterators such as networkx's predecessors() at once.
        self.dependencies = tuple(dict.fromkeys(_strings(id, "dependencies", dependencies)))
        self.requirements = frozenset(_strings(id, "requirements", requirements))
        self.max_parallel_workers = max_parallel_workers
        self.info = _info(id, info)
        self.priority = _priority(id, priority)
        self.fingerprint = _fingerprint(id, fingerprint)
        self.timeout = check_timeout(f"Task {id!r}: timeout", timeout)

    def __repr__(self) -> str:
        return (
            f"Task(id={self.id!r}, data={self.data!r}, dependencies={list(self.dependencies)!r},"
            f" requirements={sorted(self.requirements)!r},"
            f" max_parallel_workers={self.max_parallel_workers}"
            + (f", info={self.info!r}" if self.info else "")
            + (f", priority={self.priority}" if self.priority else "")
            + (f", fingerprint={self.fingerprint!r}" if self.fingerprint is not None else "")
            + (f", timeout={self.timeout:g}" if self.timeout is not None else "") + ")"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Task):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


def _info(task_id: str, info: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return a copy of ``info``; refuse it unless it is a mapping that JSON can store."""
    if info is None:
        return {}
    problem = ""
    if isinstance(info, Mapping) and all(isinstance(k, str) for k in info):
        try:
            json.dumps(info, allow_nan=False)
        except (TypeError, ValueError) as error:
            problem = f" ({error})"
        else:
            return dict(info)
    msg = (f"Task {task_id!r}: info must be a JSON-serialisable dict with string keys,"
           f" got {reprlib.repr(info)}{problem}: store other objects in data=")
    raise TypeError(msg)


def _priority(task_id: str, priority: int) -> int:
    """Return ``priority`` as an int: any integer (NumPy's too), not a bool or float."""
    if isinstance(priority, bool) or not isinstance(priority, numbers.Integral):
        msg = (f"Task {task_id!r}: priority must be an integer (higher runs first), got"
               f" {priority!r} ({type(priority).__name__}): use int(...)")
        raise TypeError(msg)
    priority = int(priority)
    if not -(2**63) <= priority < 2**63:  # what SQLite stores as an INTEGER
        msg = (f"Task {task_id!r}: priority must be within -2**63 .. 2**63-1 (a 64-bit"
               f" integer), got {priority}")
        raise ValueError(msg)
    return priority


def _fingerprint(task_id: str, fingerprint: str | bytes | None) -> str | bytes | None:
    if fingerprint is not None and not isinstance(fingerprint, (str, bytes)):
        msg = (f"Task {task_id!r}: fingerprint must be a string or bytes, got"
               f" {reprlib.repr(fingerprint)} ({type(fingerprint).__name__}): pass a hash"
               " of the inputs, e.g. hashlib.sha256(data).hexdigest()")
        raise TypeError(msg)
    return fingerprint


def digest(fingerprint: str | bytes | None) -> bytes | None:
    """Return what the store keeps of a fingerprint: 16 bytes, str and bytes apart."""
    if fingerprint is None:
        return None
    kind, data = (b"s", fingerprint.encode()) if isinstance(fingerprint, str) \
        else (b"b", fingerprint)
    return hashlib.blake2b(kind + data, digest_size=16).digest()


def check_timeout(what: str, timeout: float | None) -> float | None:
    """Return ``timeout`` as seconds (None: no limit); refuse anything but a number > 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        msg = (f"{what} must be a number of seconds > 0 (or None for no limit), got"
               f" {timeout!r}")
        raise ValueError(msg)
    return float(timeout)


# What laufband 0.2.x called the first argument of Graphband: any iterable of Task.
GraphTraversalProtocol = Iterable[Task]


def _strings(task_id: str, what: str, values: Iterable[str]) -> list[str]:
    if isinstance(values, str):
        msg = (f"Task {task_id!r}: {what} must be a collection of ids, got the string"
               f" {values!r}: pass [{values!r}]")
        raise TypeError(msg)
    found = list(values)
    for value in found:
        if not isinstance(value, str):
            msg = (f"Task {task_id!r}: {what} must be strings, got {value!r}"
                   f" ({type(value).__name__}): use str(...)")
            raise TypeError(msg)
    return found


def check_unique(tasks: Iterable[Task], workflow: str) -> None:
    """Raise ``TaskGraphError`` if two tasks share an id."""
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            msg = (f"task id {task.id!r} appears twice in workflow {workflow!r}:"
                   " give each Task an id of its own")
            raise TaskGraphError(msg, workflow=workflow, task=task.id)
        seen.add(task.id)


def check_cycles(
    edges: Iterable[tuple[int, int]], name: Callable[[int], str], workflow: str
) -> None:
    """Raise ``TaskGraphError`` naming a cycle among ``(task, dependency)`` edges."""
    import networkx as nx  # only when a dependency points forward: ~200 ms to import

    graph = nx.DiGraph(list(edges))
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    # Named from the task given first (the lowest number), whichever way it was found.
    nodes = [task for task, _ in cycle]
    start = nodes.index(min(nodes))
    nodes = nodes[start:] + nodes[:start]
    first = name(nodes[0])
    path = " -> ".join([name(task) for task in nodes] + [first])
    msg = (f"tasks of workflow {workflow!r} depend on each other in a cycle ({path}):"
           " remove one dependency")
    raise TaskGraphError(msg, workflow=workflow, task=first)
