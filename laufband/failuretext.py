"""Describe a failure for the store: one line, the full traceback, a short repr of the item.

What ``laufband failures`` shows of a task that failed. The item's repr is taken when
a task fails, never for the tasks that succeed, and cut short: a failure row must
not hold a whole structure.
"""

from __future__ import annotations

import os
import reprlib
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

from laufband.store import FailureRecord

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 2
ITEM_CHARACTERS = 80  # a repr is cut to this many characters at most
_PACKAGE = str(Path(__file__).parent) + os.sep  # laufband's own frames lead no traceback


def short_repr(item: Any) -> str | None:
    """Return a repr of ``item`` of at most ``ITEM_CHARACTERS`` characters (None: no item)."""
    if item is None:
        return None
    try:
        text = _REPR.repr(item)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the failure
        text = f"<{type(item).__name__} object>"
    return text if len(text) <= ITEM_CHARACTERS else text[: ITEM_CHARACTERS - 3] + "..."


def one_line(error: BaseException) -> str:
    """Return ``Type: message`` of an exception."""
    return f"{type(error).__name__}: {error}"


def failure_record(seq: int, error: BaseException | None, item: Any = None,
                   text: str | None = None) -> FailureRecord:
    """Describe the failure of task ``seq``: ``error`` with its traceback, or ``text``."""
    if error is None:
        return FailureRecord(seq, text or "", "", short_repr(item))
    trace = "".join(traceback.format_exception(type(error), error, _users(error)))
    return FailureRecord(seq, text or one_line(error), trace, short_repr(item))


def _users(error: BaseException) -> TracebackType | None:
    """Return the traceback from the user's first frame (``worker.catch()`` is ours)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None \
            and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        tb = tb.tb_next
    return tb
