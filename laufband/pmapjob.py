"""Run pmap's worker side.

pmap's worker side: the job every worker of a call runs (picklable, for spawned
helpers) and the Graphband that yields the job's (task number, item) pairs.
"""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from laufband import interrupts
from laufband.errors import StateError
from laufband.graphband import Graphband
from laufband.options import resolve
from laufband.outcomes import OutcomeSink
from laufband.store import Scope, Transaction, Workflow

if TYPE_CHECKING:
    from laufband.stuck import DeadlineSlot


class Plan(NamedTuple):
    """Hold what one call needs from its workflow.

    What one call needs from its workflow: the task number of each of its keys,
    the scope holding them, and the numbers not completed when it registered.
    """

    wf: int
    numbers: dict[Any, int]
    scope: Scope
    todo: dict[int, str]
    completed: int  # the workflow's completed tasks then (for the progress bar)


class Job:
    """Everything a worker needs: picklable with cloudpickle when ``func`` is.

    ``items[i]`` is the item of task ``seqs[i]``; the numbers are either one solid
    range or, when ``restricted``, the only tasks this job may claim.
    """

    def __init__(self, func: Callable[[Any], Any], plan: Plan, seqs: list[int],
                 items: list[Any], *, path: str, name: str, progress: bool,
                 options: dict[str, Any]) -> None:
        """Make the job of one pmap call."""
        self.func, self.seqs, self.items = func, seqs, items
        self.wf, self.restricted = plan.wf, plan.scope.restricted
        self.left = len(plan.todo)  # tasks not completed when the job was made
        self.size = len(plan.numbers)  # the call's tasks, completed ones included
        self.completed_before = plan.completed  # the workflow's completed tasks then
        self.path, self.name, self.progress, self.options = path, name, progress, options
        self.by_value = False  # pickle results by value (set in spawned helpers)
        self.expected = 1  # workers sure to come: the caller and its forked helpers
        self._loop: Iterator[Any] | None = None  # while run() runs here

    def __getstate__(self) -> dict[str, Any]:
        """Return the state to pickle, without this process's loop."""
        state = dict(self.__dict__)  # pickled for spawned helpers while the caller works
        state["_loop"] = None
        return state

    @property
    def timeout(self) -> float | None:
        """Return the seconds an item may run (``timeout=``, ``LAUFBAND_TIMEOUT``), or None."""
        limit: float | None = resolve("timeout", self.options.get("timeout"), None, float)
        return limit

    @property
    def scope(self) -> Scope:
        """Return the scope holding this job's tasks."""
        return Scope(start=self.seqs[0], limit=self.seqs[-1] + 1, restricted=self.restricted)

    def item_at(self) -> Callable[[int], tuple[int, Any]]:
        """Return a function mapping a task number to the pair (task number, item)."""
        if self.restricted:
            pairs = dict(zip(self.seqs, zip(self.seqs, self.items, strict=True), strict=True))
            return pairs.__getitem__
        items, start = self.items, self.seqs[0]
        return lambda seq: (seq, items[seq - start])

    def run(self, *, show_progress: bool,
            on_progress: Callable[[int, float, float], bool] | None = None,
            helper: bool = False) -> None:
        """Run the laufband worker loop until nothing is left that it could run.

        ``on_progress(done, seconds, per_task)`` is called before each task until it
        returns True; ``per_task`` is the mean time of the tasks done so far.
        Helpers and the caller alike wait for tasks running elsewhere while any
        may come back to them (a batch far behind its plan hands back its rest; the
        tasks of a worker that died return).
        """
        try:
            self._work(show_progress=show_progress, on_progress=on_progress, helper=helper)
        except StateError:
            if not helper:
                raise
            # A helper leaves quietly: its tasks went back to pending and the caller
            # runs them, reporting the error itself if it persists (one message, not
            # one per process).

    def stop(self) -> None:
        """Finish this process's loop if an exception left it mid-task.

        Finish this process's loop if an exception left it mid-task (Ctrl-C): the
        task goes back (or fails, as laufband decides), finished ones are stored, the
        worker goes offline. Idempotent; at once rather than whenever the loop is
        garbage collected.
        """
        loop, self._loop = self._loop, None
        if loop is None:
            return
        with contextlib.suppress(StateError):
            loop.close()  # type: ignore[attr-defined]
        interrupts.finish_cut_short_stops()  # a hand-back that a signal cut short

    def _work(self, *, show_progress: bool,
              on_progress: Callable[[int, float, float], bool] | None,
              helper: bool = False) -> None:
        """Run the worker loop of ``run``.

        A helper of a call with a timeout publishes each item's deadline for the
        caller, which kills it should it not stop in time (:mod:`laufband.stuck`).
        """
        limit = self.timeout
        slot = None
        if helper and limit is not None:
            from laufband.stuck import DeadlineSlot  # for calls with a timeout only

            slot = DeadlineSlot(Path(self.path))
        try:
            self._work_with(slot, limit or 0.0, show_progress=show_progress,
                            on_progress=on_progress)
        finally:
            if slot is not None:
                slot.close()

    def _work_with(self, slot: DeadlineSlot | None, limit: float, *, show_progress: bool,
                   on_progress: Callable[[int, float, float], bool] | None) -> None:
        options = dict(self.options)
        tqdm_kwargs = dict(options.pop("tqdm_kwargs", None) or {})
        tqdm_kwargs.setdefault("disable", not show_progress)
        tqdm_kwargs.setdefault("desc", f"pmap {self.name}")
        dumps = pickle.dumps
        if self.by_value:  # a spawned helper: classes of the caller's __main__ travel too
            import cloudpickle

            dumps = cloudpickle.dumps
        item_at = self.item_at()
        sink = OutcomeSink(Path(self.path), self.wf, dumps, lambda seq: item_at(seq)[1])
        worker = PmapWorker(self, path=self.path, name=self.name, tqdm_kwargs=tqdm_kwargs,
                         sink=sink, expected_workers=self.expected,
                         **options)
        func, record = self.func, sink.record
        started, done = time.monotonic(), 0
        self._loop = loop = iter(worker)
        for seq, item in loop:
            if on_progress is not None:
                seconds = time.monotonic() - started
                if on_progress(done, seconds, seconds / done if done else 0.0):
                    on_progress = None
                done += 1
            try:
                value = _call(func, item, slot, seq, limit)
            except Exception as error:  # noqa: BLE001 - reported to the caller
                sink.record_error(seq, error, item)
                continue
            record(seq, value)  # pickled by the sink before the next transaction


