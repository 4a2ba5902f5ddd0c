"""Commands laufband suggests run as printed, whatever the workflow's name: the
worker's last line, status's "... N more", the results hint."""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

import pytest

from laufband import pmap

if TYPE_CHECKING:
    from pathlib import Path

    from tests.helpers.procs import Processes

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-m", "laufband"]
NAMES = ["with space", "nl\nname\x1b[31m", "pmap-<lambda>-abc"]
FAILING = """
import sys
from laufband import Laufband
worker = Laufband(range(6), path=sys.argv[1], name=sys.argv[2], tqdm_kwargs={"disable": True})
for i in worker:
    with worker.catch():
        if i < 4:
            raise RuntimeError(f"failed {i}")
"""


def run_as_printed(procs: Processes, suggested: str, tmp_path: Path, state: Path) -> str:
    """Run a suggested ``laufband ...`` command in bash; return its output."""
    script = tmp_path / "suggested.sh"
    script.write_text(f'laufband() {{ "{sys.executable}" -m laufband "$@"; }}\n{suggested}\n')
    result = procs.run(["bash", str(script)], env={"LAUFBAND_PATH": str(state)})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("name", NAMES)
def test_the_workers_last_line_and_status_suggest_commands_that_run(
        procs: Processes, tmp_path: Path, state: Path, name: str) -> None:
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    ran = procs.python(script, state, name)
    assert ran.returncode == 0, ran.stderr
    assert "\x1b" not in ran.stderr
    [retry] = re.findall(r"`(laufband retry [^`]*)`", ran.stderr)
    assert "4 task(s) of workflow" in run_as_printed(procs, retry, tmp_path, state)
    assert "\x1b" not in ran.stderr
    ran = procs.python(script, state, name)  # they fail again
    status = procs.run([*CLI, "status", "--path", state], env={"COLUMNS": "200"})
    assert "\x1b" not in status.stdout
    [more] = re.findall(r"\.\.\. 1 more: (laufband failures .*?) *│", status.stdout)
    assert "4 failure(s) of workflow" in run_as_printed(procs, more, tmp_path, state)


def test_the_results_hint_suggests_a_command_that_runs(procs: Processes, tmp_path: Path,
                                                        state: Path) -> None:
    name = "pmap-<lambda>-abc"
    pmap(lambda x: 1 / x, [0, 1], n=1, path=state, name=name, on_error="skip",
         progress=False)
    result = procs.run([*CLI, "results", "--path", state, "-w", name],
                       env={"COLUMNS": "300"})
    assert result.returncode == 0, result.stderr
    [hint] = re.findall(r"see (laufband failures .*)$", result.stderr.strip())
    assert "1 failure(s) of workflow" in run_as_printed(procs, hint, tmp_path, state)
