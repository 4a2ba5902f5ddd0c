"""Every example in examples/ runs as written (in a temporary directory)."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.test_mpi import mpiexec

if TYPE_CHECKING:
    from tests.helpers.procs import Processes

pytestmark = pytest.mark.timeout(240)
EXAMPLES = Path(__file__).parent.parent / "examples"
EXAMPLE_DEADLINE = 200.0  # seconds one run of an example may take


def copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copy(EXAMPLES / name, tmp_path / name))


def test_ase_s22_four_workers_write_each_frame_once(tmp_path: Path, procs: Processes) -> None:
    ase_io = pytest.importorskip("ase.io")
    from ase.collections import s22

    script = copy("ase_s22.py", tmp_path)
    runs = procs.wait_all([procs.start(script, cwd=tmp_path) for _ in range(4)])
    assert [code for code, _, _ in runs] == [0] * 4, runs
    frames = ase_io.read(tmp_path / "frames.xyz", index=":")
    assert len(frames) == 22
    assert Counter(f.get_chemical_formula() for f in frames) == Counter(
        a.get_chemical_formula() for a in s22)
    assert all(f.calc is not None and "energy" in f.calc.results for f in frames)


def test_graph_pipeline_with_and_without_gpu(tmp_path: Path, procs: Processes) -> None:
    script = copy("graph.py", tmp_path)
    cpu = procs.start(script, cwd=tmp_path)
    gpu = procs.start(script, cwd=tmp_path, env={"LAUFBAND_LABELS": "gpu"})
    assert [code for code, _, _ in procs.wait_all([cpu, gpu])] == [0, 0]
    log = [json.loads(line) for line in (tmp_path / "pipeline/log.jsonl").read_text().splitlines()]
    order = [entry["task"] for entry in log]
    assert all(entry["labels"] == ["gpu"] for entry in log if entry["task"].startswith("train"))
    counts = Counter(order)
    assert 1 <= counts.pop("benchmark") <= 2  # max_parallel_workers=2: one or both workers
    assert counts == Counter(
        ["prepare", "report"] + [f"{step}-{m}" for step in ("train", "evaluate")
                                 for m in ("small", "medium", "large")])
    assert order.index("prepare") < order.index("train-small") < order.index("evaluate-small")
    assert order.index("report") < order.index("benchmark")


@pytest.mark.parametrize(("name", "expected"), [
    ("pmap_example.py", "200 results; primes below 3990: 550"),
    ("joblib_example.py", "500 norms, the largest 866.03"),
])
def test_memoizing_examples_give_the_same_output_twice(
        tmp_path: Path, procs: Processes, name: str, expected: str) -> None:
    script = copy(name, tmp_path)
    for _ in range(2):  # the second run reads every result from .laufband
        done = procs.python(script, cwd=tmp_path, timeout=EXAMPLE_DEADLINE)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected


@pytest.mark.mpi
def test_mpi_example_under_two_ranks(tmp_path: Path, procs: Processes) -> None:
    script = copy("mpi_example.py", tmp_path)
    done = procs.run([mpiexec(), "-n", "2", sys.executable, script], cwd=tmp_path,
                     timeout=EXAMPLE_DEADLINE)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in (tmp_path / "mpi_results.txt").read_text().splitlines()]
    assert sorted(int(item) for item, _ in rows) == list(range(100))
    assert {rank for _, rank in rows} == {"0", "1"}


def test_slurm_scripts_are_valid_bash(procs: Processes) -> None:
    scripts = sorted((EXAMPLES / "slurm").glob("*.sh"))
    assert scripts
    for script in scripts:
        checked = procs.run(["bash", "-n", script])
        assert checked.returncode == 0, checked.stderr
