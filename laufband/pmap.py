"""pmap: a durable, shareable parallel map on laufband workers.

::

    caller: key each item ─> one transaction: find the keys' task numbers in the
            workflow's key blocks, append one block for the new keys, retry failed
            ones (all completed? read results, done)
              │
              ├─> start n-1 helper processes ─────────┐  every helper and the caller
              └─> run the worker loop itself ─────────┤  run the same laufband loop:
                                                      │  claim, func(item); each flush
            read results in input order <─────────────┘  stores one pickled chunk of
                                                         outcomes with the finishes

Any other process calling the same pmap on the same state directory (another
script, host or MPI rank) joins the same workflow; every caller returns the full
list. Results are memoized per item: the workflow is named after the function and
a digest of its code, each task after its item (see memo.py). Keys live in one row
per call and results in one row per flush, not one per item: a call of 100,000
no-op items costs about as much as joblib's.
"""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from laufband import mpi
from laufband.errors import RemoteTraceback, StateError, TaskFailedError
from laufband.graphband import Graphband
from laufband.memo import default_name, first_indices, item_keys
from laufband.options import resolve
from laufband.processes import (
    START_METHODS,
    default_start_method,
    interruption,
    prepare_helpers,
    redeliver,
    settle,
    signals_held,
)
from laufband.resultfiles import (
    remove_stale_temporaries,
    result_file,
    results_of,
    write_error,
    write_file,
)
from laufband.store import Scope, Store, Transaction

T = TypeVar("T")
R = TypeVar("R")

ON_ERROR = ("raise", "skip", "return")
VALUE, ERROR, IN_FILE = 0, 1, 2  # kinds of stored outcome: pickled value, (error, traceback), file
LARGE_RESULT = 1 << 20  # bytes: larger pickled results go to files, not the database
PROBE = 0.03  # seconds of work the caller does before deciding whether to spawn helpers
HELPER_START = 1.0  # seconds: spawn helpers (~0.3 s of CPU each) only for more work left


class PmapResults(list):  # type: ignore[type-arg]
    """The list ``pmap`` returns; with ``on_error="skip"``, ``failures`` holds
    ``(index, exception)`` for every item that was left out."""

    failures: list[tuple[int, BaseException]]


