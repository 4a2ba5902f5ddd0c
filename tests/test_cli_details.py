"""Small things the CLI says: a hostile workflow name escaped once, an ETA rounded up,
one state directory given twice."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from laufband.display import speed
from laufband.monitor import WorkflowStatus

if TYPE_CHECKING:
    from pathlib import Path

    from tests.helpers.procs import Processes

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-m", "laufband"]
HOSTILE = """
import sys
from laufband import Laufband
worker = Laufband([1, 2], path=sys.argv[1], name="nl\\nname\\x1b[31m",
                  tqdm_kwargs={"disable": True})
for i in worker:
    with worker.catch():
        if i == 2:
            raise RuntimeError("fail")
"""


def test_the_failures_header_escapes_a_name_once(procs: Processes, tmp_path: Path,
                                                 state: Path) -> None:
    script = tmp_path / "hostile.py"
    script.write_text(HOSTILE)
    assert procs.python(script, state).returncode == 0
    listed = procs.run([*CLI, "failures", "--path", state, "--brief"])
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == (
        "1 failure(s) of workflow 'nl\\nname\\x1b[31m', newest first")


def test_an_eta_under_a_second_is_rounded_up() -> None:
    counts = dict.fromkeys(("pending", "claimed", "running", "completed", "failed",
                            "killed", "blocked"), 0)
    flow = WorkflowStatus("w", 70, counts, [], [], [], 0, 15.8, 14 / 15.8, True)
    assert speed(flow) == " 15.8/s ETA 1s"
    assert speed(flow._replace(eta=61.2)) == " 15.8/s ETA 1m02s"


def test_the_same_state_directory_given_twice_is_fine(procs: Processes, tmp_path: Path,
                                                      state: Path) -> None:
    script = tmp_path / "hostile.py"
    script.write_text(HOSTILE)
    project = tmp_path / "project"
    assert procs.python(script, project / ".laufband").returncode == 0
    same = procs.run([*CLI, "status", project, "--path", project / ".laufband", "--json"])
    assert same.returncode == 0, same.stderr
    assert procs.python(script, state).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "state.db").write_bytes((state / "state.db").read_bytes())
    two = procs.run([*CLI, "status", other, "--path", state])
    assert two.returncode == 1
    assert two.stderr == (f"error: two state directories given, {str(other)!r} and --path"
                          f" {str(state)!r}: give one\n")
