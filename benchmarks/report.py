"""Run all benchmarks plus a scaling measurement; write RESULTS.md and scaling.png.

Run from anywhere::

    .venv/bin/python benchmarks/report.py            # full run (~8-10 min)
    .venv/bin/python benchmarks/report.py --quick    # smoke run with small sizes

Runs ``loop.py``, ``pmap.py`` and ``mpi.py`` one after the other as subprocesses (with
``--quick`` passed on) and keeps their printed tables, then measures items/s against the
number of workers (1, 2, 4, 8) for many short tasks (5 ms ``time.sleep`` each) for our
Laufband loop (N independent processes on one state directory), the original laufband
0.2.1 (the same, with the python of the venv that ``loop.py`` makes and reuses),
``joblib.Parallel``, ``multiprocessing.Pool`` (fork) and ``mpire.WorkerPool``. Items/s
is tasks / (last task end - launch), where launch is just before the first process of
the point is started, so interpreter start-up, imports and pool start-up count for
every implementation. Writes ``RESULTS.md`` and ``scaling.png`` (matplotlib, Agg) next
to this script (or to ``--out``).

See benchmarks/README.md for what is measured.
"""

from __future__ import annotations

_T_SCRIPT = __import__("time").time()  # when this interpreter reached the script

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import loop  # noqa: E402  (benchmarks/loop.py: venv of 0.2.1, Laufband construction, table)

SCRIPTS = ("loop.py", "pmap.py", "mpi.py")
WORKERS = (1, 2, 4, 8)
IMPLS = ("ours", "orig", "joblib", "pool", "mpire")
LABELS = {"ours": "laufband (ours), N processes", "orig": "laufband 0.2.1, N processes",
          "joblib": "joblib.Parallel(n_jobs=N) (loky)", "pool": "mp.Pool(N) (fork)",
          "mpire": "mpire.WorkerPool(N) (fork)"}
SHORT = {"ours": "laufband (ours)", "orig": "laufband 0.2.1", "joblib": "joblib (loky)",
         "pool": "mp.Pool (fork)", "mpire": "mpire"}
TASK_S = 0.005


# ======================================================================================
# Worker side: runs in a subprocess.
# ======================================================================================


def nap(x: int) -> tuple[int, float, float]:
    """The task: 5 ms time.sleep; returns (item, start, end) wall-clock times."""
    start = time.time()
    time.sleep(TASK_S)
    return x, start, time.time()


def band_worker(cfg: dict) -> None:
    """One of N processes of a Laufband loop (ours or 0.2.1) on a shared state dir."""
    impl, run_dir, index = cfg["impl"], Path(cfg["run_dir"]), cfg["index"]
    out: dict = {"index": index, "pid": os.getpid(), "script_at": _T_SCRIPT}
    import laufband  # noqa: F401

    out["imported_at"] = time.time()
    out["module"] = loop._check_impl(impl)
    deadline = cfg["launched"] + cfg["cap"]
    band = loop._make_band(impl, range(cfg["n"]), cfg["state"])
    with open(run_dir / f"log-{index}.txt", "w", buffering=1) as log:
        for item in band:
            if time.time() > deadline:
                out["capped"] = True
                break  # stop at the time cap (this task is not run, not logged)
            _, start, end = nap(item)
            log.write(f"{item} {start!r} {end!r}\n")
    out["done_at"] = time.time()
    (run_dir / f"result-{index}.json").write_text(json.dumps(out))


def pool_worker(cfg: dict) -> None:
    """One process that imports a pool library, maps nap over the items, reports."""
    impl, n, workers = cfg["impl"], cfg["n"], cfg["workers"]
    out: dict = {"pid": os.getpid(), "script_at": _T_SCRIPT}
    data = list(range(n))
    if impl == "joblib":
        from joblib import Parallel, delayed

        out["imported_at"] = time.time()
        results = Parallel(n_jobs=workers)(delayed(nap)(x) for x in data)
    elif impl == "pool":
        import multiprocessing

        out["imported_at"] = time.time()
        pool = multiprocessing.get_context("fork").Pool(workers)
        results = pool.map(nap, data)
        pool.close()
        pool.join()
    elif impl == "mpire":
        from mpire import WorkerPool

        out["imported_at"] = time.time()
        with WorkerPool(n_jobs=workers) as pool:
            results = pool.map(nap, data)
    else:
        raise SystemExit(f"unknown implementation {impl!r}")
    out["returned_at"] = time.time()
    out["records"] = [list(r) for r in results]
    Path(cfg["result"]).write_text(json.dumps(out))