def pmap(
    func: Callable[[T], R],
    data: Iterable[T],
    n: int | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    name: str | None = None,
    key: Callable[[T], str] | None = None,
    on_error: str = "raise",
    progress: bool = True,
    start_method: str | None = None,
    **options: Any,
) -> list[R]:
    """Apply ``func`` to every item on ``n`` workers; return the results in input order.

    Results are kept in the state directory: a later call computes only items it has
    not seen, and a call made while another is running (another script, host, or MPI
    rank) shares the work with it. The calling process is one of the ``n`` workers
    and starts the other ``n - 1``: forked at once, or spawned once ~30 ms of work
    (or a first task still running after 1 s) shows that the work outlasts their
    start-up; under ``mpirun`` every rank is a worker and no processes are started.

    Args:
        func: The function; lambdas and closures work.
        data: The items.
        n: Workers, the caller included (default: all cores).
        path: State directory (``LAUFBAND_PATH``, default ``./.laufband``).
        name: Workflow name (default: the function's name and a digest of its code, so
            editing the function recomputes). Values of globals it reads are not part
            of the digest: pass ``name=`` when results depend on them.
        key: Function giving each item a unique string id (default: the item itself
            when it is an int or a short str, else a digest of its pickle; equal items
            are computed once).
        on_error: ``"raise"`` the first failure (the worker's traceback as its
            ``__cause__``), ``"skip"`` failed items (see ``PmapResults.failures``), or
            ``"return"`` each exception in its item's place.
        progress: Show a progress bar over this call's items. It counts completions by
            every worker, in this process or any other that joined.
        start_method: How helpers start: ``"fork"`` (POSIX; all of them at once, in
            milliseconds; unsafe once the caller runs threads or has initialised a GPU)
            or ``"spawn"`` (fresh interpreters fed the pickled function, started only
            once ~30 ms of work shows they pay off; safe with threads and CUDA). Default
            (``LAUFBAND_START_METHOD``): ``"fork"`` on Linux while the caller has a
            single thread, else ``"spawn"``. Neither re-runs the caller's script, so no
            ``if __name__ == "__main__":`` guard is needed.
        **options: Passed to the workers' :class:`Laufband` (``max_failed_retries``,
            ``tqdm_kwargs``, ...).

    Returns:
        A :class:`PmapResults` list, one result per item (per kept item with "skip").

    Raises:
        ValueError: For a bad ``n``, ``on_error`` or ``start_method``, or an item or
            function that cannot be pickled.
        TaskFailedError: An item never completed (its worker died twice).
        KeyboardInterrupt: Ctrl-C; raised once the helpers have handed back their
            tasks and left, quietly (a terminal interrupts them too). Finished items
            are kept: the next call computes only the rest.
        StateError: The state directory or a result file cannot be written (a full
            disk): results stored so far are kept, the next call computes the rest.

    Example:
        >>> from laufband import pmap
        >>> pmap(lambda x: x * x, range(5), n=2)  # doctest: +SKIP
        [0, 1, 4, 9, 16]
    """
    workers = _check_workers(n)
    if on_error not in ON_ERROR:
        msg = f"on_error must be one of {ON_ERROR}, got {on_error!r}"
        raise ValueError(msg)
    method = resolve("start_method", start_method, None, str) or default_start_method()
    if method not in START_METHODS or (method == "fork" and not hasattr(os, "fork")):
        msg = f"start_method must be 'spawn' or, on POSIX, 'fork'; got {method!r}"
        raise ValueError(msg)
    items = list(data)
    keys = item_keys(items, key)
    first = first_indices(keys)
    if not first:
        return _results([], {}, {}, False, on_error, "")
    state = Path(resolve("path", path, ".laufband", str)).absolute()
    workflow = name or default_name(func)
    plan = _register(state, workflow, list(first))
    if plan.todo:
        if plan.scope.restricted:  # data only for the tasks still to run
            seqs = sorted(plan.todo)
        else:  # a solid range of task numbers, all ours
            seqs = list(range(plan.scope.start, plan.scope.limit))
        todo = _items_of(seqs, plan.numbers, first, items)
        job = _Job(func, seqs, todo, plan.scope.restricted, len(plan.todo), str(state),
                   workflow, progress, options)
        job.size, job.completed_before = len(plan.numbers), plan.completed
        remove_stale_temporaries(results_of(state, plan.wf))
        stopped = _compute(job, workers, method)
        if stopped is not None:  # Ctrl-C or SIGTERM: every worker has left, what
            # finished is stored, the next call computes the rest. No comment on the
            # raise: its traceback shows that line (and would underline it).
            raise stopped
    outcomes, failed = _read_outcomes(state, plan, workflow)
    return _results(keys, plan.numbers, outcomes, failed, on_error, workflow)


def _items_of(seqs: list[int], numbers: dict[Any, int], first: dict[Any, int],
              items: list[Any]) -> list[Any]:
    """The item of each task number in ``seqs``."""
    if len(seqs) == len(numbers) and list(numbers.values()) == seqs:  # keys in task order
        return list(map(items.__getitem__, map(first.__getitem__, numbers)))
    key_of = {seq: task_key for task_key, seq in numbers.items()}
    return [items[first[key_of[seq]]] for seq in seqs]


class _Plan(NamedTuple):
    """What one call needs from its workflow: the task number of each of its keys,
    the scope holding them, and the numbers not completed when it registered."""

    wf: int
    numbers: dict[Any, int]
    scope: Scope
    todo: dict[int, str]
    completed: int  # the workflow's completed tasks then (for the progress bar)


