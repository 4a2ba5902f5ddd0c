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
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from laufband import interrupts
from laufband.legacy import user_stacklevel

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    Helper = subprocess.Popen[bytes] | BaseProcess  # spawned or forked

START_METHODS = ("spawn", "fork")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
JOIN_GRACE = 5.0  # seconds helpers get to hand back and leave before they are killed
SETTLE = 0.5  # seconds after pmap raises for a Ctrl-C: more Ctrl-Cs are the same burst


class Job(Protocol):
    """What a helper runs: pmap's job (picklable with cloudpickle when ``func`` is)."""

    func: Callable[[Any], Any]
    by_value: bool

    def run(self, *, show_progress: bool, on_progress: Any = None,
            helper: bool = False) -> None:
        """Work until nothing is left that this process could run."""

    def stop(self) -> None:
        """Finish a loop that a signal left mid-task: hand back, store, go offline."""


def default_start_method() -> str:
    """Choose fork where it is fast and safe (Linux, one thread), else spawn.

    macOS frameworks and threads do not survive a fork.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "spawn"


def prepare_helpers(job: Job, count: int, method: str,
                    supervise: Callable[[Helpers], Any] | None = None,
                    ) -> Callable[[], Helpers]:
    """Return a function that starts ``count`` helper processes and returns them.

    The helpers are independent of each other; an unpicklable function fails here, at
    once. Calling what the function returns ends them. ``supervise(helpers)`` may
    return a supervisor (``stuck.Supervisor``) that kills and replaces stuck helpers.
    """
    if method == "fork":  # the helpers inherit everything: nothing to pickle
        return lambda: Helpers(partial(_fork_one, job), count, partial(_spawned, job),
                               supervise)
    import cloudpickle  # lambdas, closures and __main__ functions travel by value

    try:
        cloudpickle.dumps(job.func)
    except Exception as error:  # noqa: BLE001 - whatever fails, the message names it
        msg = (f"pmap cannot send {job.func!r} to worker processes ({error}): make it"
               " picklable, or pass start_method='fork'")
        raise ValueError(msg) from None

    def start() -> Helpers:
        spawn = _spawned(job)  # the items only now: most calls that spawn start none
        return Helpers(spawn or _none, count if spawn else 0, lambda: spawn, supervise)

    return start


def _none() -> Helper:
    msg = "no helper can be started"
    raise OSError(msg)


def _spawned(job: Job) -> Callable[[], Helper] | None:
    """Return a function that spawns one helper fed ``job`` (None: it cannot be sent)."""
    import cloudpickle

    try:
        # sys.path first, in a pickle of its own: the job may refer to modules that
        # only the caller's path finds (one beside its script).
        payload = pickle.dumps(list(sys.path)) + cloudpickle.dumps(job)
    except Exception as error:  # noqa: BLE001 - the caller still does all the work
        warnings.warn(f"pmap cannot send the items to worker processes ({error}), so"
                      " this process works alone: make them picklable, or pass"
                      " start_method='fork'", RuntimeWarning, stacklevel=2)
        return None
    return partial(_spawn_one, payload)


class Helpers:
    """The helper processes of one pmap call; calling it ends them (see ``_join``)."""

    def __init__(self, start_one: Callable[[], Helper], count: int,
                 more: Callable[[], Callable[[], Helper] | None],
                 supervise: Callable[[Helpers], Any] | None) -> None:
        """Start ``count`` helpers with ``start_one``; ``more()`` starts replacements."""
        self.procs: list[Helper] = []
        self._more = more
        for _ in range(count):
            try:
                self.procs.append(start_one())
            except OSError as error:  # e.g. the process limit: work on with those started
                warnings.warn(f"pmap started {len(self.procs)} of {count} helper processes"
                              f" ({error})", RuntimeWarning, stacklevel=3)
                break
        self._supervisor = supervise(self) if supervise is not None and self.procs else None

    def alive(self) -> list[tuple[int, Callable[[], None]]]:
        """Return the pid of each helper still running, and a function killing it."""
        return [(_end_of(proc)[0], partial(_kill, proc)) for proc in list(self.procs)
                if _end_of(proc)[1] is None]

    def replace(self) -> None:
        """Start a helper in place of one that was killed (spawned: no fork from a thread)."""
        start_one = self._more()
        if start_one is None:
            return
        try:
            self.procs.append(start_one())
        except OSError as error:
            warnings.warn(f"pmap could not replace a helper process ({error})",
                          RuntimeWarning, stacklevel=2)

    def wait(self) -> None:
        """Wait until every helper, replacements included, has ended by itself."""
        while True:
            procs = list(self.procs)
            for proc in procs:
                _wait(proc)
            looking = self._supervisor.looking if self._supervisor else contextlib.nullcontext()
            with looking:  # a helper it killed is replaced by then
                if len(self.procs) == len(procs):
                    return

    def interruption(self) -> BaseException | None:
        """Return what a helper that left on Ctrl-C or SIGTERM stands for, or None.

        A terminal's Ctrl-C (SLURM's SIGTERM) reaches every process of the job: a
        helper that ended on one says the call was interrupted.
        """
        for proc in self.procs:
            code = _end_of(proc)[1]
            if code in (128 + signal.SIGINT, -signal.SIGINT):
                return KeyboardInterrupt()
            if code in (128 + signal.SIGTERM, -signal.SIGTERM):
                return SystemExit(128 + signal.SIGTERM)
        return None

    def __call__(self) -> None:
        """End the helpers (the supervisor first: it replaces none meanwhile)."""
        killed: set[int] = set()
        if self._supervisor is not None:
            self._supervisor.stop()
            killed = self._supervisor.killed
        _join(self.procs, killed)


def _kill(proc: Helper) -> None:
    proc.kill()
    _wait(proc)


def _wait(proc: Helper) -> None:
    """Wait for a helper to end, spawned or forked."""
    if isinstance(proc, subprocess.Popen):
        proc.wait()
    else:
        proc.join()


def _fork_one(job: Job) -> Helper:
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(target=_forked_main, args=(job,),
                                                       daemon=True)
    proc.start()
    return proc


def _spawn_one(payload: bytes) -> Helper:
    proc = subprocess.Popen(_helper_command(), stdin=subprocess.PIPE)
    # The pipe holds 64 KiB and the helper reads only once its interpreter is up
    # (~0.1 s): a thread feeds it, so the caller works on meanwhile.
    threading.Thread(target=_feed, args=(proc, payload), daemon=True).start()
    return proc


def _feed(proc: subprocess.Popen[bytes], payload: bytes) -> None:
    stdin = proc.stdin  # a pipe: the helper was started with stdin=PIPE
    if stdin is None:
        return
    with contextlib.suppress(BrokenPipeError):  # a helper that died: the others work on
        stdin.write(payload)
        stdin.close()


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
    """Return the command line of a spawned helper, with SIGINT ignored until it runs."""
    action = "ignore" if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else "default"
    if os.name != "posix" or not Path("/bin/sh").exists():
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
    """Run a forked helper.

    Until its own handlers are in place (microseconds), it has the caller's.
    """
    sys.exit(_work_quietly(job))


def _work_quietly(job: Job) -> int:
    """Run a helper's loop and return its exit status.

    On the first Ctrl-C or SIGTERM it hands back what it holds and returns, printing
    nothing: the caller reports the interrupt. Signals that the caller ignores stay
    ignored.
    """
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
    """Interrupt a helper's loop as laufband's own handlers do, once.

    The current task is handed back; any later signal is ignored, so the hand-back
    runs to its end and the helper leaves quietly and promptly.
    """
    for other in SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    handler = interrupts.on_interrupt if signum == signal.SIGINT else interrupts.on_terminate
    handler(signum, frame)


@contextlib.contextmanager
def signals_held() -> Iterator[list[int]]:
    """Note SIGINT and SIGTERM instead of acting on them while the block runs.

    The caller ending its helpers: a second Ctrl-C must not cut that short. Yields the
    list of signals noted. Only the main thread receives signals: elsewhere nothing is
    held; ignored signals stay ignored (helpers forked meanwhile inherit that). The
    previous handlers are back when the block ends.
    """
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
    """Send the signals noted by ``signals_held`` again, now that the handlers are back.

    Each kind once: laufband's own handler marks the current task as interrupted.
    """
    for signum in dict.fromkeys(noted):
        signal.raise_signal(signum)


def interruption(noted: list[int]) -> BaseException | None:
    """Return what signals noted by ``signals_held`` mean once the handlers are back.

    That is the exception that Python's or laufband's handler raises, for the caller
    to raise where its traceback is short; a handler of the program's own gets the
    signal again.
    """
    for signum in dict.fromkeys(noted):
        handler = signal.getsignal(signum)
        if handler in (interrupts.on_interrupt, interrupts.on_terminate):
            try:  # it marks the tasks of laufband loops around pmap as interrupted
                handler(signum, None)
            except (KeyboardInterrupt, SystemExit) as error:
                return type(error)(*error.args)
        if handler is signal.default_int_handler:
            return KeyboardInterrupt()
        signal.raise_signal(signum)
    return None


def settle() -> None:
    """Drop further signals for ``SETTLE`` seconds: pmap is about to raise for one.

    They are the rest of an impatient burst (a second Ctrl-C while Python prints the
    traceback garbles it: "lost sys.stderr"). Then, or at the next pmap call, the
    handlers are what they were.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    until = time.monotonic() + SETTLE
    for signum in SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None and handler != signal.SIG_IGN:
            signal.signal(signum, _Settling(handler, until))


