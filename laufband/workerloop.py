"""Run the worker loop every laufband worker runs.

The worker loop every laufband worker runs (:class:`~laufband.Graphband` is its
public face; Laufband and pmap's workers are Graphbands).

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

Subclasses say what the tasks are: ``_collect`` reads them (before the lock),
``_register`` stores them in the start transaction, ``_item_getter`` maps a task
number to what the loop yields, ``_planned_total`` and ``_plain_items`` serve the
progress bar and the disabled loop.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from laufband import interrupts
from laufband.batching import BatchSizer
from laufband.errors import StateError
from laufband.legacy import warn_about_original_state
from laufband.liveness import HOST, DeadWorkerDetector, process_token
from laufband.progress import ProgressBar
from laufband.reports import farewell, stopped_by_policy
from laufband.session import ResultSink, WorkerSession
from laufband.store import Scope, Store, Stuck, Transaction, Workflow

if TYPE_CHECKING:
    from laufband.settings import WorkerSettings

MAX_WAIT = 1.0  # longest sleep while waiting for work running elsewhere


class WorkerLoop:
    """Claim batches, yield their items, write what finished.

    Claims batches, yields their items, writes what finished; hands back what it
    holds when stopped. See the module docstring for the subclass hooks.
    """

    _keyed = True  # task ids are keys (Graphband) rather than positions

    def __init__(self, settings: WorkerSettings, tqdm_kwargs: dict[str, Any] | None,
                 sink: ResultSink | None, *, leave_when_idle: bool) -> None:
        """Make a worker loop with the given settings, progress bar and sink."""
        self._settings = settings
        self._sink = sink
        self._leave_when_idle = leave_when_idle
        kwargs = dict(tqdm_kwargs or {})
        kwargs.setdefault("disable", settings.rank not in (None, 0))
        self._progress_bar = ProgressBar(kwargs)
        self._session: WorkerSession | None = None  # while the loop runs
        self._stopping = False  # _stop() began and has not finished
        self._closed = False
        self._consumer: Any = None  # the code running the for-loop
        self._sizer = BatchSizer()
        self._detector = DeadWorkerDetector(settings.heartbeat_timeout, settings.state.path)
        self._stuck: Stuck | None = None  # what we could run waits for missing labels

    # -- the loop -----------------------------------------------------------------------

    def _loop(self) -> Iterator[Any]:
        """Claim, yield, write, until nothing is left this worker could run."""
        self._closed = False
        if self._session is not None:  # an earlier stop was cut short (an interrupt
            self._stop()               # caught and the loop run again, as in Jupyter)
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

    def _run_batch(self, batch: list[int]) -> Iterator[Any]:
        # The hot path: per task one yield, one list append, one store into the
        # in-flight record and one clock read. session.batch and session.current always
        # tell _stop() which claimed tasks are still ours; the record tells a reaper
        # which finished.
        session = self._live_session
        item = self._item_getter()
        finished = session.finished
        flush_every = self._sizer.flush_interval()
        started = last_flush = time.monotonic()
        # A batch about to end is flushed by the claim that follows it, not twice.
        expected_end = started + len(batch) * self._sizer.task_time
        record = session.in_flight
        record.begin(batch)
        mark = record.mark
        for position, seq in zip(itertools.count(1, 2), batch):
            # Current first, finished before not current: an interrupt between two
            # of these statements finds the task in _stop() either way.
            session.current = seq
            mark(position)  # batch[i] runs, and so the tasks before it finished
            yield item(seq)
            if self._closed:  # close() was called in the loop body
                return
            finished.append(seq)
            session.current = None
            now = time.monotonic()
            if now - last_flush >= flush_every and not 0 < expected_end - now <= flush_every / 2:
                mark(position + 1)
                self._flush()
                last_flush = now
                if session.evicted:  # taken for dead meanwhile: the rest is not ours
                    break
        record.settle(body_finished=True)
        session.batch = []
        self._sizer.observe_tasks(len(batch), time.monotonic() - started)

    def _next_batch(self) -> list[int]:
        """Finish what ran and claim the next batch in one transaction; wait if needed."""
        session = self._live_session
        wait = min(0.01, self._sizer.longest_wait(MAX_WAIT))
        while True:
            began = time.monotonic()
            session.pack()
            with session.store.transaction() as tx:
                written = self._write(tx)
                if began - session.last_reap >= self._settings.heartbeat_interval:
                    self._reap(tx)
                batch = self._claim(tx)
                if not batch and (self._reap(tx) or self._sweep(tx)):
                    batch = self._claim(tx)
                # Recorded before the commit: an interrupt from here on finds the
                # batch in _stop() and hands it back.
                session.batch = batch
                more = bool(batch) or self._may_get_work(tx)
                leaving = not batch and not (more and not self._leave_when_idle)
                goodbye = None
                if leaving:
                    tx.set_offline(session.number)  # the loop ends: no other transaction
                    goodbye = farewell(tx, session.wf, self._settings, self._stuck,
                                       summarise=self._sink is None)
                total, completed = tx.progress(session.wf)
                stop = stopped_by_policy(tx, session.wf, self._settings)
            session.offline = leaving  # once committed: a rollback leaves us online
            session.forget(written)
            self._sizer.observe_transaction(time.monotonic() - began)
            self._show_progress(completed, total)
            if stop:  # failure_policy="stop"; the batch just claimed is handed back
                raise stop
            if leaving and goodbye:
                tqdm.write(goodbye, file=sys.stderr)
            if batch or not more or self._leave_when_idle:
                return batch
            time.sleep(wait)
            wait = min(wait * 2, self._sizer.longest_wait(MAX_WAIT))

    def _claim(self, tx: Transaction) -> list[int]:
        session = self._live_session
        wf = session.wf
        if session.check_registered(tx) != "online":
            # Another worker took us for dead (e.g. a long pause): our claims were
            # returned to pending and our stale finishes ignored; carry on as new.
            self._register_worker(tx, wf)
            session.evicted = False
        counts = tx.counts(wf)
        total = sum(counts.values())
        mine = self._mine()
        if mine is not None and total > len(mine) and not session.scope.restricted:
            # Another worker registered tasks we have no data for: claim only ours.
            tx.restrict_to(mine)
            session.scope = Scope(restricted=True)
        expected = self._settings.expected_workers
        workers = max(tx.online_count(wf), expected)
        # Guided by what is left unclaimed: claimed tasks are spoken for, and finished
        # ones may not be flushed yet.
        size = self._sizer.next_size(counts["pending"], workers, expected > 1)
        return tx.claim(wf, session.number, size, self._label_list, session.scope)

    def _register_worker(self, tx: Transaction, wf: int) -> int:
        settings = self._settings
        return tx.register_worker(settings.identifier, wf, HOST, os.getpid(), process_token(),
                                  settings.rank, self._label_list)

    def _may_get_work(self, tx: Transaction) -> bool:
        """Tell whether a task this worker could run may still become ready.

        Whether a task this worker could run may still become ready: pending or
        running elsewhere, and not waiting for a task that needs labels no online
        worker has (``_stuck`` says which, for the line printed as it leaves).
        """
        session = self._live_session
        self._stuck = None
        tx.block_unreachable(session.wf)
        if not tx.may_get_work(session.wf, session.number, self._label_list, session.scope):
            return False
        self._stuck = tx.stuck_on_labels(session.wf, session.number, self._label_list,
                                         session.scope)
        return self._stuck is None

    def _reap(self, tx: Transaction) -> int:
        session = self._live_session
        session.last_reap = time.monotonic()
        return self._detector.reap(tx, session.number, self._settings.max_killed_retries)

    def _sweep(self, tx: Transaction) -> int:
        """Return tasks left running by workers that are not online.

        Now and then, when nothing is ready: return tasks left running by workers that
        are not online (none should be; a worker waiting on one would wait forever).
        """
        session = self._live_session
        now = time.monotonic()
        if now - session.last_sweep < self._settings.heartbeat_timeout:
            return 0
        session.last_sweep = now
        return tx.return_orphans(session.wf)

    def _write(self, tx: Transaction) -> Any:
        settings = self._settings
        return self._live_session.write(tx, settings.identifier, settings.max_failed_retries)

    def _fail_current(self, text: str) -> None:
        """Fail the current task and stay in the loop.

        Fail the current task and stay in the loop; written at once, before the
        in-flight record counts the task's finished body as done.
        """
        session = self._session
        if session is None or session.current is None:
            return  # failed already, by an earlier catch()
        session.failures.append((session.current, text))
        session.current = None  # failed: neither finished nor to hand back
        self._flush()

    def _flush(self) -> None:
        session = self._live_session
        session.pack()
        with session.store.transaction() as tx:
            written = self._write(tx)
            total, completed = tx.progress(session.wf)
            stop = stopped_by_policy(tx, session.wf, self._settings)
        session.forget(written)
        self._show_progress(completed, total)
        if stop:
            raise stop

    def _show_progress(self, completed: int, total: int) -> None:
        self._progress_bar.show(completed, total)

    def _abandon_current(self, error: BaseException | None = None) -> None:
        """Fail the task the loop was left in, or hand it back after Ctrl-C."""
        session = self._session
        if session is None or session.current is None:
            return
        seq = session.current
        interrupted = isinstance(error, KeyboardInterrupt) or session.interrupted == seq
        session.settle(body_finished=False)
        # The task stays ours (in current) until the transaction commits: if a second
        # signal cuts it short, _stop() still hands the task back.
        with session.store.transaction() as tx:
            if interrupted:
                tx.release(session.wf, session.number, [seq])
            else:
                text = (f"{type(error).__name__}: {error}" if error is not None
                        else "the loop was left by break or an exception")
                tx.fail(session.wf, session.number, seq, text,
                        self._settings.max_failed_retries)
        session.current = None
        if error is None and not interrupted:
            interrupts.remember_failure(interrupts.Failure(
                id(self), session.store, session.wf, seq, session.number, self._consumer))

    # -- start and stop -----------------------------------------------------------------

    @property
    def _live_session(self) -> WorkerSession:
        session = self._session
        if session is None:
            msg = "this worker is not running: iterate over it first"
            raise RuntimeError(msg)
        return session

    def _start(self, *, claim: bool = False) -> list[int]:
        """Register the tasks and this worker.

        Register the tasks and this worker; with ``claim``, also claim a first batch
        in the same transaction (one lock turn per starting worker, not two).
        """
        if self._session is not None:
            return []
        interrupts.watch_signals()
        interrupts.finish_cut_short_stops()
        settings = self._settings
        warn_about_original_state(Path(os.curdir))
        store = Store(settings.state.path, soft_lock=settings.soft_lock, rank=settings.rank)
        tasks = self._collect()
        batch: list[int] = []
        began = time.monotonic()
        with store.transaction() as tx:
            # Only the record holding our identifier matters now: reaping everyone
            # here would make 64 ranks starting at once each check 64 processes.
            self._detector.reap_identifier(tx, settings.identifier, settings.max_killed_retries)
            workflow = tx.open_workflow(settings.name, keyed=self._keyed)
            scope = self._register(tx, workflow, tasks)
            number = self._register_worker(tx, workflow.id)
            workflow = tx.open_workflow(settings.name, keyed=self._keyed)
            # From here on (the commit), _stop() hands back what the session holds.
            session = self._session = WorkerSession(store, workflow, number, scope, self._sink)
            interrupts.track(self, _HOOKS)
            if claim:
                session.batch = batch = self._claim(tx)
            stop = stopped_by_policy(tx, workflow.id, settings)
        # Dead workers are looked for when no task is left to claim, and every
        # heartbeat interval: not by every worker as it starts.
        session.last_reap = time.monotonic()
        self._sizer.observe_transaction(session.last_reap - began)
        self._progress_bar.renew()
        session.begin(settings.heartbeat_interval, final_bodies=self._sink is None)
        self._show_progress(workflow.completed, workflow.total)
        if stop:  # failure_policy="stop" and a task failed before we started
            raise stop
        return batch

    def _stop(self) -> None:
        """Write what finished, hand back every task still held, go offline. Idempotent.

        Nothing is forgotten before the transaction that hands it back commits: if a
        second Ctrl-C or SIGTERM cuts this short, the worker stays online holding its
        tasks, a later call (at exit) tries again, and if the process dies first the
        reapers return them. No task is left running on a worker that is offline.
        """
        session = self._session
        if session is None:
            return
        self._stopping = True  # until done: a stop cut short is finished by the next start
        session.stop_heartbeat()
        # The whole batch: the tasks of it that finished are completed first, in the
        # same transaction, and release() leaves alone what is no longer running.
        held = list(session.batch)
        if session.current is not None:  # stopped without the loop body finishing
            held.append(session.current)
        session.settle(body_finished=session.current is None)
        error = session.pack_or_return(held)
        if held or session.unwritten() or not session.offline:
            settings = self._settings
            progress = session.hand_back(held, settings.identifier, settings.max_failed_retries)
            if progress is not None:
                self._show_progress(*progress)
        self._session = None
        self._stopping = False
        self._progress_bar.close()
        session.close()
        interrupts.untrack(self)
        if error is not None:
            raise error

    def _on_signal(self) -> None:
        session = self._session
        if session is not None:
            session.interrupted = session.current

    def _stop_if(self, *, cut_short_only: bool) -> None:
        if self._stopping or not cut_short_only:
            self._stop()

    # -- what subclasses say ------------------------------------------------------------

    @property
    def _label_list(self) -> list[str]:
        return sorted(self._settings.labels)

    def _collect(self) -> list[Any]:
        """Read the tasks (before the state lock is taken: it may run user code)."""
        return []

    def _register(self, tx: Transaction, workflow: Workflow, tasks: list[Any]) -> Scope:
        """Store the tasks; return which of the workflow's tasks this worker can run."""
        raise NotImplementedError

    def _mine(self) -> list[int] | None:
        """Our task numbers, if the workflow may hold tasks we have no data for."""
        return None

    def _item_getter(self) -> Callable[[int], Any]:
        """Return a function mapping a task number to what the loop yields."""
        raise NotImplementedError

    def _planned_total(self) -> int:
        """Return the total the progress bar shows before the store is read."""
        raise NotImplementedError

    def _plain_items(self) -> Iterable[Any]:
        """Return what a disabled worker's plain loop goes through."""
        raise NotImplementedError


# The class's own methods, handed to interrupts as hooks (it calls them with the loop).
_HOOKS = interrupts.Hooks(on_signal=WorkerLoop._on_signal, stop=WorkerLoop._stop_if)  # noqa: SLF001
