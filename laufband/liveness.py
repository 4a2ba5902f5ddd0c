"""Who is alive: process identity, heartbeats and dead-worker reaping.

A worker's token names its boot, its pid namespace and its start time. Same host,
same boot and same pid namespace: a worker is dead as soon as its pid is gone or
belongs to another process (the start time differs), or is a zombie. Everyone
else (other hosts; containers that share our host name but not our pids, where
every worker may be pid 1): heartbeats are counters, and a reaper declares a worker
dead only after seeing its counter unchanged for ``timeout`` seconds on its own
monotonic clock, so hosts whose clocks disagree never kill each other's workers.
The heartbeat also finds a frozen process on our own host (SIGSTOP, a suspended
job): alive, but its counter stands still.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tqdm import tqdm

from laufband.errors import StateError
from laufband.inflight import forget, read_record
from laufband.store import HOST, StateDirectory, Store, Transaction, WorkerRecord, lock_waits

IDLE = -1  # what a reaper passes for a worker that died between tasks
WATCH_EVERY = 0.05  # seconds between a heartbeat thread's calls of its watch

__all__ = [
    "HOST",
    "IDLE",
    "DeadWorkerDetector",
    "Heartbeat",
    "is_alive",
    "is_checkable",
    "looks_dead",
    "pid_namespace",
    "process_token",
    "shares_memory",
]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """Return our pid namespace (``[4026531836]``; empty without /proc).

    Pids mean what they say only within it.
    """
    try:
        return str(Path("/proc/self/ns/pid").readlink()).removeprefix("pid:")
    except OSError:
        return ""


_BOOT = _boot_id()
_PLACE = f"{_BOOT}:{pid_namespace()}"  # where our pids mean what they say


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """Return (state letter, start time in ticks since boot) of ``pid`` from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def process_token(pid: int | None = None) -> str:
    """Return ``boot:namespace:start time``: a token that tells processes apart.

    It differs between two processes that had the same pid, and between processes of
    two boots or pid namespaces.
    """
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return f"{_PLACE}:{stat[1]}" if stat else ""


def is_checkable(host: str, token: str) -> bool:
    """Tell whether this process can look a worker's pid up.

    It can on the same host, boot and pid namespace (no token: a system without /proc,
    where the pid is all there is).
    """
    return host == HOST and (not token or token.rpartition(":")[0] == _PLACE)


def shares_memory(host: str, token: str) -> bool:
    """Tell whether a worker ran on this machine since its boot (any pid namespace).

    Then its memory-mapped record is the page it wrote, not a stale copy.
    """
    return host == HOST and (not token or token.partition(":")[0] == _BOOT)


def is_alive(pid: int, token: str) -> bool:
    """Whether the process ``pid`` on this host is the one that wrote ``token``."""
    stat = _proc_stat(pid)
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc (macOS): the pid is all we can check
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if stat[0] in ("Z", "X"):
        return False
    return not token or token == f"{_PLACE}:{stat[1]}"


def looks_dead(worker: WorkerRecord, now: float, timeout: float) -> bool:
    """Tell at one look whether an online worker is dead (for one-off commands).

    On this host: its process is gone. Elsewhere, with no earlier look to compare its
    heartbeat counter with: its last heartbeat (its host's clock) is ``timeout`` old.
    """
    if is_checkable(worker.host, worker.token):
        return not is_alive(worker.pid, worker.token)
    return now - worker.seen >= timeout


