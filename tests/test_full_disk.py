"""pmap on a full disk: one clear StateError, no stray temporary files, nothing lost.

The state directory is a tiny tmpfs mounted for the test (root only; skipped
elsewhere): two large results do not fit, so writing the second one fails for real.
"""

from __future__ import annotations

import functools
import os
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from laufband import StateError, pmap
from tests.helpers.mounts import run, tmpfs
from tests.helpers.procs import Processes, task_states

pytestmark = pytest.mark.timeout(180)
SIZE = 1_500_000  # bytes per result: more than LARGE_RESULT, and one fits on the disk


def big(x: int) -> bytes:
    """A result stored as a file, tagged with its item."""
    return bytes(SIZE) + bytes([x])


@pytest.fixture
def tiny_disk(state: Path) -> Iterator[Path]:
    """The state directory on a 2 MiB tmpfs; unmounted at teardown."""
    with tmpfs(state, "2m") as disk:
        yield disk


def enlarge(disk: Path) -> None:
    """Free space: the same tmpfs, files kept, now 64 MiB."""
    remounted = run("mount", "-o", "remount,size=64m", str(disk))
    assert remounted.returncode == 0, remounted.stderr


def temporaries(state: Path) -> list[Path]:
    return [f for f in (state / "results").rglob("*") if f.name.endswith(".tmp")]


def test_full_disk_is_one_line_and_the_next_call_finishes(tiny_disk: Path) -> None:
    with pytest.raises(StateError) as caught:
        pmap(big, range(4), n=2, path=tiny_disk, progress=False, name="big")
    message = str(caught.value)
    assert "\n" not in message, message
    assert "disk is full" in message, message
    assert not temporaries(tiny_disk)
    enlarge(tiny_disk)
    assert pmap(big, range(4), n=2, path=tiny_disk, progress=False, name="big") == [
        big(x) for x in range(4)]
    assert not temporaries(tiny_disk)


def two_big(log: Path, x: int) -> bytes | int:
    """Items 5 and 6 have large results: on the tiny disk, only the first fits."""
    with log.open("a") as handle:
        handle.write(f"{x}\n")
    return big(x) if x in (5, 6) else x


def test_results_stored_before_the_disk_filled_are_kept(tiny_disk: Path,
                                                        tmp_path: Path) -> None:
    # Items 1-19 are one batch (after a first batch of one), packed together at its
    # end: the results before item 6 are kept although item 6's cannot be stored.
    log = tmp_path / "computed.log"
    func = functools.partial(two_big, log)
    with pytest.raises(StateError, match="disk is full"):
        pmap(func, range(40), n=1, path=tiny_disk, progress=False, name="kept")
    states = task_states(tiny_disk, "kept")
    assert [states[str(x)] for x in range(7)] == ["completed"] * 6 + ["pending"]
    computed = log.read_text().split()
    enlarge(tiny_disk)
    expected = [big(x) if x in (5, 6) else x for x in range(40)]
    assert pmap(func, range(40), n=1, path=tiny_disk, progress=False, name="kept") == expected
    again = log.read_text().split()[len(computed):]
    assert sorted(again, key=int) == sorted(
        (task for task, state in states.items() if state != "completed"), key=int)


CALLER = textwrap.dedent("""
    import sys
    from laufband import pmap

    def big(x):
        return bytes(1_500_000) + bytes([x])

    pmap(big, range(4), n=2, path=sys.argv[1], progress=False, name="big")
""")


def test_full_disk_in_a_script_is_one_traceback(tiny_disk: Path, procs: Processes) -> None:
    [(code, _, err)] = procs.wait_all([procs.start("-c", CALLER, tiny_disk)])
    assert code != 0
    assert err.count("Traceback") == 1, err
    assert "During handling" not in err, err
    assert "direct cause" not in err, err
    assert "StateError: the disk is full" in err, err


def dead_pid(procs: Processes) -> int:
    """The pid of a process that has exited (and been reaped)."""
    [proc] = [procs.start("-c", "pass")]
    procs.wait_all([proc])
    return proc.pid


def our_place() -> str:
    """Pid namespace and host, as temporary result files name their writer's."""
    namespace = "".join(filter(str.isdigit, str(Path("/proc/self/ns/pid").readlink())))
    return f"{namespace}.{socket.gethostname()}"


@pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="needs Linux /proc")
def test_temporaries_of_dead_writers_are_removed(state: Path, procs: Processes) -> None:
    assert pmap(big, range(1), n=1, path=state, progress=False, name="big") == [big(0)]
    [results] = (state / "results").iterdir()  # results/<workflow number>
    live, dead = procs.start("-c", "import time; time.sleep(60)"), dead_pid(procs)
    old = ".8.2.1.another-host.tmp"
    planted = {  # name -> kept
        f".5.{dead}.{our_place()}.tmp": False,  # its writer is gone: removed
        f".6.{live.pid}.{our_place()}.tmp": True,  # a live process still writes it
        f".7.{dead}.tmp": False,  # named as before pid namespaces and hosts were
        ".7.1.1.another-host.tmp": True,  # another host's writer may be alive
        f".9.{dead}.1.{socket.gethostname()}.tmp": True,  # another container's, too
        old: False,  # ... but not once it is hours old
    }
    for name in planted:
        (results / name).write_bytes(b"partial")
    hours_ago = time.time() - 3 * 3600
    os.utime(results / old, (hours_ago, hours_ago))
    try:
        assert pmap(big, range(2), n=1, path=state, progress=False, name="big") == [
            big(0), big(1)]
        assert {name: (results / name).exists() for name in planted} == planted
    finally:
        live.kill()
        procs.wait_all([live])


def test_a_removed_result_file_is_computed_again(state: Path) -> None:
    """A large result file deleted by hand: the call says the item's result is missing
    (no raw FileNotFoundError), and the next call computes it again."""
    from laufband import TaskFailedError, pmap

    def big(x: int) -> bytes:
        return bytes([x]) * 1_500_000

    assert pmap(big, range(3), n=1, path=state, progress=False, name="big") == [
        big(x) for x in range(3)]
    [removed] = [path for path in (state / "results").rglob("1") if path.is_file()]
    removed.unlink()
    with pytest.raises(TaskFailedError, match="its result is missing"):
        pmap(big, range(3), n=1, path=state, progress=False, name="big")
    assert pmap(big, range(3), n=1, path=state, progress=False, name="big") == [
        big(x) for x in range(3)]
