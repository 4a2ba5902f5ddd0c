"""The joblib backend "laufband": resumable, shareable ``joblib.Parallel``.

::

    Parallel ── configure: take every call at once (pre_dispatch="all", huge batches)
       │
       ├─ submit(batch) ─> queue ─> runner thread: drain the queue, pmap all calls
       │                                (task key = function digest + args digest)
       └─ callbacks <──────────────── results per batch, fired from the runner thread

Each call is a laufband task, so a re-run computes nothing, and two processes (or
MPI ranks) running the same Parallel share the calls and both get every result.
"""

from __future__ import annotations

import functools
import hashlib
import os
import queue
import threading
from concurrent.futures import Future
from contextlib import suppress
from typing import Any, NamedTuple

from joblib import parallel_config, register_parallel_backend
from joblib.parallel import ParallelBackendBase, SequentialBackend

from laufband.memo import default_name
from laufband.pmap import pmap
from laufband.stablepickle import stable_dumps
from laufband.timeouts import wraps_user_code


class Call(NamedTuple):
    """One joblib call; ``laufband failures`` shows a failed one as ``f(3, scale=2)``."""

    func: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __repr__(self) -> str:
        """Return the call as written: ``f(3, scale=2)``."""
        name = getattr(self.func, "__qualname__", None) or type(self.func).__name__
        words = [*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())]
        return f"{name}({', '.join(words)})"


# joblib ships no types (and joblib-stubs needs Python 3.11): its base class is Any here
class LaufbandBackend(ParallelBackendBase):  # type: ignore[misc]
    """Run joblib calls as laufband tasks in a state directory.

    Args:
        path: State directory (default ``./.laufband``).
        name: Workflow name (default ``joblib-`` and the first call's function name).
        start_method: How helper processes start, as for :func:`laufband.pmap`.
        **options: Passed on to :func:`laufband.pmap` (and its workers), e.g.
            ``timeout=`` seconds per call (``parallel_config(backend="laufband",
            timeout=60)``): a call running longer is interrupted and fails with a
            ``TimeoutError``. With a timeout every call runs in a helper process
            (the calling process's runner thread could not be interrupted).
    """

    supports_retrieve_callback = True
    supports_timeout = False
    uses_threads = False
    supports_sharedmem = False

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None, **options: Any) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads)
        self._options = options
        self._workers = 1
        self._queue: queue.Queue[tuple[Any, Future[list[Any]]] | None] = queue.Queue()
        self._runner: threading.Thread | None = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Return how many workers ``n_jobs`` asks for, at least 2."""
        # joblib runs n_jobs == 1 itself, bypassing the backend: report at least 2 so
        # that even one worker goes through laufband (and its memoisation).
        return max(2, _workers(n_jobs))

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **backend_kwargs: Any) -> int:
        """Prepare for one ``Parallel`` call; return the number of workers."""
        self.parallel = parallel
        self._workers = _workers(n_jobs)
        if parallel is not None:
            # Our workers share calls by key, not by dispatch order: hand them all
            # calls at once rather than 2 x n_jobs at a time.
            parallel.pre_dispatch = "all"
        return self.effective_n_jobs(n_jobs)

    def compute_batch_size(self) -> int:
        """Return a batch size that puts every call into one of n_jobs batches."""
        return 1 << 30  # joblib then splits all calls into n_jobs batches

    def start_call(self) -> None:
        """Start the runner thread that computes submitted batches."""
        self._runner = threading.Thread(target=self._run, name="laufband-joblib",
                                        daemon=True)
        self._runner.start()

    def stop_call(self) -> None:
        """Let the runner thread finish what was submitted, and wait for it."""
        if self._runner is not None:
            self._queue.put(None)
            self._runner.join()
            self._runner = None

    def submit(self, func: Any, callback: Any = None) -> Future[list[Any]]:
        """Queue one of joblib's batches; ``callback`` runs when its results are in."""
        future: Future[list[Any]] = Future()
        if callback is not None:
            # Called from the runner thread: never inside submit, where thousands
            # of cached results would recurse through joblib's dispatch.
            future.add_done_callback(callback)
        self._queue.put((func, future))
        return future

    def retrieve_result_callback(self, future: Future[list[Any]]) -> list[Any]:
        """Return a batch's results (or raise its first error)."""
        return future.result()

    def get_nested_backend(self) -> tuple[ParallelBackendBase, None]:
        """Run a Parallel nested in a call sequentially."""
        level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=level), None

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batches = [first]
            while True:  # everything joblib dispatched meanwhile goes into one pmap
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batches.append(more)
            self._compute(batches)

    def _compute(self, batches: list[tuple[Any, Future[list[Any]]]]) -> None:
        calls = [Call(*call) for batch, _ in batches for call in batch.items]
        options = dict(self._options)
        names: dict[Any, str] = {}
        name = options.pop("name", None) or f"joblib-{_function_name(calls[0][0], names)}"
        try:
            results = pmap(_call, calls, n=self._workers, name=name,
                           key=functools.partial(_call_key, names=names),
                           on_error="return", progress=False, **options)
        except BaseException as error:  # noqa: BLE001 - handed to joblib, which re-raises
            for _, future in batches:
                future.set_exception(error)
            return
        start = 0
        for batch, future in batches:
            outcome = results[start:start + len(batch.items)]
            start += len(batch.items)
            errors = [r for r in outcome if isinstance(r, BaseException)]
            if errors:
                future.set_exception(errors[0])
            else:
                future.set_result(outcome)


