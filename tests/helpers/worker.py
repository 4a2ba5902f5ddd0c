"""A configurable Laufband worker for multi-process tests.

Writes each item's id to LOG/<pid>.start before the body runs and to
LOG/<pid>.done after it, one line per item (O_APPEND: lines never interleave).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from laufband import Laufband, StateError


def append(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("state")
    parser.add_argument("logs")
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--sleep-on", type=int, default=None, help="only this item sleeps")
    parser.add_argument("--fail-on", type=int, nargs="*", default=[])
    parser.add_argument("--die-on", type=int, default=None,
                        help="this item SIGKILLs the process (like a segfault)")
    parser.add_argument("--name", default="work")
    parser.add_argument("--max-killed-retries", type=int, default=None)
    parser.add_argument("--heartbeat-interval", type=float, default=None)
    args = parser.parse_args()
    logs = Path(args.logs)
    logs.mkdir(exist_ok=True)
    pid = os.getpid()
    worker = Laufband(
        list(range(args.items)), path=args.state, name=args.name,
        max_killed_retries=args.max_killed_retries,
        heartbeat_interval=args.heartbeat_interval, tqdm_kwargs={"disable": True},
    )
    while True:  # like a user re-running the script after a failure
        try:
            for item in worker:
                append(logs / f"{pid}.start", str(item))
                if args.sleep and (args.sleep_on is None or item == args.sleep_on):
                    time.sleep(args.sleep)
                if item == args.die_on:
                    os.kill(pid, signal.SIGKILL)
                if item in args.fail_on:
                    raise RuntimeError(f"item {item} fails")  # noqa: TRY301 - the body fails
                append(logs / f"{pid}.done", str(item))
        except StateError:
            raise  # the state cannot be used: retrying would loop forever
        except RuntimeError as error:
            print(error, file=sys.stderr)
            continue
        break
    return 0


if __name__ == "__main__":
    sys.exit(main())