class _Job:
    """Everything a worker needs: picklable with cloudpickle when ``func`` is.

    ``items[i]`` is the item of task ``seqs[i]``; the numbers are either one solid
    range or, when ``restricted``, the only tasks this job may claim.
    """

    def __init__(self, func: Callable[[Any], Any], seqs: list[int], items: list[Any],
                 restricted: bool, left: int, path: str, name: str, progress: bool,
                 options: dict[str, Any]) -> None:
        self.func, self.seqs, self.items, self.restricted = func, seqs, items, restricted
        self.left = left  # tasks not completed when the job was made
        self.size = len(seqs)  # the call's tasks, completed ones included
        self.completed_before = 0  # the workflow's completed tasks when registered
        self.path, self.name, self.progress, self.options = path, name, progress, options
        self.by_value = False  # pickle results by value (set in spawned helpers)
        self.expected = 1  # workers sure to come: the caller and its forked helpers
        self._loop: tuple[_Worker, Iterator[Any]] | None = None  # while run() runs here

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # pickled for spawned helpers while the caller works
        state["_loop"] = None
        return state

    @property
    def scope(self) -> Scope:
        return Scope(start=self.seqs[0], limit=self.seqs[-1] + 1, restricted=self.restricted)

    def item_at(self) -> Callable[[int], Any]:
        """Return a function mapping a task number to its item."""
        if self.restricted:
            return dict(zip(self.seqs, self.items, strict=True)).__getitem__
        items, start = self.items, self.seqs[0]
        return lambda seq: items[seq - start]

    def run(self, show_progress: bool,
            on_progress: Callable[[int, float, float], bool] | None = None,
            helper: bool = False) -> None:
        """Run the laufband worker loop until nothing is left that it could run.

        ``on_progress(done, seconds, per_task)`` is called after each task until it
        returns True; ``per_task`` is the measured time of one task within a batch (0
        before the first batch ends), claims not included.
        A ``helper`` leaves as soon as nothing is left to claim; the caller waits for
        tasks running elsewhere (and takes over those of helpers that died).
        """
        try:
            self._work(show_progress, on_progress, helper)
        except StateError:
            if not helper:
                raise
            # A helper leaves quietly: its tasks went back to pending and the caller
            # runs them, reporting the error itself if it persists (one message, not
            # one per process).

    def stop(self) -> None:
        """Finish this process's loop if an exception left it mid-task (Ctrl-C): the
        task goes back (or fails, as laufband decides), finished ones are stored, the
        worker goes offline. Idempotent; at once rather than whenever the loop is
        garbage collected."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        worker, iterator = loop
        with contextlib.suppress(StateError):
            iterator.close()  # type: ignore[attr-defined]
        with contextlib.suppress(StateError):
            worker._stop()  # a hand-back that a signal cut short

    def _work(self, show_progress: bool,
              on_progress: Callable[[int, float, float], bool] | None,
              helper: bool) -> None:
        """The worker loop of ``run``."""
        options = dict(self.options)
        tqdm_kwargs = dict(options.pop("tqdm_kwargs", None) or {})
        tqdm_kwargs.setdefault("disable", not show_progress)
        tqdm_kwargs.setdefault("desc", f"pmap {self.name}")
        worker = _Worker(self, path=self.path, name=self.name, tqdm_kwargs=tqdm_kwargs,
                         **options)
        worker._waits = not helper
        worker._expected_workers = max(worker._expected_workers, self.expected)
        func, outcomes = self.func, worker._outcomes
        started, done = time.monotonic(), 0
        loop = iter(worker)
        self._loop = worker, loop
        for item in loop:
            if on_progress is not None:
                if on_progress(done, time.monotonic() - started, worker._sizer.task_time):
                    on_progress = None
                done += 1
            try:
                value = func(item)
            except Exception as error:  # noqa: BLE001 - reported to the caller
                worker._record_failure(traceback.format_exc(), ERROR, _pickle_error(error))
                continue
            outcomes.append((worker._current, VALUE, value))  # pickled in _Worker._pack


class _Worker(Graphband[Any]):
    """A laufband worker over the tasks of a job, which the caller has registered."""

    _final_bodies = False  # a task also needs its result, lost with the process
    _summarises = False  # pmap reports failed items itself

    def __init__(self, job: _Job, **options: Any) -> None:
        super().__init__((), **options)
        self._job = job
        if job.by_value:  # a spawned helper: classes of the caller's __main__ travel too
            import cloudpickle

            self._dumps = cloudpickle.dumps

    def _collect(self) -> list[Any]:
        return []

    def _register(self, tx: Transaction, tasks: list[Any]) -> Scope:
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
        return self._job.items

    def _pack(self, outcomes: list[tuple[Any, ...]]) -> tuple[int, int, bytes]:
        """Pickle outcomes in one go; if that fails or is large, look at each value:
        an unpicklable one fails its task, a large one goes to a file."""
        try:
            packed = super()._pack(outcomes)
        except Exception:  # noqa: BLE001 - found and reported item by item below
            packed = None
        if packed is None or len(packed[2]) > LARGE_RESULT:
            packed = super()._pack(self._checked_all(outcomes))
        return packed

    def _checked_all(self, outcomes: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Each outcome checked. If a result cannot be stored (a full disk), those
        before it still complete their tasks: packed into a chunk of their own and
        taken off ``_outcomes`` (whose head ``outcomes`` is) before the error goes on."""
        checked: list[tuple[Any, ...]] = []
        try:
            for outcome in outcomes:
                checked.append(self._checked(outcome))
        except StateError:
            if checked:
                self._chunks.append(super()._pack(checked))
                del self._outcomes[: len(checked)]
            raise
        return checked

    def _checked(self, outcome: tuple[Any, ...]) -> tuple[Any, ...]:
        seq, kind, value = outcome
        if kind != VALUE:
            return outcome
        try:
            pickled = self._dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # noqa: BLE001 - reported to the caller
            self._failures.append((seq, traceback.format_exc()))  # failed before finished
            return seq, ERROR, _pickle_error(error)
        if len(pickled) <= LARGE_RESULT:
            return outcome
        assert self._workflow is not None
        target = result_file(Path(self._job.path), self._workflow.id, seq)
        try:
            write_file(target, pickled)
        except OSError as error:  # the task stays unfinished: the next call computes it
            raise write_error(target.parent, error) from None
        return seq, IN_FILE, None


