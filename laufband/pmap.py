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

import os
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, TypeVar

from laufband import mpi
from laufband.errors import StateError
from laufband.memo import default_name, first_indices, item_keys
from laufband.options import resolve
from laufband.outcomes import Failure, Missing, read_outcomes
from laufband.pmapjob import Job, Plan
from laufband.processes import (
    START_METHODS,
    default_start_method,
    interruption,
    prepare_helpers,
    redeliver,
    settle,
    signals_held,
)
from laufband.resultfiles import remove_stale_temporaries
from laufband.store import Scope, StateDirectory, Store, Transaction
from laufband.task import check_timeout

T = TypeVar("T")
R = TypeVar("R")

ON_ERROR = ("raise", "skip", "return")
PROBE = 0.03  # seconds of work the caller does before deciding whether to spawn helpers
HELPER_START = 1.0  # seconds: spawn helpers (~0.3 s of CPU each) only for more work left


class PmapResults(list):  # type: ignore[type-arg]
    """Hold the results ``pmap`` returns.

    The list ``pmap`` returns; with ``on_error="skip"``, ``failures`` holds
    ``(index, exception)`` for every item that was left out.
    """

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
            ``retry_delay``, ``tqdm_kwargs``, ...). ``timeout=`` seconds: an item whose
            call runs longer is interrupted and fails with ``TaskTimeoutError`` (a
            ``TimeoutError``); the other items go on. Called with a
            timeout outside the main thread, which no signal can interrupt, the
            caller runs no item itself: ``min(n, items)`` helpers run them all.

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
    # Here, before any helper starts (each would fail with it).
    resolve("timeout", options.get("timeout"), None, float, partial(check_timeout, "timeout"))
    method = resolve("start_method", start_method, None, str) or default_start_method()
    if method not in START_METHODS or (method == "fork" and not hasattr(os, "fork")):
        msg = f"start_method must be 'spawn' or, on POSIX, 'fork'; got {method!r}"
        raise ValueError(msg)
    items = list(data)
    keys = item_keys(items, key)
    first = first_indices(keys)
    if not first:
        return _results([], {}, {}, on_error, "", failed=False)
    state = StateDirectory.resolve(path)
    workflow = name or default_name(func)
    store = Store(state)
    try:
        plan = _register(store, workflow, list(first))
        if plan.todo:
            stopped = _compute_todo(func, plan, items, first=first, state=str(state),
                                    workflow=workflow, progress=progress, options=options,
                                    workers=workers, method=method)
            if stopped is not None:  # Ctrl-C or SIGTERM: every worker has left, what
                # finished is stored, the next call computes the rest. No comment on the
                # raise: its traceback shows that line (and would underline it).
                raise stopped
        outcomes, failed = _read(store, plan, workflow, _killed_reason(options))
    finally:
        store.close()
    return _results(keys, plan.numbers, outcomes, on_error, workflow, failed=failed)


def _compute_todo(  # noqa: PLR0913 - what one call computes with, all by keyword
        func: Callable[[Any], Any], plan: Plan, items: list[Any], *, first: dict[Any, int],
        state: str, workflow: str, progress: bool, options: dict[str, Any], workers: int,
        method: str) -> BaseException | None:
    """Compute the tasks of ``plan`` not completed yet, here and in helpers."""
    if plan.scope.restricted:  # data only for the tasks still to run
        seqs = sorted(plan.todo)
    else:  # a solid range of task numbers, all ours
        seqs = list(range(plan.scope.start, plan.scope.limit))
    todo = _items_of(seqs, plan.numbers, first, items)
    job = Job(func, plan, seqs, todo, path=state, name=workflow, progress=progress,
              options=options)
    remove_stale_temporaries(StateDirectory(state).results_of(plan.wf))
    return _compute(job, workers, method)


def _items_of(seqs: list[int], numbers: dict[Any, int], first: dict[Any, int],
              items: list[Any]) -> list[Any]:
    """Return the item of each task number in ``seqs``."""
    if len(seqs) == len(numbers) and list(numbers.values()) == seqs:  # keys in task order
        return list(map(items.__getitem__, map(first.__getitem__, numbers)))
    key_of = {seq: task_key for task_key, seq in numbers.items()}
    return [items[first[key_of[seq]]] for seq in seqs]


def _compute(job: Job, workers: int, method: str) -> BaseException | None:
    """Start helpers (unless under MPI), work in this process too, reap the helpers.

    Return the interrupt (Ctrl-C, SIGTERM) for ``pmap`` to raise, once all is done.
    """
    found = mpi.rank_and_size()
    if found is not None and found[1] > 1:  # every rank is a worker already
        return _run(job, _no_helpers, show_progress=job.progress and found[0] == 0)
    if _timeouts_cannot_interrupt_here(job):
        return _run_in_helpers(job, workers, method)
    helpers = min(workers, job.left) - 1
    if helpers <= 0:
        return _run(job, _no_helpers, show_progress=job.progress)
    from laufband.stuck import supervise  # mmap and friends: only for calls with helpers

    # unpicklable: fails here, at once
    start = prepare_helpers(job, helpers, method, partial(supervise, job))
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

    previous = [0.0]  # seconds at the previous call: the last task took the difference

    def start_when_worth_it(done: int, seconds: float, per_task: float) -> bool:
        # Spawned helpers cost ~0.3 s of CPU each and then compete for the state lock:
        # for work the caller finishes sooner alone (many tiny tasks), start none, but
        # watch on: tasks that turn slow (many small molecules, then large ones) make
        # what is left worth them after all.
        last, previous[0] = seconds - previous[0], seconds
        if seconds < PROBE:
            return False
        timer.cancel()
        if (job.left - done) * max(per_task, last) > HELPER_START:
            start_once()
            return True
        return False

    def end() -> None:
        timer.cancel()
        decided.acquire(blocking=False)  # a timer firing now starts nothing
        timer.join()  # one that fired has appended its helpers
        for join in joins:
            join()

    return _run(job, lambda: end, show_progress=job.progress,
                on_progress=start_when_worth_it)


