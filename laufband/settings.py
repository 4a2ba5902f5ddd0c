"""Read a worker's settings.

A worker's settings: each option from its argument, ``LAUFBAND_<OPTION>`` or its
default (see :mod:`laufband.options`), checked once when the worker is made.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from laufband import mpi
from laufband.liveness import HOST
from laufband.options import (
    check_count,
    check_heartbeat,
    check_seconds,
    parse_bool,
    parse_labels,
    resolve,
)
from laufband.store import StateDirectory
from laufband.task import check_timeout

_identifiers = itertools.count()
HEARTBEAT_TIMEOUT = 30.0  # default seconds of silence before a worker is taken for dead
MAX_KILLED_RETRIES = 1  # default re-runs of a task whose worker died


class WorkerSettings(NamedTuple):
    """Every option of a worker, resolved and checked."""

    state: StateDirectory
    name: str
    identifier: str
    labels: frozenset[str]
    max_killed_retries: int
    max_failed_retries: int
    heartbeat_interval: float
    heartbeat_timeout: float
    disabled: bool
    user_lock: Any  # a lock object given as lock=, else None
    soft_lock: bool
    failure_policy: str
    rank: int | None  # MPI rank, None outside MPI
    expected_workers: int  # workers known to come: every MPI rank, or pmap's helpers
    timeout: float | None  # seconds a task may run (None: no limit)
    retry_delay: float  # seconds before a failed task's first retry, doubling after


def resolve_settings(  # noqa: PLR0913 - one argument per option of Graphband
    *,
    path: str | os.PathLike[str] | None,
    name: str | None,
    identifier: str | Callable[[], str] | None,
    labels: Iterable[str] | None,
    max_killed_retries: int | None,
    max_failed_retries: int | None,
    heartbeat_interval: float | None,
    heartbeat_timeout: float | None,
    disabled: bool | None,
    lock: str | AbstractContextManager[Any] | None,
    failure_policy: str | None,
    expected_workers: int | None,
    timeout: float | None = None,
    retry_delay: float | None = None,
) -> WorkerSettings:
    """Resolve and check the options of a worker (argument, environment, default)."""
    if callable(identifier):  # as in laufband 0.2.x: a function naming the worker
        identifier = identifier()
    interval = resolve("heartbeat_interval", heartbeat_interval, 10.0, float,
                       partial(check_seconds, "heartbeat_interval"))
    silence = resolve("heartbeat_timeout", heartbeat_timeout, HEARTBEAT_TIMEOUT, float,
                      partial(check_seconds, "heartbeat_timeout"))
    check_heartbeat(interval, silence)
    found = mpi.rank_and_size()
    rank, size = found or (None, 1)
    return WorkerSettings(
        state=StateDirectory.resolve(path),
        name=resolve("name", name, _script_name(), str),
        identifier=resolve("identifier", identifier, None, str) or _default_identifier(rank),
        labels=frozenset(resolve("labels", labels, frozenset(), parse_labels)),
        max_killed_retries=resolve("max_killed_retries", max_killed_retries,
                                   MAX_KILLED_RETRIES, int,
                                   partial(check_count, "max_killed_retries")),
        max_failed_retries=resolve("max_failed_retries", max_failed_retries, 0, int,
                                   partial(check_count, "max_failed_retries")),
        heartbeat_interval=interval,
        heartbeat_timeout=silence,
        disabled=resolve("disabled", disabled, False, parse_bool),
        user_lock=None if lock is None or isinstance(lock, str) else lock,
        soft_lock=_lock_kind(
            resolve("lock", lock if isinstance(lock, str) else None, "file", str)) == "soft",
        failure_policy=_failure_policy(
            resolve("failure_policy", failure_policy, "continue", str)),
        rank=rank,
        expected_workers=max(size, expected_workers or 1),
        timeout=resolve("timeout", timeout, None, float, partial(check_timeout, "timeout")),
        retry_delay=resolve("retry_delay", retry_delay, 0.0, float, check_delay),
    )


def check_delay(delay: float) -> float:
    """Return ``delay`` in seconds; refuse anything but a number >= 0."""
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) \
            or not 0 <= delay < math.inf:  # inf: a failed task would be waited for forever
        msg = (f"retry_delay must be a finite number of seconds >= 0 (0: retry at once), got"
               f" {delay!r}")
        raise ValueError(msg)
    return float(delay)


def _lock_kind(kind: str) -> str:
    if kind.lower() not in ("file", "soft"):
        msg = (f"lock must be 'file', 'soft' or a lock object such as filelock.FileLock,"
               f" got {kind!r}")
        raise ValueError(msg)
    return kind.lower()


def _failure_policy(policy: str) -> str:
    if policy not in ("continue", "stop"):
        msg = f"failure_policy must be 'continue' or 'stop', got {policy!r}"
        raise ValueError(msg)
    return policy


def _script_name() -> str:
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    return script if script and script not in ("-c", "-m") else "default"


def _default_identifier(rank: int | None) -> str:
    # The random part: containers that share a host name but not pids all run pid 1.
    rank_part = f"-rank{rank}" if rank is not None else ""
    return f"{HOST}-{os.getpid()}{rank_part}-{secrets.token_hex(3)}-{next(_identifiers)}"
