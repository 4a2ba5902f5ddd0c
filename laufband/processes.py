"""Helper processes for pmap: started by fork or spawn, fed their job, ended.

Plain processes rather than a pool: a helper that dies takes no other helper with it
(a pool that kills its other workers would count kills against their innocent
tasks), and the caller's own loop takes over whatever it held. Spawned helpers are
fresh interpreters fed the cloudpickled job on stdin: unlike multiprocessing's spawn
and forkserver they never re-run the caller's script, so no
``if __name__ == "__main__":`` guard is needed.
"""

from __future__ import annotations

import contextlib
import pickle
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any, Protocol

START_METHODS = ("spawn", "fork")


class Job(Protocol):
    """What a helper runs: pmap's job (picklable with cloudpickle when ``func`` is)."""

    func: Callable[[Any], Any]
    by_value: bool

    def run(self, show_progress: bool, on_progress: Any = None,
            helper: bool = False) -> None: ...


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
        proc = context.Process(target=job.run, args=(False, None, True), daemon=True)
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
            proc = subprocess.Popen([sys.executable, "-c", _HELPER], stdin=subprocess.PIPE)
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


_HELPER = "from laufband.processes import helper_main; helper_main()"


def helper_main() -> None:
    """Entry point of a spawned helper: read sys.path, then the job, from stdin; work."""
    stdin = sys.stdin.buffer
    sys.path[:] = pickle.load(stdin)  # where the caller finds the modules its job needs
    job = pickle.load(stdin)
    job.by_value = True  # results may be of classes only the caller's __main__ has
    job.run(show_progress=False, helper=True)


def _join(procs: list[Any]) -> None:
    """End the helpers once the caller's loop is over: then no task in the job is
    pending or running, so they only wait to notice. SIGTERM makes them hand back
    anything claimed (after an interrupt) and go offline at once."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    for proc in procs:
        if isinstance(proc, subprocess.Popen):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # stuck in user code that ignores SIGTERM
                proc.kill()
                proc.wait()
        else:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
