"""An unsafe or broken state directory ends in one ``StateError`` line, never a crash.

A state directory that group or others can write, or that another user owns, is
refused before anything is created in it; nothing in it is followed through a
symlink; a directory that is removed, turns read-only or has garbage written over its
database while a worker runs stops that worker with one ``StateError`` line, and the
next worker finishes the work. Real processes, real files, real (tmpfs) mounts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from laufband import Laufband, StateError
from tests.helpers.mounts import COMMAND_DEADLINE, tmpfs
from tests.helpers.mounts import run as run_command
from tests.helpers.procs import (
    RUN_DEADLINE,
    STARTUP_DEADLINE,
    Processes,
    completions,
    integrity,
    task_events,
    task_states,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)
QUIET = {"disable": True}
CONTENT = b"precious: must stay as it is\n"
ITEMS = 200  # items of a worker that runs while its state directory breaks
PAUSE = 0.02  # seconds per item of that worker: ~4 s in all
FIRST_DONE = 3  # items the worker finishes before the directory breaks
ONE_LINE = "laufband.errors.StateError: "

LOOP = textwrap.dedent('''\
    """A Laufband worker that logs every item it finished and handles no error."""
    import os
    import sys
    import time
    from pathlib import Path

    from laufband import Laufband

    state, logs = sys.argv[1], Path(sys.argv[2])
    items, pause = int(sys.argv[3]), float(sys.argv[4])
    logs.mkdir(exist_ok=True)
    done = logs / f"{os.getpid()}.done"
    worker = Laufband(list(range(items)), path=state, name="work", tqdm_kwargs={"disable": True})
    for item in worker:
        time.sleep(pause)
        fd = os.open(done, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{item}\\n".encode())
        os.close(fd)
''')


@pytest.fixture
def loop(tmp_path: Path) -> Path:
    """The worker script (tests/helpers/worker.py retries on RuntimeError, which a
    StateError is, so it would never exit)."""
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    return script


def start(procs: Processes, loop: Path, state: Path, logs: Path, items: int = ITEMS,
          pause: float = PAUSE) -> subprocess.Popen[str]:
    """Start the worker script on ``state``, logging to ``logs``."""
    return procs.start(loop, state, logs, str(items), str(pause))


def finish(proc: subprocess.Popen[str], deadline: float = RUN_DEADLINE) -> tuple[int, str]:
    """Wait for a worker; return its exit code and stderr."""
    _, err = proc.communicate(timeout=deadline)
    return proc.returncode, err


def run(procs: Processes, loop: Path, state: Path, items: int = 3) -> tuple[int, str]:
    """Run a short worker on ``state`` to its end."""
    return finish(start(procs, loop, state, state.parent / "logs", items, 0.0))


def scrub(text: str, path: Path) -> str:
    """``text`` with ``path`` written as PATH (test names in it must not match words)."""
    return text.replace(str(path), "PATH")


def assert_one_state_error(code: int, err: str, names: Path) -> str:
    """The process ended with exit code 1 and one StateError line naming ``names``
    (or a file in it); return that line, scrubbed of ``names``."""
    assert code == 1, err[-3000:]
    assert err.count("Traceback") == 1, err[-3000:]
    assert "During handling of the above exception" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(ONE_LINE), err[-3000:]
    assert str(names) in last, last
    return scrub(last, names)


def refused(state: Path) -> str:
    """The message of the StateError a loop over ``state`` raises in this process,
    scrubbed of ``state``."""
    with pytest.raises(StateError) as caught:
        list(Laufband(range(3), path=state, tqdm_kwargs=QUIET))
    message = str(caught.value)
    assert "\n" not in message, message
    assert str(state) in message, message
    return scrub(message, state)


def mode(path: Path) -> int:
    """Permission bits of ``path`` itself."""
    return stat.S_IMODE(os.lstat(path).st_mode)


def wait_until_running(proc: subprocess.Popen[str], logs: Path) -> None:
    """Wait until the worker has finished FIRST_DONE items; fail if it ended first."""
    wait_for(lambda: sum(completions(logs).values()) >= FIRST_DONE or proc.poll() is not None,
             what=f"the worker to finish {FIRST_DONE} items")
    if proc.poll() is not None:
        _, err = proc.communicate()
        raise AssertionError(f"the worker ended early ({proc.returncode}): {err[-3000:]}")


def assert_all_completed(state: Path) -> None:
    """Every item of the workflow is completed and the database is sound."""
    states = task_states(state, "work")
    assert states == {str(i): "completed" for i in range(ITEMS)}
    assert integrity(state) == "ok"


@pytest.mark.parametrize("loose", [0o777, 0o775], ids=oct)
def test_a_directory_others_can_write_is_refused(state: Path, procs: Processes, loop: Path,
                                                 loose: int) -> None:
    """A directory writable by group or others: refused, nothing created in it."""
    state.mkdir()
    state.chmod(loose)
    message = refused(state)
    assert "writable by group or others" in message, message
    assert "chmod" in message, message
    line = assert_one_state_error(*run(procs, loop, state), state)
    assert "writable by group or others" in line, line
    assert not (state / "state.db").exists()
    assert list(state.iterdir()) == []
    assert mode(state) == loose


def test_a_directory_of_another_user_is_refused(state: Path, procs: Processes,
                                                loop: Path) -> None:
    """A directory owned by someone else (uid 65534): refused, nothing created in it."""
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    message = refused(state)
    assert "another user" in message, message
    line = assert_one_state_error(*run(procs, loop, state), state)
    assert "another user" in line, line
    assert list(state.iterdir()) == []


def outside_file(tmp_path: Path) -> Path:
    """A file outside the state directory with known content."""
    target = tmp_path / "precious.txt"
    target.write_bytes(CONTENT)
    return target


def test_a_symlinked_database_is_not_followed(state: Path, procs: Processes, loop: Path,
                                              tmp_path: Path) -> None:
    """``state.db`` linking to a file elsewhere: refused as a symlink, the file untouched."""
    target = outside_file(tmp_path)
    state.mkdir(mode=0o700)
    (state / "state.db").symlink_to(target)
    assert "PATH/state.db' is a symlink" in refused(state)
    line = assert_one_state_error(*run(procs, loop, state), state / "state.db")
    assert "PATH' is a symlink" in line, line
    assert target.read_bytes() == CONTENT
    assert (state / "state.db").is_symlink()


def test_a_database_linked_to_another_state_is_not_written(state: Path, procs: Processes,
                                                           loop: Path, tmp_path: Path) -> None:
    """``state.db`` linking to another state's database: nothing written through it."""
    other = tmp_path / "other"
    code, err = run(procs, loop, other)  # the same laufband as the worker below
    assert code == 0, err[-3000:]
    before = (other / "state.db").read_bytes()
    state.mkdir(mode=0o700)
    (state / "state.db").symlink_to(other / "state.db")
    assert "PATH/state.db' is a symlink" in refused(state)
    line = assert_one_state_error(*run(procs, loop, state, items=10), state / "state.db")
    assert "PATH' is a symlink" in line, line
    assert (other / "state.db").read_bytes() == before


