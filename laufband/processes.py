"""Helper processes for pmap: started by fork or spawn, fed their job, ended.

Plain processes rather than a pool: a helper that dies takes no other helper with it
(a pool that kills its other workers would count kills against their innocent
tasks), and the caller's own loop takes over whatever it held. Spawned helpers are
fresh interpreters fed the cloudpickled job on stdin: unlike multiprocessing's spawn
and forkserver they never re-run the caller's script, so no
``if __name__ == "__main__":`` guard is needed.

A terminal's Ctrl-C reaches every process of the group: a helper hands back what it
holds and leaves without a word (one traceback, the caller's, is enough), and ignores
any further signal meanwhile. The caller notes signals while it ends the helpers
(``signals_held``), so a second Ctrl-C cannot cut that short.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from laufband import graphband

START_METHODS = ("spawn", "fork")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
JOIN_GRACE = 5.0  # seconds helpers get to hand back and leave before they are killed
SETTLE = 0.5  # seconds after pmap raises for a Ctrl-C: more Ctrl-Cs are the same burst


class Job(Protocol):
    """What a helper runs: pmap's job (picklable with cloudpickle when ``func`` is)."""

    func: Callable[[Any], Any]
    by_value: bool

    def run(self, show_progress: bool, on_progress: Any = None,
            helper: bool = False) -> None: ...

    def stop(self) -> None: ...


def default_start_method() -> str:
    """Fork where it is fast and safe (Linux, one thread); elsewhere spawn (macOS
    frameworks and threads do not survive a fork)."""
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "spawn"


def prepare_helpers(job: Job, count: int,
                    method: str) -> Callable[[], Callable[[], None]]:
    """Return a function that starts ``count`` independent helper processes and
    returns a function that ends them; an unpicklable function fails here, at once."""
    if method == "fork":  # the helpers inherit everything: nothing to pickle
        return lambda: _fork_helpers(job, count)
    import cloudpickle  # lambdas, closures and __main__ functions travel by value

    try:
        cloudpickle.dumps(job.func)
    except Exception as error:
        msg = (f"pmap cannot send {job.func!r} to worker processes ({error}): make it"
               " picklable, or pass start_method='fork'")
        raise ValueError(msg) from None

    def start() -> Callable[[], None]:
        try:  # the items only now: most calls that spawn start no helper at all
            # sys.path first, in a pickle of its own: the job may refer to modules
            # that only the caller's path finds (one beside its script).
            payload = pickle.dumps(list(sys.path)) + cloudpickle.dumps(job)
        except Exception as error:  # noqa: BLE001 - the caller still does all the work
            warnings.warn(f"pmap cannot send the items to worker processes ({error}), so"
                          " this process works alone: make them picklable, or pass"
                          " start_method='fork'", RuntimeWarning, stacklevel=2)
            return lambda: None
        return _spawn_helpers(payload, count)

    return start


def _fork_helpers(job: Job, count: int) -> Callable[[], None]:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    forked = []
    for _ in range(count):
        proc = context.Process(target=_forked_main, args=(job,), daemon=True)
        try:
            proc.start()
        except OSError as error:  # e.g. the process limit: work on with those started
            warnings.warn(f"pmap started {len(forked)} of {count} helper processes"
                          f" ({error})", RuntimeWarning, stacklevel=2)
            break
        forked.append(proc)
    return lambda: _join(forked)


def _spawn_helpers(payload: bytes, count: int) -> Callable[[], None]:
    spawned = []
    for _ in range(count):
        try:
            proc = subprocess.Popen(_helper_command(), stdin=subprocess.PIPE)
        except OSError as error:  # e.g. the process limit: work on with those started
            warnings.warn(f"pmap started {len(spawned)} of {count} helper processes"
                          f" ({error})", RuntimeWarning, stacklevel=2)
            break
        # The pipe holds 64 KiB and the helper reads only once its interpreter is up
        # (~0.1 s): a thread feeds it, so the caller works on meanwhile.
        threading.Thread(target=_feed, args=(proc, payload), daemon=True).start()
        spawned.append(proc)
    return lambda: _join(spawned)


def _feed(proc: subprocess.Popen[bytes], payload: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # a helper that died: the others work on
        proc.stdin.write(payload)
        proc.stdin.close()


# A spawned helper starts with SIGINT ignored (a shell's ``trap '' INT``, kept across
# exec): a Ctrl-C while its interpreter starts would otherwise end it with "Fatal
# Python error: init_import_site" and a traceback. Then, until it has a job, Ctrl-C or
# SIGTERM ends it silently (the default actions print nothing; it holds nothing yet).
# The caller ends its helpers with SIGTERM anyway. A SIGINT the caller ignores (a
# background job of a script) stays ignored.
_HELPER = ("import signal, sys\n"
           "if sys.argv[1] == 'default':\n"
           "    signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
           "from laufband.processes import helper_main\n"
           "helper_main()\n")


def _helper_command() -> list[str]:
    """The command line of a spawned helper, with SIGINT ignored until it runs."""
    action = "ignore" if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else "default"
    if os.name != "posix" or not os.path.exists("/bin/sh"):
        return [sys.executable, "-c", _HELPER, action]
    return ["/bin/sh", "-c", 'trap "" INT; exec "$0" -c "$1" "$2"', sys.executable,
            _HELPER, action]


def helper_main() -> None:
    """Entry point of a spawned helper: read sys.path, then the job, from stdin; work."""
    stdin = sys.stdin.buffer
    try:
        sys.path[:] = pickle.load(stdin)  # where the caller finds the modules its job needs
        job = pickle.load(stdin)
    except EOFError:  # the caller was gone (or gave up on us) before it sent the job
        sys.exit(1)
    job.by_value = True  # results may be of classes only the caller's __main__ has
    sys.exit(_work_quietly(job))


def _forked_main(job: Job) -> None:
    """Entry point of a forked helper. Until its handlers are in place (microseconds),
    it has the caller's."""
    sys.exit(_work_quietly(job))


def _work_quietly(job: Job) -> int:
    """Run a helper's loop; on the first Ctrl-C or SIGTERM hand back what it holds and
    return the exit status, printing nothing: the caller reports the interrupt.
    Signals that the caller ignores stay ignored."""
    for signum in SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _leave)
    try:
        job.run(show_progress=False, helper=True)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except SystemExit as error:  # SIGTERM (laufband's handler), or the function's exit
        return error.code if isinstance(error.code, int) else 1
    finally:
        job.stop()  # a hand-back that the signal found half done is finished
    return 0


