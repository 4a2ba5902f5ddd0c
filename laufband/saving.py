"""Results a loop body saves (``worker.save``), written with its task's completion.

A loop's own results sink (pmap brings its own): what the body saves for the current
task is pickled before, and written in, the transaction that completes the task (the
chunk format of :mod:`laufband.outcomes`); a task that fails or goes back keeps none.
``worker.result_of`` reads a task's result back, in any process.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from laufband.outcomes import OutcomeSink, read_result

if TYPE_CHECKING:
    from collections.abc import Callable

    from laufband.session import WorkerSession
    from laufband.store import StateDirectory, Store, Transaction


class SavedResults(OutcomeSink):
    """The results sink of a loop (see :class:`laufband.session.ResultSink`)."""

    def __init__(self, state: StateDirectory, wf: int,
                 item_of: Callable[[int], Any] | None = None) -> None:
        """Keep what the bodies of workflow ``wf``'s loop save (``item_of``: see the base)."""
        super().__init__(state, wf, pickle.dumps, item_of)

    def save(self, session: WorkerSession, value: Any) -> None:
        """Keep ``value`` as the result of the task whose body runs in ``session``."""
        seq = session.current
        if seq is None or seq in session.settled:
            msg = ("worker.save() belongs inside the body of the loop over this worker,"
                   " before the task fails or ends")
            raise RuntimeError(msg)
        session.in_flight.need_results()  # a reaper must not complete it without one
        self.record(seq, value)


def read_saved(store: Store, state: StateDirectory, workflow: int | str,
               task: int | str) -> Any:
    """Return what ``task`` (a number, or a key) of ``workflow`` (number or name) saved.

    Raises:
        LookupError: Its message is the task's state, or why there is no such task.
    """
    with store.transaction() as tx:
        wf = workflow if isinstance(workflow, int) else tx.find_workflow(workflow)
        if wf is None:
            state_of = "not registered"
            raise LookupError(state_of)
        return read_result(tx, state, wf, _number(tx, wf, task))


def _number(tx: Transaction, wf: int, task: int | str) -> int:
    state_of = "not a task of this workflow"
    if isinstance(task, int):  # a position: 0 up to the number of tasks registered
        if not 0 <= task < tx.progress(wf)[0]:
            raise LookupError(state_of)
        return task
    found = tx.task_numbers(wf, [task])
    if task not in found:
        raise LookupError(state_of)
    return int(found[task])
