"""The transaction: every named operation on the state database, on one connection.

Each group of operations is a class of its own module; ``Transaction`` composes them
(``tx.claim(...)``, ``tx.finish(...)``, ``tx.counts(...)``), and ``Store.transaction``
makes one per transaction.
"""

from __future__ import annotations

from laufband.store.claims import ClaimOperations
from laufband.store.results import ResultOperations
from laufband.store.workers import WorkerOperations


class Transaction(ResultOperations, WorkerOperations, ClaimOperations):
    """Named operations on the state database, valid inside ``Store.transaction()``.

    Workflows, registration and task transitions (:mod:`~laufband.store.tasks`), keys
    (:mod:`~laufband.store.keys`), claims (:mod:`~laufband.store.claims`), workers and
    reaping (:mod:`~laufband.store.workers`), views and administration
    (:mod:`~laufband.store.views`) and pmap's results (:mod:`~laufband.store.results`).
    """
