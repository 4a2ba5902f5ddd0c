"""Kill a first worker at chosen steps of creating the state; check the next one finishes.

Usage::

    creation_killer.py ROOT count          print how many steps creation takes
    creation_killer.py ROOT N [N ...]      one trial per N in ROOT/nN/state

A step is a Python line run in the laufband package or a SQLite VM step of any
connection (a progress handler on each, so a kill can land inside ``executescript``
or a ``COMMIT``). Creation starts with the first line of the store (``store.py`` or the
``store/`` package) and ends when ``Store.transaction`` first enters its body (the
database is open, with its schema, and locked): named by public API only, so the
store's internals may be arranged as they like.

In a trial, a forked child runs a Laufband loop over 20 items and SIGKILLs itself at
step N; then another forked child, the next worker, must run all 20 items in the
same directory and find the database sound. Forking from this one process, which
imported laufband once and runs no threads, makes a trial cost ~50 ms instead of two
interpreter start-ups. Prints one line per failed trial: ``N<TAB>what went wrong``.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import laufband
from laufband import Laufband
from laufband.store import Store

PACKAGE = str(Path(laufband.__file__).resolve().parent) + os.sep
STORE = (os.sep + "store.py", os.sep + "store" + os.sep)  # the module, or the package


@functools.cache
def in_store(filename: str) -> bool:
    """Whether ``filename`` (a file of the laufband package) belongs to its store."""
    inside = os.path.realpath(filename)[len(PACKAGE) - 1:]  # from the separator on
    return inside == STORE[0] or inside.startswith(STORE[1])
ITEMS = 20


class Killer:
    """Counts the steps of creation; SIGKILLs the process at step ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.counting = False  # from the store's first line to its first transaction
        self.done = False
        self._ours: dict[str, bool] = {}  # file name -> inside the laufband package

    def step(self) -> None:
        """One more step; the ``limit``-th one kills us."""
        if not self.counting:
            return
        self.count += 1
        if self.count >= self.limit:
            os.kill(os.getpid(), signal.SIGKILL)

    def progress(self) -> int:
        """SQLite progress handler: count a VM step, never interrupt the statement."""
        self.step()
        return 0

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        """Global trace function: line-trace only frames of laufband's own files."""
        if self.done:
            return None
        name = frame.f_code.co_filename
        ours = self._ours.get(name)
        if ours is None:
            ours = self._ours[name] = os.path.realpath(name).startswith(PACKAGE)
        if ours and not self.counting and in_store(name):
            self.counting = True  # the store begins: creation starts here
        return self._line if ours else None

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.step()
        elif (event == "return" and frame.f_code.co_name == "transaction"
              and in_store(frame.f_code.co_filename)):  # its generator yields the body
            self.counting, self.done = False, True  # creation is over
        return None if self.done else self._line


def install(killer: Killer) -> None:
    """Count laufband's lines and the VM steps of every new SQLite connection."""
    connect = sqlite3.connect

    def counted_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_progress_handler(killer.progress, 1)
        return conn

    sqlite3.connect = counted_connect  # type: ignore[assignment]
    sys.settrace(killer.trace)


def run_loop(state: Path) -> list[int]:
    """A plain worker: the items it ran."""
    return list(Laufband(list(range(ITEMS)), path=state, name="work",
                         tqdm_kwargs={"disable": True}))


def in_child(body: Any) -> tuple[int, str]:
    """Run ``body()`` in a forked child; return (wait status, what it wrote)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read)
        code = 0
        try:
            message = body() or ""
        except BaseException:  # noqa: BLE001 - reported to the parent
            message, code = traceback.format_exc(limit=-1).strip().splitlines()[-1], 1
        os.write(write, message.encode())
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return status, text


def count(root: Path) -> int:
    """How many steps creation takes (a killer that never reaches its limit)."""
    def body() -> str:
        killer = Killer(10**15)
        install(killer)
        run_loop(root / "count" / "state")
        return str(killer.count)

    status, text = in_child(body)
    assert os.waitstatus_to_exitcode(status) == 0, text
    return int(text)


def trial(root: Path, step: int) -> str | None:
    """Kill the first worker at ``step``; None if the next worker then finishes."""
    state = root / f"n{step}" / "state"

    def first() -> str:
        install(Killer(step))
        run_loop(state)
        return "never reached its kill step"

    def second() -> str:
        done = run_loop(state)
        if done != list(range(ITEMS)):
            return f"the next worker ran {done}"
        store = Store(state)
        with store.transaction() as tx:
            check = tx.integrity()
        return "" if check == "ok" else f"integrity check: {check}"

    status, text = in_child(first)
    if not os.WIFSIGNALED(status) or os.WTERMSIG(status) != signal.SIGKILL:
        return f"the first worker was not killed: {text}"
    status, text = in_child(second)
    if os.waitstatus_to_exitcode(status) != 0 or text:
        return text or f"the next worker ended with status {status}"
    return None


def main() -> int:
    root = Path(sys.argv[1])
    if sys.argv[2] == "count":
        print(count(root))
        return 0
    for step in map(int, sys.argv[2:]):
        failure = trial(root, step)
        if failure:
            print(f"{step}\t{failure}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
