"""Graphband: the worker loop every laufband worker runs.

::

    register tasks + worker ──> claim a batch ──> yield task ──> (loop body runs,
          (one transaction)        ^    │            │            no lock held)
                                   │    │ nothing    └── finished in memory,
                 finish + claim ───┘    │ ready          flushed every ~0.2 s
                 (one transaction)      v
                               work running elsewhere? ── yes: reap dead workers,
                                        │ no                 wait (<= 1 s), retry
                                        v
                                  offline, exit
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pickle
import secrets
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Generic, TypeVar

from filelock import FileLock
from tqdm import tqdm

from laufband import mpi
from laufband.batching import BatchSizer
from laufband.errors import StateError
from laufband.inflight import InFlight
from laufband.legacy import refuse_replaced, warn_about_original_state
from laufband.liveness import HOST, DeadWorkerDetector, Heartbeat, process_token
from laufband.options import (
    check_count,
    check_heartbeat,
    check_seconds,
    parse_bool,
    parse_labels,
    resolve,
)
from laufband.statelock import SHIELD
from laufband.store import (
    NewTask,
    Scope,
    Store,
    Stuck,
    Transaction,
    Workflow,
    make_directory,
    refuse_symlink,
)
from laufband.task import Task, check_cycles, check_unique

T = TypeVar("T")

MAX_WAIT = 1.0  # longest sleep while waiting for work running elsewhere
_identifiers = itertools.count()
_live: weakref.WeakSet[Graphband[Any]] = weakref.WeakSet()
# The latest failure recorded without error text (store, workflow, task, worker, code of
# the loop): an uncaught exception that left a module-level loop is only known at exit
# (sys.last_value), when the worker object may be gone.
_undescribed: dict[str, tuple[Store, int, int, int, Any]] = {}


class Graphband(Generic[T]):
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

    Example:
        >>> from laufband import Graphband, Task
        >>> tasks = [Task("a"), Task("b", dependencies=["a"])]
        >>> for task in Graphband(tasks, path=tmp):  # doctest: +SKIP
        ...     print(task.id)
    """

    def __init__(
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
        **replaced: Any,
    ) -> None:
        refuse_replaced(type(self).__name__, replaced)
        self._source = tasks
        self.path = Path(resolve("path", path, ".laufband", str)).absolute()
        self.name = resolve("name", name, _script_name(), str)
        if callable(identifier):  # as in laufband 0.2.x: a function naming the worker
            identifier = identifier()
        self.labels = frozenset(resolve("labels", labels, frozenset(), parse_labels))
        self.max_killed_retries = check_count(
            "max_killed_retries", resolve("max_killed_retries", max_killed_retries, 1, int))
        self.max_failed_retries = check_count(
            "max_failed_retries", resolve("max_failed_retries", max_failed_retries, 0, int))
        self.heartbeat_interval = check_seconds(
            "heartbeat_interval", resolve("heartbeat_interval", heartbeat_interval, 10.0, float))
        self.heartbeat_timeout = check_seconds(
            "heartbeat_timeout", resolve("heartbeat_timeout", heartbeat_timeout, 30.0, float))
        check_heartbeat(self.heartbeat_interval, self.heartbeat_timeout)
        self.disabled = resolve("disabled", disabled, False, parse_bool)
        self._user_lock: Any = None if lock is None or isinstance(lock, str) else lock
        self._soft_lock = _lock_kind(resolve("lock", lock if isinstance(lock, str) else None,
                                             "file", str)) == "soft"
        self.failure_policy = _failure_policy(
            resolve("failure_policy", failure_policy, "continue", str))
        found = mpi.rank_and_size()
        # Workers known to come (every MPI rank; pmap's forked helpers): counted in
        # batch sizes from the start, online yet or not.
        self._rank, self._expected_workers = found if found else (None, 1)
        self.identifier = resolve("identifier", identifier, None, str) or _default_identifier(
            self._rank)
        self._tqdm_kwargs = dict(tqdm_kwargs or {})
        self._tqdm_kwargs.setdefault("disable", self._rank not in (None, 0))
        self._tasks: list[Task] | None = None
        self._bar: tqdm[Any] | None = None
        self._bar_closed = False  # closed by _stop(); a new iteration draws a new one
        self._progress: tuple[int, int] | None = None  # (completed, total) last seen
        self._store: Store | None = None
        self._workflow: Workflow | None = None
        self._worker = -1
        self._scope = Scope()
        self._mine: list[int] | None = None  # our task numbers, when ids are keys
        self._running = False
        self._stopping = False  # _stop() began and has not finished
        self._closed = False
        self._batch: list[int] = []
        self._current: int | None = None
        self._interrupted: int | None = None  # the task Ctrl-C arrived during
        self._consumer: Any = None
        self._finished: list[int] = []
        # Outcomes a loop body reported (pmap) as (task, ...) tuples, packed into
        # (lowest task, highest task, bytes) chunks outside the lock and stored in
        # the transaction that completes their tasks.
        self._outcomes: list[tuple[Any, ...]] = []
        self._chunks: list[tuple[int, int, bytes]] = []
        self._dumps: Callable[..., bytes] = pickle.dumps
        self._failures: list[tuple[int, str]] = []
        self._sizer = BatchSizer()
        self._detector = DeadWorkerDetector(self.heartbeat_timeout, self.path)
        self._in_flight: InFlight | None = None
        self._heartbeat: Heartbeat | None = None
        self._last_reap = 0.0
        self._last_sweep = -float("inf")
        self._waits = True  # wait for tasks running elsewhere (pmap helpers do not)
        self._offline = False  # set offline by the transaction that found nothing left
        self._evicted = False  # another worker took us for dead; we found out flushing
        self._stuck: Stuck | None = None  # what we could run waits for missing labels
        self._plain_done = False  # disabled: the plain loop went through every item

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
                make_directory(self.path)
                refuse_symlink(self.path / "user.lock")
                self._user_lock = FileLock(self.path / "user.lock", mode=0o600,
                                           is_singleton=True)
        return self._user_lock

    @property
    def iterator(self) -> tqdm[Any]:
        """The tqdm progress bar; it counts completions of every worker."""
        if self._bar is None:
            completed, total = self._progress or (0, self._planned_total())
            self._bar = tqdm(**{"total": total, "initial": completed, **self._tqdm_kwargs})
        return self._bar

    @property
    def has_more_jobs(self) -> bool:
        """Whether a task this worker could run is pending or still running elsewhere
        (whether or not a worker that can run what it waits for is online)."""
        if self.disabled:  # a plain loop: until it has gone through the items once
            return not self._closed and not self._plain_done
        was_running = self._running
        self._start()
        assert self._store is not None and self._workflow is not None
        try:
            with self._store.transaction() as tx:
                return tx.may_get_work(self._workflow.id, self._worker, self._label_list,
                                       self._scope)
        finally:
            if not was_running:  # asked outside the loop: do not stay online
                self._stop()

    def close(self) -> None:
        """Mark the current task completed and stop iterating; the worker goes offline."""
        if self._current is not None:
            self._finished.append(self._current)
            self._current = None
        self._closed = True
        self._stop()

    @contextlib.contextmanager
    def catch(self, *exceptions: type[BaseException]) -> Iterator[None]:
        """Record an exception raised inside as the failure of the current task, and go
        on with the next item instead of leaving the loop::

            for item in worker:
                with worker.catch():
                    compute(item)  # an exception fails this item only

        The failure (type and message) is written at once; ``max_failed_retries`` and
        ``failure_policy`` apply as for any failure. Catches ``Exception`` unless
        given exception types; Ctrl-C and SIGTERM are never caught.
        """
        caught = exceptions or (Exception,)
        if not self._running and not self.disabled:
            msg = "worker.catch() belongs inside the body of the loop over this worker"
            raise RuntimeError(msg)
        try:
            yield
        except caught as error:
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            text = f"{type(error).__name__}: {error}"
            if self.disabled:  # a plain loop: nothing to record, say it and go on
                tqdm.write(f"laufband (disabled): an item failed: {text}", file=sys.stderr)
            elif self._current is not None:  # else: failed already, by an earlier catch()
                self._fail_current(text)

    def __len__(self) -> int:
        """The number of tasks given, like ``len(tqdm(...))``: a TypeError for a generator."""
        if not isinstance(self._source, Sized):
            msg = f"object of type '{type(self._source).__name__}' has no len()"
            raise TypeError(msg)
        return len(self._source)

    def __bool__(self) -> bool:
        return True  # a worker is a worker, whatever len() says

    def __enter__(self) -> Graphband[T]:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self._describe_failure(f"{type(exc).__name__}: {exc}")
        self._stop()

    def __iter__(self) -> Iterator[T]:
        if self.disabled:
            yield from self._plain_loop()
            return
        self._closed = False
        self._consumer = sys._getframe(1).f_code  # the code running the for-loop
        if self._running:  # an earlier stop was cut short (an interrupt caught and the
            self._stop()   # loop run again, as in Jupyter): finish it, then start anew
        try:
            batch = self._start(claim=True)
            while not self._closed:
                batch = batch or self._next_batch()
                if not batch:
                    return
                yield from self._run_batch(batch)
                batch = []
        except GeneratorExit:
            self._abandon_current()
            raise
        except BaseException as error:
            with contextlib.suppress(StateError):  # the original error matters more
                self._abandon_current(error)
            raise
        finally:
            if sys.exc_info()[1] is None:
                self._stop()
            else:
                with contextlib.suppress(StateError):
                    self._stop()

    # -- the loop -----------------------------------------------------------------------

    def _run_batch(self, batch: list[int]) -> Iterator[T]:
        # The hot path: per task one yield, one list append, one store into the
        # in-flight record and one clock read. _batch and _current always tell _stop()
        # which claimed tasks are still ours; the record tells a reaper which finished.
        item = self._item_getter()
        finished = self._finished
        flush_every = self._sizer.flush_interval()
        started = last_flush = time.monotonic()
        # A batch about to end is flushed by the claim that follows it, not twice.
        expected_end = started + len(batch) * self._sizer.task_time
        assert self._in_flight is not None
        record = self._in_flight
        record.begin(batch)
        mark = record.mark
        for position, seq in zip(itertools.count(1, 2), batch):
            # Current first, finished before not current: an interrupt between two
            # of these statements finds the task in _stop() either way.
            self._current = seq
            mark(position)  # batch[i] runs, and so the tasks before it finished
            yield item(seq)
            if self._closed:  # close() was called in the loop body
                return
            finished.append(seq)
            self._current = None
            now = time.monotonic()
            if now - last_flush >= flush_every and not 0 < expected_end - now <= flush_every / 2:
                mark(position + 1)
                self._flush()
                last_flush = now
                if self._evicted:  # taken for dead meanwhile: the rest is not ours
                    break
        record.settle(body_finished=True)
        self._batch = []
        self._sizer.observe_tasks(len(batch), time.monotonic() - started)

    def _next_batch(self) -> list[int]:
        """Finish what ran and claim the next batch in one transaction; wait if needed."""
        assert self._store is not None and self._workflow is not None
        wf = self._workflow.id
        wait = min(0.01, self._sizer.longest_wait(MAX_WAIT))
        while True:
            began = time.monotonic()
            self._pack_outcomes()
            with self._store.transaction() as tx:
                flushed = self._finish(tx)
                if began - self._last_reap >= self.heartbeat_interval:
                    self._reap(tx)
                batch = self._claim(tx)
                if not batch and (self._reap(tx) or self._sweep(tx)):
                    batch = self._claim(tx)
                # Recorded before the commit: an interrupt from here on finds the
                # batch in _stop() and hands it back.
                self._batch = batch
                more = bool(batch) or self._may_get_work(tx)
                leaving = not batch and not (more and self._waits)
                farewell = None
                if leaving:
                    tx.set_offline(self._worker)  # the loop ends: no other transaction for it
                    farewell = self._farewell(tx)
                total, completed = tx.progress(wf)
                stop = self._failed_for_good(tx)
            self._offline = leaving  # once committed: a rollback leaves us online
            self._drop(flushed)
            self._sizer.observe_transaction(time.monotonic() - began)
            self._show_progress(completed, total)
            if stop:  # failure_policy="stop"; the batch just claimed is handed back
                raise RuntimeError(stop)
            if leaving and farewell:
                tqdm.write(farewell, file=sys.stderr)
            if batch or not more or not self._waits:
                return batch
            time.sleep(wait)
            wait = min(wait * 2, self._sizer.longest_wait(MAX_WAIT))

    def _claim(self, tx: Transaction) -> list[int]:
        assert self._workflow is not None
        wf = self._workflow.id
        if self._check_registered(tx) != "online":
            # Another worker took us for dead (e.g. a long pause): our claims were
            # returned to pending and our stale finishes ignored; carry on as new.
            tx.register_worker(self.identifier, wf, HOST, os.getpid(), process_token(),
                               self._rank, self._label_list)
            self._evicted = False
        counts = tx.counts(wf)
        total = sum(counts.values())
        if self._mine is not None and total > len(self._mine) and not self._scope.restricted:
            # Another worker registered tasks we have no data for: claim only ours.
            tx.restrict_to(self._mine)
            self._scope = Scope(restricted=True)
        workers = max(tx.online_count(wf), self._expected_workers)
        # Guided by what is left unclaimed: claimed tasks are spoken for, and finished
        # ones may not be flushed yet.
        size = self._sizer.next_size(counts["pending"], workers,
                                     self._expected_workers > 1)
        return tx.claim(wf, self._worker, size, self._label_list, self._scope)

    def _may_get_work(self, tx: Transaction) -> bool:
        """Whether a task this worker could run may still become ready: pending or
        running elsewhere, and not waiting for a task that needs labels no online
        worker has (``_stuck`` says which, for the line printed as it leaves)."""
        assert self._workflow is not None
        wf = self._workflow.id
        self._stuck = None
        tx.block_unreachable(wf)
        if not tx.may_get_work(wf, self._worker, self._label_list, self._scope):
            return False
        self._stuck = tx.stuck_on_labels(wf, self._worker, self._label_list, self._scope)
        return self._stuck is None

    def _failed_for_good(self, tx: Transaction) -> str | None:
        """With ``failure_policy="stop"``: the error to stop with once a task failed."""
        if self.failure_policy != "stop":
            return None
        assert self._workflow is not None
        failed = tx.failed_tasks(self._workflow.id, limit=3)
        if not failed:
            return None
        return (f"task(s) {', '.join(map(repr, failed))} of workflow {self.name!r} failed"
                f" and failure_policy='stop': this worker stops too (see laufband status"
                f" --path {self.path})")

    def _farewell(self, tx: Transaction) -> str | None:
        """The one line a worker prints as it leaves work undone: tasks waiting for
        labels no online worker has, or failed and blocked tasks."""
        assert self._workflow is not None
        if self._stuck is not None and self._stuck.tasks:
            tasks, labels = self._stuck
            shown = ", ".join(map(repr, tasks[:5])) + (", ..." if len(tasks) > 5 else "")
            missing = " or ".join("{" + ", ".join(map(repr, req)) + "}" for req in labels)
            return (f"laufband: worker {self.identifier} leaves workflow {self.name!r}:"
                    f" {len(tasks)} task(s) it could run ({shown}) wait for tasks that need"
                    f" labels {missing}, which no online worker has; start a worker with"
                    f" those labels=")
        if not self._summarises or self._rank not in (None, 0):
            return None
        counts = tx.counts(self._workflow.id)
        undone = {state: counts[state] for state in ("failed", "killed", "blocked")
                  if counts[state]}
        if not undone:
            return None
        what = ", ".join(f"{count} {state}" for state, count in undone.items())
        return (f"laufband: workflow {self.name!r} ends with {what} task(s) of"
                f" {sum(counts.values())}: see `laufband status --path {self.path}`, and"
                f" `laufband retry --failed -w {self.name} --path {self.path}` to run them again")

    def _reap(self, tx: Transaction) -> int:
        self._last_reap = time.monotonic()
        return self._detector.reap(tx, self._worker, self.max_killed_retries)

    def _sweep(self, tx: Transaction) -> int:
        """Now and then, when nothing is ready: return tasks left running by workers that
        are not online (none should be; a worker waiting on one would wait forever)."""
        assert self._workflow is not None
        now = time.monotonic()
        if now - self._last_sweep < self.heartbeat_timeout:
            return 0
        self._last_sweep = now
        return tx.return_orphans(self._workflow.id)

    def _check_registered(self, tx: Transaction) -> str:
        """Our worker record's state; a record that is gone means ``laufband reset``
        deleted our workflow while we ran: stop rather than write into what replaced it."""
        state = tx.worker_state(self._worker)
        if state is None:
            msg = (f"workflow {self.name!r} in {self.path} was reset while this worker ran"
                   " (laufband reset): this worker stops; start it again to run the workflow"
                   " anew")
            raise StateError(msg)
        return state

    def _finish(self, tx: Transaction) -> tuple[int, int, int]:
        """Record finished tasks, results and failures; return how many of each, to drop
        from memory once the transaction has committed (see ``_drop``)."""
        counts = (len(self._finished), len(self._chunks), len(self._failures))
        if self._workflow is None:
            return counts
        if self._check_registered(tx) != "online":
            # Taken for dead (a long stall): our tasks went back and may have run
            # elsewhere since; what we finished must not overwrite their results.
            self._evicted = True
            return counts
        wf = self._workflow.id
        for lo, hi, packed in self._chunks[: counts[1]]:
            tx.store_result_chunk(wf, lo, hi, packed)
        for seq, text in self._failures[: counts[2]]:  # before finish: not completed
            tx.fail(wf, self._worker, seq, text, self.max_failed_retries)
        if counts[0]:
            tx.finish(wf, self._worker, self._finished[: counts[0]])
        return counts

    def _drop(self, counts: tuple[int, int, int]) -> None:
        # The same list objects: the running batch appends to them.
        del self._finished[: counts[0]]
        del self._chunks[: counts[1]]
        del self._failures[: counts[2]]

    def _pack_outcomes(self) -> None:
        """Pack the recorded outcomes into a chunk; called before every transaction
        that finishes tasks, never under the lock (pickling may run user code)."""
        count = len(self._outcomes)
        if count:  # removed only once packed: an error here loses nothing
            self._chunks.append(self._pack(self._outcomes[:count]))
            del self._outcomes[:count]  # the same list: the loop body may hold it

    def _pack(self, outcomes: list[tuple[Any, ...]]) -> tuple[int, int, bytes]:
        seqs = [outcome[0] for outcome in outcomes]
        return min(seqs), max(seqs), self._dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL)

    def _record_failure(self, text: str, *outcome: Any) -> None:
        """Fail the current task without leaving the loop; keep its outcome (pmap's
        loop body appends the outcomes of tasks that succeed to ``_outcomes`` itself),
        stored in the transaction that fails the task."""
        assert self._current is not None
        self._outcomes.append((self._current, *outcome))
        self._failures.append((self._current, text))

    def _fail_current(self, text: str) -> None:
        """Fail the current task and stay in the loop; written at once, before the
        in-flight record counts the task's finished body as done."""
        assert self._current is not None
        self._failures.append((self._current, text))
        self._current = None  # failed: neither finished nor to hand back
        self._flush()

    def _flush(self) -> None:
        assert self._store is not None and self._workflow is not None
        self._pack_outcomes()
        with self._store.transaction() as tx:
            flushed = self._finish(tx)
            total, completed = tx.progress(self._workflow.id)
            stop = self._failed_for_good(tx)
        self._drop(flushed)
        self._show_progress(completed, total)
        if stop:
            raise RuntimeError(stop)

    def _show_progress(self, completed: int, total: int) -> None:
        self._progress = completed, total
        if self._bar is None and self._tqdm_kwargs.get("disable"):
            return  # no bar drawn: made only if asked for (tqdm's lock costs ~7 ms)
        bar = self.iterator
        if total != bar.total:
            bar.total = total
        if completed != bar.n:
            bar.update(completed - bar.n)

    def _abandon_current(self, error: BaseException | None = None) -> None:
        """The loop was left mid-task: fail it, or hand it back after Ctrl-C."""
        seq = self._current
        if seq is None or self._store is None or self._workflow is None:
            return
        interrupted = isinstance(error, KeyboardInterrupt) or self._interrupted == seq
        self._not_running()
        # The task stays ours (in _current) until the transaction commits: if a second
        # signal cuts it short, _stop() still hands the task back.
        with self._store.transaction() as tx:
            if interrupted:
                tx.release(self._workflow.id, self._worker, [seq])
            else:
                text = (f"{type(error).__name__}: {error}" if error is not None
                        else "the loop was left by break or an exception")
                tx.fail(self._workflow.id, self._worker, seq, text, self.max_failed_retries)
        self._current = None
        if error is None and not interrupted:
            _undescribed["latest"] = (
                self._store, self._workflow.id, seq, self._worker, self._consumer)

    def _describe_failure(self, text: str) -> None:
        latest = _undescribed.get("latest")
        if latest is not None and latest[3] == self._worker and latest[0] is self._store:
            _describe(_undescribed.pop("latest"), text)

    # -- start and stop -----------------------------------------------------------------

    def _start(self, claim: bool = False) -> list[int]:
        """Register the tasks and this worker; with ``claim``, also claim a first batch
        in the same transaction (one lock turn per starting worker, not two)."""
        if self._running:
            return []
        self._interrupted = None
        self._watch_interrupts()
        for other in list(_live):  # stops of this process that an interrupt cut short:
            if other._stopping:    # their tasks would wait for a heartbeat timeout
                with contextlib.suppress(StateError):
                    other._stop()
        warn_about_original_state(Path(os.curdir))
        self._store = Store(self.path, soft_lock=self._soft_lock, rank=self._rank)
        tasks = self._collect()
        batch: list[int] = []
        began = time.monotonic()
        with self._store.transaction() as tx:
            # Only the record holding our identifier matters now: reaping everyone
            # here would make 64 ranks starting at once each check 64 processes.
            self._detector.reap_identifier(tx, self.identifier, self.max_killed_retries)
            self._workflow = tx.open_workflow(self.name, keyed=self._keyed)
            self._scope = self._register(tx, tasks)
            self._worker = tx.register_worker(
                self.identifier, self._workflow.id, HOST, os.getpid(), process_token(),
                self._rank, self._label_list)
            self._workflow = tx.open_workflow(self.name, keyed=self._keyed)
            if claim:
                batch = self._claim(tx)
                self._batch = batch  # for _stop(), as in _next_batch
            stop = self._failed_for_good(tx)
            self._running = True  # from the commit on, _stop() hands the batch back
            _live.add(self)  # at exit, or at the next start, a stop cut short is finished
            self._offline = False
        # Dead workers are looked for when no task is left to claim, and every
        # heartbeat interval: not by every worker as it starts.
        self._last_reap = time.monotonic()
        self._sizer.observe_transaction(self._last_reap - began)
        if self._bar_closed:  # a new iteration after an earlier one: a new bar
            self._bar, self._bar_closed, self._progress = None, False, None
        self._in_flight = InFlight(self.path, self._worker, final=self._final_bodies)
        self._heartbeat = Heartbeat(self._store, self._worker, self.heartbeat_interval)
        self._heartbeat.start()
        self._show_progress(self._workflow.completed, self._workflow.total)
        if stop:  # failure_policy="stop" and a task failed before we started
            raise RuntimeError(stop)
        return batch

    def _stop(self) -> None:
        """Flush finished work, hand back every task still held, go offline. Idempotent.

        Nothing is forgotten before the transaction that hands it back commits: if a
        second Ctrl-C or SIGTERM cuts this short, the worker stays online holding its
        tasks, a later call (at exit) tries again, and if the process dies first the
        reapers return them. No task is left running on a worker that is offline.
        """
        if not self._running:
            return
        assert self._store is not None and self._workflow is not None
        self._stopping = True  # until done: a stop cut short is finished by the next start
        if self._heartbeat is not None:
            self._heartbeat.stop()
        # The whole batch: the tasks of it that finished are completed first, in the
        # same transaction, and release() leaves alone what is no longer running.
        held = list(self._batch)
        if self._current is not None:  # stopped without the loop body finishing
            held.append(self._current)
        self._not_running()
        error = self._pack_or_return(held)
        if held or self._finished or self._chunks or self._failures or not self._offline:
            self._hand_back(held)
        self._running = self._stopping = False
        self._batch, self._current = [], None
        if self._bar is not None:
            self._bar.close()
        self._bar_closed = True
        if self._in_flight is not None:
            self._in_flight.close()
        self._store.close()
        _live.discard(self)
        if error is not None:
            raise error

    def _not_running(self) -> None:
        """Tell reapers no loop body runs any more: if a second signal ends this process
        while it hands its tasks back, they go back to pending without counting a kill
        (the worker did not die *on* a task)."""
        if self._in_flight is not None:
            self._in_flight.settle(body_finished=self._current is None)

    def _hand_back(self, held: list[int]) -> None:
        """Record what finished, release ``held`` and go offline, in one transaction."""
        assert self._store is not None and self._workflow is not None
        with self._store.transaction() as tx:
            # Our number, unless registering it was rolled back (then it may be
            # another worker's now) or our workflow was reset: leave that alone.
            if tx.worker_identifier(self._worker) != self.identifier:
                self._drop((len(self._finished), len(self._chunks), len(self._failures)))
                return
            flushed = self._finish(tx)
            tx.release(self._workflow.id, self._worker, held)
            tx.set_offline(self._worker)
            total, completed = tx.progress(self._workflow.id)
        self._drop(flushed)
        self._show_progress(completed, total)

    def _pack_or_return(self, unstarted: list[int]) -> BaseException | None:
        """Pack the outcomes still in memory; if that fails (an interrupt, a full
        disk), their tasks go back to pending instead of completing without a result.
        Return the error, for _stop() to raise once the state is consistent."""
        try:
            self._pack_outcomes()
        except BaseException as error:  # noqa: BLE001 - raised again by _stop()
            lost = {outcome[0] for outcome in self._outcomes}
            self._finished[:] = [seq for seq in self._finished if seq not in lost]
            unstarted += sorted(lost)
            self._outcomes.clear()
            return error
        return None

    def _watch_interrupts(self) -> None:
        """Hand the interrupted task back on Ctrl-C and on SIGTERM (SLURM's time limit,
        which would otherwise end the process with no cleanup at all). Handlers the
        program installed itself are left alone."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, on_interrupt)
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, on_terminate)

    # -- what subclasses change ---------------------------------------------------------

    _keyed = True
    _summarises = True  # print a line about failed tasks at the end (pmap reports them)
    _final_bodies = True  # a finished loop body is all a task needs (pmap's need results)

    @property
    def _label_list(self) -> list[str]:
        return sorted(self.labels)

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

    def _register(self, tx: Transaction, tasks: list[Task]) -> Scope:
        """Register tasks; return which of the workflow's tasks this worker can run."""
        assert self._workflow is not None
        new = [NewTask(t.id, t.dependencies, tuple(t.requirements), t.max_parallel_workers,
                       t.info) for t in tasks]
        wanted = {t.key for t in new} | {d for t in new for d in t.dependencies}
        known = tx.task_numbers(self._workflow.id, wanted)
        numbers = tx.register_keyed(self._workflow, new, known)
        if any(numbers[dep] >= numbers[t.key] for t in new for dep in t.dependencies):
            # Only a dependency on a later (or the same) task can close a cycle.
            keys = {seq: key for key, seq in numbers.items()}
            check_cycles(tx.dependency_edges(self._workflow.id), keys.__getitem__, self.name)
        self._by_number = {numbers[t.id]: t for t in tasks}
        return self._keep_scope(tx, list(self._by_number), len(numbers))

    def _keep_scope(self, tx: Transaction, mine: list[int], total: int) -> Scope:
        """Remember our task numbers; restrict claims to them if the workflow has more."""
        self._mine = mine
        if total > len(mine):
            tx.restrict_to(mine)
            return Scope(restricted=True)
        return Scope()

    def _item_getter(self) -> Callable[[int], Any]:
        """Return a function mapping a task number to what the loop yields."""
        return self._by_number.__getitem__

    def _planned_total(self) -> int:
        if self._workflow is not None:
            return self._workflow.total
        return len(self._collect())

    def _plain_items(self) -> Iterable[Any]:
        return self._collect()

    def _plain_loop(self) -> Iterator[Any]:
        """``LAUFBAND_DISABLED=1``: a plain tqdm loop, nothing shared or stored."""
        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(self._plain_items(), **self._tqdm_kwargs)
        for item in self._bar:
            if self._closed:
                return
            yield item
        self._plain_done = True


