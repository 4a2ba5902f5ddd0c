"""The store: one process's handle on a state directory, and its transactions."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from laufband.store.base import KeyCache, Restriction
from laufband.store.layout import StateDirectory
from laufband.store.lock import StateLock
from laufband.store.schema import foreign_error, open_database, write_error
from laufband.store.transaction import Transaction


class Store:
    """One process's handle on a state directory: the lock and a connection per thread.

    Args:
        path: The state directory; created (0700) when missing.
        soft_lock: Use a lock file instead of flock (filesystems without locks).
        rank: This process's MPI rank, named when others wait for it.
        patience: Give up waiting for the lock when one holder keeps it this many
            seconds (``laufband status``); None waits as long as it takes.
    """

    def __init__(self, path: StateDirectory | str | os.PathLike[str], *, soft_lock: bool = False,
                 rank: int | None = None, patience: float | None = None) -> None:
        self.state = StateDirectory.of(path).create()
        self.path: Path = self.state.path
        self.db_path = self.state.database
        self._lock = StateLock(self.state, soft=soft_lock, rank=rank)
        self._patience = patience
        self._conns: dict[int, sqlite3.Connection] = {}  # the database opens lazily
        self._keys = KeyCache()  # key blocks unpickled so far, for every thread
        self._restriction = Restriction()  # what restrict_to allows, for every thread

    def _connection(self) -> sqlite3.Connection:
        key = threading.get_ident()
        conn = self._conns.get(key)
        if conn is None:
            conn = self._connect()
            self._conns[key] = conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        """Open the database, creating its schema when it has none (under the lock)."""
        return open_database(self.state)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Run the enclosed operations atomically under the state lock.

        Raises:
            StateError: The state directory cannot be used (see ``open_database``), or
                stopped taking writes.
        """
        committed: list[Callable[[], None]] = []
        try:
            self._lock.acquire(self._patience)
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                tx = Transaction(conn, self.state, self._keys, self._restriction)
                yield tx
                conn.execute("COMMIT")
                committed = tx.committed
            except BaseException as error:
                self._keys.clear()  # it may hold key blocks that were rolled back
                self._restriction.loaded.pop(id(conn), None)  # and temp.mine with them
                if conn.in_transaction:
                    with suppress(sqlite3.Error):  # a broken file cannot even roll back
                        conn.execute("ROLLBACK")
                if isinstance(error, (sqlite3.OperationalError, OSError)):
                    raise write_error(self.state, error) from None
                if type(error) is sqlite3.DatabaseError:  # garbage written over the file
                    raise foreign_error(self.state, error) from None
                raise
        finally:
            self._lock.release()
        for action in committed:
            action()

    def close(self) -> None:
        """Close this thread's connection."""
        conn = self._conns.pop(threading.get_ident(), None)
        if conn is not None:
            self._restriction.loaded.pop(id(conn), None)
            conn.close()
