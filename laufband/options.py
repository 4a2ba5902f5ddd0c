"""Options: the argument wins, then ``LAUFBAND_<NAME>`` from the environment, then the default.

Every environment variable laufband reads goes through :func:`resolve`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
PREFIX = "LAUFBAND_"


def resolve(name: str, value: T | None, default: T, parse: Callable[[str], T],
            check: Callable[[T], T] | None = None) -> T:
    """Return ``value`` if given, else the parsed environment variable, else ``default``.

    ``check`` (raising ValueError) sees whichever it is; refusing the environment's
    value, its error names the variable.
    """
    checked = check or _unchecked
    if value is not None:
        return checked(value)
    variable = PREFIX + name.upper()
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return checked(default)
    try:
        parsed = parse(raw)
    except ValueError as error:
        wanted = _WANTED.get(parse, str(error))  # int's own words name no fix
        msg = f"{variable}={raw!r} is not valid ({wanted}): correct or unset {variable}"
        raise ValueError(msg) from None
    try:
        return checked(parsed)
    except ValueError as error:
        msg = f"{variable}={raw!r} is not valid ({error}): correct or unset {variable}"
        raise ValueError(msg) from None


def _unchecked(value: T) -> T:
    return value


_WANTED: dict[Callable[[str], object], str] = {int: "expected an integer",
                                               float: "expected a number"}


def parse_bool(raw: str) -> bool:
    """Parse 1/0, true/false, yes/no, on/off."""
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    msg = "expected 1 or 0, true or false, yes or no, on or off"
    raise ValueError(msg)


def parse_labels(raw: str) -> frozenset[str]:
    """Parse a comma-separated list of labels."""
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def check_count(name: str, value: int) -> int:
    """Reject counts below zero (and non-integers) with a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"{name} must be an integer >= 0, got {value!r}"
        raise ValueError(msg)
    return value


def check_heartbeat(interval: float, timeout: float) -> None:
    """Reject a heartbeat timeout shorter than two intervals.

    A live worker would be taken for dead between two of its beats, and its tasks run
    twice.
    """
    if timeout < 2 * interval:
        msg = (f"heartbeat_timeout ({timeout:g} s) must be at least twice heartbeat_interval"
               f" ({interval:g} s), or live workers are taken for dead: raise the timeout"
               " (LAUFBAND_HEARTBEAT_TIMEOUT) or shorten the interval")
        raise ValueError(msg)


def check_seconds(name: str, value: float) -> float:
    """Reject durations that are not positive numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        msg = f"{name} must be a number of seconds > 0, got {value!r}"
        raise ValueError(msg)
    return float(value)
