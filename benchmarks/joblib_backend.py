"""joblib.Parallel on backend "laufband" vs joblib's default "loky", side by side.

Usage: python benchmarks/joblib_backend.py [--quick] [--repeats N]

Each cell runs in a fresh subprocess (cold: imports done before the clock, pool or
state directory created inside it). Workloads as in benchmarks/pmap.py:
  1. no-op x 100,000, n_jobs=2;  2. 1 ms busy loop x 2,000, n_jobs=2;
  3. 20 ms sleep x 400, n_jobs=8;  4. laufband only: re-run of 1 on its filled state.
Targets: laufband <= 1.1 x loky on the cold runs; the cached re-run of 1 at least
10 x faster than loky's cold run of 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loop

WORKER = r"""
import json, sys, time
cfg = json.loads(sys.argv[1])
import laufband  # registers the backend
from joblib import Parallel, delayed

def noop(x):
    return x

def busy(x):
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return x

def nap(x):
    time.sleep(0.02)
    return x

func = {"noop": noop, "busy": busy, "nap": nap}[cfg["func"]]
start = time.perf_counter()
if cfg["backend"] == "laufband":
    from joblib import parallel_config
    with parallel_config(backend="laufband", n_jobs=cfg["n_jobs"], path=cfg["state"]):
        out = Parallel()(delayed(func)(i) for i in range(cfg["n"]))
else:
    out = Parallel(n_jobs=cfg["n_jobs"])(delayed(func)(i) for i in range(cfg["n"]))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "correct": out == list(range(cfg["n"]))}))
"""

WORKLOADS = [  # (label, function, items, n_jobs)
    ("1  no-op x {n:,}, n_jobs=2", "noop", 100_000, 2),
    ("2  1 ms busy x {n:,}, n_jobs=2", "busy", 2_000, 2),
    ("3  20 ms sleep x {n:,}, n_jobs=8", "nap", 400, 8),
]


def run(cfg: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cfg)],
                          env=loop.clean_env(),
                          capture_output=True, text=True, timeout=600,
                          cwd=cfg.get("cwd", tempfile.gettempdir()))
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    cached_seconds: list[float] = []
    loky_noop: list[float] = []
    with tempfile.TemporaryDirectory(prefix="laufband-joblib-bench-") as tmp:
        for label, func, n, n_jobs in WORKLOADS:
            n = n // 10 if args.quick else n
            times: dict[str, list[float]] = {"laufband": [], "loky": []}
            correct = True
            for rep in range(args.repeats):
                for backend in ("loky", "laufband"):  # side by side, alternating
                    state = str(Path(tmp) / f"{func}-{rep}")
                    cfg = {"backend": backend, "n_jobs": n_jobs, "n": n, "func": func,
                           "state": state}
                    result = run(cfg)
                    correct &= result["correct"]
                    times[backend].append(result["seconds"])
                    if backend == "laufband" and func == "noop":
                        cached = run(cfg)  # the same call again on its filled state
                        correct &= cached["correct"]
                        cached_seconds.append(cached["seconds"])
                    if backend == "loky" and func == "noop":
                        loky_noop.append(result["seconds"])
            ours, peer = statistics.median(times["laufband"]), statistics.median(times["loky"])
            rows.append((label.format(n=n), f"{ours:.2f} s", f"{peer:.2f} s",
                         f"{ours / peer:.2f}", "<= 1.10", "yes" if ours / peer <= 1.1 else "NO",
                         "all correct" if correct else "WRONG RESULTS"))
        cached = statistics.median(cached_seconds)
        speedup = statistics.median(loky_noop) / cached
        rows.append((f"4  re-run of 1, all {100_000 // (10 if args.quick else 1):,} cached",
                     f"{cached:.2f} s", f"{statistics.median(loky_noop):.2f} s (cold 1)",
                     f"{cached / statistics.median(loky_noop):.2f}", "<= 0.10",
                     "yes" if speedup >= 10 else "NO", f"{speedup:.1f}x faster than loky cold"))
    header = ["workload", "laufband", "loky", "laufband/loky", "target", "met?", "notes"]
    print(loop.table([list(row) for row in rows], header))
    print(f"\nmedian of {args.repeats} runs each, fresh subprocess per run, "
          f"{time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