def _compute(job: _Job, workers: int, method: str) -> BaseException | None:
    """Start helpers (unless under MPI), work in this process too, reap the helpers.
    Return the interrupt (Ctrl-C, SIGTERM) for ``pmap`` to raise, once all is done."""
    found = mpi.rank_and_size()
    if found is not None and found[1] > 1:  # every rank is a worker already
        return _run(job, _no_helpers, show_progress=job.progress and found[0] == 0)
    helpers = min(workers, job.left) - 1
    if helpers <= 0:
        return _run(job, _no_helpers, show_progress=job.progress)
    start = prepare_helpers(job, helpers, method)  # unpicklable: fails here, at once
    if method == "fork":
        job.expected = helpers + 1
        # Forking costs milliseconds: start all helpers now, while this process has
        # no thread of ours (a fork copies no threads, only their locks).
        return _run(job, start, show_progress=job.progress)
    joins: list[Callable[[], None]] = []
    decided = threading.Lock()

    def start_once() -> None:
        if decided.acquire(blocking=False):
            # A helper that cannot start: a warning, we work on. In the main thread a
            # Ctrl-C waits until all are started, or one would be left unjoined.
            with signals_held() as noted:
                joins.append(start())
            redeliver(noted)

    # A first task still running after HELPER_START: more such tasks are waiting.
    timer = threading.Timer(HELPER_START, start_once)
    timer.daemon = True
    timer.start()

    def start_when_worth_it(done: int, seconds: float, per_task: float) -> bool:
        # Spawned helpers cost ~0.3 s of CPU each and then compete for the state lock:
        # for work the caller finishes sooner alone (many tiny tasks), start none.
        if seconds < PROBE:
            return False
        timer.cancel()
        if (job.left - done) * (per_task or seconds / max(done, 1)) > HELPER_START:
            start_once()
        else:
            decided.acquire(blocking=False)  # not worth it: the timer must not start them
        return True

    def end() -> None:
        timer.cancel()
        decided.acquire(blocking=False)  # a timer firing now starts nothing
        timer.join()  # one that fired has appended its helpers
        for join in joins:
            join()

    return _run(job, lambda: end, show_progress=job.progress,
                on_progress=start_when_worth_it)