def on_interrupt(signum: int, frame: Any) -> None:
    """laufband's SIGINT handler: the running tasks go back to pending, then
    KeyboardInterrupt (pmap's helpers call it from their own quiet handler)."""
    for worker in list(_live):
        worker._interrupted = worker._current
    SHIELD.deliver(KeyboardInterrupt())  # at once, or as the state lock is released


def on_terminate(signum: int, frame: Any) -> None:
    """laufband's SIGTERM handler: as for SIGINT, then SystemExit(143)."""
    for worker in list(_live):
        worker._interrupted = worker._current
    # Unwinds the loop: cleanup runs, exit status 143.
    SHIELD.deliver(SystemExit(128 + signum))


def _describe(failure: tuple[Store, int, int, int, Any], text: str) -> None:
    store, wf, seq, worker, _ = failure
    with store.transaction() as tx:
        tx.describe_failure(wf, seq, worker, text)
    store.close()


def _raised_in(code: Any) -> bool:
    """Whether the uncaught exception passed through ``code`` (the loop's frame)."""
    tb = getattr(sys, "last_traceback", None)
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


def _lock_kind(kind: str) -> str:
    if kind.lower() not in ("file", "soft"):
        msg = (f"lock must be 'file', 'soft' or a lock object such as filelock.FileLock,"
               f" got {kind!r}")
        raise ValueError(msg)
    return kind.lower()


def _failure_policy(policy: str) -> str:
    if policy not in ("continue", "stop"):
        msg = f"failure_policy must be 'continue' or 'stop', got {policy!r}"
        raise ValueError(msg)
    return policy


def _script_name() -> str:
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    return script if script and script not in ("-c", "-m") else "default"


def _default_identifier(rank: int | None) -> str:
    # The random part: containers that share a host name but not pids all run pid 1.
    rank_part = f"-rank{rank}" if rank is not None else ""
    return f"{HOST}-{os.getpid()}{rank_part}-{secrets.token_hex(3)}-{next(_identifiers)}"


@atexit.register
def _stop_all() -> None:
    """At exit, let no live worker leave its tasks running; name uncaught errors."""
    latest = _undescribed.pop("latest", None)
    error = getattr(sys, "last_value", None)
    if latest is not None and error is not None and _raised_in(latest[4]):
        _describe(latest, f"{type(error).__name__}: {error}")
    for worker in list(_live):
        # A hand-back that an interrupt cut short is tried once more; if it cannot
        # be done now, the tasks stay ours and reapers return them once we are gone.
        with contextlib.suppress(StateError):
            worker._stop()
