"""Signals at the worst moments: nothing is lost, nothing stays stuck.

The invariant checked after every scenario: no task is running unless an online
worker holds it (``orphans``), and a later run finishes every item.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from filelock import FileLock

from tests.helpers.procs import (
    HELPERS,
    Processes,
    completions,
    orphans,
    read_log,
    signal_pending,
    task_states,
    wait_for,
)

ITEMS = 30
IN_HAND_BACK = 2.0  # seconds to wait for the worker to say it waits for the lock
FINISH_DEADLINE = 45.0  # seconds a clean run over what is left may take
QUIT_DEADLINE = 30.0  # seconds an interrupted worker or pmap caller may take to exit
STORM_MARGIN = 150  # items still to do when a storm on loop workers stops


def finish_cleanly(procs: Processes, state: Path, logs: Path, items: int = ITEMS) -> None:
    """A fresh worker must finish everything left, and leave every task completed."""
    [(code, _, err)] = procs.wait_all([procs.worker(state, logs, "--items", items)],
                                      deadline=FINISH_DEADLINE)
    assert code == 0, err
    assert set(task_states(state, "work").values()) == {"completed"}
    assert orphans(state) == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("first", "second", "status"), [
    (signal.SIGINT, signal.SIGINT, -signal.SIGINT),
    (signal.SIGTERM, signal.SIGTERM, 143),
    (signal.SIGINT, signal.SIGTERM, -signal.SIGINT),
])
def test_second_interrupt_inside_the_hand_back(state: Path, procs: Processes,
                                               tmp_path: Path, first: signal.Signals,
                                               second: signal.Signals, status: int) -> None:
    """Ctrl-C (or SIGTERM) while item 5 runs, and a second one while the worker waits
    for the lock to hand item 5 back: item 5 must not stay running under a worker that
    is gone (a later worker then waited for it forever)."""
    logs = tmp_path / "logs"
    err = tmp_path / "w.err"
    worker = procs.start_logged(HELPERS / "worker.py", state, logs, "--items", ITEMS,
                          "--sleep-on", 5, "--sleep", 60, stderr=err,
                          env={"LAUFBAND_LOCK_WARNING": "0.2"})
    wait_for(lambda: "5" in read_log(logs / f"{worker.pid}.start"), what="item 5 to start")
    lock = FileLock(state / "state.lock")
    lock.acquire(timeout=10)  # the hand-back has to wait for it
    try:
        worker.send_signal(first)
        wait_for(lambda: "waited" in err.read_text(), deadline=IN_HAND_BACK,
                 what="the worker to wait for the lock")
        worker.send_signal(second)  # the second signal, inside the hand-back
        # Taken by its main thread while it waits for the lock: the wait is cut short.
        wait_for(lambda: not signal_pending(worker.pid, second),
                 what="the second signal to land")
    finally:
        lock.release()
    assert worker.wait(timeout=QUIT_DEADLINE) == status, err.read_text()[-2000:]
    # At most one traceback, the first signal's (SIGTERM exits quietly): the second is
    # part of it, not noise printed as Python drops the loop ("Exception ignored in:
    # <generator object ...>").
    assert "Exception ignored" not in err.read_text(), err.read_text()[-3000:]
    assert err.read_text().count("Traceback") == (first == signal.SIGINT), \
        err.read_text()[-3000:]
    finish_cleanly(procs, state, logs)
    done = completions(logs)
    assert done == Counter({str(i): 1 for i in range(ITEMS)})


@pytest.mark.timeout(120)
def test_retry_returns_a_task_stuck_on_a_worker_that_is_gone(state: Path,
                                                            procs: Processes) -> None:
    """A task left running under an offline worker (a database written by a hand-back
    that was cut short) is returned by ``laufband retry ID`` and by a waiting worker."""
    import sqlite3

    logs = state.parent / "logs"
    [(code, _, _)] = procs.wait_all([procs.worker(state, logs, "--items", 10)])
    assert code == 0
    with sqlite3.connect(state / "state.db") as conn:  # the stuck state, by hand:
        conn.execute("DELETE FROM runs")  # 3 and 4 run on worker 1, which went offline
        conn.executemany("INSERT INTO runs VALUES (1, ?, ?, ?, ?)",
                         [(0, 2, None, "completed"), (3, 4, 1, "running"),
                          (5, 9, None, "completed")])
        conn.execute("UPDATE workflows SET running = 2, completed = completed - 2")
        conn.execute("UPDATE workers SET state = 'offline'")
    assert len(orphans(state)) == 2
    cli = procs.python("-m", "laufband", "retry", "3", "--path", state)
    assert cli.returncode == 0, cli.stderr
    assert "1 task(s) of workflow 'work' are pending again" in cli.stdout
    assert [seq for _, seq, _, _ in orphans(state)] == [4]
    # Task 4 is still stuck: a worker with nothing else to do returns it itself.
    [(code, _, err)] = procs.wait_all([procs.worker(state, logs, "--items", 10)],
                                      deadline=FINISH_DEADLINE)
    assert code == 0, err
    assert set(task_states(state, "work").values()) == {"completed"}
    assert orphans(state) == []


PMAP_SCRIPT = """
import os, sys, time
from pathlib import Path
from laufband import pmap

