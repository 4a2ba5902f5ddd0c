"""Ctrl-C of pmap, as a terminal sends it (SIGINT to the whole process group): one
short KeyboardInterrupt traceback from the caller, helpers quiet and gone, and every
item finished so far kept for the next call."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.procs import Processes, session_members, wait_for

ITEMS = 400
WORKERS = 4
MAX_STDERR_LINES = 12  # a traceback of the caller's line and pmap's frame, and the bar
KEPT_MARGIN = 0.1  # seconds: an item logged this long before the signal was finished

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from laufband import pmap

    state, log, method = sys.argv[1], sys.argv[2], sys.argv[3]
    again = sys.argv[4:] == ["again"]  # a notebook user: Ctrl-C, then run the cell again

    def work(x):
        time.sleep(0.02)
        with open(log, "a") as out:  # one short append per item: never torn
            out.write(f"{x} {os.getpid()} {time.time()}\\n")
        return x * x

    try:
        results = pmap(work, range(ITEMS), n=WORKERS, path=state, start_method=method)
    except KeyboardInterrupt:
        if not again:
            raise
        print("interrupted", file=sys.stderr, flush=True)
        results = pmap(work, range(ITEMS), n=WORKERS, path=state, start_method=method)
    assert results == [x * x for x in range(ITEMS)], results
    print("ok")
""").replace("ITEMS", str(ITEMS)).replace("WORKERS", str(WORKERS))


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "square.py"
    path.write_text(SCRIPT)
    return path


def logged(log: Path) -> list[tuple[int, int, float]]:
    """(item, pid, time) of every item the function finished."""
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        item, pid, stamp = line.split()
        rows.append((int(item), int(pid), float(stamp)))
    return rows


def screen_lines(text: str) -> list[str]:
    """The lines a terminal shows: of each line, what the last carriage return left."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.rsplit("\r", 1)[-1]]


def interrupt(procs: Processes, script: Path, state: Path,
              log: Path, err: Path, method: str, signals: int = 1,
              *args: str) -> tuple[int, str, float]:
    """Run the script until every worker has finished items, Ctrl-C it like a terminal
    (``signals`` times, 50 ms apart); return exit status, stderr, and the time of the
    first signal."""
    proc = procs.start_logged(script, state, log, method, *args, stderr=err)  # own session
    wait_for(lambda: len({pid for _, pid, _ in logged(log)}) == WORKERS
             and len(logged(log)) >= 40, what="every worker to finish items")
    sent = time.time()
    for number in range(signals):
        if number:
            time.sleep(0.05)
            assert proc.poll() is None, "gone before the second Ctrl-C: not in the cleanup"
        os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the caller hangs after Ctrl-C; stderr:\n{err.read_text()}")
    left = session_members({proc.pid})
    assert not left, f"processes left after the caller exited: {left}"
    return code, err.read_bytes().decode(), sent  # not read_text: it turns \r into \n


def check_one_short_traceback(code: int, stderr: str) -> None:
    lines = screen_lines(stderr)
    assert code == -signal.SIGINT, stderr  # an uncaught KeyboardInterrupt
    assert stderr.count("Traceback") == 1, stderr
    assert [line for line in lines if line.strip() == "KeyboardInterrupt"] == \
        ["KeyboardInterrupt"], stderr
    assert lines[-1] == "KeyboardInterrupt", stderr
    assert "During handling" not in stderr, stderr
    assert not re.search(r"helper|Process-|processes\.py|multiprocessing", stderr), stderr
    assert len(lines) <= MAX_STDERR_LINES, f"{len(lines)} lines:\n{stderr}"


def check_rest_computed_once(procs: Processes, script: Path, state: Path, tmp_path: Path,
                             first: Path, sent: float, method: str) -> None:
    """A second run computes only what the first did not finish, and succeeds."""
    second = tmp_path / "second.log"
    err = tmp_path / "second.err"
    proc = procs.start_logged(script, state, second, method, stderr=err)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the second run hangs; stderr:\n{err.read_text()}")
    assert code == 0, err.read_text()
    check_split(logged(first), logged(second), sent)


def check_split(first: list[tuple[int, int, float]], second: list[tuple[int, int, float]],
                sent: float) -> None:
    """Items finished before the Ctrl-C are not computed again; the rest once more at
    most (one interrupted mid-item runs twice); together, every item."""
    before = [item for item, _, _ in first]
    kept = {item for item, _, stamp in first if stamp < sent - KEPT_MARGIN}
    again = [item for item, _, _ in second]
    assert kept, "nothing was finished before the interrupt"
    assert not kept & set(again), f"computed again: {sorted(kept & set(again))}"
    counts = Counter(before + again)
    assert set(counts) == set(range(ITEMS))
    assert max(counts.values()) <= 2, counts.most_common(3)
    assert len(again) <= ITEMS - len(kept)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_ctrl_c_prints_one_traceback_and_keeps_finished_items(
        method: str, procs: Processes, script: Path, tmp_path: Path,
        state: Path) -> None:
    log = tmp_path / "first.log"
    code, stderr, sent = interrupt(procs, script, state, log, tmp_path / "first.err",
                                   method)
    check_one_short_traceback(code, stderr)
    check_rest_computed_once(procs, script, state, tmp_path, log, sent, method)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_second_ctrl_c_during_the_cleanup(method: str, procs: Processes,
                                          script: Path, tmp_path: Path, state: Path) -> None:
    log = tmp_path / "first.log"
    code, stderr, sent = interrupt(procs, script, state, log, tmp_path / "first.err",
                                   method, signals=2)
    check_one_short_traceback(code, stderr)
    check_rest_computed_once(procs, script, state, tmp_path, log, sent, method)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_same_process_calls_again_after_ctrl_c(
        method: str, procs: Processes, script: Path, tmp_path: Path,
        state: Path) -> None:
    """As in a notebook: the KeyboardInterrupt is caught and the same call made again
    in the same process; it returns the complete list, computing only the rest."""
    log = tmp_path / "first.log"
    code, stderr, sent = interrupt(procs, script, state, log, tmp_path / "first.err",
                                   method, 1, "again")
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "interrupted" in stderr, stderr
    rows = logged(log)
    check_split([r for r in rows if r[2] < sent], [r for r in rows if r[2] >= sent], sent)


@pytest.mark.timeout(180)
def test_ctrl_c_while_spawned_helpers_start(procs: Processes,
                                            script: Path, tmp_path: Path) -> None:
    """A Ctrl-C that lands while spawned helpers' interpreters start up (on main, each
    such helper printed "Fatal Python error: init_import_site" and a traceback)."""
    for attempt, delay in enumerate([0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3]):
        state, log = tmp_path / f"state{attempt}", tmp_path / f"log{attempt}"
        err = tmp_path / f"err{attempt}"
        proc = procs.start_logged(script, state, log, "spawn", stderr=err)  # own session
        wait_for(lambda: bool(logged(log)), what="the caller's first item")  # noqa: B023
        time.sleep(delay)  # helpers start once ~30 ms of work shows they pay off
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the caller hangs after Ctrl-C; stderr:\n{err.read_text()}")
        if code == 0:
            continue  # finished before the signal: nothing to check
        left = session_members({proc.pid})
        assert not left, f"processes left after the caller exited: {left}"
        stderr = err.read_bytes().decode()
        assert "Fatal Python error" not in stderr, stderr
        check_one_short_traceback(code, stderr)
