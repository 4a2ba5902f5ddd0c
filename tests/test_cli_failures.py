"""`laufband failures`, and what status and watch say about failures, deaths and running
tasks: the real command in subprocesses, workers as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.procs import HELPERS, Processes, read_log, wait_for

pytestmark = pytest.mark.timeout(180)
CLI = [sys.executable, "-m", "laufband"]
FAILING = [1, 3, 4, 8, 11, 12, 15, 19]  # 8 items with 8 distinct messages
QUIT_DEADLINE = 20.0  # seconds for a worker to end once killed


def cli(procs: Processes, *args: object) -> subprocess.CompletedProcess[str]:
    result = procs.run([*CLI, *map(str, args)], env={"COLUMNS": "100"})
    assert "Traceback" not in result.stderr, result.stderr
    return result


def message(index: int) -> str:
    return f"SCF did not converge for structure-{index:03d} after {index * 7} steps"


def failing_run(procs: Processes, state: Path) -> None:
    result = procs.python(HELPERS / "catch_worker.py", state, "--items", 20,
                          "--fail-on", *FAILING)
    assert result.returncode == 0, result.stderr


def status_json(procs: Processes, state: Path) -> dict[str, Any]:
    result = cli(procs, "status", "--path", state, "--json")
    assert result.returncode == 0, result.stderr
    [flow] = json.loads(result.stdout)["workflows"]
    return flow


def test_eight_failures_are_all_listed_with_their_tracebacks(state: Path,
                                                            procs: Processes) -> None:
    failing_run(procs, state)
    listed = cli(procs, "failures", "--path", state, "--json")
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)["failures"]
    assert len(found) == 8
    assert [f["task"] for f in found] == [str(i) for i in reversed(FAILING)]  # newest first
    for failure, index in zip(found, reversed(FAILING), strict=True):
        assert failure["error"] == f"RuntimeError: {message(index)}"
        assert failure["item"] == f"'structure-{index:03d}'"
        assert failure["traceback"].startswith("Traceback (most recent call last):")
        assert "in converge" in failure["traceback"]
        assert failure["traceback"].rstrip().endswith(f"RuntimeError: {message(index)}")
        assert (failure["state"], failure["outcome"], failure["attempt"]) == (
            "failed", "failed", 1)
        assert failure["worker"]
        assert failure["host"] == os.uname().nodename
        assert failure["time"] > 0
    text = cli(procs, "failures", "--path", state, "-w", "structures")
    assert text.returncode == 0, text.stderr
    assert "8 failure(s) of workflow 'structures'" in text.stdout
    for index in FAILING:
        assert f"failed {index} ('structure-{index:03d}'): RuntimeError: {message(index)}" \
            in text.stdout
    assert text.stdout.count("Traceback (most recent call last):") == 8


def test_status_and_watch_show_the_newest_failures_and_how_many_more(
        state: Path, procs: Processes) -> None:
    failing_run(procs, state)
    flow = status_json(procs, state)
    assert flow["failure_count"] == 8
    assert flow["counts"]["failed"] == 8
    for command in (["status"], ["watch", "--once"]):
        result = cli(procs, *command, "--path", state)
        assert result.returncode == 0, result.stderr
        assert "failed 19 ('structure-019'): RuntimeError: SCF did not converge" \
            in result.stdout
        assert "... 5 more: laufband failures -w structures" in result.stdout


def test_a_failure_is_kept_until_the_task_is_retried(state: Path, procs: Processes) -> None:
    failing_run(procs, state)
    assert cli(procs, "retry", "--path", state, "-w", "structures", "3").returncode == 0
    found = json.loads(cli(procs, "failures", "--path", state, "--json").stdout)["failures"]
    assert sorted(int(f["task"]) for f in found) == sorted(set(FAILING) - {3})


def test_claimed_tasks_are_not_counted_running(state: Path, procs: Processes) -> None:
    """One worker runs item 150 (for a minute) and holds the rest of its batch: running 1,
    the rest claimed; the task shown is the one it runs."""
    logs = state.parent / "logs"
    worker = procs.worker(state, logs, "--items", 400, "--sleep-on", 150, "--sleep", 60)
    wait_for(lambda: "150" in read_log(logs / f"{worker.pid}.start"), what="item 150")
    flow = status_json(procs, state)
    [shown] = flow["workers"]
    assert shown["current"] == "150"
    assert flow["counts"]["running"] == 1
    assert flow["counts"]["claimed"] >= 1  # the rest of its batch: not started
    assert flow["counts"]["completed"] + flow["counts"]["claimed"] \
        + flow["counts"]["running"] + flow["counts"]["pending"] == 400
    text = cli(procs, "status", "--path", state)
    assert f"claimed {flow['counts']['claimed']}" in text.stdout
    assert "running 1 " in text.stdout
    worker.kill()
    worker.wait(timeout=QUIT_DEADLINE)


def test_a_task_whose_worker_died_and_runs_again_says_so(state: Path,
                                                         procs: Processes) -> None:
    """Item 5's worker dies; a second worker takes the task again (retry 1 of 1) and runs
    it for a minute: it is shown as died and retried, not as killed."""
    logs = state.parent / "logs"
    dying = procs.worker(state, logs, "--items", 20, "--die-on", 5, "--max-killed-retries", 1)
    assert dying.wait(timeout=QUIT_DEADLINE) == -signal.SIGKILL
    again = procs.worker(state, logs, "--items", 20, "--sleep-on", 5, "--sleep", 60,
                         "--max-killed-retries", 1)
    wait_for(lambda: "5" in read_log(logs / f"{again.pid}.start"), what="item 5 again")
    flow = status_json(procs, state)
    assert flow["counts"]["killed"] == 0
    [died] = flow["failures"]
    assert (died["task"], died["state"], died["outcome"]) == ("5", "killed", "pending")
    assert (died["retry"], died["retries"], died["attempt"]) == (1, 1, 1)
    assert f"pid {dying.pid}) died" in died["error"]
    assert [w["current"] for w in flow["workers"] if w["state"] != "online"] == [None]
    for command in (["status"], ["watch", "--once"]):
        result = cli(procs, *command, "--path", state)
        assert "died, retry 1 of 1 5: worker" in result.stdout, result.stdout
        assert "killed 5" not in result.stdout
    again.kill()
    again.wait(timeout=QUIT_DEADLINE)


def test_rate_and_eta_once_tasks_have_finished(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    worker = procs.worker(state, logs, "--items", 200, "--sleep", 0.05)
    wait_for(lambda: len(read_log(logs / f"{worker.pid}.done")) >= 20, what="20 items")
    flow = status_json(procs, state)
    assert flow["rate"] > 0
    assert flow["eta"] > 0
    [shown] = flow["workers"]
    assert shown["rate"] > 0
    for command in (["status"], ["watch", "--once"]):
        result = cli(procs, *command, "--path", state)
        assert "/s ETA " in result.stdout, result.stdout
    worker.kill()
    worker.wait(timeout=QUIT_DEADLINE)
