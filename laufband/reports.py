"""Report on a workflow as a whole.

What a worker says about its workflow as a whole: the error it stops with under
``failure_policy="stop"``, and the one line it prints as it leaves work undone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from laufband.commands import command

if TYPE_CHECKING:
    from laufband.settings import WorkerSettings
    from laufband.store import Stuck, Transaction


SHOWN = 5  # tasks named in a line; the rest is "..."


def stopped_by_policy(tx: Transaction, wf: int, settings: WorkerSettings) -> RuntimeError | None:
    """Return the error to stop with under ``failure_policy="stop"``.

    With ``failure_policy="stop"``: the error to stop with once a task failed (a
    plain RuntimeError, as laufband 0.2.x raised).
    """
    if settings.failure_policy != "stop":
        return None
    failed = tx.failed_tasks(wf, limit=3)
    if not failed:
        return None
    path, name = settings.state.path, settings.name
    see = command("status", "--path", path)
    msg = (f"task(s) {', '.join(map(repr, failed))} of workflow {name!r} failed and"
           f" failure_policy='stop': this worker stops too (see {see})")
    return RuntimeError(msg)


def farewell(tx: Transaction, wf: int, settings: WorkerSettings, stuck: Stuck | None, *,
             summarise: bool) -> str | None:
    """Return the one line a worker prints as it leaves work undone.

    The one line a worker prints as it leaves work undone: tasks waiting for labels
    no online worker has, or (with ``summarise``, on rank 0) failed and blocked tasks.
    """
    name, path = settings.name, settings.state.path
    if stuck is not None and stuck.tasks:
        tasks, labels = stuck
        shown = ", ".join(map(repr, tasks[:SHOWN])) + (", ..." if len(tasks) > SHOWN else "")
        missing = " or ".join("{" + ", ".join(map(repr, req)) + "}" for req in labels)
        return (f"laufband: worker {settings.identifier} leaves workflow {name!r}:"
                f" {len(tasks)} task(s) it could run ({shown}) wait for tasks that need"
                f" labels {missing}, which no online worker has; start a worker with"
                f" those labels=")
    if not summarise or settings.rank not in (None, 0):
        return None
    counts = tx.counts(wf)
    undone = {state: counts[state] for state in ("failed", "killed", "blocked")
              if counts[state]}
    if not undone:
        return None
    what = ", ".join(f"{count} {state}" for state, count in undone.items())
    return (f"laufband: workflow {name!r} ends with {what} task(s) of"
            f" {sum(counts.values())}: see `{command('status', '--path', path)}`, and"
            f" `{command('retry', '--failed', '-w', name, '--path', path)}` to run them again")
