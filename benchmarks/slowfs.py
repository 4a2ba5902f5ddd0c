"""The loop engine under store latency (#17), for one or more laufband source trees.

Run from anywhere::

    .venv/bin/python benchmarks/slowfs.py --quick                 # smoke run, a few minutes
    .venv/bin/python benchmarks/slowfs.py --tree base=/tmp/base17 --tree new=/work/main
    .venv/bin/python benchmarks/slowfs.py --only loop-8,hetero --delay 0.02

Every row runs twice per tree: without and with an injected store latency. The
latency comes from this script, not from laufband: each worker subprocess replaces
``laufband.store.store.Store.transaction`` with a wrapper that sleeps ``delay`` before
taking the lock (the lock's round trip to a busy NFS server) and ``delay`` after the
with-block's body, still holding the lock (commit and fsync). The wrapper also sums the
time each process holds the lock, and a wrapper of ``DeadWorkerDetector.reap`` the time
spent reaping. Workers are real processes that import laufband from ``--tree`` (checked)
and are released together at a stdin barrier, so Python start-up does not count.
Progress goes to stderr, the tables to stdout. Only the standard library is used here.
See benchmarks/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from latency import STATS, install_patches, snapshot, use_tree

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = "bench"

# ======================================================================================
# Worker side: one subprocess, `slowfs.py --worker CONFIG`.
# ======================================================================================

def _expand(spec: list) -> list[float]:
    """[[count, seconds], ...] -> the list of task durations."""
    return [seconds for count, seconds in spec for _ in range(count)]


def _sleep_item(item: tuple[int, float]) -> int:
    """The pmap function (module level, so helpers can run it): sleep, log, return pid."""
    index, seconds = item
    time.sleep(seconds)
    with open(os.environ["SLOWFS_PMAP_LOG"], "a") as log:  # one short O_APPEND write
        log.write(f"{index}\n")
    return os.getpid()


def _run_loop(cfg: dict, go: float) -> dict:
    from laufband import Laufband

    # Laufband over range(N), looking the duration up: equal durations stay distinct
    # tasks and every task has an id for the exactly-once check.
    durations = _expand(cfg["durations"])
    deadline, log, capped = go + cfg["cap"], [], False
    band = Laufband(range(len(durations)), path=cfg["state"], name=WORKFLOW,
                    tqdm_kwargs={"disable": True})
    for i in band:
        if time.time() > deadline:
            capped = True
            break
        start = time.time()
        time.sleep(durations[i])
        log.append((i, start, time.time()))
    return {"log": log, "capped": capped}


def _run_pmap(cfg: dict) -> dict:
    from laufband import pmap

    os.environ["SLOWFS_PMAP_LOG"] = cfg["log"]  # forked (or spawned) helpers inherit it
    data = list(enumerate(_expand(cfg["durations"])))  # tuples: pmap computes equal items once
    start = time.time()
    pids = pmap(_sleep_item, data, n=cfg["n"], path=cfg["state"], progress=False)
    return {"pmap_s": time.time() - start, "pids": list(pids)}


def worker_main(cfg: dict) -> None:
    where = use_tree(cfg["tree"])
    install_patches(cfg["delay"])
    out: dict = {"pid": os.getpid(), "module": str(where)}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    go = float(sys.stdin.readline().split()[1])
    start = time.time()
    try:
        out.update(_run_pmap(cfg) if cfg["kind"] == "pmap" else _run_loop(cfg, go))
    except Exception:  # noqa: BLE001 - the parent reports any failure, with its traceback
        out["error"] = traceback.format_exc()
    out.update(STATS, wall_s=time.time() - start)
    Path(cfg["result"]).write_text(json.dumps(out))


# ======================================================================================
# Driver side.
# ======================================================================================


def clean_env(tree: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAUFBAND_")
           and k not in ("PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = tree  # spawned pmap helpers import the same tree
    return env


def run_workers(tree: str, delay: float, kind: str, procs: int, cap: float, **cfg) -> dict:
    """Start ``procs`` workers, release them together, collect their results."""
    tmp = Path(tempfile.mkdtemp(prefix="slowfs-"))
    started: list[subprocess.Popen] = []
    try:
        for k in range(procs):
            worker_cfg = dict(cfg, tree=tree, delay=delay, kind=kind, cap=cap,
                              state=str(tmp / "state"), log=str(tmp / "pmap.log"),
                              result=str(tmp / f"result{k}.json"))
            with open(tmp / f"stderr{k}.txt", "w") as err:
                started.append(subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker",
                     json.dumps(worker_cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=err, cwd=tmp, env=clean_env(tree), text=True,
                    start_new_session=True))
        not_ready = [p for p in started if p.stdout.readline().strip() != "ready"]
        go = time.time()
        for p in started:  # a worker that is not ready reads EOF, fails and is reported
            if p not in not_ready:
                p.stdin.write(f"go {go!r}\n")
            p.stdin.close()
            p.stdout.close()
        hung = []
        deadline = time.monotonic() + cap + 60
        for p in started:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                hung.append(p.pid)
                os.killpg(p.pid, signal.SIGKILL)  # its own session: the worker and its helpers
                p.wait()
        wall = time.time() - go
        results, errors = [], []
        for k, p in enumerate(started):
            result = tmp / f"result{k}.json"
            data = json.loads(result.read_text()) if result.exists() else {}
            if "error" in data or not data:
                tail = (tmp / f"stderr{k}.txt").read_text().strip().splitlines()[-5:]
                errors.append((data.get("error") or "\n".join(tail)
                               or f"no result, exit status {p.returncode}").strip())
            results.append(data)
        pmap_log = tmp / "pmap.log"
        ran = [int(x) for x in pmap_log.read_text().split()] if pmap_log.exists() else []
        return {"results": results, "errors": errors, "hung": hung, "wall": wall,
                "pmap_ran": ran}
    finally:
        for p in started:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def check_once(counts: Counter, n: int, capped: bool) -> str:
    dup = sorted(i for i, c in counts.items() if c > 1)
    unknown = sorted(i for i in counts if not 0 <= i < n)
    missing = n - len(set(counts) - set(unknown))
    if dup or unknown or (missing and not capped):
        return (f"EXACTLY-ONCE VIOLATED: {len(dup)} duplicated {dup[:10]}, {missing} missing,"
                f" {len(unknown)} unknown {unknown[:10]}")
    return f"capped: {n - missing}/{n} ran, none twice" if missing else "every task once"


def analyze(run: dict, row: dict) -> dict:
    """Reduce one run's worker results to the numbers the tables show."""
    results, procs = run["results"], row["procs"]
    durations = _expand(row["durations"])
    errors = Counter(run["errors"] + [f"hung, killed: {run['hung']}"] * bool(run["hung"]))
    out = {"wall": run["wall"], "errors": [f"({n} of {procs} workers) {e}" if n > 1 else e
                                           for e, n in errors.items()]}
    for key in ("tx", "held_s", "reaps", "reap_s", "wall_s"):
        out[key] = sum(r.get(key, 0) for r in results)
    if row["kind"] == "pmap":
        pmap_s = [r["pmap_s"] for r in results if "pmap_s" in r]
        out["value"] = pmap_s[0] if pmap_s else None
        pids = results[0].get("pids", []) if results else []
        caller = results[0].get("pid") if results else None
        slow = [pid for pid, d in zip(pids, durations, strict=False) if d >= 0.1]
        mine = slow.count(caller)
        out["slow_by"] = f"slow items: {mine} by caller, {len(slow) - mine} by helpers"
        out["once"] = check_once(Counter(run["pmap_ran"]), len(durations), capped=False)
        return out
    logs = [r.get("log", []) for r in results]
    entries = [e for log in logs for e in log]
    out["once"] = check_once(Counter(e[0] for e in entries), len(durations),
                             capped=any(r.get("capped") for r in results))
    if not entries:
        out["value"] = None
        return out
    if not out["tx"]:
        out["errors"].append("no transaction went through the patched Store.transaction")
    first, last = min(e[1] for e in entries), max(e[2] for e in entries)
    window = max(last - first, 1e-9)
    busy = sum(e[2] - e[1] for e in entries)
    per = [sum(e[2] - e[1] for e in log) / max(log[-1][2] - log[0][1], 1e-9)
           for log in logs if log]
    out.update(window=window, eff=busy / (procs * window), ran=len(entries),
               per_min=min(per), per_med=statistics.median(per), idle=procs - len(per),
               rate=len(entries) / window)
    # Hetero: the makespan cannot beat the total work spread over all workers, nor
    # the longest single task, so the ideal is the larger of the two lower bounds.
    out["ideal"] = max(sum(durations) / procs, *durations)
    if row["show"] == "ratio":  # who ran the slow (>= 0.1 s) tasks
        slow = sorted((sum(durations[e[0]] >= 0.1 for e in log) for log in logs), reverse=True)
        out["slow_by"] = f"slow tasks per worker {slow}"
    out["value"] = {"eff": out["eff"], "ratio": window / out["ideal"],
                    "share": out["reap_s"] / max(out["held_s"], 1e-9)}[row["show"]]
    return out


