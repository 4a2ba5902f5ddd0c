"""Benchmark our laufband side by side with the original laufband 0.2.1 from PyPI.

Run from anywhere::

    .venv/bin/python benchmarks/loop.py            # full run (~2-4 min)
    .venv/bin/python benchmarks/loop.py --quick    # smoke run with small sizes

The original is installed into a throwaway venv (``benchmarks/.venv-laufband-0.2.1``,
git-ignored, reused when present); its workloads run as subprocesses with that venv's
python. Every workload runs in fresh temporary state directories, in subprocesses,
and the script prints one plain-text table. Only the standard library is used here;
workers import ``laufband`` (ours, or the original inside its venv).

See benchmarks/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORIGINAL_VERSION = "0.2.1"
ORIGINAL_VENV = HERE / f".venv-laufband-{ORIGINAL_VERSION}"
HEAVY_MODULES = ("joblib", "networkx", "typer", "rich", "mpi4py")
WORKFLOW = "bench"


# ======================================================================================
# Worker side: runs in a subprocess, with our python or the original's venv python.
# ======================================================================================


def _make_band(impl: str, data, state: str):
    """Construct the Laufband of ``impl`` over ``data`` with state in ``state``."""
    from laufband import Laufband

    if impl == "ours":
        return Laufband(data, path=state, name=WORKFLOW, tqdm_kwargs={"disable": True})
    # laufband 0.2.1: SQLAlchemy database URL plus two flufl.lock locks; by default all
    # three live in the current directory, so pass absolute paths into the state dir.
    from flufl.lock import Lock

    return Laufband(
        list(data),
        db=f"sqlite:///{os.path.join(state, 'laufband.sqlite')}",
        lock=Lock(os.path.join(state, "user.lock"), lifetime=45),
        db_lock=Lock(os.path.join(state, "db.lock"), lifetime=45),
        tqdm_kwargs={"disable": True},
    )


def _check_impl(impl: str) -> str:
    """Make sure the right package was imported; return where it came from."""
    import laufband

    where = str(Path(laufband.__file__).resolve().parent)
    if impl == "orig":
        from importlib.metadata import version

        if version("laufband") != ORIGINAL_VERSION or str(ORIGINAL_VENV) not in where:
            raise SystemExit(f"expected laufband {ORIGINAL_VERSION} from its venv, got {where}")
    elif str(ORIGINAL_VENV) in where:
        raise SystemExit(f"expected our laufband, got {where}")
    return where


def _barrier() -> float:
    """Tell the parent we are ready; block until it sends the common start time."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    line = sys.stdin.readline().split()
    return float(line[1])


def worker_main(cfg: dict) -> None:
    import resource

    kind, impl = cfg["kind"], cfg["impl"]
    out: dict = {"pid": os.getpid()}
    t_import0 = time.perf_counter()
    import laufband  # noqa: F401  (the import is what is timed)

    out["import_s"] = time.perf_counter() - t_import0
    out["module"] = _check_impl(impl)

    if kind == "single":
        n, cap = cfg["n"], cfg.get("cap")
        deadline = time.perf_counter() + cap if cap else None
        t0 = time.perf_counter()
        band = _make_band(impl, range(n), cfg["state"])
        count = 0
        for _ in band:
            count += 1
            if deadline is not None and time.perf_counter() > deadline:
                break  # the original: stop at the time cap (this task counts as done)
        t1 = time.perf_counter()
        out.update(count=count, loop_s=t1 - t0)

    elif kind == "sleep":
        n, sleep = cfg["n"], cfg["sleep"]
        go = _barrier()
        deadline = go + cfg["cap"]
        band = _make_band(impl, range(n), cfg["state"])
        with open(cfg["log"], "w", buffering=1) as log:
            for item in band:
                if time.time() > deadline:
                    out["capped"] = True
                    break
                start = time.time()
                time.sleep(sleep)
                end = time.time()
                log.write(f"{item} {start!r} {end!r}\n")
        out["done_at"] = time.time()

    elif kind == "tail":
        n = cfg["n"]
        seen = bytearray(n)  # per-item counter, to check every item ran exactly once
        out["rss_before_mib"] = _maxrss_mib(resource)
        go = _barrier()
        band = _make_band(impl, range(n), cfg["state"])
        first = None
        for item in band:
            if first is None:
                first = time.time()
            seen[item] += 1
        end = time.time()
        out.update(first_s=(first - go) if first is not None else None, end_s=end - go,
                   count=sum(seen))
        Path(cfg["seen"]).write_bytes(bytes(seen))

    out["maxrss_mib"] = _maxrss_mib(resource)
    Path(cfg["result"]).write_text(json.dumps(out))


