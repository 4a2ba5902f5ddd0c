"""A worker whose fingerprint for a task is outdated never completes it: last registration wins.

Workers join a workflow when they start; one started later with new data registers a
new fingerprint while older ones still run. Tasks T and D (depending on T), run by
real processes (tests/helpers/features_worker.py ``outdated``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from laufband import Graphband, NoResultError, Task
from tests.helpers.procs import (
    HELPERS,
    Processes,
    online_workers,
    task_events,
    task_states,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)
WORKER = HELPERS / "features_worker.py"
LEAVES = "have a newer fingerprint registered by another worker"


class Files:
    """The log every body writes to, and the files a blocked body waits on."""

    def __init__(self, tmp_path: Path) -> None:
        self.log, self.ready, self.go = (tmp_path / name for name in ("log", "ready", "go"))

    def args(self, mode: str, fingerprint: str) -> list[object]:
        return ["outdated", "--mode", mode, "--changed", fingerprint, "--log", self.log,
                "--ready", self.ready, "--go", self.go]

    def started(self) -> list[str]:
        """"ID FINGERPRINT" of every body, in the order they started."""
        return [" ".join(line.split()[:2]) for line in self.log.read_text().splitlines()]


def run(procs: Processes, state: Path, files: Files, mode: str, fingerprint: str) -> str:
    result = procs.python(WORKER, *files.args(mode, fingerprint)[:1], state,
                          *files.args(mode, fingerprint)[1:])
    assert result.returncode == 0, result.stderr
    return result.stdout


def start(procs: Processes, state: Path, files: Files, mode: str,
          fingerprint: str) -> subprocess.Popen[str]:
    args = files.args(mode, fingerprint)
    proc = procs.start(WORKER, args[0], state, *args[1:])
    wait_for(lambda: files.ready.exists() or proc.poll() is not None, what="the gate")
    assert proc.poll() is None, proc.communicate()
    return proc


def finish(procs: Processes, proc: subprocess.Popen[str], deadline: float = 20) -> \
        tuple[list[str], str]:
    """Wait (at most ``deadline`` s) for a worker; return the ids it ran and its stderr."""
    [(code, out, err)] = procs.wait_all([proc], deadline)
    assert code == 0, err
    ran: list[str] = json.loads(out)
    return ran, err


def result_of_t(state: Path) -> str:
    worker = Graphband([Task("T")], path=state, name="outdated", tqdm_kwargs={"disable": True})
    value: str = worker.result_of("T")
    return value


def told_once(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("laufband: 1 task of workflow 'outdated' (T)"), err
    assert "has a newer fingerprint registered by another worker" in lines[0], err
    assert "leaves it" in lines[0], err


def test_a_worker_started_before_a_newer_fingerprint_leaves_that_task_to_it(
        state: Path, tmp_path: Path, procs: Processes) -> None:
    files = Files(tmp_path)
    assert json.loads(run(procs, state, files, "run", "v1")) == ["T", "D"]
    a = start(procs, state, files, "gate", "v1")  # registered v1; its body waits at "gate"
    # B registers v2 (T completed: it is pending again), and leaves.
    assert json.loads(run(procs, state, files, "register", "v2")) is True
    files.go.touch()
    ran, err = finish(procs, a)
    assert ran == ["gate"]  # A never ran T's body with its old inputs, nor D
    told_once(err)
    assert json.loads(run(procs, state, files, "run", "v2")) == ["T", "D"]
    assert files.started() == ["T v1", "D v1", "gate v1", "T v2", "D v2"]
    assert task_states(state, "outdated") == {"T": "completed", "D": "completed",
                                              "gate": "completed"}
    assert result_of_t(state).startswith("T v2 ")


def test_a_fingerprint_changed_while_its_task_runs_reruns_it_before_its_dependents(
        state: Path, tmp_path: Path, procs: Processes) -> None:
    files = Files(tmp_path)
    a = start(procs, state, files, "block", "v1")  # T's body runs in A, with v1
    b = procs.start(WORKER, "outdated", state, "--mode", "run", "--changed", "v2",
                    "--log", files.log)
    wait_for(lambda: online_workers(state) == 2, what="B registered")  # B waits for T
    files.go.touch()
    ran_a, err_a = finish(procs, a)
    ran_b, _ = finish(procs, b)
    assert ran_a == ["T"]
    assert ran_b == ["T", "D"]  # B ran T again, with v2, and D after it
    assert files.started() == ["T v1", "T v2", "D v2"]
    told_once(err_a)
    assert result_of_t(state).startswith("T v2 ")  # A's result was dropped
    assert ("T", "invalidated", "its fingerprint changed while it ran") in \
        task_events(state, "outdated")
    assert task_states(state, "outdated") == {"T": "completed", "D": "completed"}


def test_a_worker_alone_with_an_outdated_fingerprint_ends_and_says_why(
        state: Path, tmp_path: Path, procs: Processes) -> None:
    files = Files(tmp_path)
    a = start(procs, state, files, "block", "v1")  # T's body runs in A, with v1
    # B registers v2 meanwhile and leaves: nobody with v2 is left to run T.
    assert json.loads(run(procs, state, files, "register", "v2")) is True
    files.go.touch()
    ran, err = finish(procs, a, deadline=10)  # not claiming T again and again, nor waiting
    assert ran == ["T"]
    told_once(err)
    assert files.started() == ["T v1"]
    assert task_states(state, "outdated") == {"T": "pending", "D": "pending"}
    status = procs.run([sys.executable, "-m", "laufband", "status", "--path", str(state),
                        "-w", "outdated"], env={"COLUMNS": "160"})
    assert "invalidated 1 (a fingerprint changed), to run again: T" in status.stdout, \
        status.stdout
    # A worker with v2 runs both, once.
    assert json.loads(run(procs, state, files, "run", "v2")) == ["T", "D"]
    assert files.started() == ["T v1", "T v2", "D v2"]


def test_what_a_task_saved_with_an_outdated_fingerprint_is_never_its_result(
        state: Path) -> None:
    quiet = {"disable": True}
    old = Graphband([Task("T", fingerprint="v1")], path=state, name="void", tqdm_kwargs=quiet)
    for _ in old:
        # Another worker registers v2 while T runs here with v1.
        assert Graphband([Task("T", fingerprint="v2")], path=state, name="void",
                         tqdm_kwargs=quiet).has_more_jobs
        old.save("computed from v1")
    new = Graphband([Task("T", fingerprint="v2")], path=state, name="void", tqdm_kwargs=quiet)
    assert [task.id for task in new] == ["T"]  # completes T without saving anything
    with pytest.raises(NoResultError, match=r"it completed without calling worker\.save"):
        new.result_of("T")


def test_a_dependent_running_when_its_dependency_is_invalidated_runs_again_after_it(
        state: Path, tmp_path: Path, procs: Processes) -> None:
    """D runs (worker A, v1) when worker B registers T's new fingerprint: D's input is
    stale, so D must run again after T does, not be completed by A (it was, and no later
    run ever ran it again)."""
    files = Files(tmp_path)
    first = start(procs, state, files, "block-d", "v1")  # T done, D's body waits
    second = procs.start(WORKER, *files.args("run", "v2")[:1], state,
                         *files.args("run", "v2")[1:])
    wait_for(lambda: "D v2" in files.started() or second.poll() is not None,
             what="the v2 worker to run D again")
    files.go.touch()
    ran_first, _ = finish(procs, first)
    ran_second, _ = finish(procs, second)
    assert (ran_first, ran_second) == (["T", "D"], ["T", "D"])
    assert files.started() == ["T v1", "D v1", "T v2", "D v2"]
    assert set(task_states(state, "outdated").values()) == {"completed"}
    assert ("invalidated", "a task it depends on changed its fingerprint") in {
        (kind, error) for seq, kind, error in task_events(state, "outdated") if seq == "D"}
