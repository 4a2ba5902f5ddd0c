"""Reading commands on a state directory the user can only read: they work, and write,
create or migrate nothing (every file byte-identical, every mtime unchanged)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import laufband
from tests.helpers.procs import HELPERS, Processes

pytestmark = pytest.mark.timeout(180)
READERS = [["status"], ["status", "--json"], ["watch", "--once"],
           ["failures", "-w", "structures"], ["failures", "-w", "structures", "--json"],
           ["results", "-w", "squares"]]
Snapshot = dict[str, tuple[int, int, bytes | None]]


def build(procs: Processes, state: Path) -> None:
    """Two workflows: 'structures' (a loop, 2 failures) and 'squares' (pmap results)."""
    result = procs.python(HELPERS / "catch_worker.py", state, "--items", 6, "--fail-on", 2, 4)
    assert result.returncode == 0, result.stderr
    result = procs.python(HELPERS / "pmap_caller.py", state, state.parent / "logs",
                          "--items", 5)
    assert result.returncode == 0, result.stderr


def snapshot(root: Path) -> Snapshot:
    """Every file and folder under ``root``: mode, mtime and content."""
    found: Snapshot = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        found[str(path.relative_to(root))] = (info.st_mode, info.st_mtime_ns, content)
    return found


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(stat.S_IMODE(path.lstat().st_mode) & ~0o222)


def make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(stat.S_IMODE(path.lstat().st_mode) | 0o200)


def check_outputs(results: list[subprocess.CompletedProcess[str]]) -> None:
    for command, result in zip(READERS, results, strict=True):
        assert result.returncode == 0, (command, result.stderr)
        assert "Traceback" not in result.stderr
    status, as_json, watch, failures, failures_json, squares = results
    assert "structures" in status.stdout
    assert "squares" in watch.stdout
    counts = {w["name"]: w["counts"] for w in json.loads(as_json.stdout)["workflows"]}
    assert counts["structures"]["failed"] == 2
    assert counts["squares"]["completed"] == 5
    assert "SCF did not converge for structure-004" in failures.stdout
    assert len(json.loads(failures_json.stdout)["failures"]) == 2
    assert json.loads(squares.stdout) == [x * x for x in range(5)]


def test_reading_commands_work_on_a_read_only_state_and_change_nothing(
        state: Path, procs: Processes) -> None:
    build(procs, state)
    make_read_only(state)
    try:
        before = snapshot(state)
        results = [procs.run([sys.executable, "-m", "laufband", *command, "--path", str(state)],
                             env={"COLUMNS": "100"}) for command in READERS]
        assert snapshot(state) == before
    finally:
        make_writable(state)
    check_outputs(results)


# Columns version 8 added (priorities, fingerprints, retry delays).
V8_COLUMNS = [("tasks", "priority"), ("tasks", "fingerprint"), ("tasks", "not_before"),
              ("workflows", "prioritized"), ("workflows", "delayed"),
              ("workflows", "invalidated")]


@pytest.mark.parametrize(("version", "missing"), [("7", []), ("6", ["failures", "samples"]),
                                                  ("5", ["runs", "failures", "samples"])])
def test_reading_an_older_state_directory_neither_migrates_nor_writes_it(
        state: Path, procs: Processes, version: str, missing: list[str]) -> None:
    """A version-7, -6 or -5 directory (before failures were kept, or priorities and
    fingerprints) is read as it is: its failures come from its events."""
    build(procs, state)
    with sqlite3.connect(state / "state.db") as conn:  # as that laufband left it
        for table in missing:
            conn.execute(f"DROP TABLE {table}")
        conn.execute("DROP INDEX deps_by_dep")
        for table, column in V8_COLUMNS:
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    conn.close()
    before = snapshot(state)  # writable: reading must not migrate it either
    results = [procs.run([sys.executable, "-m", "laufband", *command, "--path", str(state)],
                         env={"COLUMNS": "100"}) for command in READERS]
    assert snapshot(state) == before
    check_outputs(results)
    result = procs.python(HELPERS / "catch_worker.py", state, "--items", 6)  # a worker migrates
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(state / "state.db") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() \
            == (str(laufband.store.SCHEMA_VERSION),)
        assert conn.execute("SELECT count(*) FROM failures").fetchone() == (2,)
        columns = {(table, row[1]) for table in ("tasks", "workflows")
                   for row in conn.execute(f"PRAGMA table_info({table})")}
        assert set(V8_COLUMNS) <= columns
    conn.close()


def other_user() -> tuple[list[str], dict[str, str]] | str:
    """The command prefix and environment that run this laufband as user nobody, or why
    that cannot be done here."""
    if os.geteuid() != 0:
        return "not root: the test's own user already lacks the permissions"
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return "setpriv is missing"
    prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    env = {"PYTHONPATH": os.pathsep.join([str(Path(laufband.__file__).parent.parent),
                                          sysconfig.get_paths()["purelib"]]),
           "PATH": "/usr/bin:/bin", "COLUMNS": "100"}
    for python in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin")):
        if python is None:
            continue
        probe = subprocess.run([*prefix, python, "-c", "import laufband.cli"], env=env,
                               capture_output=True, check=False)
        if probe.returncode == 0:
            return [*prefix, python], env
    return f"no {version} that user nobody can run with this laufband"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder that user nobody can reach (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="laufband-readonly-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        make_writable(folder)
        shutil.rmtree(folder)


def test_reading_commands_work_for_a_user_who_can_only_read(
        shared_dir: Path, procs: Processes) -> None:
    runner = other_user()
    if isinstance(runner, str):
        pytest.skip(f"cannot run as a non-root user: {runner}")
    prefix, env = runner
    state = shared_dir / "state"
    build(procs, state)
    for path in [state, *state.rglob("*")]:
        os.chown(path, 65534, -1)  # nobody's: a directory of someone else's is refused
    make_read_only(state)
    before = snapshot(state)
    results = [procs.run([*prefix, "-m", "laufband", *command, "--path", str(state)], env=env)
               for command in READERS]
    assert snapshot(state) == before
    check_outputs(results)
    writer = procs.run([*prefix, "-m", "laufband", "retry", "--path", str(state), "-w",
                        "structures"], env=env)
    assert writer.returncode == 1
    assert "not writable" in writer.stderr
    assert snapshot(state) == before