def _maxrss_mib(resource) -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    per_mib = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mib


# ======================================================================================
# Driver side.
# ======================================================================================


class Unavailable(Exception):
    """The original cannot be run; the message says why."""


def clean_env() -> dict:
    # PYTHONDONTWRITEBYTECODE would make every import compile from source, which no
    # installed package does: users have .pyc files.
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("LAUFBAND_") or key in (
                "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE"):
            del env[key]
    return env


def ensure_original_venv(log) -> str:
    """Create (or reuse) the venv with laufband 0.2.1; return its python."""
    python = ORIGINAL_VENV / "bin" / "python"
    probe = ("import importlib.metadata as m, laufband, flufl.lock, sqlalchemy;"
             "print(m.version('laufband'))")

    def works() -> bool:
        if not python.exists():
            return False
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                              cwd=tempfile.gettempdir(), env=clean_env())
        return done.returncode == 0 and done.stdout.strip() == ORIGINAL_VERSION

    if works():
        log(f"reusing {ORIGINAL_VENV}")
        return str(python)
    log(f"creating {ORIGINAL_VENV} and installing laufband=={ORIGINAL_VERSION} ...")
    shutil.rmtree(ORIGINAL_VENV, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(ORIGINAL_VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"laufband=={ORIGINAL_VERSION}"],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=600,
                                  env=clean_env())
        except (OSError, subprocess.TimeoutExpired) as error:
            raise Unavailable(f"{' '.join(step[:3])} failed: {error}") from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            errors = [ln for ln in lines if "ERROR" in ln] or lines[-1:]
            raise Unavailable(f"{' '.join(step[1:4])}: {errors[0] if errors else 'failed'}")
    if not works():
        raise Unavailable(f"laufband {ORIGINAL_VERSION} does not import in {ORIGINAL_VENV}")
    return str(python)


