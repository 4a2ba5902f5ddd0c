"""A pmap helper that dies on its own (a crash in C code, the OOM killer's SIGKILL) is
named in a RuntimeWarning once the call is over; the other workers compute its items,
so the results are whole. Helpers that end as they should say nothing."""

from __future__ import annotations

import os
import resource
import signal
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from laufband import pmap
from laufband.processes import describe_end
from tests.helpers.procs import Processes, wait_for

pytestmark = pytest.mark.timeout(120)

# Enough items that pmap finds spawning a helper worth it, whatever its first estimate
# (items x at least 30 ms of start-up > 1 s: pmap's PROBE and HELPER_START).
ITEMS = 40
WORK = 0.02  # seconds each item takes: the work itself, not a synchronisation
HELPER_DEADLINE = 60.0  # seconds a helper may take to start and take an item
KILLED = ("pmap helper (pid {pid}) was killed by signal 9 (SIGKILL): out of memory? Its"
          " items went back to the other workers; if memory is short, pass a smaller n=.")
CRASHED = ("pmap helper (pid {pid}) was killed by signal 11 (SIGSEGV): a crash in C code."
           " Its items went back to the other workers; run with PYTHONFAULTHANDLER=1 to"
           " see where.")
EXPECTED = {signal.SIGKILL: KILLED, signal.SIGSEGV: CRASHED}


@pytest.mark.parametrize("code", [0, 130, 143, -signal.SIGINT, -signal.SIGTERM, None])
def test_normal_ends_are_not_described(code: int | None) -> None:
    # Done; handed back after Ctrl-C or SIGTERM; ended by either before it had a job;
    # not ended at all.
    assert describe_end(1234, code) is None


@pytest.mark.parametrize(("code", "line"), [
    (-9, KILLED.format(pid=1234)),
    (-11, CRASHED.format(pid=1234)),
    (-6, ("pmap helper (pid 1234) was killed by signal 6 (SIGABRT): aborted by C code. Its"
          " items went back to the other workers; run with PYTHONFAULTHANDLER=1 to see"
          " where.")),
    (-1, ("pmap helper (pid 1234) was killed by signal 1 (SIGHUP). Its items went back to"
          " the other workers.")),
    (-40, ("pmap helper (pid 1234) was killed by signal 40 (SIG40). Its items went back to"
           " the other workers.")),
    (3, ("pmap helper (pid 1234) exited with status 3: sys.exit() or os._exit() in the"
         " function, or an error printed above?")),
])
def test_unexpected_ends_are_named(code: int, line: str) -> None:
    assert describe_end(1234, code) == line


def dying_once(caller: int, marker: Path, signum: int):
    """A function for pmap whose first run in a helper (not the caller) kills that
    helper with ``signum``, writing its pid to ``marker`` first; the caller waits for
    that before its first item, so a helper surely gets one."""

    def square(x: int) -> int:
        if os.getpid() == caller:
            wait_for(marker.exists, HELPER_DEADLINE, "a helper to take an item")
        elif not marker.exists():
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for SIGSEGV
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signum)
        time.sleep(WORK)  # the item's computation
        return x * x

    return square


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_helper_killed_by_a_signal_is_named(state: Path, tmp_path: Path, start_method: str,
                                              signum: int) -> None:
    marker = tmp_path / "died"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = pmap(dying_once(os.getpid(), marker, signum), range(ITEMS), n=2,
                       path=state, progress=False, start_method=start_method)
    assert results == [x * x for x in range(ITEMS)]
    named = [w for w in caught if str(w.message).startswith("pmap helper")]
    expected = EXPECTED[signum].format(pid=int(marker.read_text()))
    assert [(w.category, str(w.message)) for w in named] == [(RuntimeWarning, expected)]
    assert named[0].filename == __file__  # it points at the pmap call, not at laufband


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_helpers_that_end_normally_say_nothing(state: Path, tmp_path: Path,
                                               start_method: str) -> None:
    caller, marker = os.getpid(), tmp_path / "a helper took an item"

    def square(x: int) -> int:
        if os.getpid() == caller:
            wait_for(marker.exists, HELPER_DEADLINE, "a helper to take an item")
        else:
            marker.touch()
        time.sleep(WORK)  # the item's computation
        return x * x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = pmap(square, range(ITEMS), n=3, path=state, progress=False,
                       start_method=start_method)
    assert results == [x * x for x in range(ITEMS)]
    assert [str(w.message) for w in caught if "helper" in str(w.message)] == []


# What a user running a script sees: the warning line on stderr, pointing at the call.
SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path

    from laufband import pmap

    marker, caller = Path(sys.argv[2]), os.getpid()

    HELPER_DEADLINE = 60.0  # seconds the helper may take to take an item

    def square(x):
        if os.getpid() == caller:  # first let the helper take an item and die on it
            waited = time.monotonic() + HELPER_DEADLINE
            while not marker.exists():
                if time.monotonic() > waited:
                    raise TimeoutError("no helper took an item")
                time.sleep(0.01)
        elif not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.02)
        return x * x

    results = pmap(square, range(12), n=2, path=sys.argv[1], progress=False,
                   start_method="fork")
    print(results)
""")
CALL_LINE = SCRIPT.splitlines().index("results = pmap(square, range(12), n=2,"
                                      " path=sys.argv[1], progress=False,") + 1


def test_the_warning_is_one_line_on_stderr(tmp_path: Path, procs: Processes) -> None:
    script, marker = tmp_path / "user.py", tmp_path / "died"
    script.write_text(SCRIPT)
    [(code, out, err)] = procs.wait_all([procs.start(script, tmp_path / "state", marker)])
    assert code == 0, err
    assert out.strip() == str([x * x for x in range(12)])
    # Python's warning format: where the user called pmap, then that line of source.
    assert err.splitlines() == [
        f"{script}:{CALL_LINE}: RuntimeWarning: " + KILLED.format(pid=marker.read_text()),
        "  results = pmap(square, range(12), n=2, path=sys.argv[1], progress=False,"], err