def cell(row: dict, a: dict | None) -> str:
    if a is None:
        return "skipped"
    if a["value"] is None:
        return "FAILED"
    flag = "" if a["once"] == "every task once" else (
        " capped" if a["once"].startswith("capped") else " ONCE!")
    flag += " ERR!" if a["errors"] else ""
    if row["show"] == "eff":
        return f"{a['eff']:.1%} (proc min {a['per_min']:.0%} med {a['per_med']:.0%}){flag}"
    if row["show"] == "ratio":
        return f"{a['window'] / a['ideal']:.2f}x ({a['window']:.2f}/{a['ideal']:.2f} s){flag}"
    if row["show"] == "pmap":
        ideal = sum(_expand(row["durations"])) / row["n"]
        return f"{a['value'] / ideal:.2f}x ({a['value']:.2f}/{ideal:.2f} s){flag}"
    return f"{a['value']:.1%} (reap {a['reap_s']:.2f}/held {a['held_s']:.1f} s){flag}"


def make_rows(quick: bool) -> list[dict]:
    def loop(procs: int, n: int, ms: int, target: str, big: bool = False) -> dict:
        ideal = n * ms / 1000 / procs
        return {"name": f"loop-{procs}x{n}x{ms}ms", "kind": "loop", "procs": procs,
                "durations": [[n, ms / 1000]], "cap": max(6 * ideal, ideal + 40),
                "show": "eff", "target": target, "skip": quick and big}

    rows = [loop(1, 800, 5, ">=95 % (with delay)"), loop(8, 800, 5, ">=95 % (with delay)"),
            loop(8, 2000, 1, ">=85 % (with delay)"), loop(16, 1600, 50, "-", big=True),
            loop(32, 3200, 100, "-", big=True)]
    ideal, cap_n = (1.0, 8000) if quick else (2.0, 16000)
    for t in (0.001, 0.005, 0.05):
        for procs in (1, 2, 4, 8) if quick else (1, 2, 4, 8, 16, 32, 64):
            n = min(round(procs * ideal / t), cap_n)
            rows.append({"name": f"scaling-{procs}p-{t * 1000:g}ms", "kind": "loop",
                         "procs": procs, "durations": [[n, t]], "cap": max(4 * ideal, 10),
                         "show": "eff", "t": t, "scaling": True})
    rows += [
        {"name": "hetero-8x(4000x1ms+16x1s)", "kind": "loop", "procs": 8,
         "durations": [[4000, 0.001], [16, 1.0]], "cap": 60, "show": "ratio",
         "target": "<=1.2x ideal"},
        {"name": "hetero-pmap-n2(1000x0.2ms+6x0.5s)", "kind": "pmap", "procs": 1, "n": 2,
         "durations": [[1000, 0.0002], [6, 0.5]], "cap": 60, "show": "pmap",
         "target": "<=1.2x ideal"},
        {"name": f"reap-{50 if quick else 200}x1000x10ms", "kind": "loop",
         "procs": 50 if quick else 200, "durations": [[1000, 0.01]], "cap": 240,
         "show": "share", "target": "<=10 % of lock held"},
    ]
    return [r for r in rows if not r.get("skip")]