def test_a_symlinked_lock_is_not_followed(state: Path, procs: Processes, loop: Path,
                                          tmp_path: Path) -> None:
    """``state.lock`` linking to a file elsewhere: one StateError line, the file untouched."""
    target = outside_file(tmp_path)
    state.mkdir(mode=0o700)
    (state / "state.lock").symlink_to(target)
    with pytest.raises(StateError):
        list(Laufband(range(3), path=state, tqdm_kwargs=QUIET))
    line = assert_one_state_error(*run(procs, loop, state), state)
    assert "PATH/state.lock" in line, line
    assert target.read_bytes() == CONTENT
    assert (state / "state.lock").is_symlink()


def remove_tree(path: Path) -> None:
    """``rm -rf path``, retried while a running worker adds files to it."""
    start = time.monotonic()
    while True:
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        except OSError:  # a file appeared while removing: "Directory not empty"
            if time.monotonic() - start > COMMAND_DEADLINE:
                raise
        else:
            return


def test_a_removed_directory_stops_the_worker(state: Path, procs: Processes, loop: Path,
                                              tmp_path: Path) -> None:
    """``rm -rf`` of the state under a running worker: it stops with one line saying so
    and revives nothing; the next worker starts a fresh 0700 state and does it all."""
    logs = tmp_path / "logs"
    proc = start(procs, loop, state, logs)
    wait_until_running(proc, logs)
    remove_tree(state)
    line = assert_one_state_error(*finish(proc), state)
    assert "removed" in line, line
    if state.exists():
        assert mode(state) == 0o700, oct(mode(state))
    fresh = tmp_path / "fresh"
    code, err = finish(start(procs, loop, state, fresh, pause=0.0))
    assert code == 0, err[-3000:]
    assert mode(state) == 0o700
    assert completions(fresh) == {str(i): 1 for i in range(ITEMS)}
    assert_all_completed(state)


@pytest.fixture
def mounted_state(state: Path) -> Iterator[Path]:
    """The state directory on its own 16 MiB tmpfs (0700); every mount undone at teardown."""
    with tmpfs(state, "16m") as disk:
        yield disk


def make_read_only(state: Path) -> None:
    """Turn the mounted state directory read-only under a running worker.

    ``mount -o remount,ro`` of the tmpfs itself fails with EBUSY while the worker has
    its files open for writing, so the tmpfs is bind-mounted over itself and that mount
    (which nobody has files open on) is remounted read-only: every file the worker
    opens from now on, such as ``state.lock`` and the journal, is on a read-only mount.
    """
    for command in (("mount", "--bind", str(state), str(state)),
                    ("mount", "-o", "remount,bind,ro", str(state))):
        done = run_command(*command)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"
    probe = state / "probe"
    with pytest.raises(OSError, match="Read-only file system"):
        probe.write_text("x")


