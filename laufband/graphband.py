"""Iterate a graph of tasks shared with other workers (Graphband).

Graphband: iterate a graph of tasks shared with every other worker on the same
state directory (the loop itself is in :mod:`laufband.workerloop`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from filelock import FileLock
from tqdm import tqdm

from laufband import interrupts
from laufband.errors import NoResultError
from laufband.legacy import refuse_replaced
from laufband.outdated import Outdated
from laufband.settings import resolve_settings
from laufband.store import NewTask, Scope, Transaction, Workflow
from laufband.task import Task, check_cycles, check_unique, digest
from laufband.workerloop import WorkerLoop

if TYPE_CHECKING:
    from laufband.session import ResultSink

T = TypeVar("T")


class Graphband(WorkerLoop, Generic[T]):
    """Iterate tasks shared with every other worker on the same state directory.

    Each task is yielded to exactly one worker (or up to ``max_parallel_workers``),
    after its dependencies are completed and only to workers whose ``labels``
    cover its ``requirements``. Leaving the loop by ``break`` or an exception marks
    the current task failed; ``close()`` marks it completed and stops.

    Args:
        tasks: Iterable of :class:`Task`; read once when iteration starts.
        path: State directory (``LAUFBAND_PATH``, default ``./.laufband``).
        name: Workflow name (``LAUFBAND_NAME``, default the running script's stem).
        identifier: Unique worker name, or a function returning one
            (``LAUFBAND_IDENTIFIER``, default host, pid, rank and a counter).
        labels: Labels of this worker (``LAUFBAND_LABELS``, comma-separated).
        max_killed_retries: Re-runs of a task whose worker died (default 1).
        max_failed_retries: Re-runs of a task that failed (default 0).
        heartbeat_interval: Seconds between heartbeats (default 10).
        heartbeat_timeout: Seconds without a heartbeat before a worker on another host is
            dead (default 30).
        tqdm_kwargs: Passed to the progress bar (under MPI only rank 0 draws one by default).
        disabled: Run as a plain tqdm loop with no coordination (``LAUFBAND_DISABLED=1``).
        lock: ``"file"`` (default) or ``"soft"``: how the state is locked
            (``LAUFBAND_LOCK``; soft where ``flock`` does not work); or a lock object
            (e.g. a ``filelock.FileLock``) to use as ``worker.lock``, as in 0.2.x.
        failure_policy: ``"continue"`` (default): a failed task fails alone; ``"stop"``:
            once a task has failed, every worker stops with a ``RuntimeError`` naming it
            (``LAUFBAND_FAILURE_POLICY``).
        sink: For libraries built on Graphband (``pmap``): stores what loop bodies
            produce with the completion of their tasks (see
            :class:`laufband.session.ResultSink`). A worker with a sink leaves reporting
            failed tasks to its caller.
        expected_workers: Workers known to be starting (``pmap``'s forked helpers),
            counted in batch sizes before they are online (every MPI rank is counted).
        timeout: Seconds a task may run before its loop body is interrupted with a
            ``TimeoutError`` (``LAUFBAND_TIMEOUT``; ``Task.timeout`` overrides it).
        retry_delay: Seconds before a failed task with retries left may run again,
            doubling with each failure (``LAUFBAND_RETRY_DELAY``, default 0).

    Example:
        >>> from laufband import Graphband, Task
        >>> tasks = [Task("a"), Task("b", dependencies=["a"])]
        >>> for task in Graphband(tasks, path=tmp):  # doctest: +SKIP
        ...     print(task.id)
    """

    def __init__(  # noqa: PLR0913 - the options of a worker, all keyword-only
        self,
        tasks: Iterable[Task],
        *,
        path: str | os.PathLike[str] | None = None,
        name: str | None = None,
        identifier: str | Callable[[], str] | None = None,
        labels: Iterable[str] | None = None,
        max_killed_retries: int | None = None,
        max_failed_retries: int | None = None,
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        tqdm_kwargs: dict[str, Any] | None = None,
        disabled: bool | None = None,
        lock: str | AbstractContextManager[Any] | None = None,
        failure_policy: str | None = None,
        sink: ResultSink | None = None,
        expected_workers: int | None = None,
        timeout: float | None = None,
        retry_delay: float | None = None,
        **replaced: Any,
    ) -> None:
        """Make a worker over ``tasks`` with the given options."""
        refuse_replaced(type(self).__name__, replaced)
        settings = resolve_settings(
            path=path, name=name, identifier=identifier, labels=labels,
            max_killed_retries=max_killed_retries, max_failed_retries=max_failed_retries,
            heartbeat_interval=heartbeat_interval, heartbeat_timeout=heartbeat_timeout,
            disabled=disabled, lock=lock, failure_policy=failure_policy,
            expected_workers=expected_workers, timeout=timeout, retry_delay=retry_delay)
        super().__init__(settings, tqdm_kwargs, sink)
        self._source = tasks
        self.path = settings.state.path
        self.name = settings.name
        self.identifier = settings.identifier
        self.labels = settings.labels
        self.max_killed_retries = settings.max_killed_retries
        self.max_failed_retries = settings.max_failed_retries
        self.heartbeat_interval = settings.heartbeat_interval
        self.heartbeat_timeout = settings.heartbeat_timeout
        self.disabled = settings.disabled
        self.failure_policy = settings.failure_policy
        self._user_lock: Any = settings.user_lock
        self._tasks: list[Task] | None = None
        self._by_number: dict[int, Task] = {}
        self._numbers: list[int] | None = None  # our task numbers, when ids are keys
        self._plain_done = False  # disabled: the plain loop went through every item
        self._plain_id: Any = None  # disabled: the id of the item the body runs
        self._plain_results: dict[Any, Any] = {}  # disabled: what save() kept

    # -- public API ---------------------------------------------------------------------

    @property
    def lock(self) -> Any:
        """A lock shared by all workers (``user.lock``), re-entrant within a thread.

        Use it around access to shared resources, e.g. appending to one output file.
        It is separate from the lock that guards the state, so holding it never
        blocks other workers from claiming tasks.
        """
        if self._user_lock is None:
            if self.disabled:
                self._user_lock = threading.RLock()
            else:
                user_lock = self._settings.state.user_lock()
                self._user_lock = FileLock(user_lock, mode=0o600, is_singleton=True)
        return self._user_lock

    @property
    def iterator(self) -> tqdm[Any]:
        """The tqdm progress bar; it counts completions of every worker."""
        return self._progress_bar.bar(self._planned_total())

    @property
    def has_more_jobs(self) -> bool:
        """Tell whether this worker may still get a task.

        Whether a task this worker could run is pending or still running elsewhere
        (whether or not a worker that can run what it waits for is online).
        """
        if self.disabled:  # a plain loop: until it has gone through the items once
            return not self._closed and not self._plain_done
        was_running = self._session is not None
        self._start()
        session = self._live_session
        try:
            with session.store.transaction() as tx:
                return tx.may_get_work(session.wf, session.number, self._label_list,
                                       session.scope)
        finally:
            if not was_running:  # asked outside the loop: do not stay online
                self._stop()

    def close(self) -> None:
        """Mark the current task completed and stop iterating; the worker goes offline."""
        session = self._session
        if session is not None:
            session.finish_current()
        self._closed = self._alert = True
        self._stop()

    @contextlib.contextmanager
    def catch(self, *exceptions: type[BaseException]) -> Iterator[None]:
        """Record an exception raised inside as the current task's failure.

        Record an exception raised inside as the failure of the current task, and go
        on with the next item instead of leaving the loop::

            for item in worker:
                with worker.catch():
                    compute(item)  # an exception fails this item only

        The failure (type and message) is written at once; ``max_failed_retries`` and
        ``failure_policy`` apply as for any failure. Catches ``Exception`` unless
        given exception types; Ctrl-C and SIGTERM are never caught.
        """
        caught = exceptions or (Exception,)
        if self._session is None and not self.disabled:
            msg = "worker.catch() belongs inside the body of the loop over this worker"
            raise RuntimeError(msg)
        try:
            yield
        except caught as error:
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            if self.disabled:  # a plain loop: nothing to record, say it and go on
                tqdm.write(f"laufband (disabled): an item failed: {type(error).__name__}:"
                           f" {error}", file=sys.stderr)
            else:  # fails the current task, unless an earlier catch() did
                self._fail_current(error)

    def save(self, value: Any) -> None:
        """Store ``value`` as the result of the current task.

        It is written in the transaction that completes the task (a task that fails
        or is handed back keeps none), survives like ``pmap``'s results, and is read
        by :meth:`result_of` (in any process, e.g. by the tasks depending on this
        one) and ``laufband results``. Saving again replaces it. The value is pickled
        outside the state lock; one that cannot be pickled fails the task.
        """
        if self.disabled:  # a plain loop: kept in memory for result_of()
            self._plain_results[self._plain_id] = value
            return
        self._save(value)

    def result_of(self, task_id: str | int) -> Any:
        """Return the result completed task ``task_id`` stored with :meth:`save`.

        ``task_id`` is a ``Task.id``, a ``key=`` value, or a position for a
        positional ``Laufband``. Call it in the loop body (a dependency's result) or
        after the loop.

        Raises:
            NoResultError: The task is not completed, or saved no result.
        """
        if self.disabled:
            if task_id in self._plain_results:
                return self._plain_results[task_id]
            state = "unknown"
        else:
            positional = isinstance(task_id, int) and not self._keyed
            try:
                return self._read_saved(task_id if positional else str(task_id))
            except LookupError as error:
                state = str(error)
        why = ("it completed without calling worker.save()" if state == "completed" else
               f"it is {state}: results are read once a task completed")
        msg = f"task {task_id!r} of workflow {self.name!r} has no saved result: {why}"
        raise NoResultError(msg, workflow=self.name, task=str(task_id), state=state)

    def __len__(self) -> int:
        """Return the number of tasks given, like ``len(tqdm(...))``; TypeError for a generator."""
        if not isinstance(self._source, Sized):
            msg = f"object of type '{type(self._source).__name__}' has no len()"
            raise TypeError(msg)
        return len(self._source)

    def __bool__(self) -> bool:
        """Return True: a worker is truthy, whatever its length."""
        return True  # a worker is a worker, whatever len() says

    def __enter__(self) -> Graphband[T]:
        """Return this worker, stopped when the block is left."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Record an exception that left the block, then stop the worker."""
        if exc is not None:
            interrupts.describe_failure(self, exc)
        self._stop()

    def __iter__(self) -> Iterator[T]:
        """Yield the tasks this worker runs."""
        if self.disabled:
            return self._plain_loop()
        # The code running the for-loop: an uncaught error that leaves it is recorded.
        self._consumer = sys._getframe(1).f_code  # noqa: SLF001
        return self._loop()

    # -- the tasks ----------------------------------------------------------------------

    def _collect(self) -> list[Task]:
        """Read the task iterable once (it may be a generator) and check it."""
        if self._tasks is None:
            tasks = list(self._source)
            for task in tasks:
                if not isinstance(task, Task):
                    msg = f"Graphband takes Task objects, got {task!r}: yield Task(id=...)"
                    raise TypeError(msg)
            check_unique(tasks, self.name)
            self._tasks = tasks
        return self._tasks

    def _register(self, tx: Transaction, workflow: Workflow, tasks: list[Task]) -> Scope:
        """Register tasks; return which of the workflow's tasks this worker can run."""
        new = [NewTask(t.id, t.dependencies, tuple(t.requirements), t.max_parallel_workers,
                       t.info, t.priority, digest(t.fingerprint)) for t in tasks]
        wanted = {t.key for t in new} | {d for t in new for d in t.dependencies}
        known = tx.task_numbers(workflow.id, wanted)
        numbers = tx.register_keyed(workflow, new, known)
        # Tasks registered before: a changed fingerprint runs them (and what depends
        # on them) again.
        tx.refingerprint(workflow.id, {known[t.key]: t.fingerprint for t in new
                                       if t.fingerprint is not None and t.key in known})
        if any(numbers[dep] >= numbers[t.key] for t in new for dep in t.dependencies):
            # Only a dependency on a later (or the same) task can close a cycle.
            keys = {seq: key for key, seq in numbers.items()}
            check_cycles(tx.dependency_edges(workflow.id), keys.__getitem__, self.name)
        self._by_number = {numbers[t.id]: t for t in tasks}
        # The workflow's priorities, whoever registered them: ours may have none.
        self._one_at_a_time = tx.is_prioritized(workflow.id)
        digests = {numbers[t.key]: t.fingerprint for t in new if t.fingerprint is not None}
        self._outdated = Outdated(digests, self.name, lambda seq: self._by_number[seq].id) \
            if digests else None
        return self._keep_scope(tx, list(self._by_number), len(numbers))

    def _keep_scope(self, tx: Transaction, mine: list[int], total: int) -> Scope:
        """Remember our task numbers; restrict claims to them if the workflow has more."""
        self._numbers = mine
        if total > len(mine):
            tx.restrict_to(mine)
            return Scope(restricted=True)
        return Scope()

    def _mine(self) -> list[int] | None:
        return self._numbers

    def _item_getter(self) -> Callable[[int], Any]:
        return self._by_number.__getitem__

    def _limit_of(self) -> Callable[[int], float | None] | None:
        default, tasks = self._settings.timeout, self._by_number
        if not any(task.timeout is not None for task in tasks.values()):
            return super()._limit_of()

        def limit_of(seq: int) -> float | None:
            task = tasks.get(seq)
            return default if task is None or task.timeout is None else task.timeout

        return limit_of

    def _timeout_name(self, seq: int) -> str:
        task = self._by_number.get(seq)
        return f"task {seq}" if task is None else f"task {task.id!r}"

    def _planned_total(self) -> int:
        if self._session is not None:
            return self._session.workflow.total
        return len(self._collect())

    def _plain_items(self) -> Iterable[Any]:
        return self._collect()

    def _plain_id_of(self, position: int, item: Any) -> Any:
        """Return the task id of a disabled loop's item (what result_of takes)."""
        return item.id if isinstance(item, Task) else position

    def _plain_loop(self) -> Iterator[Any]:
        """``LAUFBAND_DISABLED=1``: a plain tqdm loop, nothing shared or stored."""
        for position, item in enumerate(self._progress_bar.wrap(self._plain_items())):
            if self._closed:
                return
            self._plain_id = self._plain_id_of(position, item)
            yield item
        self._plain_done = True


__all__ = ["Graphband"]
