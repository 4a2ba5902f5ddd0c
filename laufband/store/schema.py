"""The database: its schema, its version, and opening it safely.

SQLite from the standard library with the classic rollback journal: WAL needs shared
memory, which NFS does not have. A ``schema_version`` row in ``meta``; a file of
another version (or no laufband database at all) gives one clear error line.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import urllib.parse

from laufband.errors import StateError
from laufband.store.layout import FILE_MODE, StateDirectory, refuse_symlink

# 3: workflow and worker numbers are never reused (AUTOINCREMENT): a worker still
# running after ``laufband reset`` must not write into the new workflow's rows.
# 4: the fingerprint digests every item (a BLOB); tasks keep the user's info.
# 5: keys live in key blocks only (no tasks.key): one mapping for every keyed
# workflow; workers.current is a task number.
# 6: runs: claims and completions of tasks without rows, as ranges. A version-5 file
# gains the table on open (it has no runs yet); version 5 cannot read version 6.
# 7: failures: every failure and death of a task while it stays failed (error text,
# traceback, worker, host, attempt); samples: completions over the last minute, for
# rates. Older files gain both on open, failures filled from their events.
# 8: tasks.priority, .fingerprint, .not_before (a retry's earliest claim);
# workflows.prioritized, .delayed and .invalidated; deps indexed by dependency (a
# changed fingerprint re-runs the tasks depending on it). Older files gain the
# columns on open; the reader sees them as views over what an older file has.
SCHEMA_VERSION = 8

_RUNS = """
CREATE TABLE runs(
    wf INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL, worker INTEGER,
    state TEXT NOT NULL, PRIMARY KEY (wf, lo)) WITHOUT ROWID;
CREATE INDEX runs_by_worker ON runs(worker, state);
"""

_FAILURES = """
CREATE TABLE failures(
    id INTEGER PRIMARY KEY, wf INTEGER NOT NULL, seq INTEGER NOT NULL,
    state TEXT NOT NULL, outcome TEXT NOT NULL, attempt INTEGER, retry INTEGER,
    retries INTEGER, error TEXT, traceback TEXT, item TEXT, worker INTEGER, host TEXT,
    time REAL NOT NULL);
CREATE INDEX failures_by_wf ON failures(wf);
CREATE INDEX failures_by_task ON failures(wf, seq);
CREATE TABLE samples(
    wf INTEGER NOT NULL, slot INTEGER NOT NULL, time REAL NOT NULL,
    completed INTEGER NOT NULL, PRIMARY KEY (wf, slot)) WITHOUT ROWID;
