"""Run the worker loop every laufband worker runs.

The worker loop every laufband worker runs (:class:`~laufband.Graphband` is its
public face; Laufband and pmap's workers are Graphbands).

::

    register tasks + worker ──> claim a batch ──> yield task ──> (loop body runs,
          (one transaction)        ^    │            │            no lock held)
                                   │    │ nothing    └── every ~20 ms, between tasks:
        claimed ahead in the ──────┘    │ claimed        _checkpoint hands store work
        background (pipeline.py)        v                to the background thread
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
from typing import TYPE_CHECKING, Any, NamedTuple

from tqdm import tqdm

from laufband import interrupts
from laufband.batching import CHECK_EVERY, BatchSizer, Pace
from laufband.errors import StateError
from laufband.failuretext import failure_record
from laufband.inflight import CAPACITY
from laufband.legacy import warn_about_original_state
from laufband.liveness import HOST, DeadWorkerDetector, process_token
from laufband.overrun import OverrunWatch
from laufband.progress import ProgressBar
from laufband.reports import farewell, stopped_by_policy
from laufband.saving import SavedResults, read_saved
from laufband.session import ResultSink, WorkerSession
from laufband.store import Scope, Store, Stuck, Transaction, Workflow
from laufband.timeouts import TimeoutWatch, watches

if TYPE_CHECKING:
    from laufband.outdated import Outdated
    from laufband.settings import WorkerSettings

MAX_WAIT = 1.0  # longest sleep while waiting for work running elsewhere
IDLE_REAP = 1.0  # seconds: how often workers waiting for work look for dead ones


class Turn(NamedTuple):
    """What a background transaction did (taken in by the loop once it committed)."""

    written: Any
    released: bool
    total: int
    completed: int
    stop: RuntimeError | None
    seconds: float
    ahead: list[int]  # session.next_batch when the transaction began


class WorkerLoop:
    """Claim batches, yield their items, write what finished.

    Claims batches, yields their items, writes what finished; hands back what it
    holds when stopped. See the module docstring for the subclass hooks.
    """

    _keyed = True  # task ids are keys (Graphband) rather than positions

    def __init__(self, settings: WorkerSettings, tqdm_kwargs: dict[str, Any] | None,
                 sink: ResultSink | None) -> None:
        """Make a worker loop with the given settings, progress bar and sink."""
        self._settings = settings
        self._sink = sink
        kwargs = dict(tqdm_kwargs or {})
        kwargs.setdefault("disable", settings.rank not in (None, 0))
        self._progress_bar = ProgressBar(kwargs)
        self._session: WorkerSession | None = None  # while the loop runs
        self._stopping = False  # _stop() began and has not finished
        self._closed = False
        self._alert = False  # close() was called, or a task ran past its timeout
        self._timeouts: TimeoutWatch | None = None  # while a loop with timeouts runs
        self._consumer: Any = None  # the code running the for-loop
        self._sizer = BatchSizer()
        self._detector = DeadWorkerDetector(settings.heartbeat_timeout, settings.state.path)
        self._saved: SavedResults | None = None  # what loop bodies save, while running
        self._stuck: Stuck | None = None  # what we could run waits for missing labels
        self._unclaimed = 1  # tasks left unclaimed, as the latest claim saw them
        # Tasks with priorities: claim one at a time, and none ahead, so that every
        # claim takes the highest-priority task ready then (a batch would hold lower
        # ones while a higher one waits in another worker's batch).
        self._one_at_a_time = False
        # The tasks' fingerprints, if they have any (set by _register): tasks another
        # worker registered anew are left to it (see laufband.outdated).
        self._outdated: Outdated | None = None

    # -- the loop -----------------------------------------------------------------------

    def _loop(self) -> Iterator[Any]:  # noqa: PLR0912 - the hot path stays inline
        """Claim, yield, write, until nothing is left this worker could run."""
        self._closed = self._alert = False
        if self._session is not None:  # an earlier stop was cut short (an interrupt
            self._stop()               # caught and the loop run again, as in Jupyter)
        try:
            batch = self._start(claim=True)
            session = self._live_session
            clock = time.monotonic
            while not self._closed:
                batch = batch or self._next_batch()
                if not batch:
                    return
                # The hot path, inline (no generator in between): per task one yield,
                # two stores (session.current, the in-flight record) and a clock read (two
                # more with timeouts).
                # session.batch, .taken and .current always tell _stop() which claimed
                # tasks are still ours; the record tells a reaper which finished.
                # Writing and claiming happen in the background (_checkpoint).
                tasks, pace, base, mark, item = self._begin_batch(batch)
                check_at = pace.first_check()
                position = base
                timeouts = self._timeouts  # set only while a task has a timeout
                for position, seq in zip(itertools.count(base + 1, 2), tasks):
                    session.current = seq
                    mark(position)  # batch[i] runs, and so the tasks before it finished
                    if timeouts is None:
                        yield item(seq)
                    else:  # the body's time, should the heartbeat thread not run (GIL)
                        began = clock()
                        yield item(seq)
                        timeouts.ran(seq, clock() - began)
                    if self._alert:  # close() was called in the loop body, or a task
                        if self._closed:  # ran past its timeout
                            return
                        self._take_alert(seq)
                    if clock() >= check_at:
                        session.current = None
                        mark(position + 1)
                        if not self._checkpoint(pace, (position + 1 - base) // 2):
                            break  # the rest went back, or is not ours any more
                        check_at = clock() + CHECK_EVERY
                self._end_batch(pace, (position + 1 - base) // 2)
                batch = self._claimed_ahead()
        except GeneratorExit:
            # Python closes the loop as it drops it (break, or an exception such as a
            # Ctrl-C in the body on its way out), where an exception could only be
            # printed as "Exception ignored": a second Ctrl-C meanwhile is part of the
            # first (as is a second SIGTERM's SystemExit). A hand-back it cut short is
            # done by _stop(), or at exit.
            with contextlib.suppress(KeyboardInterrupt, SystemExit):
                self._abandon_current()
            raise
        except BaseException as error:
            with contextlib.suppress(StateError):  # the original error matters more
                self._abandon_current(error)
            raise
        finally:
            self._stop_leaving(sys.exc_info()[1])

    def _stop_leaving(self, leaving: BaseException | None) -> None:
        """Stop as the loop ends; the exception ``leaving`` it matters more than the stop's.

        Under any, a store error of the stop is dropped; under GeneratorExit (Python
        closing the loop) a second Ctrl-C or SIGTERM too. A stop cut short by either is
        finished by the next start, or at exit.
        """
        if leaving is None:
            self._stop()
            return
        quiet = (StateError, KeyboardInterrupt, SystemExit) \
            if isinstance(leaving, GeneratorExit) else (StateError,)
        with contextlib.suppress(*quiet):
            self._stop()

    def _begin_batch(self, batch: list[int]) -> tuple[Iterator[int], Pace, int,
                                                       Callable[[int], None],
                                                       Callable[[int], Any]]:
        """Make ``batch`` the running one; return its tasks, pace, record base, marker, items.

        The loop runs the tasks the returned iterator yields (the overrun watch may
        take the rest).
        """
        session = self._live_session
        tasks = session.start_batch(batch, was_next=True)
        if len(session.finished) + len(batch) > CAPACITY:  # more than the record holds
            self._settle_background()
            self._flush()
        record = session.in_flight
        # Finished tasks not written yet stay in the record, before the batch.
        base = 2 * record.begin(batch, session.finished)
        pace = session.pace = Pace(self._sizer, len(batch), time.monotonic())
        if session.background.idle and self._unclaimed > 0 and len(batch) > 1 \
                and pace.ends_soon(0):
            # A short batch: claim the next one at once. Not behind a single task: one
            # runs long when tasks got slow (heterogeneous work), and the batch claimed
            # would wait through it while idle workers might run it.
            self._submit(claim=True)
        return tasks, pace, base, record.mark, self._item_getter()

    def _end_batch(self, pace: Pace, done: int) -> None:
        """Count the batch's first ``done`` tasks finished; the rest went back or was lost."""
        session = self._live_session
        session.current = None
        record = session.in_flight
        record.settle(body_finished=True)
        session.take_finished(done)
        if session.settled:  # failed tasks are not finished ones, should we die now
            record.begin([], session.finished)
        session.start_batch([])
        self._sizer.observe_tasks(done, time.monotonic() - pace.started)

    def _checkpoint(self, pace: Pace, done: int) -> bool:
        """Between two tasks: hand the store work to the background; False to end the batch.

        Collects a background transaction that ended; starts one that writes what
        finished (every ``flush_every``), claims the next batch ahead (as this one
        ends soon), or hands back the unstarted rest of a batch far behind its plan.
        """
        session = self._live_session
        # First: what ran is finished whatever comes next (a stop raised below hands
        # back only the rest).
        session.take_finished(done)
        background = session.background
        if background.ready and not self._apply(background.collect()):
            return False  # taken for dead meanwhile: the rest is not ours
        if self._paused_long():  # we may have been taken for dead: find out first
            self._settle_background()
            return self._flush()
        if not background.idle:
            return True
        now = time.monotonic()
        if pace.overran(done, now):
            with session.handoff:  # not what the overrun watch handed back already
                session.returning = session.batch[done:]
                del session.batch[done:]
            self._submit(claim=False)
            return False
        # Not after a failure in this batch: the claim might take the failed task again
        # while the in-flight record still counts it among the finished.
        # Nor when the latest claim left nothing unclaimed: this batch ends with the
        # transaction that finds out whether work may still come (one, not two).
        # Nor with priorities: the next task is claimed once this one ended.
        claim = (not session.next_batch and not session.settled and self._unclaimed > 0
                 and not self._one_at_a_time and pace.ends_soon(done))
        if claim or pace.flush_due(now, done):
            pace.last_flush = now
            self._submit(claim=claim)
        return True

    def _submit(self, *, claim: bool) -> None:
        """Start a background transaction: write what finished; release; claim ahead."""
        session = self._live_session
        session.pack()  # here, not in the thread: pickling may run user code
        upto = session.unwritten_counts()
        returning = list(session.returning)
        ahead = session.next_batch
        # The task the body runs next (as the batch goes on), for `laufband status`.
        running = session.batch[session.taken] if session.taken < len(session.batch) else None
        session.background.submit(
            lambda: self._turn(upto, returning, ahead, claim=claim, running=running))

    def _turn(self, upto: tuple[int, int], returning: list[int], ahead: list[int], *,
              claim: bool, running: int | None) -> Turn:
        """Run one transaction in the background thread (see ``_submit``)."""
        session = self._live_session
        began = time.monotonic()
        try:
            with session.store.transaction() as tx:
                settings = self._settings
                written = session.write(tx, settings.identifier, settings.max_failed_retries,
                                        upto)
                tx.release(session.wf, session.number, returning)
                self._reap_if_due(tx, settings.heartbeat_interval)
                if claim:
                    # Recorded before the commit: _stop() hands it back from then on.
                    session.next_batch = self._claim(tx)
                if running is None:  # the batch claimed ahead runs next (the overrun
                    # watch may empty it meanwhile: no index)
                    running = next(iter(session.next_batch), None)
                tx.set_current(session.number, running)
                total, completed = tx.progress(session.wf)
                stop = stopped_by_policy(tx, session.wf, settings)
        except BaseException:
            if claim:
                session.next_batch = ahead  # rolled back: not claimed after all
            raise
        return Turn(written, bool(returning), total, completed, stop,
                    time.monotonic() - began, ahead)

    def _apply(self, turn: Turn, *, raise_stop: bool = True) -> bool:
        """Take in what a background transaction did, once it committed.

        Return False if it found us taken for dead (see ``_taken_for_dead``).
        """
        session = self._live_session
        session.forget(turn.written)
        if turn.released:
            session.returning = []
        self._sizer.observe_transaction(turn.seconds)
        self._show_progress(turn.completed, turn.total)
        if turn.stop is not None and raise_stop:
            raise turn.stop
        return not self._taken_for_dead(turn.ahead)

    def _taken_for_dead(self, ahead: list[int]) -> bool:
        """Whether a write found us taken for dead; then drop what we had not written.

        Another worker returned our tasks (a long pause) and they may have run since:
        what we finished or failed before must never be written over their outcome,
        nor the batch claimed ahead before (``ahead``) run. Tasks claimed by the
        transaction that found out are ours (it registered us anew).
        """
        session = self._live_session
        if not session.evicted:
            return False
        if session.next_batch is ahead:
            session.next_batch = []
        session.forget_all()
        session.start_batch([])  # none of the batch is ours, finished or not
        session.in_flight.begin([])  # nor for a reaper, should we die now
        session.evicted = False
        return True

    def _settle_background(self, *, raise_stop: bool = True) -> None:
        """Wait for the background transaction, if any, and take it in."""
        background = self._live_session.background
        if not background.idle:
            self._apply(background.collect(), raise_stop=raise_stop)

    def _claimed_ahead(self) -> list[int]:
        """Return the batch claimed in the background ([]: claim now, or nothing left).

        The list is ``next_batch`` itself: should the overrun watch take its tasks
        before the batch starts, it finds the list emptied.
        """
        session = self._live_session
        self._settle_background()
        if session.next_batch and self._paused_long() and not self._flush():
            return []  # taken for dead while it waited: it was returned
        with session.handoff:  # the overrun watch may empty it, but not meanwhile
            ahead = session.next_batch
            overran, session.overran = session.overran, False
            if overran and len(ahead) > 1:
                # Claimed while a task ran far past the plan: the rest may be as slow,
                # and is better with idle workers. Keep one task, hand back the others.
                session.returning = ahead[1:]
                session.next_batch = ahead = ahead[:1]
        if session.returning:
            self._submit(claim=False)
        return ahead

    def _paused_long(self) -> bool:
        """Whether our heartbeat was silent long enough that we may be taken for dead.

        (A frozen process, a suspended laptop.) Then the loop writes before it runs
        anything it claimed: the write finds out.
        """
        return self._live_session.silent_for() >= self._settings.heartbeat_timeout / 2

    def _next_batch(self) -> list[int]:
        """Finish what ran and claim the next batch in one transaction; wait if needed."""
        session = self._live_session
        self._settle_background()
        wait = min(0.01, self._sizer.longest_wait(MAX_WAIT))
        while True:
            began = time.monotonic()
            ahead = session.next_batch
            session.pack()
            with session.store.transaction() as tx:
                written = self._write(tx)
                self._reap_if_due(tx, self._settings.heartbeat_interval)
                batch = self._claim(tx)
                if not batch and (self._reap_if_due(tx, IDLE_REAP) or self._sweep(tx)):
                    batch = self._claim(tx)
                # Holding nothing now, we must have nothing running: should a claim have
                # slipped out of our hands (an interrupt at the wrong moment), its tasks
                # are claimable again rather than stuck on a worker about to leave.
                if not batch and tx.release_running(session.wf, session.number):
                    batch = self._claim(tx)
                # Recorded before the commit: an interrupt from here on finds the
                # batch in _stop() and hands it back.
                session.next_batch = batch
                tx.set_current(session.number, batch[0] if batch else None)
                more = bool(batch) or self._may_get_work(tx)
                leaving = not batch and not more
                goodbye = None
                if leaving:
                    tx.set_offline(session.number)  # the loop ends: no other transaction
                    goodbye = farewell(tx, session.wf, self._settings, self._stuck,
                                       summarise=self._sink is None)
                total, completed = tx.progress(session.wf)
                stop = stopped_by_policy(tx, session.wf, self._settings)
            session.offline = leaving  # once committed: a rollback leaves us online
            session.forget(written)
            self._taken_for_dead(ahead)
            self._sizer.observe_transaction(time.monotonic() - began)
            self._show_progress(completed, total)
            if stop:  # failure_policy="stop"; the batch just claimed is handed back
                raise stop
            if leaving and goodbye:
                tqdm.write(goodbye, file=sys.stderr)
            if batch or not more:
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
            session.evicted = True
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
        size = 1 if self._one_at_a_time else \
            self._sizer.next_size(counts["pending"], workers, expected > 1)
        claimed = tx.claim(wf, session.number, size, self._label_list, session.scope)
        if self._outdated is not None and claimed:
            claimed = self._leave_outdated(tx, self._outdated, claimed, size)
        self._unclaimed = counts["pending"] - len(claimed)
        return claimed

    def _leave_outdated(self, tx: Transaction, outdated: Outdated, claimed: list[int],
                        size: int) -> list[int]:
        """Hand back claimed tasks whose fingerprint another worker registered anew.

        Last registration wins: that worker has the newer inputs. They, and the
        tasks depending on them, are left to it; claims take others in their place.
        """
        session = self._live_session
        while changed := outdated.changed(tx, session.wf, claimed):
            outdated.leave(tx, session.wf, changed, self._mine() or [])
            session.scope = Scope(restricted=True)
            tx.release(session.wf, session.number,
                       [seq for seq in claimed if seq in outdated.left])
            claimed = [seq for seq in claimed if seq not in outdated.left]
            if len(claimed) < size:  # each turn leaves more: the loop ends
                claimed += tx.claim(session.wf, session.number, size - len(claimed),
                                    self._label_list, session.scope)
        return claimed

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

    def _reap_if_due(self, tx: Transaction, interval: float) -> int:
        """Reap dead workers if we did not for ``interval`` and no worker did for a while.

        At most once per ``interval`` per worker, and once per ``IDLE_REAP`` among all
        workers (``take_reap_turn``): liveness checks stay off the task path however
        many workers there are.
        """
        session = self._live_session
        now = time.monotonic()
        if now - session.last_reap < interval:
            return 0
        session.last_reap = now
        if not tx.take_reap_turn(min(interval, IDLE_REAP)):
            return 0
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

    def _fail_current(self, error: BaseException) -> None:
        """Fail the current task and stay in the loop.

        Fail the current task and stay in the loop; written at once, before the
        in-flight record counts the task's finished body as done.
        """
        session = self._session
        seq = None if session is None else session.current
        if session is None or seq is None or seq in session.settled:
            return  # failed already, by an earlier catch()
        self._drop_saved(seq)
        self._settle_background()  # one transaction at a time
        session.failures.append(failure_record(seq, error, self._described_item(seq)))
        session.settled.add(seq)  # failed: neither finished nor handed back
        self._flush()

    def _raise_alert(self) -> None:
        """Make the loop look at its task once the body returns (a timeout watch's hook)."""
        self._alert = True

    def _take_alert(self, seq: int) -> None:
        """After task ``seq``'s body: fail it if it ran past its timeout (not failed yet)."""
        self._alert = False
        timeouts, session = self._timeouts, self._session
        error = None if timeouts is None else timeouts.take_overdue(seq)
        if error is not None and session is not None and seq not in session.settled:
            self._on_timed_out(seq, error)  # caught in the body, or not interruptible

    def _on_timed_out(self, seq: int, error: BaseException) -> None:
        """Fail task ``seq``, whose body returned after it ran past its timeout."""
        self._fail_current(error)

    def _save(self, value: Any) -> None:
        """Keep ``value`` as the current task's result, written with its completion."""
        session, saved = self._session, self._saved
        if session is None or saved is None:
            msg = "worker.save() belongs inside the body of the loop over this worker"
            raise RuntimeError(msg)
        saved.save(session, value)

    def _drop_saved(self, seq: int) -> None:
        if self._saved is not None:
            self._saved.drop(seq)

    def _read_saved(self, task: int | str) -> Any:
        """Return the result a task (number, or key) saved; LookupError naming its state."""
        session = self._session
        if session is not None:
            self._settle_background()  # one transaction at a time
            return read_saved(session.store, self._settings.state, session.wf, task)
        store = Store(self._settings.state, soft_lock=self._settings.soft_lock)
        try:
            return read_saved(store, self._settings.state, self._settings.name, task)
        finally:
            store.close()

    def _flush(self) -> bool:
        """Write what finished now; return False if that found us taken for dead."""
        session = self._live_session
        ahead = session.next_batch
        session.pack()
        with session.store.transaction() as tx:
            written = self._write(tx)
            total, completed = tx.progress(session.wf)
            stop = stopped_by_policy(tx, session.wf, self._settings)
        session.forget(written)
        evicted = self._taken_for_dead(ahead)
        self._show_progress(completed, total)
        if stop:
            raise stop
        return not evicted

    def _show_progress(self, completed: int, total: int) -> None:
        self._progress_bar.show(completed, total)

    def _abandon_current(self, error: BaseException | None = None) -> None:
        """Fail the task the loop was left in, or hand it back after Ctrl-C."""
        session = self._session
        seq = None if session is None else session.current
        if session is None or seq is None or seq in session.settled:
            return
        self._drop_saved(seq)  # it did not complete: what it saved is not its result
        self._settle_background(raise_stop=False)
        interrupted = isinstance(error, KeyboardInterrupt) or session.interrupted == seq
        session.settle(body_finished=False)
        # Described before the lock: str() and repr() of the user's objects run user code.
        text = None if error is not None else "the loop was left by break or an exception"
        record = None if interrupted else failure_record(seq, error,
                                                         self._described_item(seq), text)
        # The task stays ours (in current) until the transaction commits: if a second
        # signal cuts it short, _stop() still hands the task back.
        with session.store.transaction() as tx:
            if record is None:
                tx.release(session.wf, session.number, [seq])
            else:
                tx.fail(session.wf, session.number, record,
                        self._settings.max_failed_retries, self._settings.retry_delay)
        session.settled.add(seq)
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
            # A loop's own sink keeps what its body saves (worker.save); pmap brings one.
            saved = SavedResults(settings.state, workflow.id, self._described_item) \
                if self._sink is None else None
            session = self._session = WorkerSession(store, workflow, number, scope,
                                                    self._sink or saved,
                                                    retry_delay=settings.retry_delay,
                                                    outdated=self._outdated)
            self._saved = saved
            interrupts.track(self, _HOOKS)
            if claim:
                session.next_batch = batch = self._claim(tx)
                tx.set_current(number, batch[0] if batch else None)
            stop = stopped_by_policy(tx, workflow.id, settings)
        # Dead workers are looked for when no task is left to claim (the first time
        # at once: a short run still reaps, at most one worker per IDLE_REAP among all,
        # see take_reap_turn), and every heartbeat interval: not by every worker as it
        # starts.
        started = time.monotonic()
        session.last_reap = started - IDLE_REAP
        self._sizer.observe_transaction(started - began)
        self._progress_bar.renew()
        watch: Callable[[], None] = OverrunWatch(session, settings.heartbeat_timeout)
        limit_of = self._limit_of()
        if limit_of is not None:
            self._timeouts = TimeoutWatch(session, limit_of, self._timeout_name,
                                          self._raise_alert, self._body_code())
            watch = watches(watch, self._timeouts)
        session.begin(settings.heartbeat_interval, final_bodies=self._sink is None,
                      watch=watch)
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
        if self._timeouts is not None:
            self._timeouts.close()
            self._timeouts = None
        with contextlib.suppress(StateError):  # rolled back: what it held is still held
            self._settle_background(raise_stop=False)
        # What finished is completed first, in the same transaction, and release()
        # leaves alone what is no longer running.
        session.take_finished_before_current()
        held = session.held()
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

    def _limit_of(self) -> Callable[[int], float | None] | None:
        """Return each task's timeout in seconds (None: no task of this loop has one)."""
        default = self._settings.timeout
        return None if default is None else lambda seq: default

    def _timeout_name(self, seq: int) -> str:
        """Name task ``seq`` in its timeout error."""
        return f"task {seq}"

    def _body_code(self) -> Any:
        """Return the code object that runs the loop body (a timeout interrupts it there)."""
        return self._consumer

    def _described_item(self, seq: int) -> Any:
        """Return the item ``laufband failures`` shows beside a failed task (None: none)."""
        return None

    def _planned_total(self) -> int:
        """Return the total the progress bar shows before the store is read."""
        raise NotImplementedError

    def _plain_items(self) -> Iterable[Any]:
        """Return what a disabled worker's plain loop goes through."""
        raise NotImplementedError


# The class's own methods, handed to interrupts as hooks (it calls them with the loop).
_HOOKS = interrupts.Hooks(on_signal=WorkerLoop._on_signal, stop=WorkerLoop._stop_if)  # noqa: SLF001