def table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), rule] + [fmt.format(*x) for x in lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", metavar="NAME=PATH",
                        help=f"a laufband source tree (repeatable; default new={ROOT})")
    parser.add_argument("--delay", type=float, default=0.01,
                        help="injected store latency in seconds (default 0.01)")
    parser.add_argument("--only", help="comma-separated row names or prefixes "
                        "(loop, loop-8x800, scaling, scaling-8p, hetero, reap, ...)")
    parser.add_argument("--quick", action="store_true", help="skip/shrink the big rows")
    args = parser.parse_args()
    if args.delay <= 0:
        parser.error("--delay must be positive (every row also runs without delay)")
    trees = [t.split("=", 1) for t in args.tree or [f"new={ROOT}"]]
    for name, path in trees:
        if not (Path(path) / "laufband" / "__init__.py").exists():
            parser.error(f"--tree {name}={path}: no laufband/__init__.py there")
    rows = make_rows(args.quick)
    if args.only:
        wanted = args.only.split(",")
        rows = [r for r in rows if any(r["name"].startswith(w) for w in wanted)]
    delays = (0.0, args.delay)
    t0 = time.time()
    found: dict = {}
    snapshots = snapshot(trees, prefix="slowfs-trees-")
    try:
        for row, delay, (name, _) in itertools.product(rows, delays, trees):
            # trees and delays interleaved per row: compare neighbours in time
            run = run_workers(str(snapshots / name), delay, row["kind"], row["procs"],
                              row["cap"], durations=row["durations"], n=row.get("n"))
            a = found[row["name"], name, delay] = analyze(run, row)
            print(f"[{time.time() - t0:6.0f}s] {row['name']} {name} delay={delay:g}: "
                  f"{cell(row, a)}", file=sys.stderr, flush=True)
            for line in a["errors"] + [a["once"]] * ("VIOLATED" in a["once"]):
                last = line.splitlines()[-1]  # a traceback's exception (all in details)
                print(f"!!! {row['name']} {name} delay={delay:g}: {last}", file=sys.stderr)
    finally:
        shutil.rmtree(snapshots, ignore_errors=True)
    report(rows, trees, delays, found)
    print(f"\ntotal run time {time.time() - t0:.0f} s")


