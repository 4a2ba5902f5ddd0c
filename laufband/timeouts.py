"""Interrupt a loop body that runs past its task's timeout.

The heartbeat thread calls a :class:`TimeoutWatch` every ``WATCH_EVERY`` seconds (as
it calls the overrun watch). Once the task in the loop body has run past its limit,
the watch notes it as overdue and tells the loop (``on_overdue``), then sends SIGALRM
to the main thread, whose handler raises :class:`~laufband.errors.TaskTimeoutError`
there (a blocking call such as ``time.sleep`` returns early: the signal interrupts
it)::

    heartbeat thread: task seen running > limit ─> overdue = (task, error),
          │                                          on_overdue(), pthread_kill(SIGALRM)
          │ every 50 ms while the task stays overdue and the error is not delivered
          v
    main thread, between two bytecodes: still that task, in the body (no laufband
          frame between the interrupted frame and the body's)? raise the error there;
          else nothing (the watch sends again)

So the error never lands in laufband's own code (a store transaction, the loop
between tasks), nor in a later task. A body that catches the error and goes on, or
that cannot be interrupted (C code holding the GIL), still fails with it: the loop
fails the overdue task once its body returns (``on_overdue``); and the loop, timing
each body while timeouts are set, fails a task whose body returned past its limit
though the heartbeat thread never ran meanwhile (``ran``). Only a loop running in
the main thread is interrupted; elsewhere the task fails when its body returns.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from laufband.errors import TaskTimeoutError
from laufband.store import SHIELD

if TYPE_CHECKING:
    from laufband.session import WorkerSession

F = TypeVar("F", bound=Callable[..., Any])

# Frames of laufband's own code (code objects name their file as it was imported).
PACKAGE = str(Path(__file__).parent) + os.sep
_WRAPPERS: set[CodeType] = set()  # laufband functions that only call the user's


def wraps_user_code(func: F) -> F:
    """Mark a laufband function that only calls user code (the joblib backend's call).

    A timeout is raised in it, and in what it calls, as in the user's own code.
    """
    _WRAPPERS.add(func.__code__)
    return func


class TimeoutWatch:
    """Called by the heartbeat thread: interrupts a body that runs past its limit."""

    def __init__(self, session: WorkerSession, limit_of: Callable[[int], float | None],
                 name_of: Callable[[int], str], on_overdue: Callable[[], None],
                 body: Any) -> None:
        """Watch ``session``; ``body`` is the code object that runs the loop body."""
        self._session = session
        self._limit_of, self._name_of, self._on_overdue = limit_of, name_of, on_overdue
        self._body = body
        self._task: int | None = None  # the task seen in the loop body
        self._since = 0.0  # when it was first seen there
        self._sent = 0.0  # when the error was last sent (or delivered)
        self._overdue: tuple[int, TaskTimeoutError] | None = None
        self._undelivered = False
        self._main = threading.get_ident() == threading.main_thread().ident
        self._previous: Any = None
        if self._main:
            self._previous = signal.signal(signal.SIGALRM, self._on_alarm)

    def close(self) -> None:
        """Put the SIGALRM handler of before back (the loop stopped)."""
        if self._main and signal.getsignal(signal.SIGALRM) == self._on_alarm:
            signal.signal(signal.SIGALRM, self._previous)

    def take_overdue(self, seq: int) -> TaskTimeoutError | None:
        """Return the error of task ``seq`` if it ran past its limit (loop side)."""
        overdue = self._overdue
        if overdue is None or overdue[0] != seq:
            return None
        return overdue[1]

    def ran(self, seq: int, seconds: float) -> None:
        """Note that task ``seq``'s body returned after ``seconds`` (loop side).

        Past its limit, the task is overdue even if the heartbeat thread never saw it
        so (C code holding the GIL kept it from running): the loop then fails it.
        """
        limit = self._limit_of(seq)
        if limit is None or seconds < limit:
            return
        overdue = self._overdue
        if overdue is None or overdue[0] != seq:
            error = TaskTimeoutError(f"{self._name_of(seq)} timed out after {limit:g} s",
                                     task=self._name_of(seq), seconds=limit)
            self._sent, self._undelivered = time.monotonic(), False
            self._overdue = (seq, error)
        self._on_overdue()

    def __call__(self) -> None:
        """Look once (heartbeat thread): note and interrupt a task past its limit."""
        task, now = self._session.current, time.monotonic()
        if task is None or task != self._task:
            self._task, self._since, self._sent = task, now, 0.0
            return
        limit = self._limit_of(task)
        if limit is None or now - self._since < limit:
            return
        overdue = self._overdue
        if overdue is None or overdue[0] != task:
            error = TaskTimeoutError(f"{self._name_of(task)} timed out after {limit:g} s",
                                     task=self._name_of(task), seconds=limit)
            self._overdue, self._undelivered = (task, error), True
            self._on_overdue()
        elif not self._undelivered and now - self._sent < limit:
            return  # delivered: again only if the body swallowed it for another limit
        else:
            self._undelivered = True
        self._sent = now
        # Not while the body has a SIGALRM handler of its own in place (an alarm-based
        # timeout of its own): it would get ours. The task fails when it returns.
        if self._main and signal.getsignal(signal.SIGALRM) == self._on_alarm:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGALRM)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        """Raise the overdue task's error in the body, if the main thread runs it now."""
        overdue = self._overdue
        if overdue is None or not self._undelivered:
            if callable(self._previous):  # not ours: the program's own alarm
                self._previous(signum, frame)
            return
        seq, error = overdue
        if self._session.current != seq or SHIELD.depth > 0 or not self._in_body(frame):
            return  # the body ended, or laufband's own code runs: the watch sends again
        self._undelivered = False
        raise error.with_traceback(None)

    def _in_body(self, frame: FrameType | None) -> bool:
        """Whether ``frame`` runs the loop body.

        That is: it or a caller runs the body's code, with no laufband frame between
        (but those of :func:`wraps_user_code`).
        """
        while frame is not None:
            if frame.f_code is self._body:
                return True
            if frame.f_code.co_filename.startswith(PACKAGE) and frame.f_code not in _WRAPPERS:
                return False
            frame = frame.f_back
        return False


def watches(*calls: Callable[[], None]) -> Callable[[], None]:
    """Return one watch calling each of ``calls`` in turn."""
    def watch() -> None:
        for call in calls:
            call()

    return watch
