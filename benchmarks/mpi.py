"""Benchmark a plain Laufband loop under MPICH's mpiexec, ours and the original 0.2.1.

Run from anywhere::

    .venv/bin/python benchmarks/mpi.py            # full run (~2-4 min)
    .venv/bin/python benchmarks/mpi.py --quick    # smoke run with small sizes
    .venv/bin/python benchmarks/mpi.py --only a --delay 0.01 --tree /tmp/base17

``--tree PATH`` (default: this repository) is the laufband source tree the ranks of
"ours" import: its ``laufband/`` is copied at start (a tree edited during the run stays
one version) and every rank puts the copy first on ``sys.path`` and checks
``laufband.__file__``. ``--delay SECONDS`` adds a fixed latency to every store
transaction in every rank, exactly as ``slowfs.py`` does (``latency.py``: ``delay``
before taking the lock, ``delay`` before commit while holding it); the same wrapper of
``Store.transaction`` counts each rank's transactions, its lock wait and the time it
holds the lock, with or without delay. 0.2.1 has no ``Store.transaction``: it runs only
with ``--delay 0``.

Every rank is started by ``mpiexec`` (the one beside the running python: the mpich
wheel) and runs a plain ``for item in Laufband(...)`` loop whose body sleeps; the
ranks find their rank in ``PMI_RANK`` themselves, this script has no MPI code. The
original laufband 0.2.1 runs with the python of its throwaway venv (made and reused
by ``loop.py``) under the same mpiexec: it knows nothing of MPI, each rank is just a
process. Each rank logs every task's start and end wall-clock time to its own file;
the logs are parsed afterwards. The script prints one plain-text table.

See benchmarks/README.md for what each row means.
"""

from __future__ import annotations

_T_SCRIPT = __import__("time").time()  # when this interpreter reached the script

import argparse  # noqa: E402
import compileall  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency  # noqa: E402  (benchmarks/latency.py: store latency, counters, tree snapshot)
import loop  # noqa: E402  (benchmarks/loop.py: venv of 0.2.1, Laufband construction, table)

MPIEXEC = Path(sys.executable).parent / "mpiexec"
ROOT = Path(__file__).resolve().parent.parent


# ======================================================================================
# Worker side: one rank, with our python or the original's venv python.
# ======================================================================================


# Ours: latency.install_patches wraps Store.transaction (the store's public transaction
# method; slowfs.py injects its latency there too) and counts transactions, lock wait
# and hold. Which transactions claim tasks (Graphband._claim, private) is not known any
# more: the lock wait is per transaction of any kind, batch sizes are not reported.
PROBE_NA = "0.2.1 has no Store.transaction"


def worker_main(cfg: dict) -> None:
    import resource

    impl = cfg["impl"]
    rank = int(os.environ.get("PMI_RANK", "-1"))  # only to name this rank's files
    out: dict = {"rank": rank, "pid": os.getpid(), "script_at": _T_SCRIPT}
    if impl == "ours" and cfg.get("tree"):
        latency.use_tree(cfg["tree"])  # the snapshot first on sys.path, checked
    import laufband  # noqa: F401

    out["imported_at"] = time.time()
    out["module"] = loop._check_impl(impl)
    waits: list[float] | None = None
    if impl == "ours":
        waits = []
        latency.install_patches(cfg["delay"], waits)
    else:
        out["probe_error"] = PROBE_NA
    deadline = cfg["launched"] + cfg["cap"]
    run_dir = Path(cfg["run_dir"])
    band = loop._make_band(impl, list(range(cfg["n"])), cfg["state"])
    sleep = cfg["sleep"]
    with open(run_dir / f"log-{rank}.txt", "w", buffering=1) as log:
        for item in band:
            if time.time() > deadline:
                out["capped"] = True
                break  # the original: stop at the time cap (this task is not logged)
            start = time.time()
            time.sleep(sleep)
            end = time.time()
            log.write(f"{item} {start!r} {end!r}\n")
    out["done_at"] = time.time()
    if waits is not None:  # the heartbeat thread may still add: copy
        out["probe"] = dict(latency.STATS, waits=list(waits))
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this rank
    out["cpu_s"] = usage.ru_utime + usage.ru_stime
    (run_dir / f"result-{rank}.json").write_text(json.dumps(out))


# ======================================================================================
# Driver side.
# ======================================================================================