def report(rows: list[dict], trees: list, delays: tuple, found: dict) -> None:
    d_label = f"delay {delays[1] * 1000:g} ms"
    main_rows = [r for r in rows if not r.get("scaling")]
    if main_rows:
        print(table(["row", "tree", "delay 0", d_label, "target"],
                    [[r["name"], name] + [cell(r, found.get((r["name"], name, d)))
                                          for d in delays] + [r["target"]]
                     for r in main_rows for name, _ in trees]))
    scaling = [r for r in rows if r.get("scaling")]
    if scaling:
        ts = sorted({r["t"] for r in scaling})
        procs = sorted({r["procs"] for r in scaling})
        header = ["P", "tree"] + [f"{t * 1000:g} ms, {'delay 0' if d == 0 else d_label}"
                                  for t in ts for d in delays]
        lines = []
        for p in procs:
            for name, _ in trees:
                line = [str(p), name]
                for t in ts:
                    for d in delays:
                        key = (f"scaling-{p}p-{t * 1000:g}ms", name, d)
                        a = found.get(key)
                        line.append("-" if not a or a["value"] is None else
                                    f"{a['rate']:.0f}/s {a['eff']:.0%}"
                                    + ("*" if a["once"] != "every task once" else ""))
                lines.append(line)
        print("\nScaling: tasks/s in the active window, efficiency (* capped or not once)")
        print(table(header, lines))
    print("\nDetails (held = lock held, summed over processes; share = held / summed wall):")
    for (row_name, name, delay), a in found.items():
        extra = (f"window {a['window']:.2f}s ran {a['ran']} idle procs {a['idle']} "
                 if "window" in a else "") + a.get("slow_by", "") + " "
        print(f"  {row_name} {name} delay={delay:g}: wall {a['wall']:.2f}s {extra}"
              f"tx {a['tx']} held {a['held_s']:.2f}s ({a['held_s'] / max(a['wall_s'], 1e-9):.1%})"
              f" reap {a['reap_s']:.2f}s; {a['once']}"
              + "".join(f"\n    !!! {e}" for e in a["errors"]))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker_main(json.loads(sys.argv[2]))
    else:
        main()