logs = Path(sys.argv[2])

def job(x):
    time.sleep(0.01)
    with open(logs / f"{os.getpid()}.done", "a") as log:
        log.write(f"{x}\\n")
    return x * x

if __name__ == "__main__":
    logs.mkdir(exist_ok=True)
    result = pmap(job, range(600), n=4, path=sys.argv[1], name="storm", progress=False)
    assert result == [x * x for x in range(600)]
    print("complete", flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_storm_on_pmap(state: Path, procs: Processes, tmp_path: Path) -> None:
    """Ctrl-C a pmap(600 items, n=4) at random moments, sometimes twice or thrice in a
    row (as an impatient user does), 12 times: the next identical call finishes."""
    script = tmp_path / "storm.py"
    script.write_text(PMAP_SCRIPT)
    logs = tmp_path / "logs"
    rng = random.Random(11)
    for attempt in range(12):
        err = tmp_path / f"storm-{attempt}.err"
        caller = procs.start_logged(script, state, logs, stderr=err)
        time.sleep(rng.uniform(0.3, 1.5))  # a random moment, not a synchronisation
        for _ in range(rng.choice([1, 2, 2, 3])):  # to the whole group, like a terminal
            with contextlib.suppress(ProcessLookupError):
                os.killpg(caller.pid, signal.SIGINT)
            time.sleep(rng.uniform(0.0, 0.05))
        code = caller.wait(timeout=QUIT_DEADLINE)
        assert code in {0, -signal.SIGINT}, err.read_text()[-2000:]
        assert not procs.alive(), f"left after the caller exited: {procs.alive()}"
    final = procs.start(script, state, logs)
    [(code, out, err)] = procs.wait_all([final], deadline=120)
    assert code == 0, err[-2000:]
    assert "complete" in out
    assert orphans(state) == []
    assert set(completions(logs)) == {str(x) for x in range(600)}


TERM_WORKER = """
import os, sys, time
from pathlib import Path
from laufband import Laufband

state, logs = sys.argv[1], Path(sys.argv[2])
logs.mkdir(exist_ok=True)
for item in Laufband(list(range(1000)), path=state, name="work",
                     tqdm_kwargs={"disable": True}):
    time.sleep(0.02)
    with open(logs / f"{os.getpid()}.done", "a") as log:
        log.write(f"{item}\\n")
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigint_and_sigterm_storm_on_loop_workers(state: Path, procs: Processes,
                                                  tmp_path: Path) -> None:
    """Three loop workers, each hit by bursts of SIGINT and SIGTERM at random moments
    and restarted, 40 bursts in all: afterwards no task is stuck and one clean worker
    finishes the rest."""
    script = tmp_path / "term_worker.py"
    script.write_text(TERM_WORKER)
    logs = tmp_path / "logs"
    rng = random.Random(5)
    workers = [procs.start(script, state, logs) for _ in range(3)]
    signals = 0
    codes: Counter[int] = Counter()
    bursts = 0
    while bursts < 40:
        time.sleep(rng.uniform(0.05, 0.3))  # a random moment, not a synchronisation
        if len(completions(logs)) > 1000 - STORM_MARGIN:
            break  # every victim still has work: it can only end by a signal
        alive = [w for w in workers if w.poll() is None]
        assert alive, "every worker ended with work left"
        # Only a worker whose loop runs: a signal while Python itself starts (importing
        # site) ends it with "Fatal Python error: init_import_site", exit 1, before any
        # laufband code (a loaded machine makes start-up long enough to hit).
        started = [w for w in alive if (logs / f"{w.pid}.done").exists()]
        if not started:
            continue
        victim = rng.choice(started)
        bursts += 1
        for _ in range(rng.choice([1, 2, 3, 5])):
            with contextlib.suppress(ProcessLookupError):
                victim.send_signal(rng.choice([signal.SIGINT, signal.SIGTERM]))
                signals += 1
            time.sleep(rng.uniform(0.0, 0.01))
        codes[victim.wait(timeout=QUIT_DEADLINE)] += 1
        workers.append(procs.start(script, state, logs))
    for proc in workers:
        proc.wait(timeout=60)
    assert signals > 40
    # Ctrl-C: KeyboardInterrupt; SIGTERM: laufband's exit 143, or the default action
    # when it lands before laufband's handler is installed or after it is restored.
    assert set(codes) <= {-signal.SIGINT, -signal.SIGTERM, 143}, codes
    assert orphans(state) == []
    final = procs.start(script, state, logs)
    [(code, _, err)] = procs.wait_all([final], deadline=FINISH_DEADLINE)
    assert code == 0, err[-2000:]
    assert set(task_states(state, "work").values()) == {"completed"}
    assert set(completions(logs)) == {str(i) for i in range(1000)}


@pytest.mark.timeout(300)
def test_one_ctrl_c_of_pmap_counts_no_kill(state: Path, procs: Processes,
                                           tmp_path: Path) -> None:
    """One terminal Ctrl-C of pmap(n=4), six times: helpers hand their tasks back while
    the caller ends them with SIGTERM, so a hand-back may be cut short. Those tasks go
    back without a kill counted: two such cuts on one item made a later, clean call
    fail with "its worker died on it twice"."""
    from tests.helpers.procs import task_events

    script = tmp_path / "storm.py"
    script.write_text(PMAP_SCRIPT)
    logs = tmp_path / "logs"
    rng = random.Random(2)
    for attempt in range(6):
        err = tmp_path / f"{attempt}.err"
        caller = procs.start_logged(script, state, logs, stderr=err)
        time.sleep(rng.uniform(0.5, 1.3))  # a random moment, not a synchronisation
        with contextlib.suppress(ProcessLookupError):
            os.killpg(caller.pid, signal.SIGINT)  # to the whole group, like a terminal
        code = caller.wait(timeout=QUIT_DEADLINE)
        assert code in {0, -signal.SIGINT}, err.read_text()[-2000:]
        assert not procs.alive(), f"left after the caller exited: {procs.alive()}"
    final = procs.start(script, state, logs)
    [(code, out, err)] = procs.wait_all([final], deadline=120)
    assert code == 0, err[-2000:]
    assert "complete" in out, err[-2000:]
    assert [e for e in task_events(state, "storm") if e[1] == "killed"] == []
    assert orphans(state) == []



REUSER = """
import os, signal, sys, time
from pathlib import Path
from laufband import Laufband

state, logs = sys.argv[1], Path(sys.argv[2])
logs.mkdir(exist_ok=True)
worker = Laufband(list(range(6)), path=state, name="work", tqdm_kwargs={"disable": True})
for attempt in range(10):  # a notebook user: Ctrl-C, then run the same cell again
    try:
        for item in worker:
            with open(logs / "start", "a") as log:
                log.write(f"{item}\\n")
            time.sleep(0.3 if attempt else 60)
            with open(logs / "done", "a") as log:
                log.write(f"{item}\\n")
        break
    except KeyboardInterrupt:
        print("interrupted", flush=True)
print("finished", flush=True)
"""


@pytest.mark.timeout(120)
def test_a_loop_run_again_after_an_interrupted_stop(state: Path, procs: Processes,
                                                    tmp_path: Path) -> None:
    """Ctrl-C, and more Ctrl-Cs while the worker stops; the program catches them and
    iterates the same worker again while another worker joins. The first stop was cut
    short after its heartbeat had stopped, the new iteration did not restart it, and
    the live worker was reaped: its tasks ran twice at once."""
    from tests.helpers.procs import task_events

    script = tmp_path / "reuser.py"
    script.write_text(REUSER)
    logs = tmp_path / "logs"
    beats = {"LAUFBAND_HEARTBEAT_INTERVAL": "0.2", "LAUFBAND_HEARTBEAT_TIMEOUT": "1.5",
             "LAUFBAND_LOCK_WARNING": "0.2"}
    user = procs.start(script, state, logs, env=beats)
    wait_for((logs / "start").exists, what="the first item to start")
    lock = FileLock(state / "state.lock")
    lock.acquire(timeout=10)  # the stop has to wait for it: interrupts land inside
    try:
        for _ in range(3):
            user.send_signal(signal.SIGINT)
            time.sleep(0.3)
    finally:
        lock.release()
    other = procs.worker(state, tmp_path / "other-logs", "--items", 6, "--sleep", 0.3,
                         env=beats)
    results = procs.wait_all([user, other])
    assert [code for code, _, _ in results] == [0, 0], results
    done = Counter(read_log(logs / "done")) + completions(tmp_path / "other-logs")
    assert done == Counter({str(i): 1 for i in range(6)})
    assert [e for e in task_events(state, "work") if e[1] == "killed"] == []
    assert orphans(state) == []



INTERRUPTED_THREAD_START = """
import signal, sys, threading, time
from pathlib import Path
from laufband import Laufband

start = threading.Thread.start
def interrupted(self):  # Ctrl-C as the store thread has started, before the executor
    start(self)         # that starts it has taken note of it (or of the work handed over)
    if self.name.startswith("laufband-store") and sys.argv[3] == "interrupt":
        Path(sys.argv[4]).touch()  # the test takes the state lock now
        while not Path(sys.argv[5]).exists():
            time.sleep(0.01)
        signal.raise_signal(signal.SIGINT)
threading.Thread.start = interrupted
with open(sys.argv[2], "a") as log:
    for item in Laufband(list(range(200)), path=sys.argv[1], name="work",
                         tqdm_kwargs={"disable": True}):
        time.sleep(0.002)
        log.write(f"{item}\\n")
        log.flush()
"""


@pytest.mark.timeout(120)
def test_ctrl_c_as_the_background_thread_starts(state: Path, procs: Processes,
                                               tmp_path: Path) -> None:
    """A Ctrl-C as the worker starts its store thread (for the first background
    transaction, already handed over) must end the worker: it hung at exit, waiting for
    a thread its executor had not taken note of, the batch claimed there not handed back."""
    script, log, err = tmp_path / "worker.py", tmp_path / "done.log", tmp_path / "w.err"
    script.write_text(INTERRUPTED_THREAD_START)
    ready, go = tmp_path / "ready", tmp_path / "go"
    worker = procs.start_logged(script, state, log, "interrupt", ready, go, stderr=err,
                                env={"LAUFBAND_LOCK_WARNING": "0.2"})
    wait_for(ready.exists, what="the store thread to start")
    with FileLock(state / "state.lock"):  # the stop waits for it, and more Ctrl-Cs come
        go.touch()
        wait_for(lambda: "waited" in err.read_text(), what="the worker to wait for the lock")
        worker.send_signal(signal.SIGINT)  # a second Ctrl-C cuts its stop short
        wait_for(lambda: not signal_pending(worker.pid, signal.SIGINT),
                 what="the second Ctrl-C to land")
    try:
        code = worker.wait(timeout=QUIT_DEADLINE)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail("the worker hung after a Ctrl-C as its store thread started")
    assert code == -signal.SIGINT, err.read_text()[-3000:]
    assert orphans(state) == []
    rest = tmp_path / "rest.log"
    [(code, _, out)] = procs.wait_all([procs.start(script, state, rest, "no")])
    assert code == 0, out
    assert Counter(read_log(log)) + Counter(read_log(rest)) \
        == Counter({str(i): 1 for i in range(200)})