def _leave(signum: int, frame: Any) -> None:
    """A helper's handler: the first signal interrupts the loop as laufband's own
    handlers do (the current task is handed back); any later one is ignored, so the
    hand-back runs to its end and the helper leaves quietly and promptly."""
    for other in SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    handler = graphband.on_interrupt if signum == signal.SIGINT else graphband.on_terminate
    handler(signum, frame)


@contextlib.contextmanager
def signals_held() -> Iterator[list[int]]:
    """Note SIGINT and SIGTERM instead of acting on them while the block runs (the
    caller ending its helpers: a second Ctrl-C must not cut that short); yield the
    list of signals noted. Only the main thread receives signals: elsewhere nothing is
    held; ignored signals stay ignored (helpers forked meanwhile inherit that). The
    previous handlers are back when the block ends."""
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous = {signum: _unsettled(signal.signal(signum, lambda n, _: noted.append(n)))
                for signum in SIGNALS if signal.getsignal(signum) != signal.SIG_IGN}
    try:
        yield noted
    finally:
        for signum, handler in previous.items():
            # None: a handler not installed from Python, which cannot be put back.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def redeliver(noted: list[int]) -> None:
    """Send the signals noted by ``signals_held`` again, now that the handlers are back
    (each kind once): laufband's own handler marks the current task as interrupted."""
    for signum in dict.fromkeys(noted):
        signal.raise_signal(signum)


def interruption(noted: list[int]) -> BaseException | None:
    """What signals noted by ``signals_held`` mean once the handlers are back: the
    exception that Python's or laufband's handler raises, for the caller to raise where
    its traceback is short; a handler of the program's own gets the signal again."""
    for signum in dict.fromkeys(noted):
        handler = signal.getsignal(signum)
        if handler in (graphband.on_interrupt, graphband.on_terminate):
            try:  # it marks the tasks of laufband loops around pmap as interrupted
                handler(signum, None)
            except (KeyboardInterrupt, SystemExit) as error:
                return type(error)(*error.args)
        if handler is signal.default_int_handler:
            return KeyboardInterrupt()
        signal.raise_signal(signum)
    return None


def settle() -> None:
    """After a Ctrl-C (or SIGTERM) that pmap is about to raise: drop further signals for
    ``SETTLE`` seconds, the rest of an impatient burst (a second Ctrl-C while Python
    prints the traceback garbles it: "lost sys.stderr"). Then, or at the next pmap
    call, the handlers are what they were."""
    if threading.current_thread() is not threading.main_thread():
        return
    until = time.monotonic() + SETTLE
    for signum in SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None and handler != signal.SIG_IGN:
            signal.signal(signum, _Settling(handler, until))


class _Settling:
    """The handler during ``settle``: drops signals until ``until``, then puts the
    handler of before back and hands it the signal."""

    def __init__(self, previous: Any, until: float) -> None:
        self.previous, self.until = previous, until

    def __call__(self, signum: int, frame: Any) -> None:
        if time.monotonic() < self.until:
            return
        signal.signal(signum, self.previous)
        # Over Python's defaults, laufband's loops install their handlers: those that
        # started meanwhile saw ours and did not.
        if signum == signal.SIGINT and self.previous is signal.default_int_handler:
            graphband.on_interrupt(signum, frame)
        elif signum == signal.SIGTERM and self.previous == signal.SIG_DFL:
            graphband.on_terminate(signum, frame)
        elif callable(self.previous):
            self.previous(signum, frame)
        else:  # SIG_DFL of SIGINT: its default action
            signal.raise_signal(signum)


def _unsettled(handler: Any) -> Any:
    """A handler, or the one ``settle`` stands in for (a new pmap call ends settling)."""
    return handler.previous if isinstance(handler, _Settling) else handler


def _join(procs: list[Any]) -> None:
    """End the helpers once the caller's loop is over: then no task in the job is
    pending or running, so they only wait to notice; after a Ctrl-C they hand back
    what they hold. SIGTERM makes them hand back anything claimed and go offline at
    once; those still there after ``JOIN_GRACE`` (stuck in user code that ignores
    signals) are killed, and reapers return their tasks."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    deadline = time.monotonic() + JOIN_GRACE
    for proc in procs:
        left = max(0.0, deadline - time.monotonic())
        if isinstance(proc, subprocess.Popen):
            try:
                proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        else:
            proc.join(timeout=left)
            if proc.is_alive():
                proc.kill()
                proc.join()
