"""A worker killed outright (SIGKILL) leaves its record online: ``laufband status``
shows it dead without writing, and ``laufband retry`` reaps it as a worker would."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.procs import HELPERS, read_log, wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from tests.helpers.procs import Processes

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-m", "laufband"]
QUIT_DEADLINE = 20.0


def cli(procs: Processes, *args: object) -> Any:
    result = procs.run([*CLI, *map(str, args)], env={"COLUMNS": "100"})
    assert "Traceback" not in result.stderr, result.stderr
    return result


def stored_worker_states(state: Path) -> list[str]:
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True) as db:
        return [row[0] for row in db.execute("SELECT state FROM workers")]


def killed_while_running(procs: Processes, state: Path) -> int:
    """Start a worker, SIGKILL it while it runs item 2 (after a second); return its pid."""
    logs = state.parent / "logs"
    worker = procs.worker(state, logs, "--items", 10, "--sleep-on", 2, "--sleep", 60)
    wait_for(lambda: "2" in read_log(logs / f"{worker.pid}.start"), what="item 2")
    time.sleep(1.2)  # a rate is known from a second on: the ETA it would give is not shown
    worker.kill()
    worker.wait(timeout=QUIT_DEADLINE)
    return worker.pid


def test_status_shows_a_killed_worker_dead_without_writing(state: Path,
                                                          procs: Processes) -> None:
    killed_while_running(procs, state)
    before = (state / "state.db").read_bytes()
    result = cli(procs, "status", "--path", state, "--json")
    assert result.returncode == 0, result.stderr
    [flow] = json.loads(result.stdout)["workflows"]
    [worker] = flow["workers"]
    assert worker["state"] == "dead"
    assert worker["current"] is None
    assert flow["counts"]["running"] == 0
    assert flow["eta"] is None
    text = cli(procs, "status", "--path", state)
    assert " dead " in text.stdout
    assert "ETA" not in text.stdout
    assert " online " not in text.stdout
    assert stored_worker_states(state) == ["online"]  # only shown dead
    assert (state / "state.db").read_bytes() == before


def test_retry_by_id_frees_a_task_left_on_a_killed_worker(state: Path,
                                                         procs: Processes) -> None:
    pid = killed_while_running(procs, state)
    result = cli(procs, "retry", "--path", state, "-w", "work", "2")
    assert result.returncode == 0, result.stderr
    # How many it held depends on whether the overrun watch handed its batch back.
    assert re.fullmatch(rf"worker \S+ \(host \S+, pid {pid}\) is gone: its \d+ task\(s\) are"
                        r" pending again \(the one it ran counts a kill\)\n"
                        r"0 task\(s\) of workflow 'work' are pending again\n", result.stdout)
    assert stored_worker_states(state) == ["dead"]
    [flow] = json.loads(cli(procs, "status", "--path", state, "--json").stdout)["workflows"]
    assert flow["counts"]["running"] == 0
    assert flow["counts"]["pending"] + flow["counts"]["completed"] == 10
    [died] = flow["failures"]
    assert (died["task"], died["state"], died["outcome"]) == ("2", "killed", "pending")


def test_a_short_run_of_another_workflow_reaps_a_killed_worker(state: Path,
                                                              procs: Processes) -> None:
    killed_while_running(procs, state)
    short = procs.python(HELPERS / "worker.py", state, state.parent / "logs", "--items", 3,
                         "--name", "other")
    assert short.returncode == 0, short.stderr
    assert sorted(stored_worker_states(state)) == ["dead", "offline"]
