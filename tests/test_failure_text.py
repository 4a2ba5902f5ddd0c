"""What a worker keeps of a user's exception: whatever its message holds (surrogates,
a broken ``__str__``, many lines, a megabyte), the worker goes on, the failure is
stored, and the CLI's one-line views name the exception's type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.helpers.procs import Processes

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-m", "laufband"]

PROLOGUE = """
import os, sys
from laufband import Laufband
class BadStr(Exception):
    def __str__(self):
        raise ValueError("str is broken")
ERRORS = {
    "surrogate": lambda: FileNotFoundError("cannot read " + os.fsdecode(b"caf\\xe9.xyz")),
    "badstr": lambda: BadStr(),
    "lines": lambda: RuntimeError("line one\\nline two\\nline three"),
    "huge": lambda: RuntimeError("x" * 1_000_000),
}
kind, mode = sys.argv[1], sys.argv[2]
"""
CAUGHT = PROLOGUE + """
worker = Laufband([0, 1, 2], path=sys.argv[3], name=kind, tqdm_kwargs={"disable": True})
for i in worker:
    with worker.catch():
        if i == 1:
            raise ERRORS[kind]()
print("loop finished")
"""
UNCAUGHT = PROLOGUE + """
with Laufband([0, 1, 2], path=sys.argv[3], name=kind, tqdm_kwargs={"disable": True}) as w:
    for i in w:
        if i == 1:
            raise ERRORS[kind]()
"""


def run_worker(procs: Processes, tmp_path: Path, state: Path, kind: str,
               mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / f"{mode}.py"
    script.write_text(CAUGHT if mode == "caught" else UNCAUGHT)
    return procs.python(script, kind, mode, state)


def failures(procs: Processes, state: Path, kind: str) -> list[dict[str, Any]]:
    listed = procs.run([*CLI, "failures", "--path", state, "-w", kind, "--json"])
    assert listed.returncode == 0, listed.stderr
    found: list[dict[str, Any]] = json.loads(listed.stdout)["failures"]
    return found


def brief(procs: Processes, state: Path, kind: str) -> str:
    shown = procs.run([*CLI, "failures", "--path", state, "-w", kind, "--brief"],
                      env={"COLUMNS": "100"})
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stderr
    return shown.stdout


@pytest.mark.parametrize(("kind", "error"), [
    ("surrogate", "FileNotFoundError: cannot read caf\\udce9.xyz"),
    ("badstr", "BadStr: <exception str() failed>"),
])
def test_an_unprintable_message_is_stored_and_the_loop_goes_on(
        procs: Processes, tmp_path: Path, state: Path, kind: str, error: str) -> None:
    result = run_worker(procs, tmp_path, state, kind, "caught")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "loop finished\n"
    [failure] = failures(procs, state, kind)
    assert failure["error"] == error
    assert failure["traceback"].rstrip().endswith(error)
    status = procs.run([*CLI, "status", "--path", state, "--json"])
    [flow] = json.loads(status.stdout)["workflows"]
    assert flow["counts"]["failed"] == 1
    assert flow["counts"]["completed"] == 2
    assert [w["state"] for w in flow["workers"]] == ["offline"]


def test_an_uncaught_exception_whose_str_fails_is_stored_with_its_type(
        procs: Processes, tmp_path: Path, state: Path) -> None:
    result = run_worker(procs, tmp_path, state, "badstr", "uncaught")
    assert result.returncode == 1
    assert "str is broken" not in result.stderr
    assert "During handling of the above exception" not in result.stderr
    [failure] = failures(procs, state, "badstr")
    assert failure["error"] == "BadStr: <exception str() failed>"


def test_a_message_of_many_lines_keeps_its_type_in_one_line_views(
        procs: Processes, tmp_path: Path, state: Path) -> None:
    assert run_worker(procs, tmp_path, state, "lines", "caught").returncode == 0
    [failure] = failures(procs, state, "lines")
    assert failure["error"] == "RuntimeError: line one\nline two\nline three"
    assert "failed 1 (1): RuntimeError: line one ...\n" in brief(procs, state, "lines")
    status = procs.run([*CLI, "status", "--path", state], env={"COLUMNS": "100"})
    assert "failed 1 (1): RuntimeError: line one ..." in status.stdout


def test_a_huge_message_is_stored_cut_short(procs: Processes, tmp_path: Path,
                                            state: Path) -> None:
    assert run_worker(procs, tmp_path, state, "huge", "caught").returncode == 0
    [failure] = failures(procs, state, "huge")
    assert len(failure["error"]) <= 1000
    assert failure["error"].startswith("RuntimeError: xxx")
    assert failure["error"].endswith("... (1,000,014 characters in all)")
    assert len(failure["traceback"]) <= 64 * 1024
    assert "characters of the traceback left out" in failure["traceback"]
    assert len(brief(procs, state, "huge")) < 1500


LOCK_PROBE = """
import sys, time
from laufband import Laufband, Monitor
state = sys.argv[1]
class Probe:
    def __repr__(self):
        began = time.monotonic()
        Monitor(state).status()  # a reader: waits while a writer holds the state lock
        print(f"repr waited {time.monotonic() - began:.1f} s", flush=True)
        return "Probe()"
try:
    for item in Laufband([Probe()], path=state, name="probe", tqdm_kwargs={"disable": True}):
        raise RuntimeError("left")
except RuntimeError:
    pass
"""


def test_an_items_repr_runs_without_the_state_lock(procs: Processes, tmp_path: Path,
                                                   state: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(LOCK_PROBE)
    result = procs.python(script, state)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "repr waited 0.0 s\n"
    [failure] = failures(procs, state, "probe")
    assert failure["item"] == "Probe()"
