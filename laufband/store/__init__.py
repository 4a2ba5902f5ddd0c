"""The state directory: its layout, its lock, and every transaction on its database.

Only this package speaks SQL: everything above it calls named operations
(``tx.claim``, ``tx.finish``, ``tx.register_keyed``, ``tx.reap``, ``tx.counts`` ...)
inside ``Store.transaction()``. Every transaction runs inside one ``filelock`` lock
(``state.lock``), so the database also works on shared filesystems where SQLite's
own locking is unreliable; the journal is the classic rollback journal because WAL
needs shared memory, which NFS does not have.

Modules, one concern each::

    layout.py       StateDirectory: every file and folder name, the default path,
                    LAUFBAND_PATH, permissions, symlink refusals
    lock.py         StateLock: the state lock, the line of waiting workers, its holder
    schema.py       the schema and its version; opening the database safely
    store.py        Store: a process's lock, connections and transactions
    transaction.py  Transaction: the operations below, on one connection
      keys.py         key blocks: the one mapping from task keys to task numbers
      tasks.py        workflows, registration, finish / fail / release / block
      fingerprints.py task fingerprints: what a change runs again; outdated workers
      claims.py       ready tasks and claims (by number range where possible)
      runs.py         claims and completions of tasks without rows, as ranges
      workers.py      worker records, heartbeats, reaping dead workers
      views.py        counts, progress, events, workers; retry, reset
      results.py      pmap's result chunks and unfinished tasks
      failures.py     every failure kept while its task stays failed; rate samples
    reader.py       StateReader: read-only transactions (no lock file, no writes)
    base.py, records.py   what the operations share, take and return

Task life cycle and who writes each transition::

              claim (worker)              finish (worker)
    pending ------------------> running -----------------> completed
       ^  ^                     |  |  |
       |  |  release (worker:   |  |  | fail (worker: break / exception)
       |  +--- Ctrl-C, unstarted)  |  +-------------------> failed  (retries left: pending)
       |                           |
       +-- reap (any worker) ------+----------------------> killed  (its worker died;
                                                                     kills left: pending)
    pending --(a dependency failed or was killed for good)--> blocked

Invariant: no task is ``running`` unless a worker that is online (or not yet found
dead) holds it. A worker goes offline (``set_offline``) only in the transaction that
releases what it holds; ``reap`` returns a dead worker's tasks in the transaction
that marks it dead; ``return_orphans`` is the safety net for anything else.

Routine claims and completions are not logged; transitions off the happy path
are rows in ``events``. Every transition also moves a per-state counter in
``workflows`` (``_shift``; pending = total minus the others), so progress and
status never scan the task table.

Tasks get their row only when something unusual happens to them: numbers from
``workflows.materialized`` up to ``total`` are pending without a row, so registering
a million positional tasks costs one UPDATE, and a million keys one key block. A
claim of such tasks is one ``runs`` row (a range, running on its worker); finishing
part of it makes that part a completed run (``runs.py``). Rows are written at
registration only for tasks with dependencies, requirements, several workers or
info, and for the tasks they depend on (``register_keyed``); a failure, hand-back,
kill or reopen gives the tasks concerned rows first. ``workflows.floor`` is a
number below which no row is pending, so claims never rescan finished work.
"""

from laufband.store.base import KeyCache
from laufband.store.failures import FailureRecord
from laufband.store.layout import (
    DEFAULT_PATH,
    DIRECTORY_MODE,
    FILE_MODE,
    StateDirectory,
)
from laufband.store.lock import HOST, SHIELD, Holder, StateLock, lock_waits, read_holder
from laufband.store.reader import StateReader
from laufband.store.records import (
    STATES,
    NewTask,
    Scope,
    Stuck,
    WorkerRecord,
    Workflow,
    _ranges,
)
from laufband.store.schema import SCHEMA_VERSION
from laufband.store.store import Store
from laufband.store.transaction import Transaction

__all__ = [
    "DEFAULT_PATH",
    "DIRECTORY_MODE",
    "FILE_MODE",
    "HOST",
    "SCHEMA_VERSION",
    "SHIELD",
    "STATES",
    "FailureRecord",
    "Holder",
    "KeyCache",
    "NewTask",
    "Scope",
    "StateDirectory",
    "StateLock",
    "StateReader",
    "Store",
    "Stuck",
    "Transaction",
    "WorkerRecord",
    "Workflow",
    "_ranges",
    "lock_waits",
    "read_holder",
]
