"""pmap's outcomes: stored with the completion of their tasks, read back in input order.

::

    loop body ─ record(seq, value) / record_error(seq, error)
                   │
    before each    v  pack(): one pickle per flush; an unpicklable value fails its
    transaction ─ chunk   task, a value over 1 MiB goes to results/<wf>/<task>
                   │
    inside it ─────v  write(): the chunk row, then the failures (before the worker
                      completes its tasks in the same transaction)

A stored outcome is ``(task, kind, value)``: ``VALUE`` (the result), ``ERROR`` (the
pickled exception, its traceback text and where it was raised), ``IN_FILE``, or
``VOID`` (no result: one stored before is void, see :func:`void_outcomes`).
"""

from __future__ import annotations

import copy
import os
import pickle
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from laufband import mpi
from laufband.errors import RemoteTraceback, TaskFailedError
from laufband.failuretext import failure_record
from laufband.liveness import HOST
from laufband.resultfiles import write_error, write_file
from laufband.store import FailureRecord, Scope, StateDirectory, Transaction

VALUE, ERROR, IN_FILE, VOID = 0, 1, 2, 3  # kinds of stored outcome
LARGE_RESULT = 1 << 20  # bytes: larger pickled results go to files, not the database
CHUNK = 256  # outcomes per pickled chunk at most

Outcome = tuple[int, int, Any]  # (task number, kind, value)


class _Written(NamedTuple):
    chunks: int
    failures: int


