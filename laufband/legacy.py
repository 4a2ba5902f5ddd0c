"""State the original laufband (0.2.x) left behind: this version does not read it, so say so.

The original package kept its progress in ``laufband.sqlite`` (Laufband) and
``graphband.sqlite`` (Graphband) in the working directory. A user who switches to this
version and runs the same script again would otherwise see every item run again,
without a word about why.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path

from laufband.errors import OriginalStateWarning

ORIGINAL_FILES = ("laufband.sqlite", "graphband.sqlite")
_PACKAGE = str(Path(__file__).absolute().parent) + os.sep

_warned: set[str] = set()  # directories warned about in this process (and forked children)
_warned_lock = threading.Lock()


def warn_about_original_state(directory: Path) -> None:
    """Warn once per process and directory if the original laufband's state is there.

    Emits one :class:`OriginalStateWarning` naming ``laufband.sqlite`` and/or
    ``graphband.sqlite`` when either exists in ``directory``. Costs two ``stat`` calls,
    none once this directory was warned about.

    Args:
        directory: Where the original laufband kept its files (its working directory).
    """
    try:
        # abspath, not resolve: the directory as the user named it, symlinks kept
        key = os.path.abspath(directory)  # noqa: PTH100
    except OSError:  # the working directory was removed: nothing to find there
        return
    if key in _warned:
        return
    found = [name for name in ORIGINAL_FILES if (Path(key) / name).exists()]
    if not found:
        return
    with _warned_lock:  # two threads finding the files at once: one warning
        if key in _warned:
            return
        _warned.add(key)
    files = " and ".join(found)
    msg = (f"{files} in {key!r} {'were' if len(found) > 1 else 'was'} written by the original"
           " laufband (0.2.x), whose progress this version does not read, so every item runs"
           " again here: finish those runs with the original laufband, or delete or move"
           f" {files} (and {'their' if len(found) > 1 else 'its'} .lock file) to silence this")
    warnings.warn(msg, OriginalStateWarning, stacklevel=user_stacklevel())


def user_stacklevel() -> int:
    """Return the ``stacklevel`` of the innermost frame outside laufband.

    A warning issued by the caller of this function with it points at the user's line
    (a loop, a pmap call), wherever in laufband it was issued.
    """
    frame = sys._getframe(1)  # noqa: SLF001 - the function that warns; cheap, unlike inspect
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


# Arguments of the original's constructors that this version replaced, and with what.
REPLACED = {
    "db": "laufband keeps its state in a directory: pass path= (default ./.laufband,"
          " or LAUFBAND_PATH)",
    "db_lock": "one file lock in the state directory guards it: drop db_lock=, or pass"
               " lock='soft' where flock does not work",
    "graph_fn": "pass the tasks as the first argument: Graphband(tasks)",
}


# ... and of its Monitor(lock=, db=), which read that one SQLite file.
MONITOR_REPLACED = {
    "db": "laufband keeps its state in a directory: pass path=, the state directory"
          " (default ./.laufband)",
    "lock": "the state directory has its own lock: pass path=, the state directory"
            " (default ./.laufband)",
}


def refuse_replaced(owner: str, arguments: dict[str, object],
                    replaced: dict[str, str] = REPLACED) -> None:
    """Raise one TypeError naming the replacement of an argument of laufband 0.2.x.

    An argument nobody knows gets the usual TypeError.
    """
    for name in arguments:
        if name in replaced:
            msg = f"{name}= is from laufband 0.2.x: {replaced[name]} (see docs/migrating.md)"
        else:
            msg = f"{owner} got an unexpected keyword argument {name!r}"
        raise TypeError(msg)
