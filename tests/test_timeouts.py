"""timeout=: a task running longer fails with TimeoutError; the others go on."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import pytest

from laufband import Graphband, Laufband, Monitor, Task, TaskTimeoutError, pmap
from tests.helpers.procs import HELPERS, Processes, wait_for

pytestmark = pytest.mark.timeout(120)
QUIET = {"disable": True}
SLOW = 30.0  # seconds the slow item would sleep: far more than any test waits


def slow_square(x: int) -> int:
    if x == 3:
        time.sleep(SLOW)
    time.sleep(0.05)
    return x * x


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_pmap_item_past_its_timeout_fails_while_the_others_complete(
        state: Path, start_method: str) -> None:
    began = time.monotonic()
    results = pmap(slow_square, range(12), n=3, path=state, timeout=1.0, on_error="return",
                   progress=False, start_method=start_method)
    assert time.monotonic() - began < SLOW / 2
    error = results[3]
    assert isinstance(error, TimeoutError)
    assert isinstance(error, TaskTimeoutError)
    assert str(error) == "the function timed out after 1 s"
    assert [r for i, r in enumerate(results) if i != 3] == [x * x for x in range(12) if x != 3]
    with pytest.raises(TimeoutError, match="timed out after 1 s"):
        pmap(slow_square, range(12), n=3, path=state, timeout=1.0, progress=False,
             start_method=start_method)


def swallowing(x: int) -> str:
    try:
        time.sleep(SLOW if x == 1 else 0)
    except Exception:  # noqa: BLE001 - what careless code does
        return "swallowed"
    return "ok"


def test_a_pmap_function_that_swallows_the_timeout_still_fails(state: Path) -> None:
    results = pmap(swallowing, range(3), n=1, path=state, timeout=0.5, on_error="return",
                   progress=False)
    assert results[0] == results[2] == "ok"
    assert isinstance(results[1], TimeoutError)


def run_loop(procs: Processes, state: Path, log: Path, *args: object) -> tuple[int, str]:
    result = procs.python(HELPERS / "features_worker.py", "timeouts", state, "--log", log,
                          "--items", 6, "--sleep", 0.05, "--slow", SLOW, *args)
    return result.returncode, result.stderr


def ends(log: Path) -> list[str]:
    return [line.split()[1] for line in log.read_text().splitlines()
            if line.startswith("end")]


@pytest.mark.parametrize("mode", ["catch", "swallow"])
def test_a_loop_task_past_its_timeout_fails_and_the_loop_goes_on(
        state: Path, tmp_path: Path, procs: Processes, mode: str) -> None:
    log = tmp_path / "loop.log"
    began = time.monotonic()
    code, stderr = run_loop(procs, state, log, "--timeout", 0.5, "--mode", mode)
    assert code == 0, stderr
    assert time.monotonic() - began < SLOW / 2
    # the body of item 2 was interrupted (caught by worker.catch(), or by the body)
    assert sorted(ends(log)) == ["0", "1", "2", "3", "4", "5"]
    if mode == "swallow":
        assert "swallowed 2 item 2 timed out after 0.5 s" in log.read_text()
    [flow] = Monitor(state).status("slow")
    assert (flow.counts["completed"], flow.counts["failed"]) == (5, 1)
    [failure] = Monitor(state).failures("slow")
    expected = "TaskTimeoutError: item 2 timed out after 0.5 s"
    assert (failure.task, failure.error) == ("2", expected)


def test_a_timeout_that_leaves_the_loop_fails_the_task_and_the_next_run_goes_on(
        state: Path, tmp_path: Path, procs: Processes) -> None:
    log = tmp_path / "loop.log"
    code, stderr = run_loop(procs, state, log, "--timeout", 0.5, "--mode", "raise")
    assert code == 1
    assert "laufband.errors.TaskTimeoutError: item 2 timed out after 0.5 s" in stderr
    assert ends(log) == ["0", "1"]
    code, stderr = run_loop(procs, state, log)  # no timeout now: the rest runs
    assert code == 0, stderr
    assert sorted(ends(log)) == ["0", "1", "3", "4", "5"]
    [flow] = Monitor(state).status("slow")
    assert (flow.counts["completed"], flow.counts["failed"]) == (5, 1)


def test_a_timeout_counts_against_max_failed_retries(state: Path, tmp_path: Path,
                                                     procs: Processes) -> None:
    log = tmp_path / "loop.log"
    code, stderr = run_loop(procs, state, log, "--timeout", 0.3, "--retries", 1)
    assert code == 0, stderr
    starts = [line.split()[1] for line in log.read_text().splitlines()
              if line.startswith("start")]
    assert starts.count("2") == 2  # the first run and its one retry
    [failure, retried] = Monitor(state).failures("slow")
    assert (retried.attempt, retried.outcome, failure.attempt, failure.outcome) \
        == (1, "pending", 2, "failed")


def test_a_task_timeout_overrides_the_default(state: Path) -> None:
    tasks = [Task("quick", timeout=0.2), Task("patient"), Task("after", dependencies=["patient"])]
    worker = Graphband(tasks, path=state, name="own", timeout=5.0, tqdm_kwargs=QUIET)
    ran = []
    for task in worker:
        with worker.catch():
            time.sleep(0.6)
            ran.append(task.id)
    assert ran == ["patient", "after"]
    [failure] = Monitor(state).failures("own")
    assert failure.error == "TaskTimeoutError: task 'quick' timed out after 0.2 s"


def test_tasks_ending_around_their_timeout_are_completed_or_failed_never_lost(
        state: Path) -> None:
    """The interrupt races the end of each body: it must land in the body it is
    meant for or nowhere (never in laufband's own code or the next task)."""
    worker = Laufband(range(60), path=state, name="race", timeout=0.05, tqdm_kwargs=QUIET)
    for item in worker:
        with worker.catch():
            time.sleep(0.035 + (item % 5) * 0.007)  # 35-63 ms against a 50 ms limit
    [flow] = Monitor(state).status("race")
    assert flow.counts["completed"] + flow.counts["failed"] == 60
    assert flow.counts["failed"] >= 1
    assert {f.error.split(":")[0] for f in Monitor(state).failures("race")} \
        == {"TaskTimeoutError"}


def test_the_joblib_backend_takes_a_timeout(state: Path) -> None:
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="laufband", n_jobs=2, path=state, name="jobs", timeout=1.0), \
            pytest.raises(TimeoutError, match="timed out after 1 s"):
        Parallel()(delayed(slow_square)(x) for x in range(6))
    assert Monitor(state).results("jobs") == [0, 1, 4, 16, 25]


