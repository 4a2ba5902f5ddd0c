"""Ctrl-C of a loop at random moments (inside a claim, a flush, a body, a start): what
ran is kept, what was claimed goes back, and nothing is recorded that did not run.

The worker catches each KeyboardInterrupt and iterates the same loop again (as in a
notebook), so one process takes many interrupts; one that a second interrupt ends is
replaced. At any moment no task may run under a worker that is not online; after a
worker ended, and at the end, every completed task's body must have finished; and a
finished body runs again at most once per interrupt (the one the interrupt cut).
"""

from __future__ import annotations

import random
import signal
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
from filelock import FileLock

from tests.helpers.procs import (
    STARTUP_DEADLINE,
    Processes,
    completions,
    online_workers,
    orphans,
    read_log,
    task_states,
    wait_for,
)

MAX_HOLD = 0.05  # seconds the test may hold the state lock before it interrupts
LOCK_DEADLINE = 10.0  # seconds the test may wait for the state lock
FINISH_DEADLINE = 60.0  # seconds the interrupted workers may take to finish what is left


class Storm(NamedTuple):
    """How a test interrupts its workers."""

    items: int
    workers: int  # several: batches run long enough to be flushed midway
    interrupts: int
    max_delay: float  # seconds: an interrupt lands this long at most after a loop resumed
    hold_lock: bool  # interrupt while the test holds the state lock (workers wait for it)


AGAIN = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from laufband import Laufband

    state, logs = sys.argv[1], Path(sys.argv[2])
    logs.mkdir(exist_ok=True)
    me = os.getpid()

    def log(kind, text):  # one O_APPEND write per line: never torn, never lost
        fd = os.open(logs / f"{me}.{kind}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{text}\\n".encode())
        finally:
            os.close(fd)

    worker = Laufband(list(range(int(sys.argv[3]))), path=state, name="work",
                      tqdm_kwargs={"disable": True})
    while True:
        try:
            log("rounds", "again")
            for item in worker:
                log("start", item)
                time.sleep(0.002)
                log("done", item)
            break
        except KeyboardInterrupt:
            continue
    print("finished", flush=True)
""")


def rounds(logs: Path, proc: subprocess.Popen[str]) -> int:
    """How often ``proc`` has entered its loop."""
    return len(read_log(logs / f"{proc.pid}.rounds"))


def check_state(state: Path, logs: Path) -> None:
    """What holds at any moment: no task runs under a worker that is not online (handing
    back and going offline commit together), and every completed task's body finished
    (its "done" line is written before the loop goes on)."""
    assert orphans(state) == []
    states = task_states(state, "work")
    done = completions(logs)
    completed = {task for task, value in states.items() if value == "completed"}
    assert completed <= set(done), f"completed, never finished: {sorted(completed - set(done))}"


def interrupt_at_random(procs: Processes, state: Path, logs: Path, storm: Storm,
                        rng: random.Random) -> tuple[list[subprocess.Popen[str]], int]:
    """Send ``storm.interrupts`` SIGINTs to ``storm.workers`` workers, each a random
    moment after its loop (re)started; with ``hold_lock``, while the test holds the state
    lock (a worker then waits to flush or to claim, and the interrupt lands in that
    wait). A worker that ends is checked and replaced. Return the workers running now
    and how many ended."""
    workers = [procs.start("-c", AGAIN, state, logs, storm.items) for _ in range(storm.workers)]
    wait_for(lambda: all(read_log(logs / f"{w.pid}.start") for w in workers),
             what="every worker to start a task")  # the state exists from here on
    seen = dict.fromkeys(workers, 0)  # loops entered when it was last interrupted
    lock = FileLock(state / "state.lock")
    ended = 0
    for _ in range(storm.interrupts):
        victim = rng.choice(workers)
        wait_for(lambda v=victim: rounds(logs, v) > seen[v] or v.poll() is not None,
                 deadline=STARTUP_DEADLINE, what="the loop to start again")
        if victim.poll() is not None:  # a second interrupt ended it, or it finished
            code, out, err = procs.wait_all([victim])[0]
            assert code in {0, -signal.SIGINT}, (code, out, err[-2000:])
            if out != "finished\n":  # not done yet: the traceback of a KeyboardInterrupt
                assert err.rstrip().endswith("KeyboardInterrupt"), err[-2000:]
            check_state(state, logs)
            ended += 1
            workers.remove(victim)
            workers.append(procs.start("-c", AGAIN, state, logs, storm.items))
            seen[workers[-1]] = 0
            continue
        check_state(state, logs)
        seen[victim] = rounds(logs, victim)
        time.sleep(rng.uniform(0, storm.max_delay))  # a random moment, not a wait
        if not storm.hold_lock:
            victim.send_signal(signal.SIGINT)
            continue
        with lock.acquire(timeout=LOCK_DEADLINE):
            time.sleep(rng.uniform(0, MAX_HOLD))  # workers line up for the lock meanwhile
            victim.send_signal(signal.SIGINT)
    return workers, ended


def run_storm(procs: Processes, state: Path, logs: Path, storm: Storm) -> None:
    """Interrupt, let the workers finish, and check what the state and logs say."""
    workers, ended = interrupt_at_random(procs, state, logs, storm, random.Random(7))
    results = procs.wait_all(workers, deadline=FINISH_DEADLINE)
    # The last interrupt may land as its worker exits: after "finished", it ends by it.
    assert {code for code, _, _ in results} <= {0, -signal.SIGINT}, results
    assert [out for _, out, _ in results] == ["finished\n"] * storm.workers, results
    check_state(state, logs)
    assert online_workers(state) == 0
    assert set(task_states(state, "work").values()) == {"completed"}
    done = completions(logs)
    assert set(done) == {str(i) for i in range(storm.items)}
    again = Counter({item: n - 1 for item, n in done.items() if n > 1})
    assert sum(again.values()) <= storm.interrupts, (
        f"{sum(again.values())} finished bodies ran again after {storm.interrupts}"
        f" interrupts ({ended} workers ended): {again.most_common(5)}")


@pytest.mark.timeout(120)
def test_ctrl_c_at_random_moments_hands_claimed_tasks_back(
        state: Path, procs: Processes, tmp_path: Path) -> None:
    """One worker, claiming often: an interrupt as a claim commits hands the batch back."""
    run_storm(procs, state, tmp_path / "logs", Storm(items=2000, workers=1, interrupts=80,
                                                     max_delay=0.05, hold_lock=False))


@pytest.mark.timeout(120)
def test_ctrl_c_while_waiting_to_write_finished_work_keeps_it(
        state: Path, procs: Processes, tmp_path: Path) -> None:
    """Three workers (long batches, flushed midway) and the state lock held by the test
    at each interrupt: a worker interrupted while it waits to flush keeps what finished."""
    run_storm(procs, state, tmp_path / "logs", Storm(items=14000, workers=3, interrupts=60,
                                                     max_delay=0.15, hold_lock=True))
