"""pmap: a durable, shareable parallel map on laufband workers.

::

    caller: key each item (content hash) ─> register missing tasks, retry failed
            (one transaction; all cached? read results, done)
              │
              ├─> start n-1 helper processes ─────────┐  every helper and the caller
              └─> run the worker loop itself ─────────┤  run the same laufband loop:
                                                      │  claim, func(item), pickle,
            read results in input order <─────────────┘  store result with the finish

Any other process calling the same pmap on the same state directory (another
script, host or MPI rank) joins the same workflow; every caller returns the full
list. Results are memoized per item: the workflow is named after the function and
a digest of its code, each task after a digest of its item.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

from laufband import mpi
from laufband.errors import RemoteTraceback, TaskFailedError
from laufband.laufband import Laufband
from laufband.options import resolve
from laufband.store import Scope, Store, Transaction

T = TypeVar("T")
R = TypeVar("R")

ON_ERROR = ("raise", "skip", "return")
START_METHODS = ("spawn", "fork")
LARGE_RESULT = 1 << 20  # bytes: larger pickled results go to files, not the database
PROBE = 0.01  # seconds of work the caller does before deciding whether to start helpers
HELPER_START = 0.3  # seconds: start helpers only when more work than this is left
_first = itemgetter(0)


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
    and starts the other ``n - 1`` once it has seen that the work outlasts their
    start-up (~10 ms of measuring); under ``mpirun`` every rank is a worker and no
    processes are started.

    Args:
        func: The function; lambdas and closures work.
        data: The items.
        n: Workers, the caller included (default: all cores).
        path: State directory (``LAUFBAND_PATH``, default ``./.laufband``).
        name: Workflow name (default: the function's name and a digest of its code, so
            editing the function recomputes). Values of globals it reads are not part
            of the digest: pass ``name=`` when results depend on them.
        key: Function giving each item a unique string id (default: a digest of the
            pickled item; equal items are computed once).
        on_error: ``"raise"`` the first failure (the worker's traceback as its
            ``__cause__``), ``"skip"`` failed items (see ``PmapResults.failures``), or
            ``"return"`` each exception in its item's place.
        progress: Show a progress bar.
        start_method: How helpers start: ``"spawn"`` (default: fresh interpreters,
            safe with threads, CUDA and OpenMP in the caller, no ``__main__`` guard
            needed) or ``"fork"`` (POSIX; starts in milliseconds, but unsafe if the
            caller uses threads or GPU libraries). ``LAUFBAND_START_METHOD`` too.
        **options: Passed to the workers' :class:`Laufband` (``max_failed_retries``,
            ``tqdm_kwargs``, ...).

    Returns:
        A :class:`PmapResults` list, one result per item (per kept item with "skip").

    Raises:
        ValueError: For a bad ``n``, ``on_error`` or ``start_method``, or an item or
            function that cannot be pickled.
        TaskFailedError: An item never completed (its worker died twice).

    Example:
        >>> from laufband import pmap
        >>> pmap(lambda x: x * x, range(5), n=2)  # doctest: +SKIP
        [0, 1, 4, 9, 16]
    """
    workers = _check_workers(n)
    if on_error not in ON_ERROR:
        msg = f"on_error must be one of {ON_ERROR}, got {on_error!r}"
        raise ValueError(msg)
    method = resolve("start_method", start_method, "spawn", str)
    if method not in START_METHODS or (method == "fork" and not hasattr(os, "fork")):
        msg = f"start_method must be 'spawn' or, on POSIX, 'fork'; got {method!r}"
        raise ValueError(msg)
    items = list(data)
    keys = [_item_key(item, index, key) for index, item in enumerate(items)]
    state = Path(resolve("path", path, ".laufband", str)).absolute()
    workflow = name or _default_name(func)
    numbers, missing, whole = _register(state, workflow, keys)
    if missing:
        todo = sorted((k, items[i]) for k, i in _first_indices(keys).items() if k in missing)
        mine = {k: numbers[k] for k in missing}
        job = _Job(func, todo, mine, str(state), workflow, progress, options)
        _compute(job, workers, method)
    return _collect(state, workflow, keys, numbers, on_error, whole)