# ======================================================================================
# Driver side: the scaling measurement.
# ======================================================================================


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # our child's own session: it and its pool
    except ProcessLookupError:
        pass


def run_band(python: str, impl: str, workdir: Path, workers: int, n: int, cap: float,
             label: str) -> dict:
    """Start ``workers`` processes of a Laufband loop on one fresh state directory."""
    run_dir = workdir / label
    state = run_dir / "state"
    state.mkdir(parents=True)
    launched = time.time()
    base = {"impl": impl, "n": n, "cap": cap, "launched": launched, "state": str(state),
            "run_dir": str(run_dir)}
    procs = []
    for i in range(workers):
        with open(run_dir / f"stderr-{i}.txt", "w") as err:
            procs.append(subprocess.Popen(
                [python, str(Path(__file__).resolve()), "--band-worker",
                 json.dumps(dict(base, index=i))],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                cwd=run_dir, env=loop.clean_env(), start_new_session=True))
    hard = launched + cap + 60  # the workers stop themselves at the cap; this is a backstop
    killed = False
    for proc in procs:
        try:
            proc.wait(max(0.1, hard - time.time()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            killed = True
    exited = time.time()
    records = []
    errors = []
    results = []
    for i, proc in enumerate(procs):
        log = run_dir / f"log-{i}.txt"
        for line in log.read_text().splitlines() if log.exists() else []:
            item, start, end = line.split()
            records.append((int(item), float(start), float(end)))
        result = run_dir / f"result-{i}.json"
        if proc.returncode != 0 or not result.exists():
            err = (run_dir / f"stderr-{i}.txt").read_text().strip().splitlines()
            errors.append(f"worker {i}: exit {proc.returncode}"
                          + (f": {err[-1][:200]}" if err else ""))
        else:
            results.append(json.loads(result.read_text()))
    out = analyse(records, n, launched)
    out.update(exited_s=exited - launched, killed=killed, errors=errors,
               capped=any(r.get("capped") for r in results),
               script_max_s=max((r["script_at"] for r in results), default=launched) - launched,
               imported_max_s=max((r["imported_at"] for r in results), default=launched)
               - launched)
    return out


def run_pool(impl: str, workdir: Path, workers: int, n: int, timeout: float,
             label: str) -> dict:
    """One fresh subprocess that creates the pool of ``impl`` and maps nap."""
    from pmap import _session_alive  # benchmarks/pmap.py: wait for loky's workers

    run_dir = workdir / label
    run_dir.mkdir(parents=True)
    result = run_dir / "result.json"
    cfg = {"impl": impl, "n": n, "workers": workers, "result": str(result)}
    launched = time.time()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--pool-worker", json.dumps(cfg)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=run_dir, env=loop.clean_env(), start_new_session=True)
    errors = []
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _, stderr = proc.communicate()
        errors.append(f"timeout after {timeout:.0f} s")
    exited = time.time()
    if _session_alive(proc.pid, wait=2.0):  # loky's workers leave shortly after
        _kill_group(proc)
    records = []
    res: dict = {}
    if proc.returncode != 0 or not result.exists():
        tail = (stderr or "").strip().splitlines()[-1:]
        errors.append(f"exit {proc.returncode}" + (f": {tail[0][:200]}" if tail else ""))
    else:
        res = json.loads(result.read_text())
        records = [tuple(r) for r in res["records"]]
    out = analyse(records, n, launched)
    out.update(exited_s=exited - launched, killed=False, errors=errors, capped=False,
               script_max_s=res.get("script_at", launched) - launched,
               imported_max_s=res.get("imported_at", launched) - launched)
    return out


def analyse(records: list, n: int, launched: float) -> dict:
    counts: dict[int, int] = {}
    for item, _, _ in records:
        counts[item] = counts.get(item, 0) + 1
    done = len(records)
    last = max((e for _, _, e in records), default=None)
    first = min((s for _, s, _ in records), default=None)
    span = (last - launched) if last is not None else None
    return {
        "n": n, "done": done, "distinct": len(counts),
        "dups": sum(c - 1 for c in counts.values() if c > 1),
        "missing": n - len(set(counts) & set(range(n))),
        "unknown": len(set(counts) - set(range(n))),
        "span_s": span, "first_s": (first - launched) if first is not None else None,
        "rate": done / span if span else 0.0,
    }


def scaling(sizes: dict, orig_python: str | None, orig_reason: str, workdir: Path,
            log) -> dict:
    """items/s per (implementation, workers): every run; median over repeats."""
    runs: dict[tuple[str, int], list[dict]] = {}
    impls = [i for i in IMPLS if i != "orig" or orig_python is not None]
    count = 0
    for rep in range(sizes["repeats"]):
        order = impls[rep % len(impls):] + impls[:rep % len(impls)]  # rotate positions
        for workers in WORKERS:
            for impl in order:
                if impl == "orig" and rep >= sizes["orig_repeats"]:
                    continue
                count += 1
                label = f"{impl}-{workers}-{count}"
                if impl in ("ours", "orig"):
                    n = sizes["n"] if impl == "ours" else sizes["orig_n"]
                    cap = sizes["ours_cap"] if impl == "ours" else sizes["orig_cap"]
                    python = sys.executable if impl == "ours" else orig_python
                    log(f"scaling run {rep + 1}/{sizes['repeats']}: {SHORT[impl]}, "
                        f"{workers} processes x {n} tasks ...")
                    try:
                        r = run_band(python, impl, workdir, workers, n, cap, label)
                    except Exception as error:  # noqa: BLE001
                        r = {"errors": [f"{type(error).__name__}: {error}"], "rate": 0.0}
                else:
                    log(f"scaling run {rep + 1}/{sizes['repeats']}: {SHORT[impl]}, "
                        f"{workers} workers x {sizes['n']} tasks ...")
                    r = run_pool(impl, workdir, workers, sizes["n"], sizes["pool_timeout"],
                                 label)
                for error in r.get("errors", []):
                    log(f"  {SHORT[impl]} x {workers}: {error}")
                runs.setdefault((impl, workers), []).append(r)
    return {"runs": runs, "impls": impls, "orig_reason": orig_reason}


def _median_rate(runs: list[dict]) -> float | None:
    rates = [r["rate"] for r in runs if not r.get("errors") and r.get("rate")]
    return statistics.median(rates) if rates else None


def check_cell(runs: list[dict]) -> str:
    """'all once' or what went wrong, over all runs of one implementation."""
    problems = []
    for r in runs:
        if r.get("errors"):
            problems.append(f"{len(r['errors'])} error(s)")
            continue
        bits = []
        if r["dups"]:
            bits.append(f"{r['dups']} DUP")
        lost = r["n"] - r["distinct"] if not r.get("capped") else 0
        if lost:
            bits.append(f"{lost} MISSING")
        if r["unknown"]:
            bits.append(f"{r['unknown']} unknown")
        if bits:
            problems.append(", ".join(bits))
    capped = [r for r in runs if r.get("capped")]
    text = "all once" if not problems else "; ".join(sorted(set(problems)))
    if capped:
        text += f" ({len(capped)} run(s) hit the time cap: done tasks ran once)"
    return text + f" ({len(runs)} runs)"


def scaling_table(sc: dict, sizes: dict) -> str:
    runs = sc["runs"]
    rows = []
    for impl in IMPLS:
        if impl not in sc["impls"]:
            rows.append([LABELS[impl], "-", *("-" for _ in WORKERS), sc["orig_reason"]])
            continue
        n = sizes["orig_n"] if impl == "orig" else sizes["n"]
        cells = []
        for w in WORKERS:
            rs = runs.get((impl, w), [])
            rate = _median_rate(rs)
            cell = "failed" if rate is None else f"{rate:,.0f}"
            if any(r.get("capped") for r in rs):
                done = min(r["done"] for r in rs if r.get("capped"))
                cell += f" (cap, {done}/{n})"
            cells.append(cell)
        rows.append([LABELS[impl], f"{n:,}", *cells, check_cell(
            [r for w in WORKERS for r in runs.get((impl, w), [])])])
    rows.append(["--"])
    rows.append(["ideal: N / 5 ms, no start-up", "-",
                 *(f"{w / TASK_S:,.0f}" for w in WORKERS), "-"])
    header = ["items/s (median) vs workers N", "tasks", *(f"N={w}" for w in WORKERS),
              "every task ran exactly once?"]
    return loop.table(rows, header)


def scaling_details(sc: dict) -> list[str]:
    lines = ["details (every run: items/s; first task start / last task end after launch;"
             " slowest worker's interpreter reached the script / finished its imports):"]
    for impl in sc["impls"]:
        for w in WORKERS:
            cells = []
            for r in sc["runs"].get((impl, w), []):
                if r.get("errors") and not r.get("done"):
                    cells.append("FAILED: " + " | ".join(r["errors"])[:200])
                    continue
                cell = (f"{r['rate']:,.0f}/s ({r['first_s']:.2f} / {r['span_s']:.2f} s;"
                        f" {r['script_max_s']:.2f} / {r['imported_max_s']:.2f} s)"
                        if r.get("span_s") else "no task ran")
                if r.get("errors"):
                    cell += " ERRORS: " + " | ".join(r["errors"])[:200]
                if r.get("capped"):
                    cell += f" capped after {r['done']} tasks"
                cells.append(cell)
            lines.append(f"  {SHORT[impl]:15} N={w}: " + ", ".join(cells))
    return lines


# ======================================================================================
# Driver side: the three scripts, machine facts, RESULTS.md, scaling.png.
# ======================================================================================


def run_script(name: str, quick: bool, log) -> dict:
    """Run one benchmark script; echo its progress (stderr), keep its table (stdout)."""
    cmd = [sys.executable, str(HERE / name)] + (["--quick"] if quick else [])
    log(f"running {name}{' --quick' if quick else ''} ...")
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True,
                                cwd=HERE.parent)
        err_lines = []
        for line in proc.stderr:
            err_lines.append(line.rstrip("\n"))
            print(f"    {name}: {line}", end="", file=sys.stderr, flush=True)
        proc.wait()
        out.seek(0)
        stdout = out.read()
    return {"name": name, "cmd": cmd, "rc": proc.returncode, "stdout": stdout.rstrip(),
            "stderr": err_lines, "time_s": time.time() - t0}


def parse_met(text: str) -> list[dict]:
    """Rows (header -> cell) of the table in ``text`` whose "met?" cell is not "-"; an
    empty first cell is filled from the row above (pmap.py's continuation rows)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if "met?" in ln and " | " in ln), None)
    if start is None:
        return []
    header = [c.strip() for c in lines[start].split(" | ")]
    found, current = [], ""
    for ln in lines[start + 2:]:
        if not ln.strip():
            break
        if set(ln.replace("+", "").strip()) <= {"-"}:
            continue
        cells = [c.strip() for c in ln.split(" | ")]
        if len(cells) != len(header):
            continue
        current = cells[0] or current
        row = dict(zip(header, cells, strict=True))
        row[header[0]] = current
        if row["met?"] not in ("-", ""):
            found.append(row)
    return found


def summary(scripts: list[dict]) -> list[str]:
    """Plain sentences from the "met?" columns: which targets were met, which not."""
    out = []
    for s in scripts:
        if s["rc"] != 0 or not s["stdout"]:
            out.append(f"- `{s['name']}` FAILED (exit {s['rc']}): no targets read.")
            continue
        met, missed = [], []
        for row in parse_met(s["stdout"]):
            if s["name"] == "pmap.py":  # "default yes, spawn NO": one verdict per method
                for part in row["met?"].split(", "):
                    method, _, ok = part.partition(" ")
                    column = "pmap / this" if method == "default" else f"pmap {method} / this"
                    ratio = row.get(column, "-")
                    text = (f"{row['workload']}: pmap ({method}) vs {row['implementation']},"
                            f" ratio {ratio}, target {row['target']}")
                    (met if ok == "yes" else missed).append(text)
                continue
            text = (f"{row['scenario']}: ours {row['laufband (ours)']}"
                    f" (target {row['target']})")
            (met if row["met?"] == "yes" else missed).append(text)
        out.append(f"- `{s['name']}`: {len(met)} target(s) met, {len(missed)} not met.")
        out += [f"  - not met: {t}" for t in missed]
        out += [f"  - met: {t}" for t in met]
    return out


def machine_facts(orig_python: str | None) -> dict:
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    def sh(cmd: list[str], cwd=None) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True,
                                  cwd=cwd).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as error:
            return f"n/a ({error})"

    mem = "n/a"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    orig = "not available"
    if orig_python:
        orig = sh([orig_python, "-c", "import importlib.metadata as m, sys; print("
                   "'laufband', m.version('laufband'), '/ flufl.lock', m.version('flufl.lock'),"
                   " '/ SQLAlchemy', m.version('sqlalchemy'), '/ Python',"
                   " sys.version.split()[0])"], cwd=tempfile.gettempdir())
    commit = sh(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "laufband"])
    return {
        "date": sh(["date", "-u"]), "nproc": sh(["nproc"]), "mem": mem,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "packages": ", ".join(f"{p} {version(p)}" for p in (
            "laufband", "tqdm", "filelock", "joblib", "mpire", "mpi4py", "mpich",
            "cloudpickle", "matplotlib")),
        "orig": orig,
        "commit": commit + (" (package files modified)" if dirty else ""),
    }


def plot(sc: dict, sizes: dict, facts: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = {"ours": "o", "orig": "s", "joblib": "^", "pool": "D", "mpire": "v"}
    for impl in sc["impls"]:
        xs, ys = [], []
        for w in WORKERS:
            rate = _median_rate(sc["runs"].get((impl, w), []))
            if rate:
                xs.append(w)
                ys.append(rate)
        n = sizes["orig_n"] if impl == "orig" else sizes["n"]
        ax.plot(xs, ys, marker=markers[impl], label=f"{SHORT[impl]} ({n} tasks)")
    ax.plot(WORKERS, [w / TASK_S for w in WORKERS], "k--", linewidth=1,
            label="ideal N / 5 ms (no start-up)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(WORKERS, [str(w) for w in WORKERS])
    ax.set_yscale("log")
    ax.set_xlabel("workers N (processes)")
    ax.set_ylabel("items/s (tasks / launch..last task end, incl. start-up)")
    ax.set_title(f"5 ms sleep tasks, median of {sizes['repeats']} "
                 f"({facts['date']})\n{facts['nproc']} CPUs, {facts['mem']} RAM, "
                 f"Python {platform.python_version()}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(path: Path, facts: dict, command: str, scripts: list[dict], sc_text: str,
                  sizes: dict, total_s: float, quick: bool, png: Path) -> None:
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/report.py`. The machine is shared and noisy: compare",
        "columns within one run rather than numbers across runs.",
        "",
        f"- date: {facts['date']} (start; `date -u`)",
        f"- machine: {facts['nproc']} CPUs (nproc), {facts['mem']} memory (MemTotal),"
        f" {facts['platform']}; load average at start {facts['load']}",
        f"- Python {facts['python']}",
        f"- packages: {facts['packages']}",
        f"- original: {facts['orig']} (venv `benchmarks/{loop.ORIGINAL_VENV.name}/`)",
        f"- git commit: {facts['commit']}",
        f"- total run time: {total_s / 60:.1f} min"
        + (" (--quick: smoke sizes, targets are meant for the full sizes)" if quick else ""),
        "",
        "Command:",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Targets",
        "",
        "Read from the \"met?\" columns of the tables below:",
        "",
        *(summary(scripts) if scripts else ["- loop.py, pmap.py, mpi.py: not run"
                                            " (--skip-scripts)."]),
        "- scaling: no targets; see the table.",
        "",
    ]
    for s in scripts:
        lines += [f"## {s['name']}", "",
                  f"`{shlex.join(_display_cmd(s['cmd']))}`: {s['time_s']:.0f} s, "
                  f"exit code {s['rc']}", "", "```", s["stdout"] or "(no output)", "```", ""]
        if s["rc"] != 0:
            lines += ["stderr (last lines):", "", "```", *s["stderr"][-15:], "```", ""]
    lines += [
        "## Scaling: items/s against the number of workers",
        "",
        f"{sizes['n']} tasks of 5 ms `time.sleep` each (laufband 0.2.1: {sizes['orig_n']}"
        f" tasks, each worker stops {sizes['orig_cap']:.0f} s after launch); workers"
        f" N = {', '.join(map(str, WORKERS))}. Items/s = tasks done / (last task end -"
        " launch), launch being just before the first process of the point starts: Python"
        " start-up, imports and pool or worker start-up count for every implementation.",
        "laufband (ours and 0.2.1): N independent processes (`python report.py"
        " --band-worker`), each running the whole `for item in Laufband(range(n), ...)`"
        " loop on one fresh state directory; every task's start/end is logged per process"
        " and the logs are checked for duplicates and missing tasks. joblib / Pool / mpire:"
        " one fresh process imports the library, creates the pool with N workers and maps"
        " the task over the items; the tasks return their start/end times. Median of"
        f" {sizes['repeats']} runs (0.2.1: {sizes['orig_repeats']}), interleaved; every run"
        " is in the details.",
        "",
        "```",
        sc_text,
        "```",
        "",
        f"![items/s against workers]({png.name})",
        "",
    ]
    path.write_text("\n".join(lines))


def _display_cmd(cmd: list[str]) -> list[str]:
    """Paths relative to the repository root when possible (the commands run there)."""
    root = HERE.parent
    out = []
    for part in cmd:
        try:
            out.append(str(Path(part).relative_to(root)))
        except ValueError:
            out.append(part)
    return out


# -- main ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="pass --quick to the scripts; small scaling workload")
    parser.add_argument("--repeats", type=int, default=None,
                        help="scaling runs per point (default 3, --quick 1)")
    parser.add_argument("--skip-scripts", action="store_true",
                        help="only the scaling measurement (RESULTS.md says so)")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="directory for RESULTS.md and scaling.png (default: benchmarks/)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args()
    q = args.quick
    sizes = {"n": 160 if q else 800, "orig_n": 40 if q else 200,
             "repeats": args.repeats or (1 if q else 3), "orig_repeats": 1,
             "ours_cap": 120.0, "orig_cap": 20.0 if q else 60.0, "pool_timeout": 120.0}

    log = loop.log
    loop.require("joblib", "mpire", "matplotlib")

    t_start = time.time()
    command = shlex.join(_display_cmd([sys.executable, str(Path(__file__).resolve()),
                                       *sys.argv[1:]]))
    orig_python, orig_reason = None, "not available"
    try:
        orig_python = loop.ensure_original_venv(log)
    except loop.Unavailable as error:
        orig_reason = f"not available: {error}"
        log(orig_reason)
    facts = machine_facts(orig_python)  # at the start: date, load, commit

    scripts: list[dict] = []
    if not args.skip_scripts:
        for name in SCRIPTS:  # one after the other, never in parallel
            s = run_script(name, q, log)
            scripts.append(s)
            log(f"{name}: exit {s['rc']} after {s['time_s']:.0f} s")

    workdir = Path(tempfile.mkdtemp(prefix="laufband-bench-scaling-"))
    try:
        sc = scaling(sizes, orig_python, orig_reason, workdir, log)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sc_text = "\n".join([scaling_table(sc, sizes), "", *scaling_details(sc)])

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "scaling.png"
    plot(sc, sizes, facts, png)
    results = args.out / "RESULTS.md"
    total = time.time() - t_start
    write_results(results, facts, command, scripts, sc_text, sizes, total, q, png)
    print(sc_text)
    print(f"\nwrote {results} and {png} (total {total:.0f} s)")
    failed = [s["name"] for s in scripts if s["rc"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--band-worker":
        band_worker(json.loads(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--pool-worker":
        pool_worker(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
