"""A worker's own fingerprints, and the tasks it leaves to workers with newer ones.

Workers join a workflow when they start, each registering its tasks' fingerprints:
the last registration wins. A worker that started earlier may hold older inputs for
a task. It never completes such a task: a claim of it is handed back in the claiming
transaction, and a task whose fingerprint changed while it ran is reopened rather
than completed (its saved result voided). It leaves the task, and the tasks depending
on it, to workers with the newer fingerprint: its claims are restricted to the rest,
so it neither claims them again and again nor waits for them, and it says so once.

Only workers whose tasks carry fingerprints pay for any of this.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from laufband.store import Transaction

SHOWN = 3  # task ids named in the line a worker prints


class Outdated:
    """This worker's fingerprints (task number -> digest) and the tasks it leaves."""

    def __init__(self, digests: dict[int, bytes], workflow: str,
                 name_of: Callable[[int], str]) -> None:
        """Check tasks against ``digests`` (``laufband.task.digest``) of ``workflow``."""
        self.digests = digests
        self.workflow = workflow
        self.name_of = name_of
        self.left: set[int] = set()  # ours, left to workers with newer fingerprints
        self._told = False

    def changed(self, tx: Transaction, wf: int, seqs: Collection[int]) -> list[int]:
        """Return the tasks among ``seqs`` whose stored fingerprint is not ours."""
        digests = self.digests
        given = {seq: digests[seq] for seq in seqs if seq in digests}
        return tx.changed_fingerprints(wf, given) if given else []

    def leave(self, tx: Transaction, wf: int, changed: list[int],
              mine: Collection[int]) -> list[int]:
        """Leave ``changed`` and the tasks depending on them; return what this worker keeps.

        ``mine``: this worker's tasks. Claims are restricted to those it keeps (in
        this transaction already); the first time, a line says why once committed.
        """
        ours = set(mine)
        dependents = tx.dependents(wf, changed) & ours
        self.left |= {*changed, *dependents}
        kept = [seq for seq in mine if seq not in self.left]
        tx.restrict_to(kept)
        if not self._told:
            line = self._line(changed, len(dependents))
            tx.after_commit(lambda: self._tell(line))
        return kept

    def _tell(self, line: str) -> None:
        if not self._told:
            self._told = True
            tqdm.write(line, file=sys.stderr)

    def _line(self, changed: list[int], dependents: int) -> str:
        """Say which tasks this worker leaves to others, and why, in one line."""
        names = ", ".join(self.name_of(seq) for seq in changed[:SHOWN])
        more = ", ..." if len(changed) > SHOWN else ""
        one = len(changed) == 1
        what = (f"{len(changed)} task{'' if one else 's'} of workflow {self.workflow!r}"
                f" ({names}{more}) {'has' if one else 'have'} a newer fingerprint"
                " registered by another worker")
        them = "it" if one else "them"
        also = (f", and {dependents} task{'' if dependents == 1 else 's'} depending on {them},"
                if dependents else "")
        return (f"laufband: {what}; this worker leaves {them}{also} to workers started"
                " with the newer fingerprint")
