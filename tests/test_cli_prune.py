"""`laufband prune`, run for real in subprocesses: what it lists, that it asks, and
that it keeps what is used meanwhile."""

from __future__ import annotations

import os
import select
import sqlite3
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from laufband import Laufband, Monitor, pmap

if TYPE_CHECKING:
    from pathlib import Path

    from tests.helpers.procs import Processes

pytestmark = pytest.mark.timeout(180)
CLI = [sys.executable, "-m", "laufband"]
QUIET = {"disable": True}
HOUR = 3600.0
PROMPT_DEADLINE = 30.0


def cli(procs: Processes, *args: object, stdin: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    result = procs.run([*CLI, *map(str, args)], env={"COLUMNS": "100"}, stdin=stdin)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def square(x: int) -> int:
    return x * x


def triple(x: int) -> int:
    return 3 * x


def backdate(state: Path, name: str, seconds: float) -> None:
    """Make workflow ``name`` look unused for ``seconds`` (its creation, workers, use)."""
    with sqlite3.connect(state / "state.db") as db:
        [(wf,)] = db.execute("SELECT id FROM workflows WHERE name = ?", (name,))
        then = time.time() - seconds
        db.execute("UPDATE workflows SET created = ? WHERE id = ?", (then, wf))
        db.execute("UPDATE workers SET seen = ? WHERE wf = ?", (then, wf))
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (repr(then), f"used:{wf}"))


def workflows_for_pruning(state: Path) -> None:
    """Two digests of pmap function f, the older unused for two hours, one of g, a loop
    unused for two hours and a fresh one."""
    pmap(square, range(3), n=1, path=state, name="pmap-f-aaaaaaaaaaaa", progress=False)
    for _ in Laufband(range(2), path=state, name="old-loop", tqdm_kwargs=QUIET):
        pass
    pmap(square, range(3), n=1, path=state, name="pmap-f-bbbbbbbbbbbb", progress=False)
    pmap(square, range(3), n=1, path=state, name="pmap-g-cccccccccccc", progress=False)
    for _ in Laufband(range(2), path=state, name="fresh-loop", tqdm_kwargs=QUIET):
        pass
    backdate(state, "pmap-f-aaaaaaaaaaaa", 2 * HOUR)
    backdate(state, "old-loop", 2 * HOUR)


ALL = ["pmap-f-aaaaaaaaaaaa", "old-loop", "pmap-f-bbbbbbbbbbbb", "pmap-g-cccccccccccc",
       "fresh-loop"]


def listed(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.split()[0] for line in result.stdout.splitlines()[1:]
            if line.startswith("  ")]


def test_prune_dry_run_lists_and_removes_nothing(state: Path, procs: Processes) -> None:
    workflows_for_pruning(state)
    before = (state / "state.db").read_bytes()
    aged = cli(procs, "prune", "--path", state, "--older-than", "1h", "--dry-run")
    assert aged.returncode == 0, aged.stderr
    assert listed(aged) == ["pmap-f-aaaaaaaaaaaa", "old-loop"]
    assert "(unused for 2.0h)" in aged.stdout
    superseded = cli(procs, "prune", "--path", state, "--superseded", "--dry-run")
    assert listed(superseded) == ["pmap-f-aaaaaaaaaaaa"]
    assert "(superseded by pmap-f-bbbbbbbbbbbb)" in superseded.stdout
    assert (state / "state.db").read_bytes() == before
    assert Monitor(state).workflows() == ALL


def test_superseded_and_older_than_together_need_both(state: Path, procs: Processes) -> None:
    workflows_for_pruning(state)
    both = cli(procs, "prune", "--path", state, "--superseded", "--older-than", "1h",
               "--dry-run")
    assert listed(both) == ["pmap-f-aaaaaaaaaaaa"]
    assert "(superseded by pmap-f-bbbbbbbbbbbb, unused for 2.0h)" in both.stdout
    too_young = cli(procs, "prune", "--path", state, "--superseded", "--older-than", "3h",
                    "--dry-run")
    assert "nothing to prune" in too_young.stdout


def test_prune_asks_then_removes_exactly_those(state: Path, procs: Processes) -> None:
    workflows_for_pruning(state)
    refused = cli(procs, "prune", "--path", state, "--older-than", "1h", stdin="n\n")
    assert refused.returncode == 1
    assert "Remove these 2 workflow(s)?" in refused.stdout
    assert Monitor(state).workflows() == ALL
    done = cli(procs, "prune", "--path", state, "--older-than", "1h", "--yes")
    assert done.returncode == 0, done.stderr
    assert "2 workflow(s) removed" in done.stdout
    assert Monitor(state).workflows() == ["pmap-f-bbbbbbbbbbbb", "pmap-g-cccccccccccc",
                                          "fresh-loop"]
    superseded_only = cli(procs, "prune", "--path", state, "--superseded", "--yes")
    assert "nothing to prune" in superseded_only.stdout


def test_the_digest_used_last_is_kept_even_when_all_its_results_were_stored(
        state: Path, procs: Processes) -> None:
    """v1 computed, v3 computed, v1 computes more, then v3 runs again, every result
    stored: v3 is the code in use, v1 is superseded."""
    v1, v3 = "pmap-energy-111111111111", "pmap-energy-333333333333"
    pmap(square, range(4), n=1, path=state, name=v1, progress=False)
    pmap(triple, range(4), n=1, path=state, name=v3, progress=False)
    pmap(square, range(10), n=1, path=state, name=v1, progress=False)
    assert pmap(triple, range(4), n=1, path=state, name=v3, progress=False) == [0, 3, 6, 9]
    result = cli(procs, "prune", "--path", state, "--superseded", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert listed(result) == [v1]
    assert f"(superseded by {v3})" in result.stdout


def read_until(proc: subprocess.Popen[bytes], text: bytes) -> bytes:
    """Read ``proc``'s stdout until ``text`` shows up (a prompt ends with no newline)."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + PROMPT_DEADLINE
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} within {PROMPT_DEADLINE} s: {seen!r}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"ended before {text!r}: {seen!r}"
            seen += chunk
    return seen


def test_a_workflow_used_while_prune_asks_is_kept(state: Path, procs: Processes) -> None:
    workflows_for_pruning(state)
    prune = procs.popen([*CLI, "prune", "--path", str(state), "--superseded"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    read_until(prune, b"Remove these 1 workflow(s)? [y/N]:")
    # The old digest is called again (every result stored) while prune waits.
    assert pmap(square, range(3), n=1, path=state, name="pmap-f-aaaaaaaaaaaa",
                progress=False) == [0, 1, 4]
    out, err = prune.communicate(b"y\n", timeout=PROMPT_DEADLINE)
    assert prune.returncode == 0, err
    assert b"kept pmap-f-aaaaaaaaaaaa: used since it was listed\n0 workflow(s) removed" in out
    assert Monitor(state).workflows() == ALL


def test_prune_needs_a_criterion_and_an_age_with_a_unit(state: Path,
                                                        procs: Processes) -> None:
    workflows_for_pruning(state)
    result = cli(procs, "prune", "--path", state)
    assert result.returncode == 1
    assert "say what to prune: --older-than AGE" in result.stderr
    for age in ("soon", "7", "0s", "0"):
        bad = cli(procs, "prune", "--path", state, "--older-than", age)
        assert bad.returncode == 1
        assert f"not an age: {age!r}: give a number above 0 with a unit" in bad.stderr
    assert Monitor(state).workflows() == ALL
