"""Start, wait for and always clean up real worker processes.

Every process a test starts goes through ``Processes`` (the autouse ``procs`` fixture
of ``tests/conftest.py``). Each starts in a session of its own, so that it and all it
starts in turn (pmap's helpers, mpiexec's ranks, a forked child) can be found and
signalled together, and a test that signals a process group (a terminal's Ctrl-C)
reaches exactly what it started. At teardown ``cleanup`` gives every session
``EXIT_GRACE`` to end on its own, notes what still runs, then sends SIGTERM (and
SIGCONT, for stopped ones), waits ``TERM_DEADLINE``, sends SIGKILL and waits
``KILL_DEADLINE``; the fixture fails a test that passed but left a process behind.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NamedTuple

from filelock import FileLock, Timeout

from laufband.store import Store, Transaction

HELPERS = Path(__file__).parent
STARTUP_DEADLINE = 30.0  # seconds a process may take to reach a given point
RUN_DEADLINE = 90.0  # seconds a group of workers may take to finish
COMMAND_DEADLINE = 60.0  # seconds a short command (laufband status, --version) may take
EXIT_GRACE = 2.0  # seconds a finished test's processes may take to finish exiting
TERM_DEADLINE = 5.0  # seconds a session has to end after SIGTERM at teardown
KILL_DEADLINE = 10.0  # seconds a SIGKILLed session may take to be gone
POLL = 0.01  # seconds between two looks at a condition or a session
STOP_ATTEMPTS = 50  # tries to SIGSTOP a process while it does not hold the state lock
LOCK_PROBE = 0.5  # seconds to wait for the state lock after a SIGSTOP

Arg = str | os.PathLike[str]


@dataclass
class Started:
    """A process a test started (the session it leads), and how to reap it."""

    pid: int
    reap: Callable[[float], None]  # wait for it (and close its pipes) within a deadline


def in_own_session(target: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
    """Run ``target`` in a multiprocessing child that leads a session of its own."""
    os.setsid()
    return target(*args, **kwargs)


class Live(NamedTuple):
    """A live process (not a zombie), as /proc shows it."""

    pid: int
    parent: int
    session: int
    command: str

    def __str__(self) -> str:
        return f"{self.pid} {self.command}"


# Started once per process by the standard library and kept by design: not a leftover.
KEPT_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def live_processes() -> list[Live]:
    """Every live process of this machine that /proc shows (none without /proc)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, session
            if fields[0] in "ZX":
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # it ended while we looked
        command = " ".join(a.decode(errors="replace") for a in argv if a)[:300]
        found.append(Live(int(entry.name), int(fields[1]), int(fields[3]), command))
    return found


def session_members(sessions: set[int]) -> dict[int, list[str]]:
    """Live processes of each session, as "pid command" strings (without /proc: only
    each session's leading process group, by a null signal)."""
    found: dict[int, list[str]] = {}
    if not Path("/proc").is_dir():
        for sid in sessions:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(sid, 0)
                found[sid] = [f"process group {sid}"]
        return found
    for live in live_processes():
        if live.session in sessions:
            found.setdefault(live.session, []).append(str(live))
    return found


def children() -> dict[int, Live]:
    """Live children of this process (the test runner) but the standard library's own."""
    me = os.getpid()
    return {live.pid: live for live in live_processes() if live.parent == me
            and not any(helper in live.command for helper in KEPT_HELPERS)}


def signal_sessions(sessions: set[int], signum: int) -> None:
    """Send ``signum`` to every live member of ``sessions`` and to each leading group."""
    for sid, members in session_members(sessions).items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, signum)
        for member in members:
            pid = member.split()[0]
            if pid.isdigit():  # not the "process group" of the /proc-less fallback
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signum)


