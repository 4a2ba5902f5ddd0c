"""`laufband results` when it cannot do what is asked: a file it cannot write, results
of classes it cannot load. One line each, never a traceback."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from laufband import pmap

if TYPE_CHECKING:
    from tests.helpers.procs import Processes

pytestmark = pytest.mark.timeout(120)
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "laufband")  # cwd not on sys.path

PACKAGE = """
from dataclasses import dataclass
@dataclass
class Energy:
    x: int
    e: float
"""
SCRIPT = """
import sys
from dataclasses import dataclass
from laufband import pmap
from mypkg import Energy
@dataclass
class Local:
    x: int
def packaged(x):
    return Energy(x, -x / 2)
def local(x):
    return Local(x)
print(pmap(packaged, range(3), n=1, path=sys.argv[1], name="packaged"))
print(pmap(local, range(3), n=1, path=sys.argv[1], name="local"))
"""


def results(procs: Processes, *args: object, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
    result = procs.run([CONSOLE_SCRIPT, "results", *map(str, args)], cwd=cwd,
                       env={"COLUMNS": "100"})
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_an_output_file_that_cannot_be_written_is_one_line(state: Path, tmp_path: Path,
                                                          procs: Processes) -> None:
    pmap(abs, [-1, -2], n=1, path=state, name="abs", progress=False)
    for target, why in ((tmp_path / "nonexistent" / "r.json", "No such file or directory"),
                        (tmp_path, "Is a directory")):
        result = results(procs, "--path", state, "-w", "abs", "-o", target)
        assert result.returncode == 1
        assert result.stderr == (f"error: cannot write {target} ({why}): give -o a file in a"
                                 " directory that exists and that you can write\n")


@pytest.fixture
def project(tmp_path: Path, state: Path, procs: Processes) -> Path:
    """A project whose pmap results are instances of its package's class and of a class
    defined in its script."""
    folder = tmp_path / "project"
    (folder / "mypkg").mkdir(parents=True)
    (folder / "mypkg" / "__init__.py").write_text(PACKAGE)
    (folder / "run.py").write_text(SCRIPT)
    ran = procs.python(folder / "run.py", state, cwd=folder)
    assert ran.returncode == 0, ran.stderr
    return folder


def test_results_of_a_package_load_from_the_project_directory(
        project: Path, state: Path, tmp_path: Path, procs: Processes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(project))  # to unpickle what it wrote here
    target = tmp_path / "r.pkl"
    loaded = results(procs, "--path", state, "-w", "packaged", "-f", "pickle", "-o", target,
                     cwd=project)
    assert loaded.returncode == 0, loaded.stderr
    assert [(e.x, e.e) for e in pickle.loads(target.read_bytes())] == [
        (0, -0.0), (1, -0.5), (2, -1.0)]
    as_json = results(procs, "--path", state, "-w", "packaged", cwd=project)
    assert as_json.returncode == 1
    assert as_json.stderr.startswith("error: the results are not JSON (Object of type"
                                     " Energy is not JSON serializable): use --format pickle")


def test_results_of_classes_that_cannot_be_loaded_are_one_line(
        project: Path, state: Path, tmp_path: Path, procs: Processes) -> None:
    elsewhere = results(procs, "--path", state, "-w", "packaged", cwd=tmp_path)
    assert elsewhere.returncode == 1
    assert elsewhere.stderr == (
        "error: the results of workflow 'packaged' hold objects of module 'mypkg', which"
        " cannot be imported here (No module named 'mypkg'): run laufband results in the"
        " directory that holds it, or put it on PYTHONPATH\n")
    local = results(procs, "--path", state, "-w", "local", "-f", "pickle", "-o",
                    tmp_path / "r.pkl", cwd=project)
    assert local.returncode == 1
    assert local.stderr == (
        "error: the results of workflow 'local' hold objects of a class defined in the"
        " script that ran pmap (__main__), which only that script can load: read them"
        " there with laufband.Monitor(path).results('local'), or move the class into a"
        " module\n")