def _workers(n_jobs: int | None) -> int:
    """Resolve ``n_jobs`` by joblib's convention: None is 1, -1 all cores, -2 all but one."""
    if n_jobs is None:
        return 1
    if n_jobs == 0:
        msg = "n_jobs == 0 has no meaning for the laufband backend: use 1 or more, or -1"
        raise ValueError(msg)
    return n_jobs if n_jobs > 0 else max((os.cpu_count() or 1) + 1 + n_jobs, 1)


_worker_thread = threading.local()


@wraps_user_code  # a timeout interrupts the user's function through it
def _call(call: Call) -> Any:
    if not getattr(_worker_thread, "sequential", False):
        # A nested Parallel runs sequentially in this worker. The threads that call
        # this (the runner thread, helper processes) are ours: configure each once for
        # its lifetime rather than enter a parallel_config (~4 us) per call.
        parallel_config(backend="sequential").__enter__()
        _worker_thread.sequential = True
    func, args, kwargs = call
    return func(*args, **kwargs)


def _function_name(func: Any, names: dict[Any, str]) -> str:
    """Return the function's name and code digest, computed once per function.

    Kept in ``names``, one Parallel call's: a callable object's state may change
    between calls.
    """
    try:
        return names[func]
    except (KeyError, TypeError):
        name = default_name(func).removeprefix("pmap-")
    with suppress(TypeError):  # an unhashable callable: digested again next time
        names[func] = name
    return name


_WRITTEN_OUT = frozenset((int, str))  # argument types a key spells out instead of hashing
_WRITTEN_LIMIT = 200  # characters: longer arguments are hashed


def _call_key(call: Call, names: dict[Any, str]) -> str:
    """Return the task key of one call: its function (name and code digest) and arguments.

    The arguments are written out when they are ints and short strings, else the key is
    a digest of the pickled call.
    """
    func, args, kwargs = call
    name = _function_name(func, names)
    if not kwargs and set(map(type, args)) <= _WRITTEN_OUT:
        written = repr(args)  # exact ints and strs: distinct reprs for distinct args
        if len(written) <= _WRITTEN_LIMIT:
            return name + written
    material = (name, args, kwargs)
    try:
        payload = stable_dumps(material)
    except Exception:  # noqa: BLE001 - lambdas and closures among the arguments
        import cloudpickle

        payload = cloudpickle.dumps(material)
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


register_parallel_backend("laufband", LaufbandBackend)
