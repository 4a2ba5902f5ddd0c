"""Dead workers: found at once on this host, by stale heartbeat elsewhere; their tasks return."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from laufband.batching import MIN_FLUSH
from laufband.inflight import InFlight
from laufband.liveness import HOST, DeadWorkerDetector
from laufband.store import Scope, Store
from tests.helpers.procs import (
    RUN_DEADLINE,
    Processes,
    completions,
    online_workers,
    read_log,
    task_events,
    task_states,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)
TAKEOVER_DEADLINE = 2.0  # seconds for a waiting worker to take over a killed worker's task


def started(logs: Path, proc_pid: int, item: int) -> bool:
    return str(item) in read_log(logs / f"{proc_pid}.start")


@pytest.mark.parametrize("lock", ["file", "soft"])  # LAUFBAND_LOCK
def test_waiting_worker_takes_over_killed_task_within_two_seconds(
        state: Path, procs: Processes, lock: str) -> None:
    logs = state.parent / "logs"
    args = ("--items", 2, "--sleep", 60, "--sleep-on", 1)
    first = procs.worker(state, logs, *args, env={"LAUFBAND_LOCK": lock})
    wait_for(lambda: started(logs, first.pid, 1), what="first worker to start item 1")
    second = procs.worker(state, logs, "--items", 2, env={"LAUFBAND_LOCK": lock})
    wait_for(lambda: online_workers(state, lock) == 2,
             what="second worker to register and wait")
    assert second.poll() is None  # it waits: item 1 runs on a live worker

    first.send_signal(signal.SIGKILL)  # left a zombie on purpose: still counts as dead
    took = wait_for(lambda: started(logs, second.pid, 1), deadline=10, what="takeover")
    assert took < TAKEOVER_DEADLINE
    assert procs.wait_all([second])[0][0] == 0
    assert task_states(state, "work") == {"0": "completed", "1": "completed"}
    assert [(task, event) for task, event, _ in task_events(state, "work")] == [("1", "killed")]


def test_task_killed_twice_stays_killed(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    for attempt in range(2):
        proc = procs.worker(state, logs, "--items", 1, "--sleep", 60)
        wait_for(lambda p=proc: started(logs, p.pid, 0), what=f"attempt {attempt} to start")
        proc.kill()
        proc.wait(timeout=RUN_DEADLINE)
    last = procs.worker(state, logs, "--items", 1)
    assert procs.wait_all([last])[0][0] == 0
    assert read_log(logs / f"{last.pid}.start") == []  # nothing left it may run
    assert task_states(state, "work") == {"0": "killed"}
    assert [event for _, event, _ in task_events(state, "work")] == ["killed", "killed"]


def test_a_task_that_kills_its_worker_is_blamed_not_its_batch(state: Path,
                                                              procs: Processes) -> None:
    # Item 30 kills its worker every time, late in a batch of fast tasks: the tasks
    # before it finished unflushed. (Before workers recorded their task in flight the
    # lowest running one was blamed: after 8 runs innocent item 4 was killed, five more
    # had counted a kill, and item 30 went on killing workers.)
    logs = state.parent / "logs"
    codes = []
    while not codes or codes[-1] != 0:
        assert len(codes) < 4, codes  # two deaths, then a run that skips item 25
        [(code, _, _)] = procs.wait_all([procs.worker(
            state, logs, "--items", 40, "--die-on", 30)])
        codes.append(code)
    assert codes == [-signal.SIGKILL, -signal.SIGKILL, 0]
    states = task_states(state, "work")
    assert states.pop("30") == "killed"
    assert set(states.values()) == {"completed"}
    assert [(task, event) for task, event, _ in task_events(state, "work")] == [
        ("30", "killed"), ("30", "killed")]
    assert not list((state / "running").iterdir())  # records of the dead were removed


def test_resume_after_kill_loses_at_most_a_flush_window(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    first = procs.worker(state, logs, "--items", 40, "--sleep", 0.05)
    wait_for(lambda: len(read_log(logs / f"{first.pid}.done")) >= 5, what="some progress")
    first.kill()
    first.wait(timeout=RUN_DEADLINE)
    second = procs.worker(state, logs, "--items", 40, "--sleep", 0.05)
    assert procs.wait_all([second])[0][0] == 0
    done = completions(logs)
    assert set(done) == {str(i) for i in range(40)}
    # Re-executed: at most the unflushed tail (one flush window, up to 1.5 x MIN_FLUSH
    # when a batch was about to end) and the task in flight.
    assert sum(done.values()) - 40 <= int(1.5 * MIN_FLUSH / 0.05) + 1
    assert set(task_states(state, "work").values()) == {"completed"}


def test_ctrl_c_puts_the_current_task_back_to_pending(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    proc = procs.worker(state, logs, "--items", 3, "--sleep", 60, "--sleep-on", 1)
    wait_for(lambda: started(logs, proc.pid, 1), what="item 1 to start")
    proc.send_signal(signal.SIGINT)
    code, _, err = procs.wait_all([proc], deadline=30)[0]
    assert code != 0
    assert "KeyboardInterrupt" in err
    assert task_states(state, "work") == {"0": "completed", "1": "pending", "2": "pending"}
    assert task_events(state, "work") == []
    assert online_workers(state) == 0


def test_a_between_tasks_record_is_trusted_on_this_host_only(state: Path,
                                                            procs: Processes) -> None:
    # A record from another host may not have been written back to the shared
    # filesystem yet: "between tasks" there falls back to blaming the lowest task.
    gone = procs.python("-c", "import os; print(os.getpid())")
    assert gone.returncode == 0, gone.stderr
    store = Store(state)
    with store.transaction() as tx:
        wf = tx.open_workflow("work", keyed=False).id
        tx.register_positions(wf, 4)
        dead = {host: tx.register_worker(host, wf, host, int(gone.stdout), "", None, [])
                for host in (HOST, "another-host")}
        for number in dead.values():
            assert len(tx.claim(wf, number, 2, [], Scope())) == 2
            InFlight(state, number)  # it died between tasks (or so its record says)
        detector = DeadWorkerDetector(timeout=0, state=state)
        detector.reap(tx, me=-1, max_killed_retries=1)  # another host: seen once, alive
        detector.reap(tx, me=-1, max_killed_retries=1)
        assert set(tx.task_states(wf).values()) == {"pending"}
        blamed = [seq for seq, event, _ in tx.events(wf) if event == "killed"]
    store.close()
    assert blamed == ["2"]  # the lowest task of the worker on another host only
    assert not list((state / "running").iterdir())


def test_worker_on_another_host_is_dead_after_heartbeat_timeout(
        state: Path, procs: Processes) -> None:
    store = Store(state)
    with store.transaction() as tx:
        wf = tx.open_workflow("work", keyed=False)
        tx.register_positions(wf.id, 2)
        remote = tx.register_worker("remote", wf.id, "another-host", 1, "", None, [])
        assert tx.claim(wf.id, remote, 1, [], Scope()) == [0]
    store.close()
    logs = state.parent / "logs"
    began = time.monotonic()
    local = procs.worker(state, logs, "--items", 2, env={"LAUFBAND_HEARTBEAT_TIMEOUT": "1",
                                                         "LAUFBAND_HEARTBEAT_INTERVAL": "0.2"})
    assert procs.wait_all([local])[0][0] == 0
    assert time.monotonic() - began < 15
    assert Counter(read_log(logs / f"{local.pid}.done")) == {"0": 1, "1": 1}
    events = task_events(state, "work")
    assert events == [("0", "killed", "worker remote (host another-host, pid 1) died")]


def test_sigterm_hands_the_task_back_flushes_and_exits(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    proc = procs.worker(state, logs, "--items", 50, "--sleep", 60, "--sleep-on", 3)
    wait_for(lambda: started(logs, proc.pid, 3), what="item 3 to start")
    proc.send_signal(signal.SIGTERM)
    code, _, err = procs.wait_all([proc], deadline=10)[0]
    assert code == 143, err
    states = task_states(state, "work")
    assert [states[str(i)] for i in range(3)] == ["completed"] * 3  # flushed
    assert states["3"] == "pending"  # handed back, not failed
    assert task_events(state, "work") == []
    assert online_workers(state) == 0


def test_restart_with_the_identifier_of_a_killed_worker(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    env = {"LAUFBAND_IDENTIFIER": "node-7"}
    first = procs.worker(state, logs, "--items", 5, "--sleep", 60, "--sleep-on", 2, env=env)
    wait_for(lambda: started(logs, first.pid, 2), what="item 2 to start")
    first.kill()
    first.wait(timeout=RUN_DEADLINE)
    again = procs.worker(state, logs, "--items", 5, env=env)
    assert procs.wait_all([again])[0][0] == 0
    assert set(task_states(state, "work").values()) == {"completed"}
    assert [(task, event) for task, event, _ in task_events(state, "work")] == [("2", "killed")]


def test_the_in_flight_record_says_what_finished_and_what_runs(state: Path) -> None:
    from laufband.inflight import read_record

    state.mkdir()
    record = InFlight(state, 7)
    assert read_record(state, 7) == ([], None)  # between batches
    record.begin([5, 6, 7])  # a run: stored as its first task
    record.mark(3)  # 6 runs, 5 finished
    assert read_record(state, 7) == ([5], 6)
    record.settle(body_finished=True)
    assert read_record(state, 7) == ([5, 6], None)
    record.begin([2, 9, 4])  # not a run: stored task by task
    record.mark(5)
    assert read_record(state, 7) == ([2, 9], 4)
    record.settle(body_finished=False)  # 4 failed or was handed back
    assert read_record(state, 7) == ([2, 9], None)
    record.close()
    assert read_record(state, 7) is None
    results = InFlight(state, 8, final=False)  # pmap: a finished body lacks its result
    results.begin([1, 2])
    results.mark(3)
    assert read_record(state, 8) == ([], 2)


def test_a_watch_that_fails_stops_watching_but_never_the_heartbeats(
        state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An error of a watch (not a store error, which is tried again) must not end the
    heartbeat thread: a worker whose beats stopped would be reaped while it works."""
    from laufband.liveness import Heartbeat

    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("oops")

    beat = Heartbeat(Store(state), worker=1, interval=0.05, watch=broken)
    started = beat.last_beat
    beat.start()
    time.sleep(0.5)
    beat.stop()
    assert beat.last_beat > started + 0.3
    assert calls == [1]
    assert capsys.readouterr().err.count("laufband: ") == 1