def _run(job: _Job, start: Callable[[], Callable[[], None]],
         **kwargs: Any) -> BaseException | None:
    """Start the helpers (``start`` returns the function that ends them), run the
    caller's loop, end the helpers; signals are held while helpers start and end (a
    Ctrl-C then must not leave one behind, nor a second Ctrl-C cut the cleanup short).
    Return a fresh exception for a Ctrl-C or SIGTERM that stopped the loop or came
    during the cleanup: ``pmap`` raises it, so its traceback is the caller's line and
    pmap's, not the worker loop's nor a chain."""
    with signals_held() as noted:  # (CPython drops a KeyboardInterrupt raised in a
        end = start()              # fork's at-fork hooks, printing it as ignored)
    try:
        redeliver(noted)  # interrupts now, as laufband's handler does
        job.run(**kwargs)
    except (KeyboardInterrupt, SystemExit) as error:
        stopped: BaseException | None = error  # keeps the loop as it was, unfinished
    except BaseException:
        with signals_held():  # the error is what matters: signals now are dropped
            end()
        raise
    else:
        stopped = None
    with signals_held() as noted:
        try:
            job.stop()  # hand back the interrupted task, store what finished
        finally:
            end()  # the helpers (interrupted too, by a terminal) do the same and leave
    if stopped is None:
        stopped = interruption(noted)
        if stopped is None:
            return None
    settle()  # a second Ctrl-C as pmap raises is part of the first
    if isinstance(stopped, KeyboardInterrupt):
        return KeyboardInterrupt()
    return SystemExit(stopped.code)  # type: ignore[attr-defined]


def _no_helpers() -> Callable[[], None]:
    return _no_helpers_to_end


def _no_helpers_to_end() -> None:
    """No helpers to end."""


def _register(state: Path, workflow: str, unique: list[Any]) -> _Plan:
    """Give this call's new keys task numbers (one block, appended), retry its failed
    and killed tasks, and find what is not completed yet; all in one transaction."""
    store = Store(state)
    try:
        with store.transaction() as tx:
            wf = tx.open_workflow(workflow, keyed=True).id
            numbers = _known_numbers(tx.key_blocks(wf), unique)
            missing = [k for k in unique if k not in numbers]
            if missing:
                packed = pickle.dumps(missing, protocol=pickle.HIGHEST_PROTOCOL)
                start = tx.add_key_block(wf, packed, len(missing))
                numbers.update(zip(missing, range(start, start + len(missing)), strict=True))
            scope = _scope_of(tx, wf, numbers.values())
            if len(missing) == len(unique):  # all new: all pending
                todo = dict.fromkeys(numbers.values(), "pending")
            else:
                tx.retry_unfinished(wf, scope)
                todo = tx.unfinished(wf, scope)
            completed = tx.progress(wf)[1]
    finally:
        store.close()
    return _Plan(wf, numbers, scope, todo, completed)


def _known_numbers(blocks: list[tuple[int, bytes]], wanted: list[Any]) -> dict[Any, int]:
    """Task numbers of those ``wanted`` keys that the workflow's key blocks hold."""
    found: dict[Any, int] = {}
    wanted_set: set[Any] | None = None
    for start, packed in blocks:
        block = pickle.loads(packed)
        if block == wanted:  # the same call again (each key is in one block only)
            return dict(zip(block, range(start, start + len(block)), strict=True))
        wanted_set = set(wanted) if wanted_set is None else wanted_set
        index = dict(zip(block, range(start, start + len(block)), strict=True))
        common = index.keys() & wanted_set
        found.update(zip(common, map(index.__getitem__, common), strict=True))
        if len(found) == len(wanted_set):
            break
    return found


def _scope_of(tx: Transaction, wf: int, numbers: Iterable[int]) -> Scope:
    """The scope of these task numbers: a range if they are solid, else restricted to them."""
    seqs = list(numbers)  # distinct numbers: solid when they span exactly their count
    lo, hi = min(seqs), max(seqs)
    solid = hi - lo + 1 == len(seqs)
    if not solid:
        tx.materialize(wf, hi + 1)  # restricted claims see rows only
        tx.restrict_to(sorted(seqs))
    return Scope(start=lo, limit=hi + 1, restricted=not solid)


