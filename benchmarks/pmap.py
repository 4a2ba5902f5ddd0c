"""Benchmark laufband.pmap against joblib.Parallel, multiprocessing.Pool and mpire.

Run from anywhere::

    .venv/bin/python benchmarks/pmap.py            # full run (~2-3 min)
    .venv/bin/python benchmarks/pmap.py --quick    # smoke run with small sizes

Every cell is a fresh subprocess (cold imports, cold pools; pmap gets a fresh state
directory). Inside it the libraries are imported first (timed separately), then the
clock runs from just before creating the pool / calling pmap until the result list is
complete. Each cell runs 3 times, interleaved, and the median is shown. The script
prints one plain-text table. Needs joblib and mpire in the running python.

See benchmarks/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loop

IMPLS = ("pmap", "pmap-spawn", "joblib", "pool", "mpire")
LABELS = {"pmap": "pmap (default: fork here)", "pmap-spawn": "pmap (spawn)",
          "joblib": "joblib.Parallel (loky)", "pool": "mp.Pool (fork)",
          "mpire": "mpire.WorkerPool (fork)"}
IMPORTS = {"pmap-spawn": "laufband, cloudpickle",
           "pmap": "laufband, multiprocessing", "joblib": "joblib",
           "pool": "multiprocessing", "mpire": "mpire"}
BUSY_S = 0.001
SLEEP_S = 0.02


# ======================================================================================
# Worker side: runs in a fresh subprocess, one implementation, one workload.
# ======================================================================================


def value(x: int) -> int:
    """What busy() and nap() return: cheap, so the expected list is cheap to build."""
    return 3 * x + 1


def noop(x):
    return x


def busy(x: int) -> int:
    end = time.perf_counter() + BUSY_S
    while time.perf_counter() < end:
        pass
    return value(x)


def nap(x: int) -> int:
    time.sleep(SLEEP_S)
    return value(x)


FUNCS = {"noop": noop, "busy": busy, "sleep": nap, "cached": noop}
EXPECTED = {"noop": noop, "busy": value, "sleep": value, "cached": noop}


def _import(impl: str):
    """Import what ``impl`` needs (the timed import); return a runner(func, data, n)."""
    if impl.startswith("pmap"):
        from laufband import pmap

        method = impl.split("-")[1] if "-" in impl else None  # None: pmap's default
        if method == "spawn":  # pmap imports it lazily; import it before the clock
            import cloudpickle  # noqa: F401
        else:
            import multiprocessing

        def run(func, data, n, state):
            return pmap(func, data, n=n, path=state, progress=False, start_method=method), None
        return run
    if impl == "joblib":
        from joblib import Parallel, delayed

        def run(func, data, n, state):
            return Parallel(n_jobs=n)(delayed(func)(x) for x in data), None
        return run
    if impl == "pool":
        import multiprocessing

        def run(func, data, n, state):
            pool = multiprocessing.get_context("fork").Pool(n)
            results = pool.map(func, data)
            return results, pool
        return run
    if impl == "mpire":
        from mpire import WorkerPool

        def run(func, data, n, state):
            pool = WorkerPool(n_jobs=n)
            results = pool.map(func, data)
            return results, pool
        return run
    raise SystemExit(f"unknown implementation {impl!r}")


def worker_main(cfg: dict) -> None:
    impl, kind, n, workers = cfg["impl"], cfg["kind"], cfg["n"], cfg["workers"]
    out: dict = {"pid": os.getpid()}
    t0 = time.perf_counter()
    run = _import(impl)
    out["import_s"] = time.perf_counter() - t0

    # A cached run computes nothing: the tasks its workers complete, read from the state
    # (public Monitor) before and after the call, outside the timed span.
    before = _tasks_done(cfg["state"]) if kind == "cached" else 0

    func = FUNCS[kind]
    data = list(range(n))
    start = time.perf_counter()
    results, pool = run(func, data, workers, cfg.get("state"))
    done = time.perf_counter()
    if pool is not None:  # shutdown is not in the timed span
        if impl == "pool":
            pool.close()
            pool.join()
        else:
            pool.terminate()
    out["shutdown_s"] = time.perf_counter() - done
    out["time_s"] = done - start
    expected = [EXPECTED[kind](x) for x in data]
    out["correct"] = isinstance(results, list) and list(results) == expected
    if not out["correct"]:
        wrong = [i for i, (a, b) in enumerate(zip(results, expected, strict=False)) if a != b]
        out["wrong"] = (f"len {len(results)} vs {len(expected)}, {len(wrong)} differ"
                        + (f", first at {wrong[0]}" if wrong else ""))
    if impl.startswith("pmap"):  # pmap's helpers should be gone when it returns
        out["live_children"] = _live_children()
    if kind == "cached":
        out["computed"] = _tasks_done(cfg["state"]) - before
    Path(cfg["result"]).write_text(json.dumps(out))


def _tasks_done(state: str) -> int:
    """Tasks the workers of every workflow in ``state`` have completed so far."""
    from laufband import Monitor

    monitor = Monitor(state)
    try:
        return sum(worker.done for flow in monitor.status() for worker in flow.workers)
    finally:
        monitor.close()


def _live_children() -> int:
    """Processes whose parent is this one (Linux /proc; 0 elsewhere)."""
    me, count = os.getpid(), 0
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == me:
            count += 1
    return count


# ======================================================================================
# Driver side.
# ======================================================================================


clean_env = loop.clean_env


class Runner:
    """Start one worker subprocess per cell; collect its JSON result or the failure."""

    def __init__(self, workdir: Path, timeout: float) -> None:
        self.workdir, self.timeout, self.count = workdir, timeout, 0

    def run(self, cfg: dict) -> dict:
        self.count += 1
        result = self.workdir / f"result-{self.count}.json"
        cfg = {**cfg, "result": str(result)}
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=self.workdir, env=clean_env(), start_new_session=True)
        t0 = time.perf_counter()
        try:
            stdout, stderr = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our child's own session: it and its pool
            stdout, stderr = proc.communicate()
            return {"error": f"timeout after {self.timeout:.0f} s", "stderr": stderr[-2000:]}
        wall = time.perf_counter() - t0
        # loky's workers leave on their own shortly after their parent exits: give them
        # 2 s, then note and end whatever is left in our child's session.
        leftover = _session_alive(proc.pid, wait=2.0)
        if leftover:
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0 or not result.exists():
            tail = (stderr or stdout).strip().splitlines()[-3:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail),
                    "stderr": stderr[-2000:]}
        out = json.loads(result.read_text())
        out["wall_s"], out["leftover"] = wall, leftover
        out["stderr"] = stderr.strip()[-2000:]
        return out


def _session_alive(pgid: int, wait: float) -> bool:
    deadline = time.perf_counter() + wait
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        if time.perf_counter() > deadline:
            return True
        time.sleep(0.05)


# -- formatting ------------------------------------------------------------------------


table = loop.table  # one table layout for every benchmark


def median_time(runs: list[dict]) -> float | None:
    times = [r["time_s"] for r in runs if "time_s" in r]
    return statistics.median(times) if times else None


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def fmt_ratio(ours: float | None, peer: float | None) -> str:
    if ours is None or peer is None or peer <= 0:
        return "-"
    value_ = ours / peer
    return f"{value_:.2f}" if value_ < 100 else f"{value_:,.0f}"


def results_cell(runs: list[dict]) -> str:
    errors = [r for r in runs if "error" in r]
    ok = sum(1 for r in runs if r.get("correct"))
    text = f"correct {ok}/{len(runs)}"
    if ok < len(runs) - len(errors):
        text = f"WRONG {len(runs) - len(errors) - ok}/{len(runs)}"
    if errors:
        text += f", {len(errors)} failed"
    if any("computed" in r for r in runs):
        computed = sum(r.get("computed", 0) for r in runs)
        text += ", nothing recomputed" if computed == 0 else f", recomputed in {computed}"
    return text


# -- main ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per cell (default 3, --quick 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args()

    q = args.quick
    repeats = args.repeats or (1 if q else 3)
    workloads = {  # kind: (items, workers, label)
        "noop": (10_000 if q else 100_000, 2),
        "busy": (200 if q else 2_000, 2),
        "sleep": (80 if q else 400, 8),
    }

    log = loop.log
    loop.require("joblib", "mpire", "laufband")

    t_start = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="laufband-pmap-bench-"))
    runner = Runner(workdir, timeout=120.0 if q else 180.0)
    res: dict[tuple[str, str], list[dict]] = {}
    states = 0
    try:
        for rep in range(repeats):
            order = IMPLS[rep % len(IMPLS):] + IMPLS[:rep % len(IMPLS)]  # rotate positions
            for kind, (n, workers) in workloads.items():
                log(f"run {rep + 1}/{repeats}: {kind} x {n:,}, {workers} workers ...")
                for impl in order:
                    cfg = {"impl": impl, "kind": kind, "n": n, "workers": workers}
                    if impl.startswith("pmap"):
                        states += 1
                        cfg["state"] = str(workdir / f"state-{states}")
                    out = runner.run(cfg)
                    if "error" in out:
                        log(f"  {impl} {kind}: {out['error']}")
                    res.setdefault((kind, impl), []).append(out)
                    if kind == "noop" and impl.startswith("pmap"):  # 4: rerun, all cached
                        cached = runner.run({**cfg, "kind": "cached"})
                        if "error" in cached:
                            log(f"  {impl} cached: {cached['error']}")
                        res.setdefault(("cached", impl), []).append(cached)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print(report(res, workloads, repeats, time.time() - t_start, q))
    return 0


def report(res: dict, workloads: dict, repeats: int, total_s: float, quick: bool) -> str:
    rows: list[list[str]] = []
    titles = {
        "noop": "1  no-op (identity) x {n:,}, {w} workers",
        "busy": "2  1 ms busy loop x {n:,}, {w} workers (ideal {ideal:.2f} s)",
        "sleep": "3  20 ms sleep x {n:,}, {w} workers (ideal {ideal:.2f} s)",
    }
    per_item = {"noop": 0.0, "busy": BUSY_S, "sleep": SLEEP_S}
    for kind, (n, workers) in workloads.items():
        title = titles[kind].format(n=n, w=workers, ideal=n * per_item[kind] / workers)
        default = median_time(res[(kind, "pmap")])
        spawn = median_time(res[(kind, "pmap-spawn")])
        for i, impl in enumerate(IMPLS):
            runs = res[(kind, impl)]
            t = median_time(runs)
            target, met = "-", "-"
            if impl == "joblib":
                target = "pmap/joblib < 1"
                met = ", ".join(f"{m} {_met(p, t, 1.0, strict=True)}"
                                for m, p in (("default", default), ("spawn", spawn)))
            elif impl == "pool" and kind in ("busy", "sleep"):
                target = "pmap/Pool <= 1.05"
                met = ", ".join(f"{m} {_met(p, t, 1.05, strict=False)}"
                                for m, p in (("default", default), ("spawn", spawn)))
            rows.append([title if i == 0 else "", LABELS[impl], fmt_s(t),
                         "-" if impl == "pmap" else fmt_ratio(default, t),
                         "-" if impl == "pmap-spawn" else fmt_ratio(spawn, t),
                         results_cell(runs), target, met])
        rows.append(["--"])

    n1 = workloads["noop"][0]
    for i, impl in enumerate(("pmap", "pmap-spawn")):
        runs = res[("cached", impl)]
        rows.append([f"4  re-run of 1, all {n1:,} cached" if i == 0 else "",
                     f"{LABELS[impl]}, state of 1", fmt_s(median_time(runs)),
                     "-", "-", results_cell(runs), "-", "-"])
    rows.append(["--"])

    for i, impl in enumerate(IMPLS):
        imports = [r["import_s"] for runs in (v for (k, m), v in res.items() if m == impl)
                   for r in runs if "import_s" in r]
        rows.append(["5  imports, before the clock (median)" if i == 0 else "",
                     LABELS[impl], fmt_s(statistics.median(imports) if imports else None),
                     "-", "-", IMPORTS[impl], "-", "-"])

    header = ["workload", "implementation", f"median of {repeats}", "pmap / this",
              "pmap spawn / this", "results", "target", "met?"]
    lines = [table(rows, header), "",
             "time: inside a fresh subprocess, from just before creating the pool / calling"
             " pmap until the result list is complete",
             "(imports excluded, pool shutdown excluded; pmap reaps its helpers inside the "
             "call). Ratios: pmap median / this row's median, lower is better for pmap.",
             "details (every run, in order):"]
    for kind in (*workloads, "cached"):
        for impl in IMPLS:
            runs = res.get((kind, impl))
            if not runs:
                continue
            cells = []
            for r in runs:
                if "error" in r:
                    cells.append(r["error"])
                    continue
                cell = fmt_s(r["time_s"])
                if r.get("shutdown_s", 0) > 0.05:
                    cell += f" (+{fmt_s(r['shutdown_s'])} shutdown)"
                if r.get("leftover"):
                    cell += " (processes left after exit)"
                if r.get("live_children"):
                    cell += f" ({r['live_children']} children alive after return)"
                cells.append(cell)
            lines.append(f"  {kind:6} {LABELS[impl]:24} " + ", ".join(cells)
                         + "; subprocess wall "
                         + ", ".join(fmt_s(r.get("wall_s")) for r in runs))
    noisy = sorted({(k, m) for (k, m), v in res.items() for r in v
                    if r.get("stderr") and "error" not in r})
    for kind, impl in noisy:
        text = next(r["stderr"] for r in res[(kind, impl)] if r.get("stderr"))
        lines.append(f"  stderr of {kind} {LABELS[impl]}: {text.splitlines()[-1][:200]}")
    lines.append(f"total benchmark time {total_s:.0f} s on {os.cpu_count()} CPUs"
                 + (" (--quick sizes: targets are meant for the full sizes)" if quick else ""))
    return "\n".join(lines)


def _met(ours: float | None, peer: float | None, limit: float, strict: bool) -> str:
    if ours is None or peer is None or peer <= 0:
        return "-"
    ratio_ = ours / peer
    return "yes" if (ratio_ < limit if strict else ratio_ <= limit) else "NO"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