class _Settling:
    """The handler during ``settle``.

    It drops signals until ``until``, then puts the handler of before back and hands
    it the signal.
    """

    def __init__(self, previous: Any, until: float) -> None:
        self.previous, self.until = previous, until

    def __call__(self, signum: int, frame: Any) -> None:
        if time.monotonic() < self.until:
            return
        signal.signal(signum, self.previous)
        # Over Python's defaults, laufband's loops install their handlers: those that
        # started meanwhile saw ours and did not.
        if signum == signal.SIGINT and self.previous is signal.default_int_handler:
            interrupts.on_interrupt(signum, frame)
        elif signum == signal.SIGTERM and self.previous == signal.SIG_DFL:
            interrupts.on_terminate(signum, frame)
        elif callable(self.previous):
            self.previous(signum, frame)
        else:  # SIG_DFL of SIGINT: its default action
            signal.raise_signal(signum)


def _unsettled(handler: Any) -> Any:
    """Return a handler, or the one ``settle`` stands in for (a new pmap call ends it)."""
    return handler.previous if isinstance(handler, _Settling) else handler


def _join(procs: Sequence[Helper], killed_before: set[int] | None = None) -> None:
    """End the helpers once the caller's loop is over; warn of those that died before.

    Then no task in the job is pending or running, so they only wait to notice; after
    a Ctrl-C they hand back what they hold. SIGTERM makes them hand back anything
    claimed and go offline at once; those still there after ``JOIN_GRACE`` (stuck in
    user code that ignores signals) are killed, and reapers return their tasks. A
    helper that died on its own (a crash, the OOM killer) is named in a RuntimeWarning:
    the results are whole (the other workers computed its items), but it was news.
    """
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    deadline = time.monotonic() + JOIN_GRACE
    killed = set(killed_before or ())  # pids killed here: their end is no news
    for proc in procs:
        left = max(0.0, deadline - time.monotonic())
        if isinstance(proc, subprocess.Popen):
            try:
                proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed.add(_end_of(proc)[0])
        else:
            proc.join(timeout=left)
            if proc.is_alive():
                proc.kill()
                proc.join()
                killed.add(_end_of(proc)[0])
    # Only now, all reaped: a warning made an error (-W error) leaves no helper behind.
    _warn_unexpected_ends(procs, killed)


