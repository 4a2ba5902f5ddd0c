"""Which workflows ``laufband prune`` removes: untouched for long, or superseded pmap code.

Each edit of a function that ``pmap`` (or the joblib backend) runs starts a new
workflow, ``pmap-<qualname>-<digest of its code>``: the old ones stay behind, with
their results. A workflow is a candidate when it was not used for a given age (no
worker touched it, no call opened it), or when a digest of the same function was
used more recently (the one used last is kept: the code in use now, even if a call
of it found every result stored); with both criteria, when both hold. Workflows with
an online worker are never candidates.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_DIGESTED = re.compile(r"^(?P<function>(?:pmap|joblib)-.+)-[0-9a-f]{12}$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


class Candidate(NamedTuple):
    """A workflow to remove, and why."""

    name: str
    reason: str


def parse_age(text: str) -> float:
    """Return the seconds of an age such as ``90s``, ``30m``, ``12h``, ``7d`` or ``2w``.

    Raises:
        ValueError: Not an age (no unit, or not above 0).
    """
    found = _AGE.match(text)
    if found is None or float(found.group(1)) <= 0:
        msg = (f"not an age: {text!r}: give a number above 0 with a unit, s, m, h, d or w"
               " (e.g. 7d, 12h, 90s)")
        raise ValueError(msg)
    return float(found.group(1)) * _UNITS[found.group(2)]


def candidates(activity: list[tuple[str, float, int]], now: float, *,
               older_than: float | None, superseded: bool) -> list[Candidate]:
    """Return the workflows to remove, in the order ``activity`` lists them (oldest first).

    Args:
        activity: Each workflow's name, last activity (Unix time) and online workers.
        now: The current time.
        older_than: Remove workflows unused for this many seconds (None: not by age).
        superseded: Remove all but the digest used last of each pmap/joblib function.
            With ``older_than`` too: those of them unused for that long.
    """
    newest: dict[str, tuple[float, str]] = {}
    for name, last, _ in activity:
        found = _DIGESTED.match(name)
        if found and (found["function"] not in newest
                      or last >= newest[found["function"]][0]):
            newest[found["function"]] = (last, name)
    chosen = []
    for name, last, online in activity:
        found = _DIGESTED.match(name)
        reasons = []
        if superseded:
            if not found or newest[found["function"]][1] == name:
                continue
            reasons.append(f"superseded by {newest[found['function']][1]}")
        if older_than is not None:
            if now - last < older_than:
                continue
            reasons.append(f"unused for {_age(now - last)}")
        if not online:
            chosen.append(Candidate(name, ", ".join(reasons)))
    return chosen


def _age(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds >= _UNITS[unit]:
            return f"{seconds / _UNITS[unit]:.1f}{unit}"
    return f"{seconds:.0f}s"
