"""A Laufband worker over named structures whose chosen items fail, each with its own message.

Usage: catch_worker.py STATE --items N --fail-on I J ...  Item i is the string
``structure-{i:03d}``; a failing one raises RuntimeError("SCF did not converge for
structure-... after {i * 7} steps") inside ``worker.catch()``, so the loop goes on.
"""

from __future__ import annotations

import argparse

from laufband import Laufband


def converge(item: str, index: int) -> None:
    msg = f"SCF did not converge for {item} after {index * 7} steps"
    raise RuntimeError(msg)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state")
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--fail-on", type=int, nargs="*", default=[])
    args = parser.parse_args()
    items = [f"structure-{i:03d}" for i in range(args.items)]
    worker = Laufband(items, path=args.state, name="structures", tqdm_kwargs={"disable": True})
    for index, item in enumerate(worker):
        with worker.catch():
            if index in args.fail_on:
                converge(item, index)


if __name__ == "__main__":
    main()
