"""A small train -> evaluate pipeline with Graphband: dependencies, labels, shared tasks.

Start it as often as you like (workers with a GPU set LAUFBAND_LABELS=gpu):

    python graph.py & LAUFBAND_LABELS=gpu python graph.py & wait

- "prepare" runs first; the three "train-*" tasks need a "gpu" worker;
- each "evaluate-*" waits for its model; "report" waits for every evaluation;
- "benchmark" may be held by two workers at once (max_parallel_workers=2).
"""

import json
import time
from pathlib import Path

from laufband import Graphband, Task

MODELS = ["small", "medium", "large"]
OUT = Path("pipeline")


def tasks():
    yield Task("prepare")
    for model in MODELS:
        yield Task(f"train-{model}", data=model, dependencies=["prepare"],
                   requirements={"gpu"})
        yield Task(f"evaluate-{model}", data=model, dependencies=[f"train-{model}"])
    yield Task("report", dependencies=[f"evaluate-{m}" for m in MODELS])
    yield Task("benchmark", dependencies=["report"], max_parallel_workers=2)


worker = Graphband(tasks(), name="pipeline")
OUT.mkdir(exist_ok=True)
for task in worker:
    time.sleep(0.1)  # the real work
    with worker.lock:
        log = OUT / "log.jsonl"
        with log.open("a") as out:
            out.write(json.dumps({"task": task.id, "labels": sorted(worker.labels)}) + "\n")
