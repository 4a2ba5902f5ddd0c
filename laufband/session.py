"""A worker session: what starting a worker loop builds and stopping it tears down.

The start transaction registers the worker and makes a :class:`WorkerSession` (its
store, workflow, worker number and scope); once that has committed, :meth:`begin`
starts the heartbeat and the in-flight record. Until :meth:`close`, the session
buffers what the loop finished and failed, and writes it (with a results sink's
outcomes, if any) in the next transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from laufband.errors import StateError
from laufband.inflight import InFlight
from laufband.liveness import Heartbeat
from laufband.outcomes import void_outcomes
from laufband.pipeline import Background

if TYPE_CHECKING:
    from laufband.batching import Pace
    from laufband.outdated import Outdated
    from laufband.store import FailureRecord, Scope, Store, Transaction, Workflow


class ResultSink(Protocol):
    """Store what loop bodies produce with the completion of their tasks.

    Stores what loop bodies produce with the completion of their tasks (pmap's
    results). The worker calls :meth:`pack` before every transaction that may finish
    tasks, outside the state lock (pickling may run user code), then :meth:`write`
    inside it, then :meth:`forget` once it has committed.
    """

    def pack(self) -> None:
        """Prepare what was recorded since the last call for writing."""

    def write(self, tx: Transaction, wf: int,
              fail: Callable[[FailureRecord], None]) -> object:
        """Write what :meth:`pack` prepared.

        Write what :meth:`pack` prepared; fail tasks whose outcome cannot be stored
        (before the worker completes them). Return a mark for :meth:`forget`.
        """

    def forget(self, mark: object) -> None:
        """Drop what the write that returned ``mark`` stored (it has committed)."""

    def drop_unpacked(self) -> set[int]:
        """Forget outcomes :meth:`pack` could not prepare.

        Forget outcomes :meth:`pack` could not prepare; return their tasks, which
        must not complete without them.
        """

    def unwritten(self) -> bool:
        """Whether anything recorded or packed waits for a write."""

    def discard(self) -> None:
        """Forget everything recorded and packed (the worker's record is gone)."""


class Unwritten(NamedTuple):
    """How much of the session's buffers a transaction wrote."""

    finished: int
    failures: int
    sink: object


class WorkerSession:
    """A running worker's hold on the state directory, from start to stop."""

    def __init__(self, store: Store, workflow: Workflow, number: int, scope: Scope,
                 sink: ResultSink | None, *, retry_delay: float = 0.0,
                 outdated: Outdated | None = None) -> None:
        """Hold worker ``number`` of ``workflow`` in ``store``, over ``scope``.

        ``retry_delay``: seconds before a failed task's first retry (doubling after).
        ``outdated``: the worker's fingerprints, if its tasks have any: a task whose
        stored fingerprint changed while it ran is reopened rather than completed.
        """
        self.store = store
        self.outdated = outdated
        self.retry_delay = retry_delay
        self.workflow = workflow
        self.number = number  # the worker's row in the store
        self.scope = scope
        self.sink = sink
        self.batch: list[int] = []  # claimed, handed back by a stop unless finished
        self.taken = 0  # batch[:taken] are in finished (or settled)
        self.current: int | None = None  # the task whose loop body runs (or last ran)
        self.settled: set[int] = set()  # tasks of the batch failed or handed back one by one
        self.next_batch: list[int] = []  # claimed ahead by a background transaction
        self.returning: list[int] = []  # being handed back by a background transaction
        # The running batch's unstarted tasks: the loop takes each one from here, the
        # overrun watch (heartbeat thread) takes the rest to hand back. A list
        # iterator's next() is atomic under the GIL: each task goes to one of them.
        self.unstarted: Iterator[int] = iter(())
        # Held by the loop as it makes a batch the running one, and by the overrun
        # watch as it takes the unstarted tasks and those claimed ahead.
        self.handoff = threading.Lock()
        self.pace: Pace | None = None  # the running batch's plan, for the overrun watch
        self.handing_back: list[int] = []  # being handed back by the overrun watch
        self.overran = False  # the watch found a task of the batch far past its plan
        self.interrupted: int | None = None  # the task a Ctrl-C or SIGTERM arrived during
        self.finished: list[int] = []  # bodies that ran, completed by the next write
        self.failures: list[FailureRecord] = []  # failed bodies, written next
        self.offline = False  # set offline by the transaction that found nothing left
        self.evicted = False  # another worker took us for dead; we found out writing
        self.last_reap = time.monotonic()
        self.last_sweep = -float("inf")
        self._in_flight: InFlight | None = None
        self._heartbeat: Heartbeat | None = None
        self.background: Background[Any] = Background(store)

    @property
    def wf(self) -> int:
        """Return the workflow's id."""
        return self.workflow.id

    def begin(self, heartbeat_interval: float, *, final_bodies: bool,
              watch: Callable[[], None] | None = None) -> None:
        """Start the in-flight record and the heartbeat (after the start committed)."""
        self._in_flight = InFlight(self.store.path, self.number, final=final_bodies)
        self._heartbeat = Heartbeat(self.store, self.number, heartbeat_interval, watch)
        self._heartbeat.start()

    @property
    def in_flight(self) -> InFlight:
        """The memory-mapped record of the batch running (see :mod:`laufband.inflight`)."""
        if self._in_flight is None:
            msg = "the worker session has not begun"
            raise RuntimeError(msg)
        return self._in_flight

    def start_batch(self, batch: list[int], *, was_next: bool = False) -> Iterator[int]:
        """Make ``batch`` the one the loop runs (none of it started); return its tasks.

        The loop runs the tasks the returned iterator yields: those the overrun watch
        takes from it are not run (see ``unstarted``). With ``was_next``, the batch
        is ``next_batch`` (which the watch may have emptied), and is not any more.
        """
        with self.handoff:
            self.batch, self.taken, self.current = batch, 0, None
            self.settled.clear()
            self.unstarted = iter(batch)
            if was_next:
                self.next_batch = []
            return self.unstarted

    def take_finished(self, done: int) -> None:
        """Count ``batch[:done]`` as finished (but the settled ones), to write next."""
        if done > self.taken:
            fresh = self.batch[self.taken:done]
            if self.settled:
                fresh = [seq for seq in fresh if seq not in self.settled]
            self.finished.extend(fresh)
            self.taken = done

    def take_finished_before_current(self) -> None:
        """Count the batch up to the current task as finished (its body did not)."""
        if self.current is not None and self.current in self.batch[self.taken:]:
            self.take_finished(self.batch.index(self.current, self.taken))

    def finish_current(self) -> None:
        """Count the batch up to and including the current task as finished."""
        if self.current is not None and self.current in self.batch[self.taken:]:
            self.take_finished(self.batch.index(self.current, self.taken) + 1)
        self.current = None

    def held(self) -> list[int]:
        """Return every task claimed and not finished: what a stop hands back."""
        return [seq for seq in (*self.batch[self.taken:], *self.next_batch, *self.returning,
                                *self.handing_back)
                if seq not in self.settled]

    def settle(self, *, body_finished: bool) -> None:
        """Tell reapers no loop body runs any more (see ``InFlight.settle``)."""
        if self._in_flight is not None:
            self._in_flight.settle(body_finished=body_finished)

    def pack(self) -> None:
        """Prepare the sink's outcomes, outside the lock, before a writing transaction."""
        if self.sink is not None:
            self.sink.pack()

    def check_registered(self, tx: Transaction) -> str:
        """Return our worker record's state.

        Our worker record's state; a record that is gone means ``laufband reset``
        deleted our workflow while we ran: stop rather than write into what replaced it.
        """
        state = tx.worker_state(self.number)
        if state is None:
            msg = (f"workflow {self.workflow.name!r} in {self.store.path} was reset while"
                   " this worker ran (laufband reset): this worker stops; start it again to"
                   " run the workflow anew")
            raise StateError(msg, path=self.store.path)
        return state

    def unwritten_counts(self) -> tuple[int, int]:
        """Return how many finished tasks and failures wait (a write's ``upto``)."""
        return len(self.finished), len(self.failures)

    def write(self, tx: Transaction, identifier: str, max_failed_retries: int,
              upto: tuple[int, int] | None = None) -> Unwritten:
        """Record finished tasks, outcomes and failures.

        Record finished tasks, outcomes and failures (the first ``upto`` of each, as
        counted when the sink was packed); return how much, for :meth:`forget` once
        the transaction has committed. A finished task whose fingerprint another
        worker changed meanwhile goes back to pending instead, its outcome voided.
        """
        finished, failures = self.unwritten_counts() if upto is None else upto
        written = Unwritten(finished, failures, None)
        if self.check_registered(tx) != "online":
            # Taken for dead (a long stall): our tasks went back and may have run
            # elsewhere since; what we finished must not overwrite their results.
            self.evicted = True
            return written
        wf, me = self.wf, self.number

        def fail(failure: FailureRecord) -> None:
            tx.fail(wf, me, failure, max_failed_retries, self.retry_delay)

        done = self.finished[: written.finished]
        changed = self.outdated.changed(tx, wf, done) \
            if self.outdated is not None and done else []
        if self.sink is not None:
            written = written._replace(sink=self.sink.write(tx, wf, fail))
        for failure in self.failures[: written.failures]:  # before finish: not completed
            fail(failure)
        if changed:  # run with inputs that are not the newest: not completed
            tx.reopen_changed(wf, me, changed)
            if self.sink is not None:
                void_outcomes(tx, wf, changed)
            reopened = set(changed)
            done = [seq for seq in done if seq not in reopened]
        if done:
            tx.finish(wf, me, done)
        return written

    def forget(self, written: Unwritten) -> None:
        """Drop what a committed transaction wrote (the running batch appends more)."""
        del self.finished[: written.finished]
        del self.failures[: written.failures]
        if self.sink is not None and written.sink is not None:
            self.sink.forget(written.sink)

    def forget_all(self) -> None:
        """Drop everything unwritten: our record is gone or another worker's now."""
        self.finished.clear()
        self.failures.clear()
        if self.sink is not None:
            self.sink.discard()

    def unwritten(self) -> bool:
        """Whether finished tasks, failures or outcomes wait for a write."""
        return bool(self.finished or self.failures
                    or (self.sink is not None and self.sink.unwritten()))

    def pack_or_return(self, unstarted: list[int]) -> BaseException | None:
        """Pack the sink's outcomes, or return their tasks to pending.

        Pack the sink's outcomes; if that fails (an interrupt, a full disk), their
        tasks go back to pending (added to ``unstarted``) instead of completing without
        a result. Return the error, to raise once the state is consistent.
        """
        try:
            self.pack()
        except BaseException as error:  # noqa: BLE001 - returned, raised by the caller
            lost = self.sink.drop_unpacked() if self.sink is not None else set()
            self.finished[:] = [seq for seq in self.finished if seq not in lost]
            unstarted += sorted(lost)
            return error
        return None

    def hand_back(self, held: list[int], identifier: str,
                  max_failed_retries: int) -> tuple[int, int] | None:
        """Record what finished, release ``held`` and go offline.

        Record what finished, release ``held`` and go offline, in one transaction;
        return the workflow's (completed, total) then.
        """
        with self.store.transaction() as tx:
            # Our number, unless registering it was rolled back (then it may be
            # another worker's now) or our workflow was reset: leave that alone.
            if tx.worker_identifier(self.number) != identifier:
                self.forget_all()
                return None
            written = self.write(tx, identifier, max_failed_retries)
            tx.release(self.wf, self.number, held)
            tx.release_running(self.wf, self.number)  # nothing is left running on us
            tx.set_offline(self.number)
            total, completed = tx.progress(self.wf)
        self.forget(written)
        return completed, total

    def silent_for(self) -> float:
        """Seconds since our heartbeat last committed (since we began, before the first)."""
        beat = self._heartbeat.last_beat if self._heartbeat is not None else time.monotonic()
        return time.monotonic() - beat

    def stop_heartbeat(self) -> None:
        """Stop beating (first thing when the worker stops)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def close(self) -> None:
        """Stop the heartbeat and background thread, remove the in-flight record, close."""
        self.stop_heartbeat()
        self.background.close()
        if self._in_flight is not None:
            self._in_flight.close()
        self.store.close()
