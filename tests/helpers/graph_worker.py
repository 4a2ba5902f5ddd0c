"""A Graphband worker for multi-process tests: a diamond-shaped chain of layers.

Logs "start ID TIME" and "end ID TIME" lines to LOG/<pid>.log. With ``--hold-until
FILE`` a task's body waits for FILE to exist (at most HOLD_DEADLINE) instead of sleeping.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from laufband import Graphband, Task

HOLD_DEADLINE = 60.0  # seconds a body waits for its --hold-until file


def layered_tasks(layers: int, width: int, multi: int, require: str | None) -> list[Task]:
    tasks = []
    for layer in range(layers):
        for i in range(width):
            deps = [f"L{layer - 1}-{j}" for j in range(width)] if layer else []
            tasks.append(Task(f"L{layer}-{i}", dependencies=deps,
                              requirements={require} if require and i == 0 else set(),
                              max_parallel_workers=multi))
    return tasks


def hold(until: Path) -> None:
    """Wait until the test creates ``until`` (a task that runs as long as it wants)."""
    end = time.monotonic() + HOLD_DEADLINE
    while not until.exists():
        if time.monotonic() > end:
            msg = f"{until} did not appear within {HOLD_DEADLINE} s"
            raise TimeoutError(msg)
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state")
    parser.add_argument("logs")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--multi", type=int, default=1)
    parser.add_argument("--labels", default="")
    parser.add_argument("--require", default=None)
    parser.add_argument("--hold-until", type=Path, default=None)
    args = parser.parse_args()
    log = Path(args.logs) / f"{os.getpid()}.log"
    tasks = layered_tasks(args.layers, args.width, args.multi, args.require)
    worker = Graphband(tasks, path=args.state, name="graph", tqdm_kwargs={"disable": True},
                       labels=[x for x in args.labels.split(",") if x])
    with log.open("a", buffering=1) as out:
        for task in worker:
            out.write(f"start {task.id} {time.time()}\n")
            if args.hold_until is None:
                time.sleep(args.sleep)
            else:
                hold(args.hold_until)
            out.write(f"end {task.id} {time.time()}\n")


if __name__ == "__main__":
    main()
