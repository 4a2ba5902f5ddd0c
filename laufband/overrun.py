"""Hand back a worker's unstarted tasks while one of its tasks runs far past its plan.

The loop looks at its batch's plan only between tasks (``Pace.overran``). A batch
claimed while tasks were fast would keep its unstarted rest, and the batch claimed
ahead, through the whole of a slow task while other workers have nothing to do
(heterogeneous work: a few large molecules after many small ones). So the heartbeat
thread calls an :class:`OverrunWatch` every ``WATCH_EVERY`` seconds: once the task
in the loop body has run past ``Pace.running_too_long``, it takes those tasks, which
the loop then never starts, and puts them back to pending for any worker to claim.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from laufband.session import WorkerSession


class OverrunWatch:
    """Called by the heartbeat thread: hands back what waits behind a slow task."""

    def __init__(self, session: WorkerSession, heartbeat_timeout: float) -> None:
        """Watch the batches ``session`` runs."""
        self._session = session
        self._quiet = heartbeat_timeout / 2
        self._task: int | None = None  # the task seen in the loop body
        self._since = 0.0  # when it was first seen there

    def __call__(self) -> None:
        """Look once; hand back (one transaction) if the task in the body runs too long."""
        session = self._session
        if session.handing_back:  # the last hand-back failed (a StateError): again
            self._hand_back()
            return
        task, now = session.current, time.monotonic()
        if task is None or task != self._task:
            self._task, self._since = task, now
            return
        pace = session.pace
        if pace is None or not pace.running_too_long(now - self._since):
            return
        if session.evicted or session.silent_for() >= self._quiet:
            return  # we may have been taken for dead: what we hold may not be ours
        self._since = float("inf")  # once per task
        with session.handoff:  # the loop starts no batch and hands none back meanwhile
            session.overran = True  # the loop hands back what it claims ahead later
            # Taking the iterator's rest is one C call under the GIL: the loop takes
            # none of these any more (it may have taken the next task already: that
            # one stays with it).
            unstarted = list(session.unstarted)
            ahead = session.next_batch
            rest = unstarted + ahead
            if not rest:
                return
            session.handing_back = rest  # first: a stop meanwhile hands them back
            # The batch is what the loop took, no more: a claim ahead may take these
            # tasks again (the lowest pending), and the batch must not hand them back.
            del session.batch[len(session.batch) - len(unstarted):]
            ahead.clear()  # the loop may hold this list already: it finds it empty
        self._hand_back()

    def _hand_back(self) -> None:
        session = self._session
        with session.store.transaction() as tx:
            tx.release(session.wf, session.number, session.handing_back)
        session.handing_back = []
