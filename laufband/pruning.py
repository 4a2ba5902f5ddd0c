"""Which workflows ``laufband prune`` removes: untouched for long, or superseded pmap code.

Each edit of a function that ``pmap`` (or the joblib backend) runs starts a new
workflow, ``pmap-<qualname>-<digest of its code>``: the old ones stay behind, with
their results. A workflow is a candidate when no worker has touched it for a given
age, or when a newer digest of the same function exists (the newest by last activity
is kept). Workflows with an online worker are never candidates.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_DIGESTED = re.compile(r"^(?P<function>(?:pmap|joblib)-.+)-[0-9a-f]{12}$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


class Candidate(NamedTuple):
    """A workflow to remove, and why."""

    name: str
    reason: str


def parse_age(text: str) -> float:
    """Return the seconds of an age such as ``90``, ``30m``, ``12h``, ``7d`` or ``2w``.

    Raises:
        ValueError: Not an age.
    """
    found = _AGE.match(text)
    if found is None:
        msg = f"not an age: {text!r}: give a number with s, m, h, d or w (e.g. 7d, 12h)"
        raise ValueError(msg)
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def candidates(activity: list[tuple[str, float, int]], now: float, *,
               older_than: float | None, superseded: bool) -> list[Candidate]:
    """Return the workflows to remove, in the order ``activity`` lists them (oldest first).

    Args:
        activity: Each workflow's name, last activity (Unix time) and online workers.
        now: The current time.
        older_than: Remove workflows untouched for this many seconds (None: not by age).
        superseded: Remove all but the newest digest of each pmap/joblib function.
    """
    newest: dict[str, tuple[float, str]] = {}
    for name, last, _ in activity:
        found = _DIGESTED.match(name)
        if found and (found["function"] not in newest
                      or last >= newest[found["function"]][0]):
            newest[found["function"]] = (last, name)
    chosen = []
    for name, last, online in activity:
        if online:
            continue
        found = _DIGESTED.match(name)
        if superseded and found and newest[found["function"]][1] != name:
            chosen.append(Candidate(name, f"superseded by {newest[found['function']][1]}"))
        elif older_than is not None and now - last >= older_than:
            chosen.append(Candidate(name, f"untouched for {_age(now - last)}"))
    return chosen


def _age(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds >= _UNITS[unit]:
            return f"{seconds / _UNITS[unit]:.1f}{unit}"
    return f"{seconds:.0f}s"
