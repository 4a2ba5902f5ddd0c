"""How many tasks to claim at once: adaptive, guided batch sizes.

Every claim holds the state lock for about one store transaction, and the lock
serialises all workers. A worker therefore claims enough tasks that its share of
lock time stays small (``LOCK_SHARE``) given how many workers compete, flushes
finished work less often when many workers compete (``flush_interval``), and
shrinks batches toward the end (at most unclaimed / (2 x workers), or / workers
when all are known: guided self-scheduling) so workers finish together, but not
below two transactions' worth of work (up to half of what is left): on a busy lock,
many small claims would keep every worker waiting for it. Sizes grow
by doubling until every worker that will come is counted; when all are known from the
start (MPI ranks, pmap's forked helpers), the first batch is the guided share. Timed
tasks that run long are claimed one by one, so their state in the store is exact.
"""

from __future__ import annotations

LOCK_SHARE = 0.02  # fraction of its time a worker may spend holding the lock
MAX_BATCH = 16384
MIN_FLUSH = 0.2  # seconds: finished work is written at most this often
MIN_WAIT = 0.005  # seconds: shortest sleep while waiting for tasks running elsewhere
JUMP = 0.05  # seconds of work a batch may grow to at once, past doubling
CHECK_EVERY = 0.02  # seconds between a running batch's looks at the clock's plans
# A batch hands back its unstarted rest once it is BEHIND times its plan plus SLACK
# seconds late, or the tasks since its last check took BEHIND_RECENTLY times their plan
# plus SLACK: a busy machine (64 processes on 2 cores) delays a check that much, a
# large molecule after many small ones far more.
SLACK = 0.2
SLACK_RUNNING = 0.1  # the same for one task the overrun watch sees run (timed exactly)
BEHIND = 4
BEHIND_RECENTLY = 10