"""
# What an older file knew of the failures of tasks that are still failed or killed.
_FAILURES_FROM_EVENTS = """
INSERT INTO failures(wf, seq, state, outcome, error, worker, host, time)
SELECT e.wf, e.seq, e.state, t.state, e.error, e.worker, w.host, e.time FROM events e
JOIN tasks t ON t.wf = e.wf AND t.seq = e.seq LEFT JOIN workers w ON w.id = e.worker
WHERE e.state IN ('failed', 'killed') AND t.state IN ('failed', 'killed') ORDER BY e.id;
"""
# Tables each older version lacks, oldest first.
_MISSING = {"5": _RUNS + _FAILURES, "6": _FAILURES, "7": ""}
# Columns version 8 added: (table, column, declaration).
_COLUMNS = (("tasks", "priority", "INTEGER NOT NULL DEFAULT 0"),
            ("tasks", "fingerprint", "BLOB"),
            ("tasks", "not_before", "REAL"),
            ("workflows", "prioritized", "INTEGER NOT NULL DEFAULT 0"),
            ("workflows", "delayed", "INTEGER NOT NULL DEFAULT 0"),
            ("workflows", "invalidated", "INTEGER NOT NULL DEFAULT 0"))
_DEPS_INDEX = "CREATE INDEX IF NOT EXISTS deps_by_dep ON deps(wf, dep);"

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE workflows(
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, keyed INTEGER NOT NULL,
    total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0,
    running INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    killed INTEGER NOT NULL DEFAULT 0, blocked INTEGER NOT NULL DEFAULT 0,
    floor INTEGER NOT NULL DEFAULT 0, simple INTEGER NOT NULL DEFAULT 1,
    materialized INTEGER NOT NULL DEFAULT 0,
    fingerprint BLOB, created REAL NOT NULL,
    prioritized INTEGER NOT NULL DEFAULT 0, delayed INTEGER NOT NULL DEFAULT 0,
    invalidated INTEGER NOT NULL DEFAULT 0);
CREATE TABLE tasks(
    wf INTEGER NOT NULL, seq INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', worker INTEGER,
    kills INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    max_workers INTEGER NOT NULL DEFAULT 1, requirements TEXT, info TEXT,
    priority INTEGER NOT NULL DEFAULT 0, fingerprint BLOB, not_before REAL,
    PRIMARY KEY (wf, seq)) WITHOUT ROWID;
CREATE TABLE deps(
    wf INTEGER NOT NULL, seq INTEGER NOT NULL, dep INTEGER NOT NULL,
    PRIMARY KEY (wf, seq, dep)) WITHOUT ROWID;
CREATE TABLE holders(
    wf INTEGER NOT NULL, seq INTEGER NOT NULL, worker INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (wf, seq, worker)) WITHOUT ROWID;
CREATE TABLE workers(
    id INTEGER PRIMARY KEY AUTOINCREMENT, identifier TEXT NOT NULL UNIQUE, wf INTEGER,
    host TEXT, pid INTEGER, token TEXT, rank INTEGER, labels TEXT, current INTEGER,
    state TEXT NOT NULL, beat INTEGER NOT NULL DEFAULT 0, seen REAL,
    started REAL, done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE key_blocks(
    wf INTEGER NOT NULL, first INTEGER NOT NULL, count INTEGER NOT NULL,
    named INTEGER NOT NULL, keys BLOB NOT NULL,
    PRIMARY KEY (wf, first)) WITHOUT ROWID;
CREATE TABLE result_chunks(
    id INTEGER PRIMARY KEY, wf INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    payload BLOB NOT NULL);
CREATE INDEX result_chunks_by_wf ON result_chunks(wf, lo);
CREATE TABLE events(
    id INTEGER PRIMARY KEY, wf INTEGER, seq INTEGER, worker INTEGER,
    state TEXT NOT NULL, time REAL NOT NULL, error TEXT);
""" + _RUNS + _FAILURES + _DEPS_INDEX


def open_database(state: StateDirectory) -> sqlite3.Connection:
    """Open the database, creating its schema when it has none (call it under the lock).

    Raises:
        StateError: The file is a symlink, not a laufband database, of another schema
            version, or cannot be written.
    """
    refuse_symlink(state.database)
    refuse_symlink(state.journal)
    try:
        # Created 0600 before SQLite opens it (its journal takes the same mode).
        os.close(os.open(state.database, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE))
        conn = sqlite3.connect(state.database, isolation_level=None, timeout=60.0)
        # A rollback journal (WAL needs shared memory, which NFS lacks), kept
        # between transactions: creating and deleting it costs ~20 % per commit.
        conn.execute("PRAGMA journal_mode = PERSIST")
        # Empty, not missing: a first worker killed while creating the schema
        # leaves an empty file (SQLite rolls a hot journal back on open), which
        # the next worker completes. Schema and version commit together.
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
            conn.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} INSERT INTO meta VALUES ('schema_version',"
                f" '{SCHEMA_VERSION}'); COMMIT;"
            )
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and row[0] in _MISSING:
            _migrate(conn, row[0])
            row = (str(SCHEMA_VERSION),)
    except sqlite3.OperationalError as error:
        # "no such table": a SQLite file of someone else's; the rest (full, read-only,
        # I/O errors) says the directory does not take writes.
        raise (foreign_error(state, error) if "no such" in str(error)
               else write_error(state, error)) from None
    except sqlite3.DatabaseError as error:
        raise foreign_error(state, error) from None
    except OSError as error:
        raise write_error(state, error) from None
    if row is None or row[0] != str(SCHEMA_VERSION):
        conn.close()
        raise version_error(state, row[0] if row else "none")
    return conn


