"""Store transactions off the task path: one at a time, in a thread of the worker's own.

A worker's loop hands a transaction (write what finished, claim the next batch) to
its :class:`Background` and keeps running tasks; it collects the outcome at a task
boundary, or waits for it only when it has nothing else to run. The thread starts
with the first transaction, after ``pmap`` has forked its helpers, and signals never
reach it (Python delivers them to the main thread): a transaction it began always
commits or rolls back whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from laufband.store import SHIELD

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from laufband.store import Store

T = TypeVar("T")


class Background(Generic[T]):
    """At most one store transaction of a worker running in a background thread."""

    def __init__(self, store: Store) -> None:
        """Run transactions on ``store`` (the thread opens its own connection)."""
        self._store = store
        self._executor: ThreadPoolExecutor | None = None
        self._future: Future[T] | None = None

    @property
    def idle(self) -> bool:
        """Whether no transaction was handed over, or its outcome was collected."""
        return self._future is None

    @property
    def ready(self) -> bool:
        """Whether a transaction was handed over and has ended (collect it)."""
        return self._future is not None and self._future.done()

    def submit(self, turn: Callable[[], T]) -> None:
        """Start ``turn`` in the background; only when :attr:`idle`."""
        if self._future is not None:
            msg = "a background transaction is still running: collect it first"
            raise RuntimeError(msg)
        # A Ctrl-C or SIGTERM here waits until the future is ours (raised as the shield
        # is left): one landing as the executor starts its thread left a thread that it
        # never took note of, which interpreter exit then waited for forever, and a
        # transaction running that nobody collected.
        SHIELD.enter()
        try:
            if self._executor is None:
                # Imported here: `import laufband` stays a few milliseconds shorter.
                from concurrent.futures import ThreadPoolExecutor

                self._executor = ThreadPoolExecutor(1, thread_name_prefix="laufband-store")
            self._future = self._executor.submit(turn)
        finally:
            SHIELD.leave()

    def collect(self) -> T:
        """Wait for the transaction handed over and return its outcome (or raise its error).

        An interrupt while waiting leaves it to be collected later.
        """
        future = self._future
        if future is None:
            msg = "no background transaction to collect"
            raise RuntimeError(msg)
        try:
            return future.result()
        finally:
            if future.done():
                self._future = None

    def close(self) -> None:
        """Close the thread's connection and end the thread (collect first).

        At interpreter exit the thread has ended already (concurrent.futures shuts
        its executors down before atexit callbacks run): nothing is left to close.
        """
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            executor.submit(self._store.close).result()
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            pass
        finally:
            executor.shutdown(wait=True)