class DeadWorkerDetector:
    """Decides which online workers are dead; remembers heartbeat counters it has seen."""

    def __init__(self, timeout: float, state: StateDirectory | Path) -> None:
        self.timeout = timeout
        self._state = StateDirectory.of(state)  # where workers record their task in flight
        # worker -> (counter, when we first saw that value, our lock waits by then)
        self._seen: dict[int, tuple[int, float, float]] = {}

    def is_dead(self, worker: WorkerRecord) -> bool:
        """Tell whether a worker is dead.

        It is when its process is gone (where we can look it up) or its heartbeat
        counter has stood still for ``timeout`` (everywhere: frozen processes too).
        """
        if is_checkable(worker.host, worker.token) and not is_alive(worker.pid, worker.token):
            return True
        now, waits = time.monotonic(), lock_waits()
        beat, since, waits_then = self._seen.get(worker.id, (None, now, waits))
        if beat != worker.beat:
            self._seen[worker.id] = (worker.beat, now, waits)
            return False
        # Time we spent waiting for the state lock ourselves does not count: behind a
        # frozen holder or a stalled filesystem, nobody's heartbeat could get through.
        return now - since - (waits - waits_then) >= self.timeout

    def reap_identifier(self, tx: Transaction, identifier: str, max_killed_retries: int) -> None:
        """Reap the worker holding ``identifier`` if it is dead (before taking it over)."""
        holder = tx.online_worker(identifier)
        if holder is not None and self.is_dead(holder):
            self._reap(tx, holder, max_killed_retries)

    def reap(self, tx: Transaction, me: int, max_killed_retries: int) -> int:
        """Reap every dead worker other than ``me``; return how many tasks came back."""
        returned = 0
        for worker in tx.online_workers(exclude=me):
            if self.is_dead(worker):
                returned += self._reap(tx, worker, max_killed_retries)
                self._seen.pop(worker.id, None)
        return returned

    def reap_gone(self, tx: Transaction, max_killed_retries: int) -> list[tuple[WorkerRecord, int]]:
        """Reap the online workers that look dead at one look (``laufband retry``).

        Returns:
            Each worker reaped, with how many of its tasks came back.
        """
        now = time.time()
        return [(worker, self._reap(tx, worker, max_killed_retries))
                for worker in tx.online_workers(exclude=-1)
                if looks_dead(worker, now, self.timeout)]

    def _reap(self, tx: Transaction, dead: WorkerRecord, max_killed_retries: int) -> int:
        # Only a record written on this machine is current: another host's may reach
        # us late (a shared filesystem writes back within seconds), naming tasks as
        # finished or running that were not.
        record = read_record(self._state, dead.id) if shares_memory(dead.host, dead.token) \
            else None
        if record is None:
            returned = tx.reap(dead, max_killed_retries)
        else:
            running = IDLE if record.running is None else record.running
            returned = tx.reap(dead, max_killed_retries, running, record.finished)
        # Removed once the reap has committed: if this process dies before, the next
        # reaper needs the record to complete what the dead worker finished.
        tx.after_commit(partial(forget, self._state, dead.id))
        return returned


class Heartbeat:
    """A daemon thread advancing a worker's heartbeat counter every ``interval`` seconds.

    Given a ``watch``, the thread also calls it every ``WATCH_EVERY`` seconds (the
    worker loop's look at a task running far past its plan, :mod:`laufband.overrun`).
    """

    def __init__(self, store: Store, worker: int, interval: float,
                 watch: Callable[[], None] | None = None) -> None:
        self._store = store
        self._worker = worker
        self._interval = interval
        self._watch = watch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="laufband-heartbeat", daemon=True)
        self.last_beat = time.monotonic()  # when the last beat committed (or we started)

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _look(self) -> None:
        """Call the watch; one that fails but with a store error is not called again.

        Such an error (a bug of ours) must not end the thread: the beats go on.
        """
        try:
            self._watch()  # type: ignore[misc]
        except StateError:
            pass  # a store error: tried again at the next look
        except Exception as error:  # noqa: BLE001 - reported; the beats matter more
            self._watch = None
            tqdm.write(f"laufband: the watch for slow and timed-out tasks stopped"
                       f" ({type(error).__name__}: {error}); the worker goes on without it",
                       file=sys.stderr)

    def _run(self) -> None:
        tick = self._interval if self._watch is None else min(self._interval, WATCH_EVERY)
        next_beat = time.monotonic() + self._interval
        try:
            while not self._stop.wait(tick):
                # A beat (or a watch's transaction) that fails (a read-only or full
                # filesystem for a moment, an NFS hiccup) is tried again later: a
                # heartbeat thread that died would get this live worker reaped by its
                # peers for the rest of its run.
                if self._watch is not None:
                    self._look()
                if time.monotonic() < next_beat:
                    continue
                with contextlib.suppress(StateError):
                    with self._store.transaction() as tx:
                        tx.beat(self._worker)
                    self.last_beat = time.monotonic()
                next_beat = time.monotonic() + self._interval
        finally:
            self._store.close()
