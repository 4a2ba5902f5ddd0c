"""Frozen processes (SIGSTOP, a suspended SLURM job): named, waited for cheaply, reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.procs import (
    Processes,
    completions,
    next_line,
    orphans,
    read_log,
    stop_outside_the_lock,
    task_states,
    wait_for,
)

WARN_AFTER = 1.0  # LAUFBAND_LOCK_WARNING for these tests, in seconds
WARN_DEADLINE = 15.0  # seconds until the warning must have been printed
STATUS_DEADLINE = 12.0  # seconds `laufband status` may take with a frozen holder
WAIT_WINDOW = 3.0  # seconds over which a waiter's CPU time is measured
MAX_WAIT_CPU = 0.1  # seconds of CPU a waiter may spend in that window
FAST_BEATS = {"LAUFBAND_HEARTBEAT_INTERVAL": "0.2", "LAUFBAND_HEARTBEAT_TIMEOUT": "1.5"}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frozen_holder(procs: Processes, state: Path) -> subprocess.Popen[str]:
    """A process that takes the state lock inside a transaction and stops itself."""
    holder = procs.start("-c", textwrap.dedent(f"""
        import os, signal
        from laufband.store import Store
        with Store({str(state)!r}).transaction():
            print("held", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
    """))
    assert next_line(holder, what="the holder to hold the lock").strip() == "held"
    wait_for(lambda: Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
             == "T", what="the holder to stop")
    return holder


@pytest.mark.timeout(120)
def test_frozen_lock_holder_is_named_and_waited_for_cheaply(
        state: Path, procs: Processes, tmp_path: Path) -> None:
    holder = frozen_holder(procs, state)
    logs, err = tmp_path / "logs", tmp_path / "waiter.err"
    waiter = procs.start_logged(Path(__file__).parent / "helpers" / "worker.py", state, logs,
                          "--items", 5, stderr=err,
                          env={"LAUFBAND_LOCK_WARNING": str(WARN_AFTER)})
    try:
        took, used, status = frozen_for_a_while(procs, holder, waiter, state, err)
    finally:
        holder.send_signal(signal.SIGCONT)  # resumed: it commits, and everyone goes on
    lines = [line for line in err.read_text().splitlines() if "waited" in line]
    assert len(lines) == 1, lines  # one line, not one per poll
    assert f"pid {holder.pid}" in lines[0], lines[0]
    assert "frozen" in lines[0], lines[0]
    assert used <= MAX_WAIT_CPU, f"the waiter spent {used:.2f} s of CPU waiting"
    assert took <= STATUS_DEADLINE, f"status took {took:.1f} s"
    assert status.returncode == 1
    assert status.stderr.count("\n") == 1, status.stderr
    assert f"pid {holder.pid}" in status.stderr
    assert "frozen" in status.stderr
    [(code, _, _)] = procs.wait_all([holder])
    assert code == 0
    assert waiter.wait(timeout=30) == 0
    assert completions(logs) == Counter({str(i): 1 for i in range(5)})


def frozen_for_a_while(
    procs: Processes, holder: subprocess.Popen[str], waiter: subprocess.Popen[str],
    state: Path, err: Path,
) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """While the holder is frozen: wait for the waiter's warning, run ``laufband status``
    and measure the waiter's CPU time; return (status seconds, CPU seconds, status)."""
    wait_for(lambda: "waited" in err.read_text(), deadline=WARN_DEADLINE,
             what="the waiter to name the holder")
    before = cpu_seconds(waiter.pid)
    began = time.monotonic()
    status = procs.python(  # warning early: a status that gives up says so only once
        "-m", "laufband", "status", state, timeout=STATUS_DEADLINE + 30,
        env={"LAUFBAND_LOCK_WARNING": str(WARN_AFTER)})
    took = time.monotonic() - began
    time.sleep(max(0.0, WAIT_WINDOW - took))  # measuring: the waiter must stay idle
    return took, cpu_seconds(waiter.pid) - before, status


@pytest.mark.timeout(120)
def test_frozen_worker_on_this_host_has_its_tasks_returned(
        state: Path, procs: Processes, tmp_path: Path) -> None:
    """A SIGSTOPped worker's pid is alive, but its heartbeat stands still: after the
    heartbeat timeout another worker returns its claimed tasks and finishes them."""
    logs = tmp_path / "logs"
    frozen = procs.worker(state, logs, "--items", 40, "--sleep-on", 3, "--sleep", 5,
                          env=FAST_BEATS)
    wait_for(lambda: "3" in read_log(logs / f"{frozen.pid}.start"), what="item 3 to start")
    stop_outside_the_lock(frozen, state)
    try:
        other = procs.worker(state, logs, "--items", 40, env=FAST_BEATS)
        [(code, _, err)] = procs.wait_all([other], deadline=30)
        assert code == 0, err
        assert set(task_states(state, "work").values()) == {"completed"}
    finally:
        frozen.send_signal(signal.SIGCONT)
    [(code, _, err)] = procs.wait_all([frozen], deadline=30)
    assert code == 0, err  # resumed, it finds it was taken for dead and leaves cleanly
    done = completions(logs)
    assert set(done) == {str(i) for i in range(40)}
    # Items 0-2 finished but not yet written at the freeze, and item 3 in flight.
    assert sum(done.values()) - 40 <= 4, done
    assert orphans(state) == []



@pytest.mark.timeout(60)
def test_time_spent_waiting_for_the_lock_is_not_silence(state: Path, procs: Processes) -> None:
    """A reaper that waited for the state lock longer than the heartbeat timeout (a
    frozen holder resumed, a stalled filesystem) does not count that wait against the
    workers it watches: their heartbeats could not get through either."""
    from laufband.liveness import HOST, DeadWorkerDetector, process_token
    from laufband.store import Store, WorkerRecord

    timeout = 1.0
    sleeper = procs.start("-c", "import time; time.sleep(60)")  # alive, never beats
    watched = WorkerRecord(1, "watched", HOST, sleeper.pid, process_token(sleeper.pid), 7)
    detector = DeadWorkerDetector(timeout, state)
    store = Store(state)
    assert not detector.is_dead(watched)  # first look: counter 7 seen now
    holder = procs.start("-c", textwrap.dedent(f"""
        import time
        from laufband.store import Store
        with Store({str(state)!r}).transaction():
            print("held", flush=True)
            time.sleep({2 * timeout})
    """))
    assert next_line(holder, what="the holder to hold the lock").strip() == "held"
    with store.transaction():  # we wait 2 x timeout behind the holder
        assert not detector.is_dead(watched)
    time.sleep(timeout * 1.2)  # now a real silence, watched while the lock was free
    with store.transaction():
        assert detector.is_dead(watched)
    store.close()
    sleeper.kill()
    sleeper.wait(timeout=10)
    assert procs.wait_all([holder])[0][0] == 0