def test_the_joblib_backend_interrupts_a_call_the_calling_process_would_run(
        state: Path) -> None:
    """One call: pmap alone would run it in the backend's runner thread, which no
    signal interrupts; with a timeout it runs in a helper process instead."""
    from joblib import Parallel, delayed, parallel_config

    began = time.monotonic()
    with parallel_config(backend="laufband", n_jobs=2, path=state, name="one", timeout=1.0), \
            pytest.raises(TimeoutError, match="timed out after 1 s"):
        Parallel()(delayed(slow_square)(x) for x in [3])
    assert time.monotonic() - began < SLOW / 2


THREAD_CALLER = """
import sys, threading, time
from pathlib import Path
from laufband import pmap

RUNNING = sys.argv[2]  # a global: travels with the function to the spawned helper

def item(x):
    if x == 1:
        Path(RUNNING).touch()
        time.sleep(30)
    return x

def call():
    try:
        pmap(item, range(6), n=1, path=sys.argv[1], name="thread", timeout=20,
             progress=False, start_method="spawn")
        print("returned", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)

runner = threading.Thread(target=call)
runner.start()
while runner.is_alive():  # (a join() cut short by Ctrl-C may take it for ended)
    try:
        time.sleep(0.05)
    except KeyboardInterrupt:
        print("main thread interrupted", flush=True)
"""