class Runner:
    def __init__(self, python: str, impl: str, workdir: Path) -> None:
        self.python, self.impl, self.workdir = python, impl, workdir
        self._n = 0

    def fresh(self, label: str) -> Path:
        self._n += 1
        path = self.workdir / f"{self.impl}-{label}-{self._n}"
        path.mkdir(parents=True)
        return path

    def spawn(self, cfg: dict, run_dir: Path, index: int) -> subprocess.Popen:
        cfg = dict(cfg, impl=self.impl, result=str(run_dir / f"result-{index}.json"))
        stderr = open(run_dir / f"stderr-{index}.txt", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [self.python, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
            cwd=run_dir, env=clean_env())
        stderr.close()
        return proc

    def collect(self, procs: list, run_dir: Path, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()  # only processes this script started
                proc.wait()
        results = []
        for index, proc in enumerate(procs):
            result_file = run_dir / f"result-{index}.json"
            if proc.returncode != 0 or not result_file.exists():
                err = (run_dir / f"stderr-{index}.txt").read_text().strip().splitlines()
                tail = err[-1] if err else f"exit code {proc.returncode}"
                raise RuntimeError(f"{self.impl} worker {index} failed: {tail}")
            results.append(json.loads(result_file.read_text()))
        return results

    def run(self, cfg: dict, workers: int, label: str, timeout: float, barrier: bool):
        """Start ``workers`` processes; with ``barrier`` release them at one instant."""
        run_dir = self.fresh(label)
        state = run_dir / "state"
        state.mkdir()
        cfg = dict(cfg, state=str(state))
        t0 = time.time()
        procs = [self.spawn(dict(cfg, log=str(run_dir / f"log-{i}.txt"),
                                 seen=str(run_dir / f"seen-{i}.bin")), run_dir, i)
                 for i in range(workers)]
        go = None
        if barrier:
            for proc in procs:
                line = proc.stdout.readline()
                if line.strip() != "ready":
                    self.collect(procs, run_dir, 5)
                    raise RuntimeError(f"{self.impl} worker did not get ready: {line!r}")
            go = time.time()
            for proc in procs:
                proc.stdin.write(f"go {go!r}\n")
                proc.stdin.flush()
        for proc in procs:
            proc.stdin.close()
        results = self.collect(procs, run_dir, timeout)
        wall = time.time() - t0
        for proc in procs:
            proc.stdout.close()
        return results, wall, go, run_dir


# -- the scenarios ---------------------------------------------------------------------


def scenario_single(runner: Runner, n: int, repeats: int, cap: float | None) -> dict:
    runs = []
    for _ in range(repeats):
        cfg = {"kind": "single", "n": n, "cap": cap}
        (res,), wall, _, _ = runner.run(cfg, 1, "single", timeout=(cap or 120) + 120,
                                        barrier=False)
        runs.append(res)
    rates = [r["count"] / r["loop_s"] for r in runs]
    rates_imp = [r["count"] / (r["loop_s"] + r["import_s"]) for r in runs]
    return {"n": n, "count": statistics.median(r["count"] for r in runs),
            "rate": statistics.median(rates), "rate_import": statistics.median(rates_imp),
            "import_ms": statistics.median(r["import_s"] for r in runs) * 1000,
            "rates": rates, "capped": any(r["count"] < n for r in runs)}


def scenario_sleep(runner: Runner, workers: int, n: int, sleep: float, cap: float) -> dict:
    cfg = {"kind": "sleep", "n": n, "sleep": sleep, "cap": cap}
    results, wall, go, run_dir = runner.run(cfg, workers, "sleep", timeout=cap + 120,
                                            barrier=True)
    records = []
    for i in range(workers):
        for line in (run_dir / f"log-{i}.txt").read_text().splitlines():
            item, start, end = line.split()
            records.append((int(item), float(start), float(end), i))
    counts: dict[int, int] = {}
    for item, *_ in records:
        counts[item] = counts.get(item, 0) + 1
    busy = sum(end - start for _, start, end, _ in records)
    makespan = (max(r[2] for r in records) - min(r[1] for r in records)) if records else 0.0
    per_worker = [sum(1 for r in records if r[3] == i) for i in range(workers)]
    return {
        "n": n, "workers": workers, "wall": wall, "makespan": makespan, "busy": busy,
        "eff": busy / (workers * makespan) if makespan else 0.0,
        "done": len(counts), "dups": sum(c - 1 for c in counts.values() if c > 1),
        "bad": sorted(set(counts) - set(range(n))), "per_worker": per_worker,
        "first_task_after_go": (min(r[1] for r in records) - go) if records else None,
        "capped": any(r.get("capped") for r in results),
    }


def scenario_tail(runner: Runner, workers: int, n: int) -> dict:
    cfg = {"kind": "tail", "n": n}
    results, wall, go, run_dir = runner.run(cfg, workers, "tail", timeout=600, barrier=True)
    total = bytearray(n)
    for i in range(workers):
        seen = (run_dir / f"seen-{i}.bin").read_bytes()
        total = bytearray(map(int.__add__, total, seen))
    once = total.count(1)
    missing = total.count(0)
    db = _db_summary(run_dir / "state")
    status = _time_status(run_dir / "state")
    return {
        "status_cli": status[0], "status_monitor": status[1],
        "n": n, "workers": workers, "wall": wall,
        "first_max": max(r["first_s"] for r in results if r["first_s"] is not None),
        "firsts": [r["first_s"] for r in results],
        "ends": [r["end_s"] for r in results],
        "per_worker": [r["count"] for r in results],
        "rss": [r["maxrss_mib"] for r in results],
        "rss_before": [r["rss_before_mib"] for r in results],
        "once": once, "missing": missing, "dups": n - once - missing, "db": db,
    }


def _time_status(state: Path) -> tuple[float, float]:
    """Wall time of `laufband status --json` (a fresh process) and of Monitor.status()
    on the state the tail run left behind (median of 3 each)."""
    cli, monitor = [], []
    code = (f"import time, laufband; m = laufband.Monitor({str(state)!r});"
            " t = time.perf_counter(); m.status(); print(time.perf_counter() - t)")
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "laufband", "status", str(state), "--json"],
                       check=True, capture_output=True, env=clean_env())
        cli.append(time.perf_counter() - start)
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                              text=True, env=clean_env())
        monitor.append(float(done.stdout))
    return statistics.median(cli), statistics.median(monitor)


