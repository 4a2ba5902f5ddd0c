"""Packaging: the version, and the oldest filelock pyproject.toml allows, for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import laufband
from tests.helpers.procs import RUN_DEADLINE, Processes, next_line

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL_VERSION = (0, 2, 1)  # the original laufband on PyPI: ours must sort above it


def pyproject() -> dict[str, Any]:
    """pyproject.toml, parsed."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def release(version: str) -> tuple[int, ...]:
    """``"0.3.0"`` -> ``(0, 3, 0)``."""
    assert re.fullmatch(r"\d+(\.\d+)*", version), version
    return tuple(int(part) for part in version.split("."))


def minimum_filelock() -> str:
    """The lowest filelock version pyproject.toml accepts."""
    [spec] = [d for d in pyproject()["project"]["dependencies"] if d.startswith("filelock")]
    found = re.fullmatch(r"filelock\s*>=\s*([\d.]+)", spec)
    assert found, f"expected filelock>=X.Y.Z, found {spec!r}"
    return found.group(1)


def test_version_is_0_3_0_above_the_original_laufband(procs: Processes) -> None:
    result = procs.python("-m", "laufband", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "laufband 0.3.0"
    assert laufband.__version__ == "0.3.0"
    assert release(laufband.__version__) > ORIGINAL_VERSION


def test_console_script_prints_the_version(procs: Processes) -> None:
    script = Path(sys.executable).parent / "laufband"
    if not script.exists():
        pytest.skip("the laufband console script is not installed next to this python")
    result = procs.run([script, "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"laufband {laufband.__version__}"


def test_pyproject_takes_the_version_from_the_package() -> None:
    config = pyproject()
    assert "version" not in config["project"]
    assert "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "laufband.__version__"}
    # setuptools reads the literal without importing laufband: it must stay a literal.
    source = (ROOT / "laufband" / "__init__.py").read_text()
    assert re.search(r'^__version__ = "\d+\.\d+\.\d+"$', source, re.MULTILINE)


WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import filelock
    from laufband import Laufband

    state, log = sys.argv[1], Path(sys.argv[2])
    print(filelock.__version__, filelock.__file__, flush=True)
    worker = Laufband(list(range(20)), path=state, name="pinned",
                      tqdm_kwargs={"disable": True})
    other = Laufband([], path=state, name="other", tqdm_kwargs={"disable": True})
    for item in worker:
        time.sleep(0.01)
        with worker.lock:  # user.lock: graphband's FileLock, one instance per process
            other.lock.acquire(timeout=10)  # the same instance again: re-entrant
            other.lock.release()
            with log.open("a") as out:
                out.write(f"{item}\\n")
""")

STALE_SOFT_LOCK = textwrap.dedent("""
    import sys, time
    from filelock import SoftFileLock
    lock = SoftFileLock(sys.argv[1])  # kept: a collected lock releases itself
    lock.acquire()
    print("held", flush=True)
    time.sleep(600)
""")


@pytest.fixture(scope="module")
def pinned_filelock(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The minimum filelock of pyproject.toml, installed alone into a directory."""
    version = minimum_filelock()
    target = tmp_path_factory.mktemp("filelock") / version
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--disable-pip-version-check", "--target", str(target), f"filelock=={version}"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"pip cannot install filelock=={version}:\n{result.stderr}"
    return version, target


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("lock", ["file", "soft"])
def test_the_minimum_filelock_runs_two_workers(
        pinned_filelock: tuple[str, Path], lock: str, state: Path, tmp_path: Path,
        procs: Processes) -> None:
    version, target = pinned_filelock
    inherited = os.environ.get("PYTHONPATH")
    env = {"PYTHONPATH": os.pathsep.join([str(target), str(ROOT), *filter(None, [inherited])]),
           "LAUFBAND_LOCK": lock}
    if lock == "soft":  # a soft lock left by a killed process must not stop the run
        state.mkdir()
        holder = procs.start("-c", STALE_SOFT_LOCK, state / "state.lock", env=env)
        assert next_line(holder, what="the holder to hold the lock").strip() == "held"
        holder.kill()
        holder.wait(timeout=RUN_DEADLINE)
        assert (state / "state.lock").exists()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "done.log"
    workers = [procs.start(script, state, log, env=env, cwd=tmp_path) for _ in range(2)]
    results = procs.wait_all(workers, deadline=60)
    for code, out, err in results:
        assert code == 0, err
        reported_version, module = out.split()[:2]
        assert reported_version == version
        assert Path(module).is_relative_to(target), module
    assert Counter(log.read_text().split()) == {str(i): 1 for i in range(20)}


def test_import_is_light(procs: Processes) -> None:
    heavy = ["joblib", "networkx", "typer", "rich", "mpi4py"]
    code = f"import sys, laufband; print([m for m in {heavy!r} if m in sys.modules])"
    result = procs.python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