def open_read_only(state: StateDirectory) -> sqlite3.Connection:
    """Open the database for reading only: nothing in the directory is written or created.

    An older file is read as it is: the tables it lacks are temporary ones of this
    connection (failures filled from its events), never written to the file.

    Raises:
        StateError: The file is a symlink, not a laufband database, or of a newer or
            unknown schema version.
    """
    refuse_symlink(state.database)
    uri = "file:" + urllib.parse.quote(str(state.database)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60.0)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and row[0] in _MISSING:
            _read_as_current(conn, row[0])
            row = (str(SCHEMA_VERSION),)
    except sqlite3.OperationalError as error:
        if "no such" in str(error):
            raise foreign_error(state, error) from None
        msg = f"cannot read {state.database} ({error}): check its permissions, or pass another path"
        raise StateError(msg, path=state.database) from None
    except sqlite3.DatabaseError as error:
        raise foreign_error(state, error) from None
    if row is None or row[0] != str(SCHEMA_VERSION):
        conn.close()
        raise version_error(state, row[0] if row else "none")
    return conn


def _missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """Return the columns of version 8 that an older file lacks."""
    have = {table: {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for table in ("tasks", "workflows")}  # fixed names
    return [column for column in _COLUMNS if column[1] not in have[column[0]]]


def _migrate(conn: sqlite3.Connection, version: str) -> None:
    """Bring an older file to this version in one transaction (under the state lock)."""
    added = "".join(f"ALTER TABLE {table} ADD COLUMN {name} {declaration};"
                    for table, name, declaration in _missing_columns(conn))
    failures = _FAILURES_FROM_EVENTS if version in ("5", "6") else ""
    conn.executescript(f"BEGIN IMMEDIATE; {_MISSING[version]} {failures} {added}"
                       f" {_DEPS_INDEX} UPDATE meta SET value = '{SCHEMA_VERSION}'"
                       " WHERE key = 'schema_version'; COMMIT;")


def _read_as_current(conn: sqlite3.Connection, version: str) -> None:
    """Let a read-only connection read an older file as this version, writing nothing.

    Tables it lacks are temporary ones of this connection (failures filled from its
    events); tables lacking columns are shadowed by temporary views that add them
    with their defaults (SQLite looks names up in ``temp`` first).
    """
    for statement in _MISSING[version].split(";"):
        if statement.strip().startswith("CREATE TABLE"):
            conn.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
    if version in ("5", "6"):
        conn.execute(_FAILURES_FROM_EVENTS.replace("INTO failures", "INTO temp.failures"))
    missing: dict[str, list[str]] = {}
    for table, name, declaration in _missing_columns(conn):
        default = declaration.split("DEFAULT ")[1] if "DEFAULT" in declaration else "NULL"
        missing.setdefault(table, []).append(f"{default} AS {name}")
    for table, columns in missing.items():  # fixed names
        conn.execute(f"CREATE TEMP VIEW {table} AS SELECT *, {', '.join(columns)}"
                     f" FROM main.{table}")


def version_error(state: StateDirectory, found: str) -> StateError:
    """Return the error for a database of a schema version this laufband cannot use."""
    msg = (
        f"{state.database} has schema version {found}, this laufband reads version"
        f" {SCHEMA_VERSION}: use the laufband version that wrote it, or another path="
    )
    return StateError(msg, path=state.database)


def foreign_error(state: StateDirectory, error: sqlite3.DatabaseError) -> StateError:
    """Return the error for a database file that is not laufband's (or was overwritten)."""
    msg = (
        f"{state.database} is not a laufband state database ({error}): point path= at"
        " another directory, or move the file away if it is yours to discard"
    )
    return StateError(msg, path=state.database)


def write_error(state: StateDirectory, error: BaseException) -> StateError:
    """Return the error for a state directory that stopped taking writes."""
    full = "full" in str(error) or getattr(error, "errno", None) == errno.ENOSPC
    what = "the disk is full" if full else f"the state cannot be written ({error})"
    msg = (f"{what} in {state.path}: free space or fix the directory, then run again;"
           " tasks this worker had not yet recorded as finished will run again")
    return StateError(msg, path=state.path)
