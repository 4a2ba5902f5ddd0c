"""Handle signals and exit for the running workers of this process.

Signals and exit: what happens to the running workers of this process when Ctrl-C,
SIGTERM (SLURM's time limit) or the interpreter's exit arrives.

Loops register themselves while they run (:func:`track`) with two hooks: one noting
that a signal arrived during the current task (it goes back to pending, not failed),
and one finishing a stop that a signal cut short. Their tasks are then handed back
at the next start in this process or at exit, not after a heartbeat timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from laufband.errors import StateError
from laufband.failuretext import failure_record
from laufband.store import SHIELD, Store


class Hooks(NamedTuple):
    """Hold what a tracked loop does on a signal, and to stop.

    What a tracked loop does on a signal, and to stop: ``stop(loop, cut_short_only)``
    finishes a stop that a signal cut short, or with False any stop still due.
    """

    on_signal: Callable[[Any], None]
    stop: Callable[..., None]


class Failure(NamedTuple):
    """Describe a failure recorded without its error text.

    A failure recorded without its error text: the text is only known once the
    exception has left the loop (at exit, from ``sys.last_value``).
    """

    owner: int  # id() of the loop that recorded it
    store: Store
    wf: int
    seq: int
    worker: int
    loop_code: Any  # the code object running the for-loop


_live: weakref.WeakKeyDictionary[Any, Hooks] = weakref.WeakKeyDictionary()
_undescribed: dict[str, Failure] = {}


def track(loop: Any, hooks: Hooks) -> None:
    """Register a running loop: signals and exit reach it until :func:`untrack`."""
    _live[loop] = hooks


def untrack(loop: Any) -> None:
    """Forget a loop that stopped: it has nothing left to hand back."""
    _live.pop(loop, None)


def finish_cut_short_stops() -> None:
    """Finish the stops of this process's loops that a signal cut short.

    Finish the stops of this process's loops that a signal cut short (their tasks
    would otherwise wait for a heartbeat timeout).
    """
    _stop_tracked(cut_short_only=True)


def _stop_tracked(*, cut_short_only: bool) -> None:
    for loop, hooks in list(_live.items()):
        with contextlib.suppress(StateError):
            hooks.stop(loop, cut_short_only=cut_short_only)


def watch_signals() -> None:
    """Hand the interrupted task back on Ctrl-C and on SIGTERM.

    Hand the interrupted task back on Ctrl-C and on SIGTERM (which would otherwise
    end the process with no cleanup at all). Handlers the program installed itself
    are left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_interrupt)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_terminate)


def on_interrupt(signum: int, frame: Any) -> None:
    """Handle SIGINT: hand the running tasks back, then raise KeyboardInterrupt.

    Laufband's SIGINT handler: the running tasks go back to pending, then
    KeyboardInterrupt (pmap's helpers call it from their own quiet handler).
    """
    _note_signal()
    SHIELD.deliver(KeyboardInterrupt())  # at once, or as the state lock is released


def on_terminate(signum: int, frame: Any) -> None:
    """Laufband's SIGTERM handler: as for SIGINT, then SystemExit(143)."""
    _note_signal()
    SHIELD.deliver(SystemExit(128 + signum))  # unwinds the loop: cleanup runs


def _note_signal() -> None:
    for loop, hooks in list(_live.items()):
        hooks.on_signal(loop)


def remember_failure(failure: Failure) -> None:
    """Keep a failure recorded without error text, to describe it at exit."""
    _undescribed["latest"] = failure


def describe_failure(loop: Any, error: BaseException) -> None:
    """Give the latest failure ``loop`` recorded its error text and traceback (``__exit__``)."""
    latest = _undescribed.get("latest")
    if latest is not None and latest.owner == id(loop):
        _describe(_undescribed.pop("latest"), error)


def _describe(failure: Failure, error: BaseException) -> None:
    record = failure_record(failure.seq, error)
    with failure.store.transaction() as tx:
        tx.describe_failure(failure.wf, failure.worker, record)
    failure.store.close()


def _raised_in(code: Any) -> bool:
    """Whether the uncaught exception passed through ``code`` (the loop's frame)."""
    tb = getattr(sys, "last_traceback", None)
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


@atexit.register
def _stop_all() -> None:
    """At exit, let no live worker leave its tasks running; name uncaught errors."""
    latest = _undescribed.pop("latest", None)
    error = getattr(sys, "last_value", None)
    if latest is not None and error is not None and _raised_in(latest.loop_code):
        _describe(latest, error)
    # A hand-back that an interrupt cut short is tried once more; if it cannot be done
    # now, the tasks stay ours and reapers return them once we are gone.
    _stop_tracked(cut_short_only=False)