class BatchSizer:
    """Learns task and transaction durations and proposes the next batch size."""

    def __init__(self) -> None:
        self.size = 1
        self._task_time = 0.0  # moving average of one task's duration, seconds
        self._txn_time = 0.0015  # moving average of one store transaction, seconds
        self._workers = 1

    @property
    def task_time(self) -> float:
        """Moving average of one task's duration in seconds (0 before any was timed)."""
        return self._task_time

    def observe_tasks(self, count: int, seconds: float) -> None:
        """Record that ``count`` tasks took ``seconds`` of loop time."""
        if count:
            self._task_time = _blend(self._task_time, seconds / count)

    @property
    def transaction_time(self) -> float:
        """Moving average of one store transaction (lock wait included), seconds."""
        return self._txn_time

    def observe_transaction(self, seconds: float) -> None:
        """Record how long a store transaction (lock wait included) took."""
        self._txn_time = _blend(self._txn_time, seconds)

    def next_size(
        self,
        remaining: int,
        workers: int,
        all_counted: bool = False,  # noqa: FBT001, FBT002 - workerloop.py passes it positionally
    ) -> int:
        """Propose the size of the next claim.

        Args:
            remaining: Tasks not yet claimed by any worker.
            workers: Workers alive now.
            all_counted: No more workers will come (every MPI rank is counted).

        Returns:
            How many tasks to claim, at least 1.
        """
        workers = self._workers = max(workers, 1)
        if self._task_time <= 0:
            # Untimed: start small, unless every worker is counted; then the guided
            # share below is safe, and spares the start-up crowd at the lock a round.
            wanted = MAX_BATCH if all_counted else self.size * 2
        else:
            wanted = int(workers * self._txn_time / (LOCK_SHARE * self._task_time)) + 1
            if not all_counted:  # grow by doubling: workers still starting are not counted
                # (or at once to JUMP of work: a worker starting meanwhile waits no longer)
                wanted = min(wanted, max(self.size * 2, int(JUMP / self._task_time)))
        wanted = min(wanted, MAX_BATCH)
        # Guided self-scheduling: at most the unclaimed tasks / workers; half that
        # unless every worker is counted (late joiners find work, and a batch rarely
        # holds finished but unflushed tasks when its worker dies).
        guided = remaining // (workers if all_counted else 2 * workers)
        if self._task_time > 0:  # but not below two transactions of work: not worth a
            # claim, and on a busy lock (many workers, a slow filesystem) many small
            # claims keep every worker waiting for it. Nor more than half of what is
            # left: the last tasks may be slow ones (heterogeneous work), and the
            # overrun watch hands back what waits behind a slow task.
            floor = int(2 * self._txn_time / self._task_time)
            guided = max(guided, min(remaining // min(workers, 2), floor))
        self.size = max(1, min(wanted, guided))
        return self.size

    def longest_wait(self, limit: float) -> float:
        """Return the longest sleep while tasks run elsewhere, at most ``limit`` seconds.

        About half a task, as they end soon, but not so short that waiting workers
        alone could keep the lock busy.
        """
        if self._task_time <= 0:
            return limit
        return min(limit, max(MIN_WAIT, self._task_time / 2, self._workers * self._txn_time))

    def flush_interval(self) -> float:
        """Return the seconds between mid-batch flushes.

        About 0.2 s, longer when many workers share the lock, so that flushes alone
        never keep it more than half busy.
        """
        return max(MIN_FLUSH, 2 * self._workers * self._txn_time)


def _blend(old: float, new: float) -> float:
    return new if old <= 0 else 0.7 * old + 0.3 * new


class Pace:
    """A running batch's plan: when to flush, claim ahead, or hand back its rest.

    Made as a batch starts, from what the sizer learned; the loop asks it at
    checkpoints (every ``CHECK_EVERY`` seconds, between tasks).
    """

    def __init__(self, sizer: BatchSizer, size: int, now: float) -> None:
        """Plan a batch of ``size`` tasks starting ``now``."""
        self.started = self.last_flush = self._last_check = now
        self.size = size
        self.rate = sizer.task_time  # planned seconds per task; 0: learnt at the first check
        self.flush_every = sizer.flush_interval()
        self._checked = 0  # tasks done at the last check
        transaction = sizer.transaction_time
        # Claim ahead this long before the batch ends: a background transaction (and
        # the lock waits it meets) ends before the loop needs its batch.
        self._lead = CHECK_EVERY + 4 * transaction
        self._slack = max(SLACK, 4 * transaction)
        self._slack_running = max(SLACK_RUNNING, 4 * transaction)

    def overran(self, done: int, now: float) -> bool:
        """Whether the batch fell far behind its plan, as of ``done`` tasks.

        Then its tasks got slower (heterogeneous work: a few large molecules after
        many small ones), and the unstarted rest goes back for idle workers to take.
        Behind since the batch started, or since the last check (where slow tasks
        after many fast ones show even when the fast ones ran slower than planned).
        """
        since, self._last_check = now - self._last_check, now
        recent, self._checked = done - self._checked, done
        if self.rate <= 0:  # no plan yet: the tasks so far make it
            self.rate = (now - self.started) / done if done else 0.0
            return False
        if done >= self.size:
            return False
        return (now - self.started > BEHIND * done * self.rate + self._slack
                or since > BEHIND_RECENTLY * recent * self.rate + self._slack)

    def running_too_long(self, seconds: float) -> bool:
        """Whether one task has run ``seconds`` far past the plan (see ``overran``)."""
        return self.rate > 0 and seconds > BEHIND_RECENTLY * self.rate + self._slack_running

    def first_check(self) -> float:
        """When to look first: at the claim lead before the planned end, at the latest."""
        if self.rate <= 0:
            return self.started + CHECK_EVERY
        planned = self.size * self.rate
        return self.started + min(CHECK_EVERY, max(0.0, planned - self._lead))

    def ends_soon(self, done: int) -> bool:
        """Whether the rest of the batch is planned to take less than the claim lead.

        (Plus a task, as the loop looks between tasks; but not a task much longer than
        the lead: a batch claimed that early would wait through it, while idle workers
        might have run it.)
        """
        lead = self._lead + min(self.rate, self._lead)
        return self.rate > 0 and (self.size - done) * self.rate <= lead

    def flush_due(self, now: float, done: int) -> bool:
        """Whether finished work waited long enough to be written.

        Not when the batch is planned to end within half a flush interval: the claim
        ahead writes it then (one transaction, not two).
        """
        if now - self.last_flush < self.flush_every:
            return False
        return not 0 < (self.size - done) * self.rate <= self.flush_every / 2
