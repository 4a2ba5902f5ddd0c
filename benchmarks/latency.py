"""Store latency injection and source-tree handling shared by slowfs.py and mpi.py.

Worker side: ``use_tree`` puts a laufband source tree first on ``sys.path`` and checks
that ``import laufband`` came from it; ``install_patches(delay)`` replaces
``laufband.store.store.Store.transaction`` with a wrapper that sleeps ``delay`` before
taking the lock (the lock's round trip to a busy NFS server) and ``delay`` after the
with-block's body, still holding the lock (commit and fsync; no sleep when the body
raises). With ``delay == 0`` nothing sleeps: the wrapper only measures. It counts the
process's transactions and sums the time it holds the lock (``STATS["tx"]``,
``STATS["held_s"]``), optionally records each transaction's lock wait (the original's
entry: file lock plus ``BEGIN IMMEDIATE``, the injected sleep excluded), and a wrapper
of ``DeadWorkerDetector.reap`` sums the time spent reaping. Heartbeat threads run
transactions too: the counters are updated under a lock.

Driver side: ``snapshot`` copies each tree's ``laufband/`` at start, so a tree edited
while a benchmark runs is measured in one version.

Only the standard library is used here (the module is imported by workers that run
under any python, before ``laufband`` is).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

STATS = {"tx": 0, "held_s": 0.0, "reaps": 0, "reap_s": 0.0}
_STATS_LOCK = threading.Lock()  # the heartbeat thread runs transactions too


def _prog() -> str:
    return Path(sys.argv[0]).stem or "benchmark"  # "slowfs" / "mpi": who complains


def _count(count_key: str, time_key: str, seconds: float) -> None:
    with _STATS_LOCK:
        STATS[count_key] += 1
        STATS[time_key] += seconds


def _attribute(module, dotted: str):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None or not callable(obj):
            raise SystemExit(f"{_prog()}: {module.__name__}.{dotted} is missing or not"
                             " callable: cannot inject the latency / instrument this tree")
    return obj


def install_patches(delay: float, waits: list[float] | None = None) -> None:
    """Wrap Store.transaction (latency, lock-held time) and DeadWorkerDetector.reap (time).

    If ``waits`` is a list, each transaction appends the seconds its original's entry
    took (lock wait plus ``BEGIN IMMEDIATE``; the injected sleep before it excluded).
    """
    import laufband.store.store as store_module
    from laufband import liveness

    store_class = _attribute(store_module, "Store")
    original = _attribute(store_module, "Store.transaction")
    detector_class = _attribute(liveness, "DeadWorkerDetector")
    original_reap = _attribute(liveness, "DeadWorkerDetector.reap")

    @contextmanager
    def transaction(self, *args, **kwargs):
        if delay:
            time.sleep(delay)  # acquiring the lock: a round trip, not holding it yet
        acquired = None
        entered = time.perf_counter() if waits is not None else 0.0
        try:
            with original(self, *args, **kwargs) as tx:
                acquired = time.perf_counter()
                if waits is not None:
                    waits.append(acquired - entered)  # list.append: atomic under the GIL
                yield tx  # an exception from the body propagates: no sleep, original rolls back
                if delay:
                    time.sleep(delay)  # commit + fsync, while holding the lock
        finally:
            if acquired is not None:
                _count("tx", "held_s", time.perf_counter() - acquired)

    @functools.wraps(original_reap)
    def reap(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original_reap(self, *args, **kwargs)
        finally:
            _count("reaps", "reap_s", time.perf_counter() - start)

    store_class.transaction = transaction
    detector_class.reap = reap


def use_tree(tree: str) -> Path:
    """Import laufband from the source tree ``tree`` (first on sys.path); return its file."""
    root = Path(tree).resolve()
    sys.path.insert(0, str(root))
    import laufband

    where = Path(laufband.__file__).resolve()
    if not where.is_relative_to(root):
        raise SystemExit(f"{_prog()}: imported laufband from {where}, expected under {root}")
    return where


def snapshot(trees: list, prefix: str = "laufband-trees-") -> Path:
    """Copy each tree's laufband/ now: a tree edited during the run stays one version.

    ``trees`` is a list of (name, path); the copy of ``path``'s laufband/ goes to
    ``<returned dir>/<name>/laufband``. One line per tree (HEAD, files changed under
    laufband/) is printed.
    """
    snapshots = Path(tempfile.mkdtemp(prefix=prefix))
    for name, path in trees:
        shutil.copytree(Path(path) / "laufband", snapshots / name / "laufband",
                        ignore=shutil.ignore_patterns("__pycache__"))
        git = subprocess.run(["git", "-C", path, "log", "-1", "--format=%h %s"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "laufband"],
                               capture_output=True, text=True).stdout.count("\n")
        print(f"tree {name}={path}: HEAD {git[:60]}, {dirty} changed files under laufband/"
              f" (snapshot {snapshots / name})")
    return snapshots