def _timeouts_cannot_interrupt_here(job: Job) -> bool:
    """Whether the job has a timeout that could not interrupt an item run here.

    A timeout interrupts the main thread only (SIGALRM): a call from another thread
    (joblib's runner thread, a thread of the program) runs its items in helpers.
    """
    if threading.current_thread() is threading.main_thread():
        return False
    return job.timeout is not None


def _run_in_helpers(job: Job, workers: int, method: str) -> BaseException | None:
    """Run every item in helper processes, where a timeout interrupts it.

    The caller starts ``min(n, items)`` helpers at once, waits until they have all
    ended (the supervisor kills and replaces one stuck past a timeout), then runs
    whatever they left (none unless all of them failed to start or to stay). Helpers
    that left on Ctrl-C or SIGTERM (no signal reaches this thread) mean the call was
    interrupted: it raises that, leaving the rest to the next call.
    """
    from laufband.stuck import supervise

    count = min(workers, job.left)
    job.expected = count
    helpers = prepare_helpers(job, count, method, partial(supervise, job))()
    helpers.wait()
    stopped = helpers.interruption()
    if stopped is not None:
        helpers()  # reaps them (and warns of unexpected ends)
        return stopped
    return _run(job, lambda: helpers, show_progress=job.progress)


def _run(job: Job, start: Callable[[], Callable[[], None]],
         **kwargs: Any) -> BaseException | None:
    """Start the helpers, run the caller's loop and end the helpers.

    Start the helpers (``start`` returns the function that ends them), run the
    caller's loop, end the helpers; signals are held while helpers start and end (a
    Ctrl-C then must not leave one behind, nor a second Ctrl-C cut the cleanup short).
    Return a fresh exception for a Ctrl-C or SIGTERM that stopped the loop or came
    during the cleanup: ``pmap`` raises it, so its traceback is the caller's line and
    pmap's, not the worker loop's nor a chain.
    """
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


def _register(store: Store, workflow: str, unique: list[Any]) -> Plan:
    """Give this call's new keys task numbers, retry its failed tasks, find what is left.

    Give this call's new keys task numbers (one block, appended), retry its failed
    and killed tasks, and find what is not completed yet; all in one transaction.
    """
    with store.transaction() as tx:
        wf = tx.open_workflow(workflow, keyed=True).id
        numbers, new = tx.number_keys(wf, unique)
        scope = _scope_of(tx, wf, numbers.values())
        if new == len(unique):  # all new: all pending
            todo = dict.fromkeys(numbers.values(), "pending")
        else:
            tx.retry_unfinished(wf, scope)
            todo = tx.unfinished(wf, scope)
        completed = tx.progress(wf)[1]
    return Plan(wf, numbers, scope, todo, completed)


def _scope_of(tx: Transaction, wf: int, numbers: Iterable[int]) -> Scope:
    """Return the scope of these task numbers: a range if solid, else restricted to them."""
    seqs = list(numbers)  # distinct numbers: solid when they span exactly their count
    lo, hi = min(seqs), max(seqs)
    solid = hi - lo + 1 == len(seqs)
    if not solid:
        tx.materialize(wf, hi + 1)  # restricted claims see rows only
        tx.restrict_to(sorted(seqs))
    return Scope(start=lo, limit=hi + 1, restricted=not solid)


def _read(store: Store, plan: Plan, workflow: str,
          killed_reason: str) -> tuple[dict[int, Any], bool]:
    """Collect every task's result and whether any failed.

    Every task's result, :class:`Failure` or :class:`Missing`, and whether any
    failed; completed tasks whose result is gone are reopened (the next call
    computes them).
    """
    with store.transaction() as tx:
        if not tx.has_workflow(plan.wf):
            msg = (f"workflow {workflow!r} in {store.path} was reset while this pmap call"
                   " ran (laufband reset): call pmap again to compute it anew")
            raise StateError(msg, path=store.path)
        if plan.scope.restricted:  # materialized by _register; restriction is per connection
            tx.restrict_to(sorted(plan.numbers.values()))
        outcomes, lost, failed = read_outcomes(tx, store.path, plan.wf, plan.numbers,
                                               plan.scope, killed_reason)
    if lost:
        with store.transaction() as tx:
            tx.reopen(plan.wf, lost)
    return outcomes, failed


def _killed_reason(options: dict[str, Any]) -> str:
    """Why an item whose worker died on it is not computed, from the options in force."""
    retries = resolve("max_killed_retries", options.get("max_killed_retries"), 1, int)
    times = "once" if retries == 0 else f"{retries + 1} times"
    return f"its worker died on it {times}; max_killed_retries={retries}"


def _results(keys: list[Any], numbers: dict[Any, int], outcomes: dict[int, Any],
             on_error: str, workflow: str, *, failed: bool) -> PmapResults:
    """Return the result list in input order, failures handled as ``on_error`` says."""
    results = PmapResults(map(outcomes.__getitem__, map(numbers.__getitem__, keys)))
    results.failures = []
    if not failed:
        return results
    kept = PmapResults()
    kept.failures = []
    for index, value in enumerate(results):
        if not isinstance(value, (Failure, Missing)):
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


def _check_workers(n: int | None) -> int:
    if n is None:
        return os.cpu_count() or 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        msg = f"n must be an integer >= 1 (the number of workers), got {n!r}"
        raise ValueError(msg)
    return n


__all__ = ["PmapResults", "pmap"]