class Processes:
    """Launches processes, each in a session of its own, and guarantees that they and
    everything they started are gone at teardown."""

    def __init__(self) -> None:
        self.started: list[Started] = []
        self._lock = threading.Lock()  # tests start workers from threads, too
        # Children of the test runner itself (pmap's helpers, when a test calls pmap)
        # are the test's too, unless they were there before it.
        self._earlier = set(children())

    def _track(self, pid: int, reap: Callable[[float], None]) -> None:
        with self._lock:
            self.started.append(Started(pid, reap))

    def popen(self, argv: Sequence[Arg], *, env: dict[str, str] | None = None,
              **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen(argv, **kwargs)`` in a session of its own; ``env`` is
        added to this process's environment."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            [os.fspath(a) for a in argv], env={**os.environ, **(env or {})},
            start_new_session=True, **kwargs)

        def reap(deadline: float) -> None:
            try:
                proc.communicate(timeout=deadline)  # closes its pipes
            except (subprocess.TimeoutExpired, ValueError):
                # A pipe held open by a process that escaped the session.
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
                proc.wait(timeout=deadline)

        self._track(proc.pid, reap)
        return proc

    def start(self, *args: Arg, env: dict[str, str] | None = None,
              cwd: Arg | None = None) -> subprocess.Popen[str]:
        """Run ``python ARGS...`` in the background, its output in pipes."""
        return self.popen([sys.executable, *map(str, args)], env=env, cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def start_logged(self, script: Path, *args: object, stderr: Path,
                     env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Run ``python SCRIPT ARGS...`` with its stderr in a file that can be read while
        it runs."""
        with stderr.open("w") as err:
            return self.popen([sys.executable, str(script), *map(str, args)],
                              stdout=subprocess.DEVNULL, stderr=err, env=env, text=True)

    def worker(self, *args: object, **kwargs: Any) -> subprocess.Popen[str]:
        """Run ``tests/helpers/worker.py ARGS...``."""
        return self.start(HELPERS / "worker.py", *map(str, args), **kwargs)

    def run(self, argv: Sequence[Arg], *, timeout: float = COMMAND_DEADLINE,
            stdin: str | None = None, env: dict[str, str] | None = None,
            cwd: Arg | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command to its end, like ``subprocess.run(capture_output=True,
        text=True)`` with ``stdin`` as its input; past ``timeout`` its session is killed
        and TimeoutExpired raised."""
        proc = self.popen(argv, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_sessions({proc.pid}, signal.SIGKILL)
            out, err = proc.communicate(timeout=KILL_DEADLINE)
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def python(self, *args: Arg, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``python ARGS...`` to its end (see ``run``)."""
        return self.run([sys.executable, *map(str, args)], **kwargs)

    def process(self, context: BaseContext, target: Callable[..., Any], *args: Any,
                **kwargs: Any) -> BaseProcess:
        """Start ``target(*args, **kwargs)`` in a multiprocessing ``context`` process
        that leads a session of its own."""
        proc = context.Process(  # type: ignore[attr-defined]
            target=in_own_session, args=(target, args, kwargs))
        proc.start()
        assert proc.pid is not None
        self._track(proc.pid, proc.join)
        return proc

    def wait_all(self, procs: list[subprocess.Popen[str]],
                 deadline: float = RUN_DEADLINE) -> list[tuple[int, str, str]]:
        """Wait for processes; return (returncode, stdout, stderr) of each."""
        end = time.monotonic() + deadline
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=max(0.0, end - time.monotonic()))
            results.append((proc.returncode, out, err))
        return results

    def alive(self) -> list[str]:
        """Every live process started here, as "pid command": in the sessions of the
        processes started with this object, and children of the test runner started
        since it was made (pmap's helpers)."""
        sessions = {p.pid for p in self.started}
        members = session_members(sessions)
        strays = [str(live) for pid, live in sorted(children().items())
                  if pid not in self._earlier and live.session not in sessions]
        return [member for sid in sorted(members) for member in members[sid]] + strays

    def _signal(self, signum: int) -> None:
        signal_sessions({p.pid for p in self.started}, signum)
        for pid in set(children()) - self._earlier:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def _wait_gone(self, deadline: float) -> list[str]:
        """Wait until nothing started here is alive or ``deadline`` seconds passed;
        return what is still alive."""
        end = time.monotonic() + deadline
        while (alive := self.alive()) and time.monotonic() < end:
            time.sleep(POLL)
        return alive

    def cleanup(self) -> list[str]:
        """End every process started here and reap those started directly; return the
        processes that were still alive ``EXIT_GRACE`` seconds after the test ended."""
        leftovers = self._wait_gone(EXIT_GRACE)
        if leftovers:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)  # a stopped process cannot end
            if self._wait_gone(TERM_DEADLINE):
                self._signal(signal.SIGKILL)
                survivors = self._wait_gone(KILL_DEADLINE)
                assert not survivors, f"processes survive SIGKILL: {survivors}"
        for started in self.started:
            started.reap(KILL_DEADLINE)
        return leftovers


def kill_at_random(workers: list[subprocess.Popen[str]],
                   start: Callable[[], subprocess.Popen[str]], kills: int,
                   pause: Callable[[], float], rng: random.Random,
                   signum: int = signal.SIGKILL) -> int:
    """Send ``signum`` (SIGKILL) to a random live worker after each ``pause()``, wait
    for it to end and start a replacement at once, ``kills`` times or until none is
    left alive; return how many were signalled."""
    done = 0
    while done < kills:
        time.sleep(pause())  # a random moment, not a synchronisation
        alive = [w for w in workers if w.poll() is None]
        if not alive:
            break
        victim = rng.choice(alive)
        victim.send_signal(signum)
        victim.wait(timeout=RUN_DEADLINE)
        done += 1
        workers.append(start())
    return done


def next_line(proc: subprocess.Popen[str], deadline: float = STARTUP_DEADLINE,
              what: str = "a line") -> str:
    """The next line ``proc`` prints on its stdout pipe; fail after ``deadline``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], deadline)
    if not ready:
        msg = f"timed out after {deadline} s waiting for {what} from process {proc.pid}"
        raise AssertionError(msg)
    return proc.stdout.readline()


def wait_for(condition: Callable[[], bool], deadline: float = STARTUP_DEADLINE,
             what: str = "condition") -> float:
    """Poll ``condition`` until true; return the seconds it took, fail after ``deadline``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > deadline:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(POLL)
    return time.monotonic() - start


def stop_outside_the_lock(proc: subprocess.Popen[str], state: Path) -> None:
    """SIGSTOP ``proc`` at a moment it does not hold the state lock (a process frozen
    inside a transaction would keep every other one waiting)."""
    lock = FileLock(state / "state.lock")
    for _ in range(STOP_ATTEMPTS):
        proc.send_signal(signal.SIGSTOP)
        try:
            lock.acquire(timeout=LOCK_PROBE)
        except Timeout:
            proc.send_signal(signal.SIGCONT)  # frozen mid-transaction: try again
            time.sleep(random.uniform(0.0, 0.05))  # another moment, not a wait
            continue
        lock.release()
        return
    msg = f"could not stop process {proc.pid} outside the state lock"
    raise AssertionError(msg)


def signal_pending(pid: int, signum: int) -> bool:
    """Whether ``signum`` sent to ``pid`` is still pending (Linux /proc): once it is not,
    a thread of it took the signal, and a blocking call it made was interrupted."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines()
             if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask >> (signum - 1) & 1 for mask in masks)


def read_log(path: Path) -> list[str]:
    """Lines a worker appended to its log (missing file: none)."""
    return path.read_text().split() if path.exists() else []


def completions(log_dir: Path, kind: str = "done") -> Counter[str]:
    """How often each item was logged as done (or as started, ``kind="start"``) across
    all worker logs in ``log_dir``."""
    counts: Counter[str] = Counter()
    for log in log_dir.glob(f"*.{kind}"):
        counts.update(read_log(log))
    return counts


def task_states(path: Path, workflow: str) -> dict[str, str]:
    """Task id -> state of a workflow, read from the store; checks its state counters."""
    store = Store(path)
    try:
        with store.transaction() as tx:
            assert_counters_match(tx)
            return tx.task_states(tx.open_workflow(workflow, keyed=False).id)
    finally:
        store.close()


def assert_counters_match(tx: Transaction) -> None:
    """The maintained per-state counters of every workflow equal a scan of its tasks."""
    for name in tx.workflow_names():
        wf = tx.open_workflow(name, keyed=False).id
        assert tx.counts(wf) == tx.scan_counts(wf), f"counters of workflow {name!r} drifted"


def task_events(path: Path, workflow: str) -> list[tuple[str, str, str | None]]:
    """(task id, state, error) of every event of a workflow."""
    store = Store(path)
    try:
        with store.transaction() as tx:
            return tx.events(tx.open_workflow(workflow, keyed=False).id)
    finally:
        store.close()


def online_workers(path: Path, lock: str = "file") -> int:
    """How many workers the store lists as online (taking the lock kind they use)."""
    store = Store(path, soft_lock=lock == "soft")
    try:
        with store.transaction() as tx:
            return len(tx.online_workers(exclude=-1))
    finally:
        store.close()


def integrity(path: Path) -> str:
    """SQLite's integrity check of the state database ("ok" when sound)."""
    store = Store(path)
    try:
        with store.transaction() as tx:
            return tx.integrity()
    finally:
        store.close()


def orphans(path: Path) -> list[tuple[str, int, int, str | None]]:
    """Running tasks whose worker is not online: (workflow, task, worker, its state).

    The invariant: none, ever, once workers have stopped or been reaped. Read with
    plain SQL so the check does not trust the store it checks.
    """
    with sqlite3.connect(path / "state.db") as conn:
        rows = conn.execute(
            "SELECT f.name, t.seq, t.worker, w.state FROM tasks t JOIN workflows f"
            " ON f.id = t.wf LEFT JOIN workers w ON w.id = t.worker"
            " WHERE t.state = 'running' AND coalesce(w.state, '') != 'online'").fetchall()
        runs = conn.execute(  # tasks claimed as a run, without rows of their own
            "SELECT f.name, r.lo, r.hi, r.worker, w.state FROM runs r JOIN workflows f"
            " ON f.id = r.wf LEFT JOIN workers w ON w.id = r.worker"
            " WHERE r.state = 'running' AND coalesce(w.state, '') != 'online'").fetchall()
    return rows + [(name, seq, worker, state) for name, lo, hi, worker, state in runs
                   for seq in range(lo, hi + 1)]