class OutcomeSink:
    """The results sink of a pmap worker (see :class:`laufband.session.ResultSink`)."""

    def __init__(self, state: StateDirectory | Path, wf: int,
                 dumps: Callable[..., bytes], item_of: Callable[[int], Any] | None = None,
                 ) -> None:
        """Make a sink for workflow ``wf`` in ``state``, pickling with ``dumps``.

        ``item_of(task)``: the item a failure to pickle a task's result names.
        """
        self._state = StateDirectory.of(state)
        self._wf, self._dumps = wf, dumps
        self._item_of = item_of
        self._where = raised_where()
        self._outcomes: list[Outcome] = []
        self._chunks: list[tuple[int, int, bytes]] = []  # (lowest task, highest, pickle)
        self._failures: list[FailureRecord] = []

    def record(self, seq: int, value: Any) -> None:
        """Keep the result of task ``seq`` (pickled by the next :meth:`pack`)."""
        self._outcomes.append((seq, VALUE, value))

    def record_error(self, seq: int, error: BaseException, item: Any = None) -> None:
        """Keep the exception task ``seq`` raised on ``item``.

        Keep the exception task ``seq`` raised (call it in the ``except`` block);
        the task fails in the next write, its item named by a short repr.
        """
        text = traceback.format_exc()
        self._outcomes.append((seq, ERROR, self._pickle_error(error, text)))
        # For `laufband failures`, from the user's first frame (pmap's are left out).
        self._failures.append(failure_record(seq, error, item))

    def drop(self, seq: int) -> None:
        """Forget what was recorded for task ``seq`` and not packed yet (it failed)."""
        self._outcomes = [outcome for outcome in self._outcomes if outcome[0] != seq]

    def pack(self) -> None:
        """Pickle the recorded outcomes into chunks of at most ``CHUNK`` outcomes.

        Each is removed only once packed, so an error here loses nothing; chunks stay
        small so that reading results back never holds much more than the results.
        """
        while self._outcomes:
            count = min(len(self._outcomes), CHUNK)
            self._chunks.append(self._pack(self._outcomes[:count]))
            del self._outcomes[:count]

    def write(self, tx: Transaction, wf: int,
              fail: Callable[[FailureRecord], None]) -> _Written:
        """Store the packed chunks and fail the tasks that raised."""
        written = _Written(len(self._chunks), len(self._failures))
        for lo, hi, packed in self._chunks[: written.chunks]:
            tx.store_result_chunk(wf, lo, hi, packed)
        for failure in self._failures[: written.failures]:
            fail(failure)
        return written

    def forget(self, mark: object) -> None:
        """Drop what a committed write stored."""
        if isinstance(mark, _Written):
            del self._chunks[: mark.chunks]
            del self._failures[: mark.failures]

    def drop_unpacked(self) -> set[int]:
        """Forget outcomes that could not be packed; return their tasks."""
        lost = {outcome[0] for outcome in self._outcomes}
        self._outcomes.clear()
        return lost

    def unwritten(self) -> bool:
        """Whether outcomes, chunks or failures wait for a write."""
        return bool(self._outcomes or self._chunks or self._failures)

    def discard(self) -> None:
        """Forget everything (the worker's record is gone)."""
        self._outcomes.clear()
        self._chunks.clear()
        self._failures.clear()

    def _pack(self, outcomes: list[Outcome]) -> tuple[int, int, bytes]:
        """Pickle outcomes in one go, or look at each value.

        Pickle outcomes in one go; if that fails or is large, look at each value:
        an unpicklable one fails its task, a large one goes to a file.
        """
        try:
            packed = self._chunk(outcomes)
        except Exception:  # noqa: BLE001 - found and reported item by item below
            packed = None
        if packed is None or len(packed[2]) > LARGE_RESULT:
            packed = self._chunk(self._checked_all(outcomes))
        return packed

    def _chunk(self, outcomes: list[Outcome]) -> tuple[int, int, bytes]:
        seqs = [outcome[0] for outcome in outcomes]
        return min(seqs), max(seqs), self._dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL)

    def _checked_all(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Return each outcome checked.

        Each outcome checked. If a result cannot be stored (a full disk), those
        before it still complete their tasks: packed into a chunk of their own and
        taken off the recorded outcomes before the error goes on.
        """
        checked: list[Outcome] = []
        try:
            checked.extend(map(self._checked, outcomes))
        except OSError as error:  # the task stays unfinished: the next call computes it
            if checked:
                self._chunks.append(self._chunk(checked))
                del self._outcomes[: len(checked)]
            raise write_error(self._state.results_of(self._wf), error) from None
        return checked

    def _checked(self, outcome: Outcome) -> Outcome:
        seq, kind, value = outcome
        if kind != VALUE:
            return outcome
        try:
            pickled = self._dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # noqa: BLE001 - reported to the caller
            text = traceback.format_exc()
            item = None if self._item_of is None else self._item_of(seq)
            self._failures.append(failure_record(seq, error, item, trace=text))  # not finished
            return seq, ERROR, self._pickle_error(error, text)
        if len(pickled) <= LARGE_RESULT:
            return outcome
        write_file(self._state.result_file(self._wf, seq), pickled)
        return seq, IN_FILE, None

    def _pickle_error(self, error: BaseException, text: str) -> bytes:
        """Pickle an exception with its traceback text and where it was raised.

        Pickle an exception with its traceback text and where it was raised; stand
        in for exceptions that do not survive pickling.
        """
        try:
            return pickle.dumps((error, text, self._where))
        except Exception:  # noqa: BLE001 - an exception that does not survive pickling
            stand_in = RuntimeError(f"{type(error).__name__}: {error}")
            return pickle.dumps((stand_in, text, self._where))


def void_outcomes(tx: Transaction, wf: int, seqs: list[int]) -> None:
    """Void what tasks ``seqs`` stored so far (a chunk of ``VOID`` outcomes after it).

    Their outcomes were computed from inputs that changed meanwhile (a newer
    fingerprint): none is their result, whatever the run that completes them stores.
    """
    if seqs:
        tx.store_result_chunk(wf, min(seqs), max(seqs),
                              pickle.dumps([(seq, VOID, None) for seq in seqs]))


def raised_where() -> str:
    """Name this worker as a remote traceback's header does: rank, host, pid."""
    found = mpi.rank_and_size()
    rank = f"rank {found[0]} of {found[1]} " if found is not None else ""
    return f"worker {rank}on {HOST}, pid {os.getpid()}"


class Failure:
    """Hold an item's stored failure.

    An item's stored failure: the exception, the remote traceback text, and where
    it was raised (stored before 0.3.1: no ``where``).
    """

    def __init__(self, error: BaseException, remote: str, where: str = "") -> None:
        """Keep the exception, its remote traceback text and where it was raised."""
        self.error, self.remote, self.where = error, remote, where

    def exception(self, index: int, workflow: str) -> BaseException:
        """Return the exception to raise for item ``index``.

        The exception to raise for item ``index``: a copy (equal items share one
        stored failure), the remote traceback as its cause, headed by item and worker.
        """
        error = copy.copy(self.error)
        notes = getattr(self.error, "__notes__", None)
        if notes is not None:  # a copy shares the list: notes of its own
            error.__notes__ = list(notes)  # type: ignore[attr-defined]  # 3.11+ only
        item = f"pmap item {index} of workflow {workflow!r}"
        where = f", raised by {self.where}" if self.where else ""
        if self.remote:
            error.__cause__ = RemoteTraceback(self.remote, header=f"{item}{where}:")
        if hasattr(error, "add_note"):  # Python >= 3.11; the header says it on 3.10
            error.add_note(f"{item}{where}")
        return error


class Missing:
    """An item that was not computed: its task's state and why."""

    def __init__(self, state: str, reason: str) -> None:
        """Keep the task's state and the reason it was not computed."""
        self.state, self.reason = state, reason

    def exception(self, index: int, workflow: str) -> TaskFailedError:
        """Return the :class:`TaskFailedError` to raise for item ``index``."""
        msg = (f"pmap item {index} of workflow {workflow!r} was not computed ({self.state}:"
               f" {self.reason}); call pmap again to retry it")
        return TaskFailedError(msg, workflow=workflow, index=index, state=self.state)


def stored_failure(value: bytes) -> Failure:
    """Return the :class:`Failure` an ``ERROR`` outcome holds."""
    return Failure(*pickle.loads(value))


def read_results(tx: Transaction, state: StateDirectory, wf: int, *,
                 named: bool = False) -> list[Any]:
    """Return the result of every completed task of a workflow, by task number.

    Task numbers follow the order in which items were first given (input order);
    tasks without a result (failed, not computed, none saved) are left out. With
    ``named`` (a loop's results), each is ``{"task": id, "result": value}``.
    """
    total = tx.progress(wf)[0]
    numbers = {seq: seq for seq in range(total)}
    outcomes, _, _ = read_outcomes(tx, state.path, wf, numbers, Scope(limit=total), "")
    found = {seq: value for seq, value in sorted(outcomes.items())
             if not isinstance(value, (Failure, Missing))}
    if not named:
        return list(found.values())
    names = tx.task_names(wf, list(found))
    return [{"task": names[seq], "result": value} for seq, value in found.items()]


def read_result(tx: Transaction, state: StateDirectory, wf: int, seq: int) -> Any:
    """Return the result completed task ``seq`` saved (``worker.save``).

    Raises:
        LookupError: The task is not completed (its state as the message), or
            completed without a saved result ("completed").
    """
    states = tx.unfinished(wf, Scope(start=seq, limit=seq + 1))
    if seq in states:
        raise LookupError(states[seq])
    values, other = _unpack(tx.result_chunks(wf, seq, seq))
    if seq in values:
        return values[seq]
    if other.get(seq, (None,))[0] == IN_FILE:
        try:
            return pickle.loads(state.result_file(wf, seq).read_bytes())
        except OSError:
            pass
    what = "completed"
    raise LookupError(what)


def read_outcomes(tx: Transaction, state: Path, wf: int, numbers: dict[Any, int],
                  scope: Scope, killed_reason: str) -> tuple[dict[int, Any], list[int], bool]:
    """Collect the outcome of every task in ``numbers``.

    Task number -> result, :class:`Failure` or :class:`Missing` for every task in
    ``numbers`` (their ``scope``: ``tx`` restricted to them if it is restricted); the
    completed tasks whose result is gone, for the caller to reopen; and whether any
    task has no result.
    """
    seqs = numbers.values()
    states = tx.unfinished(wf, scope)
    chunks = tx.result_chunks(wf, scope.start, scope.limit - 1)
    outcomes, other = _unpack(chunks)
    in_files = [seq for seq, (kind, _) in other.items() if kind == IN_FILE]
    if in_files:  # ours only: chunks also hold other calls' tasks
        ours, results = set(seqs), StateDirectory.of(state)
        for seq in in_files:
            if seq in ours and seq not in states:
                try:
                    data = results.result_file(wf, seq).read_bytes()
                except OSError:  # removed: reopened, the next call computes it
                    continue
                outcomes[seq] = pickle.loads(data)
    lost: list[int] = []
    if not all(map(outcomes.__contains__, seqs)):
        lost = [seq for seq in seqs if seq not in outcomes and seq not in states]
        states = dict.fromkeys(lost, "completed") | states
    for seq, task_state in states.items():
        kind, value = other.get(seq, (VALUE, None))
        if kind == ERROR and task_state != "killed":
            # Failed; or pending or running again when another call retries it: this
            # call reports the failure its own computation saw.
            outcomes[seq] = stored_failure(value)
            continue
        reason = {"killed": killed_reason, "completed": "its result is missing"}.get(
            task_state, "its worker left it unfinished (an exit in the function?) or it was"
            " reset")
        outcomes[seq] = Missing(task_state, reason)
    return outcomes, lost, bool(states)


def _unpack(chunks: list[bytes]) -> tuple[dict[int, Any], dict[int, tuple[int, Any]]]:
    """Unpack chunks into plain values and other outcomes by task.

    Plain values by task, and the other outcomes (errors, files) by task: oldest
    chunk first, so a retry's outcome replaces the failure before it.
    """
    outcomes: dict[int, Any] = {}
    other: dict[int, tuple[int, Any]] = {}
    chunks.reverse()
    while chunks:  # each payload is freed once unpickled: never all results twice
        for seq, kind, value in pickle.loads(chunks.pop()):
            if kind == VALUE:
                outcomes[seq] = value
                if other:
                    other.pop(seq, None)
            else:
                other[seq] = kind, value
                outcomes.pop(seq, None)
    return outcomes, other