def _db_summary(state: Path) -> str:
    """Cross-check against the state database (read-only; schema may change)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT name, total, completed FROM workflows").fetchall()
        finally:
            conn.close()
        return ", ".join(f"{name}: {done}/{total} completed" for name, total, done in rows)
    except Exception as error:  # noqa: BLE001
        return f"n/a ({error})"


def scenario_import(python: str, baseline_mods: str, repeats: int, cwd: Path) -> dict:
    base_cmd = [python, "-c", f"import {baseline_mods}"]
    with_cmd = [python, "-c", f"import {baseline_mods}, laufband"]
    env = clean_env()

    def once(cmd) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=cwd, env=env, capture_output=True)
        return time.perf_counter() - t0

    once(base_cmd)  # warm the page cache and .pyc files
    once(with_cmd)
    base, with_ = [], []
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        base.append(once(base_cmd))
        with_.append(once(with_cmd))
    check = ("import sys, json, laufband; "
             f"print(json.dumps([m for m in {list(HEAVY_MODULES)!r} if m in sys.modules]))")
    done = subprocess.run([python, "-c", check], check=True, cwd=cwd, env=env,
                          capture_output=True, text=True)
    return {"base_ms": statistics.median(base) * 1000, "with_ms": statistics.median(with_) * 1000,
            "extra_ms": (statistics.median(with_) - statistics.median(base)) * 1000,
            "heavy": json.loads(done.stdout), "baseline": baseline_mods}


# -- formatting ------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    return f"{x:,.0f} items/s"


def log(msg: str) -> None:
    """A timestamped progress line on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def require(*modules: str) -> None:
    """Exit with one line when a peer library is missing from the running python."""
    for module in modules:
        try:
            __import__(module)
        except ImportError as error:
            raise SystemExit(f"{module} is needed in {sys.executable}: {error}") from None


def table(rows: list[list[str]], header: list[str]) -> str:
    body = [r for r in rows if r != ["--"]]
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    line = "-+-".join("-" * w for w in widths)
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    for row in rows:
        if row == ["--"]:
            out.append(line)
            continue
        out.append(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(out)


def ratio(ours: float | None, orig: float | None, higher_is_better: bool) -> str:
    if ours is None or orig is None or ours <= 0 or orig <= 0:
        return "-"
    value = ours / orig if higher_is_better else orig / ours
    return f"{value:,.1f}x" if value < 100 else f"{value:,.0f}x"


def met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


# -- main ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--no-original", action="store_true",
                        help="skip laufband 0.2.1 (no venv is created)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args()

    q = args.quick
    sizes = {
        "single_n": 20_000 if q else 200_000, "single_repeats": 1 if q else 3,
        "orig_single_n": 200 if q else 1000, "orig_single_cap": 20.0 if q else 60.0,
        "sleep_workers": 8, "sleep_n": 80 if q else 400, "sleep_s": 0.02,
        "orig_sleep_cap": 30.0 if q else 120.0,
        "tail_workers": 4, "tail_n": 100_000 if q else 1_000_000,
        "import_repeats": 3 if q else 7,
    }

    t_start = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="laufband-bench-"))
    ours = Runner(sys.executable, "ours", workdir)
    orig: Runner | None = None
    orig_reason = "skipped (--no-original)"
    if not args.no_original:
        try:
            orig = Runner(ensure_original_venv(log), "orig", workdir)
        except Unavailable as error:
            orig_reason = f"not available: {error}"
            log(orig_reason)

    def try_orig(label: str, fn):
        """Run fn() for the original; on error return the reason string."""
        nonlocal orig_reason
        if orig is None:
            return orig_reason
        log(f"original: {label} ...")
        try:
            return fn()
        except Exception as error:  # noqa: BLE001
            return f"not available: {error}"

    res: dict = {}
    try:
        log(f"ours: 1 process x {sizes['single_n']:,} no-op items ...")
        res["o1"] = scenario_single(ours, sizes["single_n"], sizes["single_repeats"], None)
        res["g1"] = try_orig("1 process no-op loop", lambda: scenario_single(
            orig, sizes["orig_single_n"], 1, sizes["orig_single_cap"]))

        log(f"ours: {sizes['sleep_workers']} processes x {sizes['sleep_n']} tasks x 20 ms ...")
        res["o2"] = scenario_sleep(ours, sizes["sleep_workers"], sizes["sleep_n"],
                                   sizes["sleep_s"], cap=300.0)
        res["g2"] = try_orig("8 processes x sleep tasks (capped)", lambda: scenario_sleep(
            orig, sizes["sleep_workers"], sizes["sleep_n"], sizes["sleep_s"],
            cap=sizes["orig_sleep_cap"]))

        log(f"ours: {sizes['tail_workers']} processes registering {sizes['tail_n']:,} tasks ...")
        res["o3"] = scenario_tail(ours, sizes["tail_workers"], sizes["tail_n"])

        log("import cost ...")
        res["o4"] = scenario_import(sys.executable, "tqdm, filelock, sqlite3",
                                    sizes["import_repeats"], workdir)
        # The original's venv has no filelock (it uses flufl.lock): baseline tqdm, sqlite3.
        res["g4"] = try_orig("import cost", lambda: scenario_import(
            orig.python, "tqdm, sqlite3", sizes["import_repeats"], workdir))
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print(report(res, sizes, time.time() - t_start))
    return 0