def run_mpi(python: str, impl: str, workdir: Path, ranks: int, n: int, sleep: float,
            cap: float, tree: str | None = None, delay: float = 0.0) -> dict:
    """Run ``ranks`` ranks of ``impl`` under mpiexec on a fresh state; parse the logs.

    ``tree`` (ours only) is the directory holding the laufband package the ranks import;
    ``delay`` (ours only) the latency injected into each store transaction.
    """
    run_dir = workdir / f"{impl}-{ranks}x{n}"
    state = run_dir / "state"
    state.mkdir(parents=True)
    import resource

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    cpu0 = children_cpu()
    launched = time.time()
    cfg = {"impl": impl, "n": n, "sleep": sleep, "cap": cap, "launched": launched,
           "state": str(state), "run_dir": str(run_dir), "tree": tree, "delay": delay}
    cmd = [str(MPIEXEC), "-n", str(ranks), python, str(Path(__file__).resolve()),
           "--worker", json.dumps(cfg)]
    with open(run_dir / "mpiexec.out", "w") as out, open(run_dir / "mpiexec.err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=run_dir,
                                env=loop.clean_env(), start_new_session=True)
        try:
            proc.wait(cap + 120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # mpiexec and the ranks it started (our own group)
            proc.wait()
    wall = time.time() - launched
    tree_cpu = children_cpu() - cpu0  # mpiexec, its proxies and the ranks
    errors = (run_dir / "mpiexec.err").read_text().strip().splitlines()
    results = {}
    for path in run_dir.glob("result-*.json"):
        res = json.loads(path.read_text())
        results[res["rank"]] = res
    if proc.returncode != 0 or len(results) != ranks:
        tail = errors[-1] if errors else f"exit code {proc.returncode}"
        raise RuntimeError(f"{impl}: mpiexec exit {proc.returncode}, {len(results)}/{ranks}"
                           f" ranks reported; {tail}")
    out = analyse(results, run_dir, ranks, n, sleep, wall, launched, " | ".join(errors[-3:]))
    out["tree_cpu"] = tree_cpu
    return out


def analyse(results: dict, run_dir: Path, ranks: int, n: int, sleep: float, wall: float,
            launched: float, stderr_tail: str) -> dict:
    per_rank: dict[int, list[tuple[int, float, float]]] = {r: [] for r in range(ranks)}
    for rank in range(ranks):
        log = run_dir / f"log-{rank}.txt"
        for line in log.read_text().splitlines() if log.exists() else []:
            item, start, end = line.split()
            per_rank[rank].append((int(item), float(start), float(end)))
    counts: dict[int, int] = {}
    for records in per_rank.values():
        for item, _, _ in records:
            counts[item] = counts.get(item, 0) + 1
    active = {r: recs for r, recs in per_rank.items() if recs}
    busy = {r: sum(e - s for _, s, e in recs) for r, recs in active.items()}
    first = {r: min(s for _, s, _ in recs) for r, recs in active.items()}
    last = {r: max(e for _, _, e in recs) for r, recs in active.items()}
    window_eff = {r: busy[r] / (last[r] - first[r]) for r in active if last[r] > first[r]}
    gaps = []  # from one task's end to the rank's next task's start
    for recs in active.values():
        ordered = sorted(recs, key=lambda x: x[1])
        gaps += [nxt[1] - prev[2] for prev, nxt in zip(ordered, ordered[1:], strict=False)]
    gaps.sort()
    g_first, g_last = (min(first.values()), max(last.values())) if active else (0.0, 0.0)
    out = {
        "ranks": ranks, "n": n, "sleep": sleep, "wall": wall,
        "done": len(counts), "dups": sum(c - 1 for c in counts.values() if c > 1),
        "missing": n - len(set(counts) & set(range(n))),
        "unknown": len(set(counts) - set(range(n))),
        "capped": any(r.get("capped") for r in results.values()),
        "idle_ranks": ranks - len(active),
        "tasks_per_rank": [len(per_rank[r]) for r in range(ranks)],
        "eff_min": min(window_eff.values()) if window_eff else 0.0,
        "eff_median": statistics.median(window_eff.values()) if window_eff else 0.0,
        "eff_min_rank": min(window_eff, key=window_eff.get) if window_eff else None,
        "spread": (max(last.values()) - min(last.values())) if active else 0.0,
        "busy": sum(busy.values()),
        "window": g_last - g_first,
        "overall": sum(busy.values()) / (ranks * (g_last - g_first)) if active else 0.0,
        "script_max": max(r["script_at"] for r in results.values()) - launched,
        "imported_max": max(r["imported_at"] for r in results.values()) - launched,
        "first_task_min": g_first - launched if active else None,
        "first_task_max": max(first.values()) - launched if active else None,
        "last_end": g_last - launched if active else None,
        "gap_median": statistics.median(gaps) if gaps else None,
        "gap_p99": gaps[int(0.99 * (len(gaps) - 1))] if gaps else None,
        "gap_max": gaps[-1] if gaps else None,
        "stderr_tail": stderr_tail,
        "cpu": sum(r["cpu_s"] for r in results.values()),
        "cpu_median": statistics.median(r["cpu_s"] for r in results.values()),
    }
    probes = [r["probe"] for r in results.values() if "probe" in r]
    if probes and len(probes) == len(results):
        waits = sorted(w for p in probes for w in p["waits"])
        txs = [p["tx"] for p in probes]
        held = [p["held_s"] for p in probes]
        out["probe"] = {
            "txns": sum(txs), "tx_min": min(txs), "tx_median": statistics.median(txs),
            "tx_max": max(txs),
            "lock_held_s": sum(held), "held_min": min(held),
            "held_median": statistics.median(held), "held_max": max(held),
            "wait_median": statistics.median(waits) if waits else 0.0,
            "wait_mean": statistics.mean(waits) if waits else 0.0,
            "wait_p95": waits[int(0.95 * (len(waits) - 1))] if waits else 0.0,
            "wait_max": waits[-1] if waits else 0.0,
            "reaps": sum(p["reaps"] for p in probes),
            "reap_s": sum(p["reap_s"] for p in probes),
        }
    else:
        errors = {r.get("probe_error") for r in results.values()} - {None}
        out["probe_na"] = next(iter(errors), "not measured")
    return out


# -- formatting ------------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def once_cell(r: dict) -> str:
    text = f"{r['done']:,}/{r['n']:,} once, {r['dups']} dup, {r['missing']} missing"
    if r["unknown"]:
        text += f", {r['unknown']} unknown"
    return text + (" (time cap)" if r["capped"] else "")


def wait_cell(r: dict) -> str:
    p = r.get("probe")
    if p is None:
        return f"n/a ({r.get('probe_na', 'not measured')})"
    return (f"{p['wait_median'] * 1e3:.1f} / {p['wait_p95'] * 1e3:.1f} / "
            f"{p['wait_max'] * 1e3:.0f} ms")


def txn_cell(r: dict) -> str:
    p = r.get("probe")
    if p is None:
        return "n/a"
    return (f"{p['txns'] / r['window']:,.0f}/s ({p['txns']:,} in {r['window']:.1f} s);"
            f" per rank {p['tx_min']:,} / {p['tx_median']:,.0f} / {p['tx_max']:,}")


def held_cell(r: dict) -> str:
    p = r.get("probe")
    if p is None:
        return "n/a"
    return (f"{p['lock_held_s']:.1f} s ({p['lock_held_s'] / r['window'] * 100:.0f} % of the"
            f" window); per rank {p['held_min']:.2f} / {p['held_median']:.2f} /"
            f" {p['held_max']:.2f} s")


def cpu_cell(r: dict) -> str:
    share = r["cpu"] / ((os.cpu_count() or 1) * r["wall"])
    return f"{r['cpu']:.1f} s ({share * 100:.0f} %), per rank {r['cpu_median']:.2f} s"


def section(rows: list, tag: str, r: dict, g, ideal: float, with_targets: bool) -> None:
    """Rows for one scenario; ``g`` is the original's result, a reason string, or None."""
    gok = isinstance(g, dict)

    def cell(fn) -> str:
        if g is None:
            return "- (not run)"
        return fn(g) if gok else str(g)

    def rat(a: float, b_key: str, higher: bool) -> str:
        return loop.ratio(a, g[b_key] if gok else None, higher)

    tgt = (lambda t: t) if with_targets else (lambda t: "-")
    rows.append([f"{tag}1  tasks run exactly once (from the logs)", once_cell(r),
                 cell(once_cell), "-", "all once",
                 loop.met(r["done"] == r["n"] and not r["dups"] and not r["unknown"])])
    eff = lambda x: f"{pct(x['eff_min'])} / {pct(x['eff_median'])}"  # noqa: E731
    rows.append([f"{tag}2  efficiency in each rank's active window, min / median",
                 eff(r), cell(eff), rat(r["eff_min"], "eff_min", True), tgt(">= 90 %"),
                 loop.met(r["eff_min"] >= 0.9) if with_targets else "-"])
    rows.append([f"{tag}3  spread of ranks' last task end (max - min)",
                 f"{r['spread']:.2f} s", cell(lambda x: f"{x['spread']:.2f} s"),
                 rat(r["spread"], "spread", False), tgt("<= 0.5 s"),
                 loop.met(r["spread"] <= 0.5) if with_targets else "-"])
    rows.append([f"{tag}4  overall efficiency, busy / ({r['ranks']} x first start..last end)",
                 pct(r["overall"]), cell(lambda x: pct(x["overall"])),
                 rat(r["overall"], "overall", True), "-", "-"])
    rows.append([f"{tag}5  wall time of mpiexec (ideal work {ideal:.1f} s per rank)",
                 f"{r['wall']:.1f} s", cell(lambda x: f"{x['wall']:.1f} s"),
                 rat(r["wall"], "wall", False), "-", "-"])
    rows.append([f"{tag}6  lock wait per store transaction, median / p95 / max", wait_cell(r),
                 cell(wait_cell), "-", "-", "-"])
    rows.append([f"{tag}7  store transactions per second, all ranks; per rank min / median"
                 " / max", txn_cell(r), cell(txn_cell), "-", "-", "-"])
    rows.append([f"{tag}8  lock held, all ranks; per rank min / median / max", held_cell(r),
                 cell(held_cell), "-", "-", "-"])
    rows.append([f"{tag}9  CPU time of all ranks (share of {os.cpu_count()} CPUs over the wall)",
                 cpu_cell(r), cell(cpu_cell), rat(r["cpu"], "cpu", False), "-", "-"])


def details(tag: str, name: str, r: dict) -> list[str]:
    lines = [
        f"  {tag} {name}: ranks reached the script {r['script_max']:.1f} s, imported laufband"
        f" {r['imported_max']:.1f} s after launch (last rank); first task {r['first_task_min']:.2f}"
        f" s (first rank) / {r['first_task_max']:.2f} s (last rank), last task end"
        f" {r['last_end']:.2f} s; busy {r['busy']:.1f} s",
        f"     tasks per rank min/median/max {min(r['tasks_per_rank'])}/"
        f"{statistics.median(r['tasks_per_rank']):.0f}/{max(r['tasks_per_rank'])},"
        f" idle ranks {r['idle_ranks']}; lowest window efficiency: rank {r['eff_min_rank']};"
        f" gap between a rank's tasks median {r['gap_median'] * 1e3:.1f} ms,"
        f" p99 {r['gap_p99'] * 1e3:.1f} ms, max {r['gap_max'] * 1e3:.0f} ms",
    ]
    p = r.get("probe")
    if p:
        lines.append(
            f"     store transactions {p['txns']:,} (heartbeats included), lock wait mean"
            f" {p['wait_mean'] * 1e3:.1f} ms, lock held per transaction mean"
            f" {p['lock_held_s'] / max(p['txns'], 1) * 1e3:.2f} ms; DeadWorkerDetector.reap"
            f" {p['reaps']:,} calls, {p['reap_s']:.2f} s in total")
    lines.append(f"     CPU of the whole mpiexec process tree {r['tree_cpu']:.1f} s (ranks"
                 f" {r['cpu']:.1f} s, so mpiexec and its proxies {r['tree_cpu'] - r['cpu']:.1f} s)")
    if r["stderr_tail"]:
        lines.append(f"     stderr: {r['stderr_tail'][:300]}")
    return lines


# -- main ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--no-original", action="store_true",
                        help="skip laufband 0.2.1 (no venv is created)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument("--tree", default=str(ROOT), metavar="PATH",
                        help=f"laufband source tree the ranks of ours import (default {ROOT})")
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                        help="latency injected twice into every store transaction of ours,"
                        " as slowfs.py does (default 0: off; 0.2.1 is then not run)")
    parser.add_argument("--only", choices=("a", "b"), help="run one scenario only")
    parser.add_argument("--ranks", type=int, help="ranks of scenario a (default 64, quick 16)")
    parser.add_argument("--tasks", type=int,
                        help="tasks of scenario a (default 6400, quick 800)")
    parser.add_argument("--cap", type=float, metavar="SECONDS",
                        help="scenario a: no new task after this long (default 90, quick 60)")
    args = parser.parse_args()
    if args.delay < 0:
        parser.error("--delay must be >= 0")
    if not (Path(args.tree) / "laufband" / "__init__.py").exists():
        parser.error(f"--tree {args.tree}: no laufband/__init__.py there")
    return args