def test_ctrl_c_stops_a_pmap_call_with_a_timeout_made_from_a_thread(
        state: Path, tmp_path: Path, procs: Processes) -> None:
    """Its helpers leave on the Ctrl-C: the call raises KeyboardInterrupt in its thread
    at once (it ran the item they left itself, to its end, with no timeout)."""
    import signal

    script, running = tmp_path / "caller.py", tmp_path / "running"
    script.write_text(THREAD_CALLER)
    caller = procs.start(script, state, running)
    wait_for(running.exists, what="a helper to run item 1")
    began = time.monotonic()
    os.killpg(caller.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
    [(code, out, err)] = procs.wait_all([caller], deadline=SLOW * 2)
    assert time.monotonic() - began < SLOW / 2, out
    assert code == 0, err
    assert out.split("\n")[:2] == ["main thread interrupted", "interrupted"], out + err
    [flow] = Monitor(state).status("thread")
    assert flow.counts["completed"] < 6  # item 1 went back, for the next call


def test_the_joblib_backend_interrupts_the_call_itself(state: Path) -> None:
    """The call gets the TimeoutError (its cleanup runs), not a kill of its helper."""
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="laufband", n_jobs=2, path=state, name="own", timeout=1.0), \
            pytest.raises(TimeoutError) as caught:
        Parallel()(delayed(slow_square)(x) for x in [3])
    assert str(caught.value) == "the function timed out after 1 s"


def test_a_pmap_call_from_a_thread_interrupts_an_item_past_its_timeout(state: Path) -> None:
    import threading

    outcome: list[object] = []

    def call() -> None:
        outcome.append(pmap(slow_square, [2, 3], n=1, path=state, timeout=1.0,
                            on_error="return", progress=False))

    began = time.monotonic()
    thread = threading.Thread(target=call)
    thread.start()
    thread.join(timeout=SLOW * 2)
    assert time.monotonic() - began < SLOW / 2
    [[four, error]] = outcome
    assert four == 4
    assert isinstance(error, TaskTimeoutError)