def make_writable(state: Path) -> None:
    """Remount the read-only mount of ``make_read_only`` read-write."""
    done = run_command("mount", "-o", "remount,bind,rw", str(state))
    assert done.returncode == 0, done.stderr


def test_a_read_only_directory_stops_the_worker(mounted_state: Path, procs: Processes,
                                                loop: Path, tmp_path: Path) -> None:
    """The state mount turns read-only under a running worker: one StateError line;
    once it is writable again the next worker finishes every item."""
    logs = tmp_path / "logs"
    proc = start(procs, loop, mounted_state, logs)
    wait_until_running(proc, logs)
    make_read_only(mounted_state)
    assert_one_state_error(*finish(proc), mounted_state)
    make_writable(mounted_state)
    code, err = finish(start(procs, loop, mounted_state, logs, pause=0.0))
    assert code == 0, err[-3000:]
    assert set(completions(logs)) == {str(i) for i in range(ITEMS)}
    assert_all_completed(mounted_state)


def test_garbage_over_the_database_stops_the_worker(state: Path, procs: Processes,
                                                    loop: Path, tmp_path: Path) -> None:
    """64 KiB of random bytes written over ``state.db`` (same inode) between two of a
    running worker's transactions: it stops with one line naming the file."""
    logs = tmp_path / "logs"
    proc = start(procs, loop, state, logs)
    wait_until_running(proc, logs)
    database = state / "state.db"
    inode = database.stat().st_ino
    garbage = os.urandom(64 * 1024)
    # Holding the state lock: no transaction of the worker is half written.
    with FileLock(str(state / "state.lock"), timeout=STARTUP_DEADLINE), \
            database.open("r+b") as handle:
        handle.write(garbage)
        handle.flush()
        os.fsync(handle.fileno())
    assert database.stat().st_ino == inode
    line = assert_one_state_error(*finish(proc), database)
    assert "is not a laufband state database" in line, line
    assert database.read_bytes()[:len(garbage)] == garbage


def test_a_file_given_as_directory_is_refused(tmp_path: Path, procs: Processes,
                                              loop: Path) -> None:
    """``path=`` naming a regular file: refused, the file untouched."""
    target = outside_file(tmp_path)
    assert "is a file" in refused(target)
    line = assert_one_state_error(*run(procs, loop, target), target)
    assert "is a file" in line, line
    assert target.read_bytes() == CONTENT


def test_a_read_only_moment_kills_no_live_worker(mounted_state: Path, procs: Processes,
                                                 tmp_path: Path) -> None:
    """The state turns read-only for a moment while two workers are deep in long tasks:
    their heartbeats fail then, and must resume after (a heartbeat thread that died got
    live workers reaped by each other: finished tasks ended `killed`, bodies ran twice)."""
    logs = tmp_path / "logs"
    beats = {"LAUFBAND_HEARTBEAT_INTERVAL": "0.2", "LAUFBAND_HEARTBEAT_TIMEOUT": "1.5"}
    workers = [procs.worker(mounted_state, logs, "--items", 8, "--sleep", 1.5, env=beats)
               for _ in range(2)]
    wait_for(lambda: len(completions(logs, "start")) == 2, what="both workers in a task")
    make_read_only(mounted_state)
    time.sleep(1.0)  # several failed beats each
    make_writable(mounted_state)
    for code, _, err in procs.wait_all(workers):
        assert code == 0, err[-3000:]
    assert [e for e in task_events(mounted_state, "work") if e[1] == "killed"] == []
    assert completions(logs) == Counter({str(i): 1 for i in range(8)})


def test_a_full_disk_while_creating_the_state_says_so(mounted_state: Path) -> None:
    """No room for the database: "the disk is full", not "not a laufband state database"
    (which invites deleting the state)."""
    filler = mounted_state / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(bytes(64 * 1024))
            out.flush()
    message = refused(mounted_state / "new")
    assert message.startswith("the disk is full in PATH"), message


def use_the_lock(worker: Laufband) -> None:
    """Take ``worker.lock`` in each iteration of the loop."""
    for _ in worker:
        with worker.lock:
            pass


def test_a_symlinked_user_lock_is_refused(state: Path, tmp_path: Path) -> None:
    """``user.lock`` (behind ``worker.lock``) linking elsewhere: one StateError line."""
    target = outside_file(tmp_path)
    state.mkdir(mode=0o700)
    (state / "user.lock").symlink_to(target)
    worker = Laufband(range(2), path=state, tqdm_kwargs=QUIET)
    with pytest.raises(StateError, match=r"user\.lock' is a symlink"):
        use_the_lock(worker)
    assert target.read_bytes() == CONTENT
