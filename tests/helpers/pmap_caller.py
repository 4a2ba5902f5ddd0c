"""Call pmap over range(FIRST, FIRST + N, STEP) with a function that logs every computation.

Each computation appends the item to LOGS/<pid>.done. Options:
  --items N, --first FIRST, --step STEP   the items (default range(20))
  --sleep S            seconds each item takes
  --kill-helper        the first helper (not the caller) to get an item SIGKILLs itself
  --n N                workers
  --progress           draw pmap's progress bar (on stderr)
Prints the result list as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from computation import compute  # beside this script

from laufband import pmap


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state")
    parser.add_argument("logs")
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--step", type=int, default=1)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--kill-helper", action="store_true")
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--start-method", default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    logs = Path(args.logs)
    logs.mkdir(exist_ok=True)
    caller = os.getpid()

    def square(x: int) -> int:
        compute(x, logs, args.sleep, kill_helper=args.kill_helper, caller=caller)
        return x * x

    items = range(args.first, args.first + args.items * args.step, args.step)
    results = pmap(square, items, n=args.n, path=args.state, name="squares",
                   progress=args.progress, start_method=args.start_method)
    print(json.dumps(results))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
