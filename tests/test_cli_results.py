"""`laufband results`, run for real in subprocesses."""

from __future__ import annotations

import csv
import io
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from laufband import Laufband, Monitor, pmap
from tests.helpers.procs import HELPERS, Processes

pytestmark = pytest.mark.timeout(180)
CLI = [sys.executable, "-m", "laufband"]
QUIET = {"disable": True}


def cli(procs: Processes, *args: object, stdin: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    result = procs.run([*CLI, *map(str, args)], env={"COLUMNS": "100"}, stdin=stdin)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def pmap_run(procs: Processes, state: Path) -> list[int]:
    """Run tests/helpers/pmap_caller.py (pmap of x*x over 0..19 with 2 workers)."""
    result = procs.python(HELPERS / "pmap_caller.py", state, state.parent / "logs",
                          "--items", 20, "--first", 3, "--step", 7)
    assert result.returncode == 0, result.stderr
    returned: list[int] = json.loads(result.stdout.splitlines()[-1])
    assert returned == [x * x for x in range(3, 3 + 20 * 7, 7)]
    return returned


def test_results_round_trip_a_pmap_run_as_json_csv_and_pickle(state: Path, tmp_path: Path,
                                                              procs: Processes) -> None:
    returned = pmap_run(procs, state)
    as_json = cli(procs, "results", "--path", state, "-w", "squares")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == returned
    as_csv = cli(procs, "results", "--path", state, "-w", "squares", "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    assert [int(row["result"]) for row in csv.DictReader(io.StringIO(as_csv.stdout))] \
        == returned
    target = tmp_path / "results.pkl"
    as_pickle = cli(procs, "results", "--path", state, "-w", "squares", "-f", "pickle",
                    "-o", target)
    assert as_pickle.returncode == 0, as_pickle.stderr
    assert "20 result(s) written to" in as_pickle.stderr
    assert pickle.loads(target.read_bytes()) == returned
    assert Monitor(state).results("squares") == returned  # the same in Python


def test_results_of_dicts_are_csv_columns(state: Path, procs: Processes) -> None:
    rows = pmap(lambda x: {"x": x, "energy": -x / 2}, range(5), n=1, path=state,
                name="energies", progress=False)
    as_csv = cli(procs, "results", "--path", state, "-w", "energies", "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    read = [{"x": int(r["x"]), "energy": float(r["energy"])}
            for r in csv.DictReader(io.StringIO(as_csv.stdout))]
    assert read == rows


def cube(x: int) -> int:
    return x * x * x


def test_results_of_a_joblib_run(state: Path, procs: Processes) -> None:
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="laufband", n_jobs=2, path=state, name="cubes"):
        returned = Parallel()(delayed(cube)(x) for x in range(12))
    result = cli(procs, "results", "--path", state, "-w", "cubes")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == returned == [x ** 3 for x in range(12)]


def test_results_of_a_loop_workflow_say_there_are_none(state: Path, procs: Processes) -> None:
    for _ in Laufband(range(3), path=state, name="loop", tqdm_kwargs=QUIET):
        pass
    result = cli(procs, "results", "--path", state, "-w", "loop")
    assert result.returncode == 1
    assert "is a loop's (Laufband or Graphband) whose body saved no results" in " ".join(
        result.stderr.split())


def test_results_leave_out_failed_items_and_say_how_many(state: Path,
                                                         procs: Processes) -> None:
    def half(x: int) -> float:
        if x % 3 == 0:
            raise ValueError(x)
        return x / 2

    kept = pmap(half, range(9), n=1, path=state, name="half", on_error="skip",
                progress=False)
    result = cli(procs, "results", "--path", state, "-w", "half")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == list(kept)
    assert "3 of 9 task(s) of workflow 'half' have no result" in " ".join(result.stderr.split())


def not_finite(x: int) -> Any:
    return [float("nan"), float("inf"), -float("inf"), 1.5, {"e": float("nan")},
            (float("nan"), 2)][x]


def test_json_results_are_strict_json_with_null_for_nan_and_infinity(
        state: Path, procs: Processes) -> None:
    pmap(not_finite, range(6), n=1, path=state, name="odd", progress=False)
    result = cli(procs, "results", "--path", state, "-w", "odd")
    assert result.returncode == 0, result.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(result.stdout, parse_constant=refuse) == [
        None, None, None, 1.5, {"e": None}, [None, 2]]


def test_results_of_tasks_named_by_undecodable_file_names(state: Path, tmp_path: Path,
                                                          procs: Processes) -> None:
    """A task id from a file name that is not UTF-8 (a surrogate escape, as os.listdir
    gives it): JSON and CSV write it escaped, JSON reads it back."""
    from laufband import Graphband, Task

    name = "frame-\udce9.xyz"
    worker = Graphband([Task("ok"), Task(name)], path=state, name="files", tqdm_kwargs=QUIET)
    for task in worker:
        worker.save(len(task.id))
    shown = cli(procs, "results", "-w", "files", "--path", state)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == [{"task": "ok", "result": 2},
                                        {"task": name, "result": len(name)}]
    written = cli(procs, "results", "-w", "files", "--path", state, "--format", "csv",
                  "-o", tmp_path / "r.csv")
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "r.csv").read_text().splitlines() == [
        "task,result", "ok,2", f"frame-\\udce9.xyz,{len(name)}"]
