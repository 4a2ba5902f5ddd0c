"""Run joblib.Parallel on the laufband backend; log each computation to LOGS/<pid>.done.

Options: --items N, --sleep S, --n-jobs N, --kill-helper (a helper, not this process,
SIGKILLs itself on the first call it gets, once), --import-joblib-first.
Prints the results as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("state")
parser.add_argument("logs")
parser.add_argument("--items", type=int, default=20)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--n-jobs", type=int, default=2)
parser.add_argument("--kill-helper", action="store_true")
parser.add_argument("--import-joblib-first", action="store_true")
args = parser.parse_args()

if args.import_joblib_first:
    import joblib  # noqa: F401
import laufband  # noqa: F401,E402,I001  (first: registers the backend lazily)
from joblib import Parallel, delayed  # noqa: E402
from computation import compute  # noqa: E402  (beside this script)

LOGS = Path(args.logs)
LOGS.mkdir(exist_ok=True)
CALLER = os.getpid()


def cube(x: int, offset: int = 0) -> int:
    compute(x, LOGS, args.sleep, kill_helper=args.kill_helper, caller=CALLER)
    return x**3 + offset


results = Parallel(n_jobs=args.n_jobs, backend="laufband")(
    delayed(cube)(i, offset=1) for i in range(args.items))
print(json.dumps(results))
sys.stdout.flush()
