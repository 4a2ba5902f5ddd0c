"""Workers for the tests of results, priorities, retry delays, fingerprints and timeouts.

Each subcommand runs one worker in its own process and prints one JSON line (or logs
"ID TIME" lines to a file) for the test to check.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from laufband import Graphband, Laufband, Task

QUIET = {"disable": True}


def results(args: argparse.Namespace) -> None:
    """A chain a -> b -> c: each task saves its result, built on its dependency's."""
    tasks = [Task("a", requirements={"first"}),
             Task("b", dependencies=["a"], requirements={"second"}),
             Task("c", dependencies=["b"], requirements={"second"})]
    worker = Graphband(tasks, path=args.state, name="chain", labels=args.labels.split(","),
                       tqdm_kwargs=QUIET)
    read = {}
    for task in worker:
        before = [worker.result_of(dep) for dep in task.dependencies]
        read[task.id] = before
        worker.save({"id": task.id, "pid": os.getpid(), "sum": 1 + sum(b["sum"] for b in before)})
    print(json.dumps(read))


def priorities(args: argparse.Namespace) -> None:
    """Tasks of shuffled priorities; log "ID START" as each body starts."""
    order = json.loads(args.priorities)
    tasks = [Task(f"t{i}", priority=p) for i, p in enumerate(order)]
    worker = Graphband(tasks, path=args.state, name="prio", tqdm_kwargs=QUIET)
    with Path(args.log).open("a", buffering=1) as log:
        Path(args.ready).touch()
        while not Path(args.go).exists():  # every worker starts claiming together
            time.sleep(0.005)
        for task in worker:
            log.write(f"{task.id} {time.time()}\n")
            time.sleep(args.sleep)


def retries(args: argparse.Namespace) -> None:
    """Task 0 fails twice (logged "fail"), then completes; the others log "done"."""
    worker = Laufband(range(args.items), path=args.state, name="retry", tqdm_kwargs=QUIET,
                      max_failed_retries=2, retry_delay=args.delay)
    tries = Path(args.log).with_suffix(".tries")
    with Path(args.log).open("a", buffering=1) as log:
        for item in worker:
            with worker.catch():
                now = time.time()
                if item == 0:
                    attempt = len(tries.read_text()) if tries.exists() else 0
                    with tries.open("a") as out:
                        out.write("x")
                    if attempt < 2:
                        log.write(f"fail {item} {now}\n")
                        raise RuntimeError(f"attempt {attempt + 1} of item 0 fails")
                log.write(f"done {item} {now}\n")
                time.sleep(args.sleep)


def fingerprints(args: argparse.Namespace) -> None:
    """A 3-level graph; ``--changed ID`` gives that task a new fingerprint."""
    graph = {"r1": [], "r2": [], "m1": ["r1"], "m2": ["r1", "r2"], "m3": ["r2"],
             "l1": ["m1"], "l2": ["m2"], "l3": ["m2", "m3"], "l4": ["m3"]}
    tasks = [Task(node, dependencies=deps,
                  fingerprint=("v2" if node == args.changed else "v1") + node)
             for node in graph.items() for node, deps in [node]]
    ran = [task.id for task in Graphband(tasks, path=args.state, name="fp",
                                        tqdm_kwargs=QUIET)]
    print(json.dumps(ran))


def outdated(args: argparse.Namespace) -> None:
    """Task T (fingerprint ``--changed``, default v1) and D depending on it.

    Each body logs "ID FINGERPRINT PID" to ``--log`` as it starts; T saves "T FP PID".
    ``--mode``: ``run`` runs the tasks; ``register`` only registers them (and this
    worker) and leaves; ``gate`` runs a task "gate" first, whose body touches
    ``--ready`` and waits for ``--go``; ``block``: T's body does that; ``block-d``: D's
    body does. Prints the ids run as JSON.
    """
    fingerprint = args.changed or "v1"
    tasks = [Task("T", fingerprint=fingerprint), Task("D", dependencies=["T"], fingerprint="d")]
    if args.mode == "gate":
        tasks.insert(0, Task("gate"))
    worker = Graphband(tasks, path=args.state, name="outdated", tqdm_kwargs=QUIET)
    if args.mode == "register":
        print(json.dumps(worker.has_more_jobs))
        return
    ran = []
    with Path(args.log).open("a", buffering=1) as log:
        for task in worker:
            ran.append(task.id)
            log.write(f"{task.id} {fingerprint} {os.getpid()}\n")
            if (task.id, args.mode) in {("gate", "gate"), ("T", "block"), ("D", "block-d")}:
                Path(args.ready).touch()
                while not Path(args.go).exists():
                    time.sleep(0.01)
            if task.id == "T":
                worker.save(f"T {fingerprint} {os.getpid()}")
    print(json.dumps(ran))


def timeouts(args: argparse.Namespace) -> None:
    """Items sleep ``--sleep`` (item 2: ``--slow``); ``--mode`` says how failures are met:
    ``catch`` (worker.catch), ``swallow`` (the body catches every exception), ``raise``."""
    worker = Laufband(range(args.items), path=args.state, name="slow", tqdm_kwargs=QUIET,
                      timeout=args.timeout, max_failed_retries=args.retries)
    with Path(args.log).open("a", buffering=1) as log:
        for item in worker:
            log.write(f"start {item} {time.time()}\n")
            seconds = args.slow if item == 2 else args.sleep
            if args.mode == "catch":
                with worker.catch():
                    time.sleep(seconds)
            elif args.mode == "swallow":
                try:
                    time.sleep(seconds)
                except Exception as error:  # noqa: BLE001 - what careless code does
                    log.write(f"swallowed {item} {error}\n")
            else:
                time.sleep(seconds)
            log.write(f"end {item} {time.time()}\n")


def killed_after_saving(args: argparse.Namespace) -> None:
    """Save item * 10 for every item; with ``--mode kill``, SIGKILL itself at item 5
    (items 0-4 finished and saved, nothing written yet: a write comes every ~0.2 s)."""
    import signal

    worker = Laufband(range(args.items), path=args.state, name="saved", tqdm_kwargs=QUIET)
    for item in worker:
        if item == 5 and args.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        worker.save(item * 10)
    print(json.dumps([worker.result_of(i) for i in range(args.items)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("state")
    parser.add_argument("--labels", default="")
    parser.add_argument("--priorities", default="[]")
    parser.add_argument("--log", default="")
    parser.add_argument("--ready", default="")
    parser.add_argument("--go", default="")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--changed", default="")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--slow", type=float, default=30.0)
    parser.add_argument("--mode", default="catch")  # outdated: run, register, gate, block
    parser.add_argument("--retries", type=int, default=0)
    args = parser.parse_args()
    {"results": results, "priorities": priorities, "retries": retries,
     "fingerprints": fingerprints, "outdated": outdated, "timeouts": timeouts,
     "killed_after_saving": killed_after_saving}[args.command](args)


if __name__ == "__main__":
    main()