def _call(func: Callable[[Any], Any], item: Any, slot: DeadlineSlot | None, seq: int,
          limit: float) -> Any:
    """Run the function on one item: the loop body a timeout interrupts (timeouts.py).

    In a helper with a timeout, the item's deadline is published meanwhile.
    """
    if slot is None:
        return func(item)
    slot.start(seq, time.monotonic() + limit)
    try:
        return func(item)
    finally:
        slot.clear()


class PmapWorker(Graphband[Any]):
    """Work through the tasks of a job.

    A laufband worker over the tasks of a job, which the caller has registered;
    it yields (task number, item) pairs.
    """

    def __init__(self, job: Job, *, sink: OutcomeSink, **options: Any) -> None:
        """Make a worker over the tasks of ``job``, its outcomes kept by ``sink``."""
        super().__init__((), sink=sink, **options)
        self._job = job
        self._outcomes = sink

    def _body_code(self) -> Any:
        return _call.__code__

    def _timeout_name(self, seq: int) -> str:
        return "the function"

    def _on_timed_out(self, seq: int, error: BaseException) -> None:
        # The function caught the timeout and returned (or could not be interrupted):
        # its item fails with the error all the same, not with the value returned.
        self._outcomes.drop(seq)
        self._outcomes.record_error(seq, error, self._job.item_at()(seq)[1])

    def _register(self, tx: Transaction, workflow: Workflow, tasks: list[Any]) -> Scope:
        if self._job.restricted:
            tx.restrict_to(self._job.seqs)
        return self._job.scope

    def _item_getter(self) -> Callable[[int], Any]:
        return self._job.item_at()

    def _planned_total(self) -> int:
        return self._job.size

    def _show_progress(self, completed: int, total: int) -> None:
        # The bar counts this call's items: those done before it, and every completion
        # in the workflow since (by any worker of any process; another call's items
        # being computed at the same time count too, within the total).
        job = self._job
        done = job.size - job.left + completed - job.completed_before
        super()._show_progress(max(0, min(done, job.size)), job.size)

    def _plain_items(self) -> Iterable[Any]:
        return zip(self._job.seqs, self._job.items, strict=True)
