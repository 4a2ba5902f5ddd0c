"""Programs run under mpiexec by tests/test_mpi.py: python mpi_programs.py KIND STATE LOGS."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

KIND, STATE, LOGS = sys.argv[1], sys.argv[2], Path(sys.argv[3])
LOGS.mkdir(exist_ok=True)
RANK = os.environ.get("PMI_RANK", "?")


def log(item: object) -> None:
    with (LOGS / f"{os.getpid()}.done").open("a") as out:
        out.write(f"{item}\n")


def report(results: list[int]) -> None:
    """Each rank's results in its own file: ranks' stdout lines interleave."""
    (LOGS / f"rank{RANK}.json").write_text(json.dumps({"rank": RANK, "results": results}))


def square(x: int) -> int:
    time.sleep(0.01)
    log(x)
    return x * x


if KIND == "pmap":
    from laufband import pmap

    report(pmap(square, range(80), path=STATE, name="squares", progress=False))

elif KIND == "joblib":
    from joblib import Parallel, delayed

    import laufband  # noqa: F401  (registers the backend)

    report(Parallel(n_jobs=2, backend="laufband", path=STATE)(
        delayed(square)(i) for i in range(80)))

elif KIND == "graph":
    from laufband import Graphband, Task

    tasks = [Task(f"{layer}-{i}", dependencies=[f"{layer - 1}-{j}" for j in range(4)]
                  if layer else []) for layer in range(3) for i in range(4)]
    for task in Graphband(tasks, path=STATE, name="graph"):
        with (LOGS / f"{os.getpid()}.log").open("a") as out:
            out.write(f"start {task.id} {time.time()}\n")
        time.sleep(0.05)
        with (LOGS / f"{os.getpid()}.log").open("a") as out:
            out.write(f"end {task.id} {time.time()}\n")

elif KIND in ("crash-exit", "crash-kill"):
    from laufband import Laufband

    for item in Laufband(list(range(120)), path=STATE, name="crash"):
        if RANK == "1" and item >= 10:  # rank 1 dies mid-task, once it has done some work
            (LOGS / "crashed-on").write_text(str(item))
            if KIND == "crash-exit":
                os._exit(1)  # no cleanup at all: its task stays "running" on it
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.02)
        log(item)