class _Job:
    """Everything a worker needs: picklable with cloudpickle when ``func`` is."""

    def __init__(self, func: Callable[[Any], Any], todo: list[tuple[str, Any]],
                 numbers: dict[str, int], path: str, name: str, progress: bool,
                 options: dict[str, Any]) -> None:
        self.func, self.todo, self.numbers, self.path = func, todo, numbers, path
        self.name, self.progress, self.options = name, progress, options

    def run(self, show_progress: bool,
            on_progress: Callable[[int, float], bool] | None = None) -> None:
        """Run the laufband worker loop until nothing is left that it could run.

        ``on_progress(done, seconds)`` is called after each task until it returns True.
        """
        options = dict(self.options)
        tqdm_kwargs = dict(options.pop("tqdm_kwargs", None) or {})
        tqdm_kwargs.setdefault("disable", not show_progress)
        tqdm_kwargs.setdefault("desc", f"pmap {self.name}")
        worker = _Worker(self.todo, self.numbers, path=self.path, name=self.name,
                         tqdm_kwargs=tqdm_kwargs, **options)
        started, done = time.monotonic(), 0
        for task_key, item in worker:
            if on_progress is not None:
                if on_progress(done, time.monotonic() - started):
                    on_progress = None
                done += 1
            try:
                value = pickle.dumps(self.func(item), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as error:  # noqa: BLE001 - reported to the caller
                worker._record_failure(traceback.format_exc(), _pickle_error(error))
                continue
            if len(value) > LARGE_RESULT:  # written outside the lock, renamed into place
                assert worker._workflow is not None
                _write_file(_result_file(Path(self.path), worker._workflow.id, task_key), value)
                worker._record_result(None, in_file=True)
            else:
                worker._record_result(value)


class _Worker(Laufband[tuple[str, Any]]):
    """A Laufband over ``(key, item)`` pairs whose tasks the caller has registered."""

    def __init__(self, todo: list[tuple[str, Any]], numbers: dict[str, int],
                 **options: Any) -> None:
        super().__init__(todo, key=_first, **options)
        self._numbers = numbers

    def _register_keys(self, tx: Transaction) -> Scope:
        assert self._workflow is not None
        self._index_of = {self._numbers[key]: i for i, (key, _) in enumerate(self.data)}
        return self._keep_scope(tx, list(self._index_of), self._workflow.total)


def _compute(job: _Job, workers: int, method: str) -> None:
    """Start helpers (unless under MPI), work in this process too, reap the helpers."""
    found = mpi.rank_and_size()
    if found is not None and found[1] > 1:  # every rank is a worker already
        job.run(show_progress=job.progress and found[0] == 0)
        return
    if workers == 1:
        job.run(show_progress=job.progress)
        return
    start = _prepare_helpers(job, workers - 1, method)  # unpicklable: fails here, at once
    joins: list[Callable[[], None]] = []

    def start_when_worth_it(done: int, seconds: float) -> bool:
        # Helpers cost ~0.1 s each to start and then compete for the state lock: for
        # work the caller finishes sooner alone (many tiny tasks), start none.
        if seconds < PROBE:
            return False
        left = (len(job.todo) - done) * seconds / max(done, 1)
        if left > HELPER_START:
            joins.append(start())
        return True

    try:
        job.run(show_progress=job.progress, on_progress=start_when_worth_it)
    finally:
        for join in joins:
            join()


def _prepare_helpers(job: _Job, count: int,
                     method: str) -> Callable[[], Callable[[], None]]:
    """Return a function that starts ``count`` independent helper processes and
    returns a function that joins them; the job is pickled here, before any work.

    Plain processes rather than a pool: a helper that dies takes no other helper with
    it (a pool that kills its other workers would count kills against their innocent
    tasks), and the caller's own loop takes over whatever it held. "spawn" helpers are
    fresh interpreters fed the cloudpickled job on stdin: unlike multiprocessing's
    spawn and forkserver they never re-run the caller's script, so no
    ``if __name__ == "__main__":`` guard is needed.
    """
    if method == "fork":  # the helpers inherit everything: nothing to pickle
        return lambda: _fork_helpers(job, count)
    import cloudpickle  # lambdas, closures and __main__ functions travel by value

    try:
        payload = cloudpickle.dumps((list(sys.path), job))
    except Exception as error:
        msg = (f"pmap cannot send {job.func!r} to worker processes ({error}): make it"
               " picklable, or pass start_method='fork'")
        raise ValueError(msg) from None
    return lambda: _spawn_helpers(payload, count)


def _fork_helpers(job: _Job, count: int) -> Callable[[], None]:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    forked = [context.Process(target=job.run, args=(False,), daemon=True)
              for _ in range(count)]
    for proc in forked:
        proc.start()
    return lambda: _join(forked)


def _spawn_helpers(payload: bytes, count: int) -> Callable[[], None]:
    spawned = []
    for _ in range(count):
        proc = subprocess.Popen([sys.executable, "-c", _HELPER], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # a helper that died: we work on
            proc.stdin.write(payload)
            proc.stdin.close()
        spawned.append(proc)
    return lambda: _join(spawned)


_HELPER = "from laufband.pmap import _helper_main; _helper_main()"


def _helper_main() -> None:
    """Entry point of a spawned helper: read (sys.path, job) from stdin and work."""
    path, job = pickle.loads(sys.stdin.buffer.read())
    sys.path[:] = path  # where the caller found the modules its function needs
    job.run(show_progress=False)


def _join(procs: list[Any]) -> None:
    """Wait for helpers. The caller's loop has ended, so every task is final and they
    leave within one poll (<= 1 s); one that does not is stuck in user code."""
    for proc in procs:
        if isinstance(proc, subprocess.Popen):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()
        else:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()


def _register(state: Path, workflow: str,
              keys: list[str]) -> tuple[dict[str, int], set[str], bool]:
    """Register this call's tasks (new ones in key order); retry its failed and killed
    ones. Return key -> number, the keys whose results are missing, and whether this
    call's tasks are the whole workflow."""
    unique = sorted(set(keys))  # number new tasks in key order: both B-trees append
    store = Store(state)
    try:
        with store.transaction() as tx:
            flow = tx.open_workflow(workflow, keyed=True)
            known = tx.task_numbers(flow.id, unique)
            numbers = tx.register_keys(flow, unique, known)
            whole = tx.progress(flow.id)[0] == len(unique)
            done: set[int] = set()
            if known:  # an earlier call: what is done, and what failed and runs again
                if not whole:
                    tx.restrict_to(numbers[k] for k in unique)
                tx.retry_unfinished(flow.id, mine_only=not whole)
                unfinished = tx.unfinished(flow.id, mine_only=not whole)
                done = {numbers[k] for k in known} - unfinished
    finally:
        store.close()
    return numbers, {k for k in unique if numbers[k] not in done}, whole


def _collect(state: Path, workflow: str, keys: list[str], numbers: dict[str, int],
             on_error: str, whole: bool) -> list[Any]:
    """Read every item's outcome in one transaction and build the result list."""
    store = Store(state)
    try:
        with store.transaction() as tx:
            wf = tx.open_workflow(workflow, keyed=True).id
            if not whole:
                tx.restrict_to(set(numbers.values()))
            outcomes = tx.outcomes(wf, mine_only=not whole)
    finally:
        store.close()
    results = PmapResults()
    results.failures = []
    loaded: dict[str, Any] = {}
    for index, task_key in enumerate(keys):
        if task_key not in loaded:
            loaded[task_key] = _load(outcomes[numbers[task_key]], state, wf, workflow, task_key)
        value = loaded[task_key]
        if not isinstance(value, _Failure):
            results.append(value)
            continue
        error = value.exception(index, workflow)
        if on_error == "raise":
            raise error
        if on_error == "return":
            results.append(error)
        else:
            results.failures.append((index, error))
    return results


class _Failure:
    """An item's failure as stored: the pickled exception and the remote traceback."""

    def __init__(self, error: BaseException, remote: str) -> None:
        self.error, self.remote = error, remote

    def exception(self, index: int, workflow: str) -> BaseException:
        error = self.error
        if self.remote:
            error.__cause__ = RemoteTraceback(self.remote)
        if hasattr(error, "add_note"):
            error.add_note(f"pmap: raised by item {index} of workflow {workflow!r}")
        return error


def _load(outcome: tuple[str, bytes | None, bool, bool], state: Path, wf: int,
          workflow: str, task_key: str) -> Any:
    task_state, value, is_error, in_file = outcome
    if is_error and value is not None:
        error, remote = pickle.loads(value)
        return _Failure(error, remote)
    if task_state != "completed":
        msg = (f"item {task_key!r} of workflow {workflow!r} was not computed ({task_state}:"
               " its worker died on it twice); call pmap again to retry it")
        return _Failure(TaskFailedError(msg), "")
    if in_file:
        value = _result_file(state, wf, task_key).read_bytes()
    return pickle.loads(value)  # type: ignore[arg-type]


def _pickle_error(error: BaseException) -> bytes:
    """Pickle an exception with its traceback text; stand in for unpicklable ones."""
    remote = traceback.format_exc()
    try:
        return pickle.dumps((error, remote))
    except Exception:  # noqa: BLE001 - an exception that does not survive pickling
        return pickle.dumps((RuntimeError(f"{type(error).__name__}: {error}"), remote))


def _result_file(state: Path, wf: int, task_key: str) -> Path:
    """Where a large result lives: by workflow number, so names never reach the path."""
    return state / "results" / str(wf) / task_key


def _write_file(target: Path, value: bytes) -> None:
    for directory in (target.parent.parent, target.parent):  # mkdir(parents=) ignores mode
        directory.mkdir(mode=0o700, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
    os.replace(temporary, target)


def _check_workers(n: int | None) -> int:
    if n is None:
        return os.cpu_count() or 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        msg = f"n must be an integer >= 1 (the number of workers), got {n!r}"
        raise ValueError(msg)
    return n


def _first_indices(keys: list[str]) -> dict[str, int]:
    first: dict[str, int] = {}
    for index, task_key in enumerate(keys):
        first.setdefault(task_key, index)
    return first


def _item_key(item: Any, index: int, key: Callable[[Any], str] | None) -> str:
    if key is not None:
        value = key(item)
        if not isinstance(value, str):
            msg = f"key() must return a string, got {value!r} for item {index}"
            raise TypeError(msg)
        return _safe_name(value)
    try:
        payload = pickle.dumps(item, protocol=4)
    except Exception as error:
        msg = (f"item {index} ({type(item).__name__}) cannot be pickled to compute its key"
               f" ({error}): pass key= to name items")
        raise ValueError(msg) from None
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def _safe_name(value: str) -> str:
    """Keys become file names for large results: keep them inside the state directory."""
    if value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value:
        return "k-" + hashlib.blake2b(value.encode(), digest_size=16).hexdigest()
    return value


def _default_name(func: Callable[..., Any]) -> str:
    """The function's qualified name plus a digest of its code, defaults and closure."""
    qualname = getattr(func, "__qualname__", type(func).__qualname__)
    digest = hashlib.blake2b(digest_size=6)
    for part in _code_parts(func):
        digest.update(part)
    return f"pmap-{qualname}-{digest.hexdigest()}"


def _code_parts(func: Any) -> Iterable[bytes]:
    import inspect

    target = getattr(func, "func", func)  # functools.partial
    yield repr(getattr(func, "args", ())).encode() + repr(getattr(func, "keywords", {})).encode()
    yield str(getattr(target, "__module__", "")).encode()
    try:
        yield inspect.getsource(target).encode()
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        yield code.co_code if code is not None else repr(target).encode()
    captured = [getattr(target, "__defaults__", None), getattr(target, "__kwdefaults__", None)]
    captured += [cell.cell_contents for cell in getattr(target, "__closure__", None) or ()
                 if _has_contents(cell)]
    for value in captured:
        try:
            yield pickle.dumps(value, protocol=4)
        except Exception:  # noqa: BLE001 - unpicklable captures: their repr is the best we have
            yield repr(value).encode()


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


__all__ = ["PmapResults", "pmap"]
