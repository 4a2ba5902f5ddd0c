"""The reader: views of a state directory that write nothing there, not even a lock.

``laufband status``, ``watch``, ``failures`` and ``results`` read through it, so they
work on a directory the user can only read (a colleague's, a finished job's copy)
and never migrate or touch one::

    state.lock  opened read-only; a shared flock keeps writers out while we read
                (writers hold it exclusively for every transaction)
    state.db    opened with SQLite's mode=ro; an older schema is read as it is

No holder record is written and no file created: a directory without ``state.lock``
(no worker ever ran there) is read under SQLite's own locks alone.
"""

from __future__ import annotations

import errno
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from laufband.errors import StateError
from laufband.store.base import KeyCache
from laufband.store.lock import POLL_FIRST, POLL_LAST, read_holder, stuck_message
from laufband.store.schema import foreign_error, open_read_only
from laufband.store.transaction import Transaction

if TYPE_CHECKING:
    from laufband.store.layout import StateDirectory


class ReadLock:
    """A shared flock of ``state.lock`` on a read-only descriptor: writers wait meanwhile."""

    def __init__(self, state: StateDirectory) -> None:
        self.state = state
        self._fd = -1

    def acquire(self, patience: float) -> None:
        """Take the shared lock; give up naming the holder once one keeps it ``patience`` s.

        Raises:
            StateError: One holder kept the lock ``patience`` seconds.
        """
        try:
            self._fd = os.open(self.state.state_lock, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return  # no worker ever took it: SQLite's own locks suffice
        except OSError as error:
            msg = (f"cannot read the state lock {str(self.state.state_lock)!r}"
                   f" ({error.strerror}): check the directory's permissions")
            raise StateError(msg, path=self.state.state_lock) from None
        import fcntl  # POSIX only, like the writers' flock (lock.py)

        delay, first, since = POLL_FIRST, read_holder(self.state), time.monotonic()
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in {errno.EAGAIN, errno.EACCES}:
                    return  # a filesystem without flock: read under SQLite's locks
            else:
                return
            holder = read_holder(self.state)
            if holder != first:
                first, since = holder, time.monotonic()  # the lock moves: keep waiting
            elif time.monotonic() - since >= patience:
                self.release()
                raise StateError(stuck_message(self.state.path, holder), path=self.state.path)
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, POLL_LAST)

    def release(self) -> None:
        """Let writers in again."""
        if self._fd >= 0:
            with suppress(OSError):
                os.close(self._fd)  # closing the descriptor drops its flock
            self._fd = -1


class StateReader:
    """Read transactions on a state directory that exists, writing nothing there.

    Args:
        state: The state directory (``StateDirectory.find`` found its database).
        patience: Give up when one writer holds the lock this many seconds.
    """

    def __init__(self, state: StateDirectory, patience: float) -> None:
        self.state = state
        self.path = state.path
        self._patience = patience
        self._lock = ReadLock(state)
        self._conn: sqlite3.Connection | None = None
        self._keys = KeyCache()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Read consistently: the enclosed views see one state of the database.

        Raises:
            StateError: The database cannot be read, is not laufband's, of another
                schema version, or a writer holds the lock too long.
        """
        self._lock.acquire(self._patience)
        try:
            if self._conn is None:
                self._conn = open_read_only(self.state)
            conn = self._conn
            try:
                conn.execute("BEGIN")
                yield Transaction(conn, self.state, self._keys)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # nothing to keep: a reader wrote nothing
        except sqlite3.DatabaseError as error:
            self._keys.clear()
            if type(error) is sqlite3.DatabaseError:
                raise foreign_error(self.state, error) from None
            msg = f"cannot read {self.state.database} ({error}): check its permissions"
            raise StateError(msg, path=self.state.database) from None
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