def _warn_unexpected_ends(procs: Sequence[Helper], killed: set[int]) -> None:
    """Warn about each reaped helper that ended unexpectedly, unless ``_join`` killed it."""
    for proc in procs:
        pid, code = _end_of(proc)
        problem = None if pid in killed else describe_end(pid, code)
        if problem is not None:
            warnings.warn(problem, RuntimeWarning, stacklevel=user_stacklevel())


def _end_of(proc: Helper) -> tuple[int, int | None]:
    """Return a helper's pid and exit status (None while it runs)."""
    if isinstance(proc, subprocess.Popen):
        return proc.pid, proc.returncode
    return proc.pid or 0, proc.exitcode  # pid: None only for one never started


# How a helper ends as it should: done (0); having handed back after a Ctrl-C or
# SIGTERM (130, 143: ``_work_quietly``); or by the default action of either signal
# before it had a job, holding nothing (-2, -15: a spawned helper starting up).
QUIET_ENDS = frozenset({0, 128 + signal.SIGINT, 128 + signal.SIGTERM,
                        -signal.SIGINT, -signal.SIGTERM})
_SHOW_WHERE = "run with PYTHONFAULTHANDLER=1 to see where"
_C_CRASH = ("a crash in C code", _SHOW_WHERE)
# The likely cause of a death by each signal, and a remedy (as loky's
# TerminatedWorkerError gives them). Keyed by name: Windows lacks some of the numbers.
CAUSES = {"SIGKILL": ("out of memory?", "if memory is short, pass a smaller n="),
          "SIGABRT": ("aborted by C code", _SHOW_WHERE),
          **dict.fromkeys(("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE"), _C_CRASH)}


def describe_end(pid: int, code: int | None) -> str | None:
    """Return one line naming how helper ``pid`` ended, or None if as helpers do.

    ``code`` is its exit status, negative for the signal that killed it (as both
    ``Popen.returncode`` and ``Process.exitcode`` give it).
    """
    if code is None or code in QUIET_ENDS:
        return None
    if code > 0:  # its task failed (sys.exit) or went back (os._exit): pmap says which
        return (f"pmap helper (pid {pid}) exited with status {code}: sys.exit() or"
                " os._exit() in the function, or an error printed above?")
    try:
        name = signal.Signals(-code).name
    except ValueError:  # a real-time signal, say: no name
        name = f"SIG{-code}"
    cause, remedy = CAUSES.get(name, ("", ""))
    line = f"pmap helper (pid {pid}) was killed by signal {-code} ({name})"
    line += f": {cause}" if cause else ""
    if not line.endswith("?"):
        line += "."
    # The reapers give its tasks back (up to max_killed_retries times each).
    line += " Its items went back to the other workers" + (f"; {remedy}" if remedy else "")
    return line + "."