def report(res: dict, sizes: dict, total_s: float) -> str:
    o1, g1, o2, g2, o3, o4, g4 = (res.get(k) for k in ("o1", "g1", "o2", "g2", "o3", "o4", "g4"))
    g1ok, g2ok, g4ok = (isinstance(x, dict) for x in (g1, g2, g4))
    rows: list[list[str]] = []

    def orig_cell(ok: bool, value, text: str) -> str:
        return text if ok else str(value)

    # 1. single process
    n1 = f"{o1['n']:,}"
    g1n = (f" (N={g1['n']:,}{', capped at ' + str(int(g1['count'])) if g1['capped'] else ''})"
           if g1ok else "")
    rows.append([f"1a  1 proc, no-op body, registration+loop (ours N={n1})",
                 fmt_rate(o1["rate"]),
                 orig_cell(g1ok, g1, fmt_rate(g1["rate"]) + g1n if g1ok else ""),
                 ratio(o1["rate"], g1["rate"] if g1ok else None, True),
                 ">= 300,000 items/s", met(o1["rate"] >= 300_000)])
    rows.append(["1b  same, including `import laufband`",
                 fmt_rate(o1["rate_import"]),
                 orig_cell(g1ok, g1, fmt_rate(g1["rate_import"]) if g1ok else ""),
                 ratio(o1["rate_import"], g1["rate_import"] if g1ok else None, True), "-", "-"])
    rows.append(["--"])

    # 2. eight sleeping workers
    w, n2 = o2["workers"], o2["n"]

    def eff_cell(r: dict) -> str:
        return f"{r['eff'] * 100:.1f} %"

    def done_cell(r: dict) -> str:
        text = f"{r['done']}/{r['n']} once, {r['dups']} dup"
        if r["bad"]:
            text += f", {len(r['bad'])} unknown"
        return text + (" (time cap)" if r["capped"] else "")

    rows.append([f"2a  {w} procs x {n2} tasks x 20 ms: efficiency",
                 eff_cell(o2), orig_cell(g2ok, g2, eff_cell(g2) if g2ok else ""),
                 ratio(o2["eff"], g2["eff"] if g2ok else None, True), ">= 90 %",
                 met(o2["eff"] >= 0.90)])
    ideal = n2 * sizes["sleep_s"] / w
    rows.append([f"2b  makespan, first task start..last end (ideal {ideal:.2f} s)",
                 f"{o2['makespan']:.2f} s",
                 orig_cell(g2ok, g2, f"{g2['makespan']:.2f} s" if g2ok else ""),
                 ratio(o2["makespan"], g2["makespan"] if g2ok else None, False), "-", "-"])
    rows.append(["2c  wall time incl. process start-up",
                 f"{o2['wall']:.2f} s", orig_cell(g2ok, g2, f"{g2['wall']:.2f} s" if g2ok else ""),
                 ratio(o2["wall"], g2["wall"] if g2ok else None, False), "-", "-"])
    rows.append(["2d  tasks run exactly once",
                 done_cell(o2), orig_cell(g2ok, g2, done_cell(g2) if g2ok else ""), "-",
                 "all once", met(o2["done"] == n2 and not o2["dups"] and not o2["bad"])])
    rows.append(["--"])

    # 3. registration tail, ours only
    n3 = f"{o3['n']:,}"
    only = "- (cannot do 1M)"
    rows.append([f"3a  {n3} tasks, {o3['workers']} procs at once: time to first task (max)",
                 f"{o3['first_max']:.2f} s", only, "-", "-", "-"])
    rows.append(["3b  total wall time (incl. process start-up)",
                 f"{o3['wall']:.2f} s", only, "-", "-", "-"])
    rows.append(["3c  peak RSS per worker (max of workers)",
                 f"{max(o3['rss']):.1f} MiB", only, "-", "-", "-"])
    ok3 = o3["once"] == o3["n"]
    rows.append(["3d  tasks run exactly once",
                 f"{o3['once']:,}/{o3['n']:,} once, {o3['dups']} dup, {o3['missing']} missing",
                 only, "-", "all once", met(ok3)])
    rows.append([f"3e  `laufband status --json` on those {n3} tasks (whole command)",
                 f"{o3['status_cli']:.2f} s", only, "-", "< 1 s", met(o3["status_cli"] < 1)])
    rows.append(["3f  Monitor.status() on them (in process)",
                 f"{o3['status_monitor'] * 1000:.1f} ms", only, "-", "-", "-"])
    rows.append(["--"])

    # 4. import cost
    rows.append(["4a  `import laufband` beyond tqdm+filelock+sqlite3 (median)",
                 f"{o4['extra_ms']:.0f} ms",
                 orig_cell(g4ok, g4, f"{g4['extra_ms']:.0f} ms (beyond tqdm+sqlite3)"
                           if g4ok else ""),
                 ratio(o4["extra_ms"], g4["extra_ms"] if g4ok else None, False),
                 "<= 30 ms", met(o4["extra_ms"] <= 30)])

    def heavy_cell(r: dict) -> str:
        return "none loaded" if not r["heavy"] else "loaded: " + ", ".join(r["heavy"])

    rows.append([f"4b  {', '.join(HEAVY_MODULES)} after import",
                 heavy_cell(o4), orig_cell(g4ok, g4, heavy_cell(g4) if g4ok else ""), "-",
                 "none loaded", met(not o4["heavy"])])

    header = ["scenario", "laufband (ours)", f"laufband {ORIGINAL_VERSION}", "ratio",
              "target", "met?"]
    lines = [table(rows, header), "",
             "ratio: how many times better ours is (higher rate/efficiency, or shorter time).",
             "details:",
             "  1  ours per-run rates: " + ", ".join(fmt_rate(r) for r in o1["rates"])
             + f"; import laufband in-process {o1['import_ms']:.0f} ms"
             + (f"; original import {g1['import_ms']:.0f} ms" if g1ok else ""),
             f"  2  ours: busy {o2['busy']:.2f} s, tasks per worker {o2['per_worker']}, "
             f"first task {o2['first_task_after_go']:.3f} s after release",
             ]
    if g2ok:
        lines.append(f"     original: busy {g2['busy']:.2f} s, tasks per worker "
                     f"{g2['per_worker']}")
    lines += [
        "  3  time to first task per worker: " + ", ".join(
            "no task" if x is None else f"{x:.2f} s" for x in o3["firsts"])
        + "; loop end per worker: " + ", ".join(f"{x:.2f} s" for x in o3["ends"]),
        f"     tasks per worker {o3['per_worker']}; peak RSS "
        + ", ".join(f"{x:.1f}" for x in o3["rss"]) + " MiB (before Laufband: "
        + ", ".join(f"{x:.1f}" for x in o3["rss_before"]) + f" MiB); state db: {o3['db']}",
        f"  4  ours: python -c 'import {o4['baseline']}' {o4['base_ms']:.0f} ms, "
        f"+ laufband {o4['with_ms']:.0f} ms"
        + (f"; original: 'import {g4['baseline']}' {g4['base_ms']:.0f} ms, "
           f"+ laufband {g4['with_ms']:.0f} ms" if g4ok else ""),
        f"total benchmark time {total_s:.0f} s on {os.cpu_count()} CPUs"
        + (" (--quick sizes: targets are meant for the full sizes)"
           if sizes["single_n"] < 200_000 else ""),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