def test_the_environment_sets_the_default_timeout(state: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_TIMEOUT", "0.2")
    worker = Laufband([0.5, 0.0], path=state, name="env", tqdm_kwargs=QUIET)
    for seconds in worker:
        with worker.catch():
            time.sleep(seconds)
    [flow] = Monitor(state).status("env")
    assert (flow.counts["completed"], flow.counts["failed"]) == (1, 1)


@pytest.mark.parametrize("timeout", [0, -1, "1s"])
def test_a_bad_timeout_is_refused_with_one_line(state: Path, timeout: object) -> None:
    message = (f"timeout must be a number of seconds > 0 (or None for no limit), got"
               f" {timeout!r}")
    with pytest.raises(ValueError, match=r"^timeout must be") as caught:
        Laufband([1], path=state, timeout=timeout)  # type: ignore[arg-type]
    assert str(caught.value) == message
    with pytest.raises(ValueError, match=r"^Task 'x': timeout must be") as caught:
        Task("x", timeout=timeout)  # type: ignore[arg-type]
    assert str(caught.value) == f"Task 'x': {message}"
    with pytest.raises(ValueError, match=r"^timeout must be") as caught:
        pmap(slow_square, range(4), n=2, path=state, timeout=timeout, progress=False)
    assert str(caught.value) == message
    assert not state.exists()  # refused before anything started


def test_a_body_with_its_own_sigalrm_handler_gets_no_alarm_of_laufband(state: Path) -> None:
    """A body that installs a SIGALRM handler of its own (its own alarm-based timeout)
    must not receive laufband's interrupts: the task fails when it returns."""
    import signal

    alarms: list[int] = []
    worker = Laufband([0.8, 0.0], path=state, name="own", timeout=0.2, tqdm_kwargs=QUIET)
    for seconds in worker:
        with worker.catch():
            mine = signal.signal(signal.SIGALRM, lambda n, _: alarms.append(n))
            try:
                time.sleep(seconds)
            finally:
                signal.signal(signal.SIGALRM, mine)
    assert alarms == []
    [failure] = Monitor(state).failures("own")
    assert failure.error == "TaskTimeoutError: item 0 timed out after 0.2 s"


def test_no_sigalrm_handler_is_left_behind(state: Path) -> None:
    import signal

    before = signal.getsignal(signal.SIGALRM)
    for _ in Laufband(range(3), path=state, name="clean", timeout=1.0, tqdm_kwargs=QUIET):
        assert signal.getsignal(signal.SIGALRM) != before
    assert signal.getsignal(signal.SIGALRM) == before


def test_a_helper_that_cannot_be_interrupted_is_killed_and_replaced(state: Path) -> None:
    """A helper whose function cannot be interrupted (here SIGALRM is blocked, as good
    as C code holding the GIL) is killed by the caller once past its timeout: the item
    fails with TimeoutError, a new helper takes over, the other items complete."""
    import signal

    caller = os.getpid()
    stuck = {10, 20, 30, 40, 50, 60}

    def work(x: int) -> int:
        if x in stuck:
            if os.getpid() != caller:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(SLOW)  # the caller itself is interrupted as usual
        time.sleep(0.1)
        return os.getpid()

    began = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = pmap(work, range(70), n=3, path=state, name="stuck", timeout=0.5,
                       on_error="return", progress=False, start_method="fork")
    assert time.monotonic() - began < SLOW
    assert not [str(w.message) for w in caught]  # the kills are no news
    errors = {x: results[x] for x in stuck}
    assert all(isinstance(e, TaskTimeoutError) for e in errors.values()), errors
    killed = [x for x, e in errors.items() if "could not be interrupted and was killed"
              in str(e)]
    assert killed, errors  # the helpers ran some (each of 6 items: 2 in 3 chances)
    values = [r for x, r in enumerate(results) if x not in stuck]
    assert all(isinstance(pid, int) for pid in values)
    [flow] = Monitor(state).status("stuck")
    assert flow.counts["failed"] == len(stuck)
    assert flow.counts["completed"] == 70 - len(stuck)
    # More helpers than the two started computed items: replacements took over.
    assert len(set(values) - {caller}) >= 3, set(values)


def test_a_loop_outside_the_main_thread_fails_an_overdue_task_when_it_returns(
        state: Path) -> None:
    import threading

    ran: list[tuple[int, float]] = []

    def loop() -> None:
        worker = Laufband([0.6, 0.0], path=state, name="thread", timeout=0.2,
                          tqdm_kwargs=QUIET)
        for seconds in worker:
            began = time.monotonic()
            time.sleep(seconds)  # not interrupted: signals reach the main thread only
            ran.append((int(seconds > 0), time.monotonic() - began))

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join(timeout=30)
    assert [slow for slow, _ in ran] == [1, 0]
    assert ran[0][1] >= 0.6  # it ran to its end
    [flow] = Monitor(state).status("thread")
    assert (flow.counts["completed"], flow.counts["failed"]) == (1, 1)
    [failure] = Monitor(state).failures("thread")
    assert failure.error == "TaskTimeoutError: item 0 timed out after 0.2 s"


def backtrack(x: int) -> int:
    """Run about a second in C code holding the GIL (the heartbeat thread waits)."""
    import re

    if x == 1:
        re.match(r"(a+)+$", "a" * 24 + "b")
    return x


def test_a_loop_task_holding_the_gil_past_its_timeout_fails_when_it_returns(
        state: Path) -> None:
    worker = Laufband([0, 1, 2], path=state, name="gil", timeout=0.2, tqdm_kwargs=QUIET)
    for x in worker:
        backtrack(x)
    [flow] = Monitor(state).status("gil")
    assert (flow.counts["completed"], flow.counts["failed"]) == (2, 1)
    [failure] = Monitor(state).failures("gil")
    assert failure.error == "TaskTimeoutError: item 1 timed out after 0.2 s"


def test_a_pmap_item_holding_the_gil_past_its_timeout_fails_in_the_caller(
        state: Path) -> None:
    results = pmap(backtrack, range(3), n=1, path=state, timeout=0.2, on_error="return",
                   progress=False)
    assert results[0] == 0
    assert results[2] == 2
    assert isinstance(results[1], TaskTimeoutError)
    assert str(results[1]) == "the function timed out after 0.2 s"