def main() -> int:
    args = parse_args()
    q, delay = args.quick, args.delay
    sizes = {"a_ranks": args.ranks or (16 if q else 64), "a_n": args.tasks or (800 if q else 6400),
             "b_ranks": 8, "b_n": 160 if q else 800, "sleep": 0.05,
             "a_cap": args.cap or (60.0 if q else 90.0), "orig_cap": 30.0 if q else 120.0}
    run_a, run_b = args.only in (None, "a"), args.only in (None, "b")

    log = loop.log
    if not MPIEXEC.exists():
        raise SystemExit(f"no mpiexec beside {sys.executable}: pip install mpich")
    t_start = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="laufband-bench-mpi-"))
    snapshots = latency.snapshot([(Path(args.tree).resolve().name or "tree", args.tree)],
                                 prefix="laufband-bench-mpi-tree-")
    tree = str(next(snapshots.iterdir()))
    compileall.compile_dir(tree, quiet=1)  # once here, not by every rank at its start
    orig_python, orig_reason = None, "skipped (--no-original)"
    if delay:
        orig_reason = f"not run with --delay ({PROBE_NA})"
    elif not args.no_original and run_b:
        try:
            orig_python = loop.ensure_original_venv(log)
        except loop.Unavailable as error:
            orig_reason = f"not available: {error}"
            log(orig_reason)
    s = sizes["sleep"]
    tag = f", delay {delay * 1e3:g} ms" if delay else ""
    a = b = g = None
    try:
        if run_a:
            log(f"ours: {sizes['a_ranks']} ranks x {sizes['a_n']:,} tasks x 50 ms{tag} ...")
            a = run_mpi(sys.executable, "ours", workdir, sizes["a_ranks"], sizes["a_n"], s,
                        sizes["a_cap"], tree, delay)
        if run_b:
            log(f"ours: {sizes['b_ranks']} ranks x {sizes['b_n']} tasks x 50 ms{tag} ...")
            b = run_mpi(sys.executable, "ours", workdir, sizes["b_ranks"], sizes["b_n"], s,
                        300.0, tree, delay)
            g = orig_reason
            if orig_python is not None:
                log(f"original: {sizes['b_ranks']} ranks x {sizes['b_n']} tasks x 50 ms"
                    f" (cap {sizes['orig_cap']:.0f} s) ...")
                try:
                    g = run_mpi(orig_python, "orig", workdir, sizes["b_ranks"], sizes["b_n"], s,
                                sizes["orig_cap"])
                except Exception as error:  # noqa: BLE001
                    g = f"not available: {error}"
    finally:
        if args.keep:
            log(f"kept {workdir} and {snapshots}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(snapshots, ignore_errors=True)
    print(report(args, sizes, a, b, g))
    custom = q or args.ranks or args.tasks
    print(f"total benchmark time {time.time() - t_start:.0f} s on {os.cpu_count()} CPUs"
          + (" (not the full sizes: targets are meant for them)" if custom else ""))
    return 0


def report(args: argparse.Namespace, sizes: dict, a, b, g) -> str:
    """The table and details of the scenarios that ran (``a``/``b`` None: not run)."""
    s, delay = sizes["sleep"], args.delay
    rows: list[list[str]] = []
    scenarios = []
    if a is not None:
        section(rows, "a", a, None, a["n"] * s / a["ranks"], True)
        scenarios.append(f"a: {a['ranks']} ranks x {a['n']:,} tasks x 50 ms time.sleep (capped"
                         f" at {sizes['a_cap']:.0f} s after launch)")
    if b is not None:
        if rows:
            rows.append(["--"])
        section(rows, "b", b, g, b["n"] * s / b["ranks"], False)
        scenarios.append(f"b: {b['ranks']} ranks x {b['n']:,} tasks x 50 ms (0.2.1 capped at"
                         f" {sizes['orig_cap']:.0f} s)")
    injected = (f"injected store latency {delay * 1e3:g} ms before the lock and"
                f" {delay * 1e3:g} ms before commit" if delay else "no injected latency")
    header = ["scenario", "laufband (ours)", f"laufband {loop.ORIGINAL_VERSION}", "ratio",
              "target", "met?"]
    lines = [
        "; ".join(scenarios), f"ours: laufband from {args.tree} (snapshot), {injected}", "",
        loop.table(rows, header), "",
        "ratio: how many times better ours is. Lock wait (ours only): time from entering a",
        "store transaction's original context manager to its body (state file lock + BEGIN",
        "IMMEDIATE; any kind of transaction, heartbeats included; the injected delay not",
        "included), measured by wrapping Store.transaction in the rank processes.",
        "details (times relative to the start of mpiexec):",
    ]
    if a is not None:
        lines += details("a", "ours", a)
    if b is not None:
        lines += details("b", "ours", b)
    if isinstance(g, dict):
        lines += details("b", "0.2.1", g)
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
