"""`laufband retry` refuses what names no task: unknown ids, a directory given where a
task id goes. One line, and nothing retried."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import pytest

from tests.helpers.procs import HELPERS

if TYPE_CHECKING:
    from pathlib import Path

    from tests.helpers.procs import Processes

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-m", "laufband"]


def failing_run(procs: Processes, state: Path) -> None:
    result = procs.python(HELPERS / "catch_worker.py", state, "--items", 6,
                          "--fail-on", 1, 4)
    assert result.returncode == 0, result.stderr


def failed(procs: Processes, state: Path) -> int:
    result = procs.run([*CLI, "status", "--path", state, "--json"])
    [flow] = json.loads(result.stdout)["workflows"]
    count: int = flow["counts"]["failed"]
    return count


def test_unknown_task_ids_are_refused(procs: Processes, state: Path) -> None:
    failing_run(procs, state)
    result = procs.run([*CLI, "retry", "--path", state, "-w", "structures", "1", "nosuch",
                        "6"])
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: workflow 'structures' in {state} has no task 'nosuch', '6': give task ids"
        " as status and failures show them (laufband failures -w structures)\n")
    assert failed(procs, state) == 2  # not even task 1 was retried
    known = procs.run([*CLI, "retry", "--path", state, "-w", "structures", "1", "4"])
    assert known.returncode == 0, known.stderr
    assert known.stdout == "2 task(s) of workflow 'structures' are pending again\n"


def test_a_state_directory_given_as_a_task_id_is_refused(procs: Processes,
                                                        state: Path) -> None:
    failing_run(procs, state)
    for where in ([], ["--path", state, "-w", "structures"]):
        result = procs.run([*CLI, "retry", *where, str(state)])
        assert result.returncode == 1
        assert result.stderr == (f"error: {str(state)!r} is a state directory, not a task id:"
                                 f" give it as laufband retry --path {state} ...\n")
    assert failed(procs, state) == 2
