"""Describe a failure for the store: one line, the full traceback, a short repr of the item.

What ``laufband failures`` shows of a task that failed. The item's repr is taken when
a task fails, never for the tasks that succeed, and cut short: a failure row must
not hold a whole structure. The user's exception may hold anything: a message with
lone surrogates (a file name that is not UTF-8) is stored with them escaped, a
``__str__`` that raises is named as Python's traceback names it, and texts are cut to
``ERROR_CHARACTERS`` and ``TRACEBACK_CHARACTERS``: a worker never fails on what it
reports.
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
ERROR_CHARACTERS = 1000  # the "Type: message" line is cut to this many characters
TRACEBACK_CHARACTERS = 64 * 1024  # a traceback keeps its start and end, this much in all
UNPRINTABLE = "<exception str() failed>"  # a message whose __str__ raised, as traceback says
_PACKAGE = str(Path(__file__).parent) + os.sep  # laufband's own frames lead no traceback


def short_repr(item: Any) -> str | None:
    """Return a repr of ``item`` of at most ``ITEM_CHARACTERS`` characters (None: no item)."""
    if item is None:
        return None
    try:
        text = _REPR.repr(item)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the failure
        text = f"<{type(item).__name__} object>"
    text = storable(text)
    return text if len(text) <= ITEM_CHARACTERS else text[: ITEM_CHARACTERS - 3] + "..."


def one_line(error: BaseException) -> str:
    """Return ``Type: message`` of an exception (storable, at most ``ERROR_CHARACTERS``)."""
    try:
        message = str(error)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure
        message = UNPRINTABLE
    return _cut(storable(f"{type(error).__name__}: {message}"))


def failure_record(seq: int, error: BaseException | None, item: Any = None,
                   text: str | None = None, trace: str | None = None) -> FailureRecord:
    """Describe the failure of task ``seq``: ``error`` with its traceback, or ``text``.

    ``trace`` is the traceback when the caller formatted it already.
    """
    line = _cut(storable(text)) if text else ""
    if error is None:
        return FailureRecord(seq, line, "", short_repr(item))
    if trace is None:
        try:
            trace = "".join(traceback.format_exception(type(error), error, _users(error)))
        except Exception:  # noqa: BLE001 - whatever the exception holds, report it
            trace = ""
    return FailureRecord(seq, line or one_line(error), _cut_traceback(storable(trace)),
                         short_repr(item))


def storable(text: str) -> str:
    r"""Return ``text`` as UTF-8 can hold it: lone surrogates escaped (``\udce9``)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cut(line: str) -> str:
    if len(line) <= ERROR_CHARACTERS:
        return line
    tail = f"... ({len(line):,} characters in all)"
    return line[: ERROR_CHARACTERS - len(tail)] + tail


def _cut_traceback(trace: str) -> str:
    """Keep where it started and what was raised; say how much is left out between."""
    if len(trace) <= TRACEBACK_CHARACTERS:
        return trace
    keep = (TRACEBACK_CHARACTERS - 100) // 2  # the note takes less than 100
    note = f"\n... ({len(trace) - 2 * keep:,} characters of the traceback left out) ...\n"
    return trace[:keep] + note + trace[len(trace) - keep:]


def _users(error: BaseException) -> TracebackType | None:
    """Return the traceback from the user's first frame (``worker.catch()`` is ours)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None \
            and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        tb = tb.tb_next
    return tb