def _read_outcomes(state: Path, plan: _Plan, workflow: str) -> tuple[dict[int, Any], bool]:
    """Task number -> result (or ``_Failure``) for every task of this call, and whether
    any failed."""
    store = Store(state)
    try:
        with store.transaction() as tx:
            if not tx.has_workflow(plan.wf):
                msg = (f"workflow {workflow!r} in {state} was reset while this pmap call ran"
                       " (laufband reset): call pmap again to compute it anew")
                raise StateError(msg)
            scope = plan.scope  # materialized by _register; the restriction is per connection
            if scope.restricted:
                tx.restrict_to(sorted(plan.numbers.values()))
            states = tx.unfinished(plan.wf, scope)
            chunks = tx.result_chunks(plan.wf, scope.start, scope.limit - 1)
    finally:
        store.close()
    outcomes: dict[int, Any] = {}  # plain values; the rest, by kind, in `other`
    other: dict[int, tuple[int, Any]] = {}
    chunks.reverse()
    while chunks:  # oldest first: a retry's outcome replaces the failure
        # Each payload is freed once unpickled: the caller never holds all results twice.
        for seq, kind, value in pickle.loads(chunks.pop()):
            if kind == VALUE:
                outcomes[seq] = value
                if other:
                    other.pop(seq, None)
            else:
                other[seq] = kind, value
                outcomes.pop(seq, None)
    in_files = [seq for seq, (kind, _) in other.items() if kind == IN_FILE]
    if in_files:  # ours only: chunks also hold other calls' tasks
        ours = set(plan.numbers.values())
        for seq in in_files:
            if seq in ours and seq not in states:
                try:
                    data = result_file(state, plan.wf, seq).read_bytes()
                except OSError:  # removed: reopened below, the next call computes it
                    continue
                outcomes[seq] = pickle.loads(data)
    if not all(map(outcomes.__contains__, plan.numbers.values())):
        lost = [seq for seq in plan.numbers.values() if seq not in outcomes and seq not in states]
        if lost:  # completed, but the result is gone: the next call computes them again
            _reopen(state, plan.wf, lost)
        states = dict.fromkeys(lost, "completed") | states
    for seq, task_state in states.items():
        kind, value = other.get(seq, (VALUE, None))
        if kind == ERROR and task_state != "killed":
            # Failed; or pending or running again when another call retries it: this
            # call reports the failure its own computation saw.
            outcomes[seq] = _Failure(*pickle.loads(value))
            continue
        reason = {"killed": "its worker died on it twice",
                  "completed": "its result is missing"}.get(task_state, "it was reset")
        msg = f"item not computed ({task_state}: {reason}); call pmap again to retry it"
        outcomes[seq] = _Failure(TaskFailedError(msg), "")
    return outcomes, bool(states)


def _reopen(state: Path, wf: int, seqs: list[int]) -> None:
    store = Store(state)
    try:
        with store.transaction() as tx:
            tx.reopen(wf, seqs)
    finally:
        store.close()


def _results(keys: list[Any], numbers: dict[Any, int], outcomes: dict[int, Any],
             failed: bool, on_error: str, workflow: str) -> PmapResults:
    """The result list in input order, failures handled as ``on_error`` says."""
    results = PmapResults(map(outcomes.__getitem__, map(numbers.__getitem__, keys)))
    results.failures = []
    if not failed:
        return results
    kept = PmapResults()
    kept.failures = []
    for index, value in enumerate(results):
        if not isinstance(value, _Failure):
            kept.append(value)
            continue
        error = value.exception(index, workflow)
        if on_error == "raise":
            raise error
        if on_error == "return":
            kept.append(error)
        else:
            kept.failures.append((index, error))
    return kept


class _Failure:
    """An item's failure as stored: the exception and the remote traceback text."""

    def __init__(self, error: BaseException, remote: str) -> None:
        self.error, self.remote = error, remote

    def exception(self, index: int, workflow: str) -> BaseException:
        error = copy.copy(self.error)  # equal items share one stored failure
        if self.remote:
            error.__cause__ = RemoteTraceback(self.remote)
        if hasattr(error, "add_note"):
            error.add_note(f"pmap: raised by item {index} of workflow {workflow!r}")
        return error


def _pickle_error(error: BaseException) -> bytes:
    """Pickle an exception with its traceback text; stand in for unpicklable ones."""
    remote = traceback.format_exc()
    try:
        return pickle.dumps((error, remote))
    except Exception:  # noqa: BLE001 - an exception that does not survive pickling
        return pickle.dumps((RuntimeError(f"{type(error).__name__}: {error}"), remote))


def _check_workers(n: int | None) -> int:
    if n is None:
        return os.cpu_count() or 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        msg = f"n must be an integer >= 1 (the number of workers), got {n!r}"
        raise ValueError(msg)
    return n


__all__ = ["PmapResults", "pmap"]
