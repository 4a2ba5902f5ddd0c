"""Faults and bad input: nothing is lost, nothing completes twice, errors are clear."""

from __future__ import annotations

import os
import random
import signal
import stat
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from filelock import FileLock

from laufband import Laufband, Monitor, pmap
from laufband.batching import MIN_FLUSH
from tests.helpers.procs import (
    HELPERS,
    RUN_DEADLINE,
    Processes,
    completions,
    integrity,
    kill_at_random,
    next_line,
    task_states,
)

CHAOS_ITEMS = 2000
KILL_EVERY = 0.25  # seconds between kills
KILLS = 20
MIN_TASK = 0.001  # seconds: the shortest pmap chaos task
# A pmap helper's results live in its memory until flushed: a kill loses at most those
# finished since the last flush (MIN_FLUSH with four workers; up to 1.5 times that when
# a batch was about to end), plus the one in flight, and they are computed again.
PER_KILL = int(1.5 * MIN_FLUSH / MIN_TASK) + 1


def chaos_worker(procs: Processes, state: Path, logs: Path):
    # With a kill every 0.25 s a task may be in flight (or finished but unflushed) at
    # two kills; the default max_killed_retries=1 would then keep it "killed", as
    # designed (tests/test_liveness.py). Here every task must complete.
    return procs.start(HELPERS / "chaos_worker.py", state, logs, CHAOS_ITEMS,
                       env={"LAUFBAND_MAX_KILLED_RETRIES": str(KILLS)})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_chaos_sigkill_workers_at_random(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    rng = random.Random(7)
    workers = [chaos_worker(procs, state, logs) for _ in range(4)]
    kills = kill_at_random(workers, lambda: chaos_worker(procs, state, logs), KILLS,
                           lambda: KILL_EVERY, rng)
    finished = procs.wait_all([w for w in workers if w.poll() is None])
    assert all(code == 0 for code, _, _ in finished), finished
    done = completions(logs)
    lost = CHAOS_ITEMS - len(done)
    again = sum(done.values()) - len(done)
    states = task_states(state, "chaos")  # also checks the state counters against a scan
    [flow] = Monitor(state).status("chaos")
    double = flow.counts["completed"] - sum(s == "completed" for s in states.values())
    summary = (f"\nchaos: runs 1, kills {kills}, tasks lost {lost}, double completions"
               f" {double}, re-executions {again}, integrity {integrity(state)}")
    print(summary)  # noqa: T201 - shown with -s
    assert double == 0
    assert kills == KILLS
    assert lost == 0
    assert set(states.values()) == {"completed"}
    # Same host: a SIGKILL makes only the task in flight run again, and its row was not
    # written yet unless the kill fell between the row and the loop's next step.
    assert again <= kills
    rows = [row for row, count in done.items() if count > 1]
    assert not rows, f"rows written twice under worker.lock: {rows}"
    assert integrity(state) == "ok"
    with FileLock(state / "user.lock", timeout=5):  # no dead process keeps it
        pass


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_chaos_pmap_helpers_killed(state: Path, tmp_path: Path) -> None:
    logs = tmp_path / "pmap-logs"
    logs.mkdir()
    rng = random.Random(3)
    killer_log: list[int] = []

    def slowly(x: int) -> int:
        time.sleep((1 + x * 7919 % 10) / 1000)
        with (logs / f"{os.getpid()}.done").open("a") as log:
            log.write(f"{x}\n")
        return -x

    import threading

    caller = os.getpid()

    def killer() -> None:  # kill three of the helpers, one every 0.25 s
        while len(killer_log) < 3:
            time.sleep(KILL_EVERY)
            helpers = [int(p.stem) for p in logs.glob("*.done") if int(p.stem) != caller
                       and int(p.stem) not in killer_log and Path(f"/proc/{p.stem}").exists()]
            if helpers:
                victim = rng.choice(helpers)
                os.kill(victim, signal.SIGKILL)
                killer_log.append(victim)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = pmap(slowly, range(1500), n=4, path=state, progress=False, name="chaos",
                  max_killed_retries=KILLS)
    thread.join(timeout=5)
    assert result == [-x for x in range(1500)]
    done = completions(logs)
    [flow] = Monitor(state).status("chaos")
    summary = (f"\npmap chaos: runs 1, kills {len(killer_log)}, tasks lost"
               f" {1500 - len(done)}, double completions {flow.counts['completed'] - 1500},"
               f" re-executions {sum(done.values()) - len(done)}, integrity {integrity(state)}")
    print(summary)  # noqa: T201 - shown with -s
    assert killer_log  # helpers were started and killed
    assert set(done) == {str(x) for x in range(1500)}
    assert flow.counts["completed"] == 1500
    assert sum(done.values()) - 1500 <= len(killer_log) * PER_KILL
    assert integrity(state) == "ok"


def test_soft_lock_left_by_a_killed_process_is_recovered(
        state: Path, procs: Processes) -> None:
    state.mkdir()
    holder = procs.start("-c", textwrap.dedent(f"""
        import time
        from filelock import SoftFileLock
        lock = SoftFileLock({str(state / "state.lock")!r})  # kept: collected, it is released
        lock.acquire()
        print("held", flush=True)
        time.sleep(600)
    """))
    assert next_line(holder, what="the holder to hold the lock").strip() == "held"
    holder.kill()
    holder.wait(timeout=RUN_DEADLINE)
    assert (state / "state.lock").exists()  # the stale soft lock file stays behind
    logs = state.parent / "logs"
    worker = procs.worker(state, logs, "--items", 20, env={"LAUFBAND_LOCK": "soft"})
    assert procs.wait_all([worker], deadline=30)[0][0] == 0
    assert completions(logs) == Counter({str(i): 1 for i in range(20)})


def test_full_disk_while_flushing_gives_a_clear_error_and_loses_nothing(
        state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    script = state.parent / "full.py"
    script.write_text(textwrap.dedent(f"""
        import os, sqlite3, time
        from pathlib import Path
        from laufband import Laufband
        from laufband.store import Transaction
        finish, calls = Transaction.finish, []
        def failing_finish(self, *args):
            calls.append(1)
            if len(calls) > 3:  # the disk fills up after a few flushes
                raise sqlite3.OperationalError("database or disk is full")
            return finish(self, *args)
        Transaction.finish = failing_finish
        logs = Path({str(logs)!r})
        logs.mkdir(exist_ok=True)
        for item in Laufband(list(range(40)), path={str(state)!r}, name="work",
                             tqdm_kwargs={{"disable": True}}):
            time.sleep(0.03)
            with open(logs / f"{{os.getpid()}}.done", "a") as log:
                log.write(f"{{item}}\\n")
    """))
    [(code, _, err)] = procs.wait_all([procs.start(script)])
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("laufband.errors.StateError: the disk is full in ")
    assert "free space or fix the directory, then run again" in last
    before = task_states(state, "work")
    assert "completed" in before.values()  # what was flushed before stays
    again = procs.worker(state, logs, "--items", 40)
    assert procs.wait_all([again])[0][0] == 0
    assert set(task_states(state, "work").values()) == {"completed"}
    assert set(completions(logs)) == {str(i) for i in range(40)}


def test_state_files_are_private(state: Path) -> None:
    big = pmap(lambda x: bytes(1_500_000), range(2), n=1, path=state, progress=False)
    assert len(big) == 2
    worker = Laufband([1, 2], path=state, name="private", tqdm_kwargs={"disable": True})
    for _ in worker:
        with worker.lock:
            pass
    for path in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = 0o700 if path.is_dir() else 0o600
        assert mode & 0o077 == 0, f"{path} is readable by others ({oct(mode)})"
        assert mode == expected, (path, oct(mode))  # the journal too: SQLite copies it


def test_hostile_names_and_ids_stay_data(state: Path) -> None:
    name = "x'); DROP TABLE tasks; --"
    ids = ["a'; DELETE FROM workflows; --", "../../etc/passwd", "b\\0c"]
    out = list(Laufband(ids, key=str, path=state, name=name, tqdm_kwargs={"disable": True}))
    assert out == ids
    assert task_states(state, name) == dict.fromkeys(ids, "completed")
    assert integrity(state) == "ok"




@pytest.mark.slow
@pytest.mark.timeout(400)
def test_chaos_signals_and_a_reset_during_work(state: Path, procs: Processes) -> None:
    """Workers hit by SIGKILL, SIGINT and SIGTERM at random and replaced; halfway the
    workflow is reset (`laufband reset --yes`) and new workers log elsewhere. The new
    workflow is run by new workers only, every task once, and nothing stays stuck."""

    from tests.helpers.procs import orphans

    before, after = state.parent / "logs-before", state.parent / "logs-after"
    rng = random.Random(13)
    logs = before
    workers = [chaos_worker(procs, state, logs) for _ in range(4)]
    for hit in range(2 * KILLS):
        time.sleep(KILL_EVERY)
        if hit == KILLS:  # halfway: reset while they run; later workers log elsewhere
            reset = procs.python("-m", "laufband", "reset", "-w", "chaos", "--path", state,
                                 "--yes")
            assert reset.returncode == 0, reset.stderr
            logs = after
            workers.append(chaos_worker(procs, state, logs))
            continue
        alive = [w for w in workers if w.poll() is None]
        if not alive:
            workers.append(chaos_worker(procs, state, logs))
            continue
        victim = rng.choice(alive)
        victim.send_signal(rng.choice([signal.SIGKILL, signal.SIGINT, signal.SIGTERM]))
        victim.wait(timeout=60)
        workers.append(chaos_worker(procs, state, logs))
    finished = procs.wait_all([w for w in workers if w.poll() is None])
    assert all(code == 0 for code, _, _ in finished), finished
    if set(completions(after)) != {str(i) for i in range(CHAOS_ITEMS)}:  # all were hit
        assert procs.wait_all([chaos_worker(procs, state, after)])[0][0] == 0
    states = task_states(state, "chaos")
    assert set(states.values()) == {"completed"}
    assert len(states) == CHAOS_ITEMS
    assert set(completions(after)) == {str(i) for i in range(CHAOS_ITEMS)}
    assert orphans(state) == []
    assert integrity(state) == "ok"
