"""The store off the task path: what the worker's background thread must never change.

Finished bodies are not run again when another worker's failure stops the loop
(``failure_policy="stop"``); a loop still alive at interpreter exit stops cleanly;
a record left by a worker of the version before (one batch long) is still read.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from laufband.inflight import FINAL, RUN, read_record
from laufband.store import StateDirectory

STOPPED_WORKER = textwrap.dedent("""
    import os, sys, time
    from laufband import Laufband
    state, log, fail = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    worker = Laufband(list(range(3000)), path=state, name="wf", failure_policy="stop",
                      tqdm_kwargs={"disable": True})
    for item in worker:
        time.sleep(0.001)
        if item == fail:
            raise ValueError("boom")
        os.write(fd, f"{item}\\n".encode())  # the body finished
""")


def test_workers_stopped_by_a_failure_keep_what_finished(state: Path, tmp_path: Path) -> None:
    """A worker stopped at a checkpoint by another's failure (failure_policy="stop")
    records the bodies that finished before it hands the rest back."""
    log = tmp_path / "log"
    run = [sys.executable, "-c", STOPPED_WORKER, str(state), str(log)]
    workers = [subprocess.Popen([*run, "900"], stderr=subprocess.DEVNULL) for _ in range(3)]
    assert all(worker.wait(timeout=120) != 0 for worker in workers)  # all stopped
    retry = subprocess.run([sys.executable, "-m", "laufband", "retry", "--failed", "-w", "wf",
                            "--path", str(state)], capture_output=True, text=True, check=False)
    assert retry.returncode == 0, retry.stderr
    subprocess.run([*run, "-1"], check=True, timeout=120)
    ran = Counter(log.read_text().split())
    assert len(ran) == 3000
    assert [item for item, count in ran.items() if count > 1] == []


LEFT_ALIVE = textwrap.dedent("""
    import sys, time
    from laufband import Laufband
    loop = iter(Laufband(list(range(2000)), path=sys.argv[1], name="wf",
                         tqdm_kwargs={"disable": True}))
    for i, x in enumerate(loop):  # the generator outlives the loop, until exit
        time.sleep(0.001)
        if i == 500:
            break
""")


def test_a_loop_alive_at_exit_stops_without_a_traceback(state: Path) -> None:
    done = subprocess.run([sys.executable, "-c", LEFT_ALIVE, str(state)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0
    assert "Traceback" not in done.stderr, done.stderr
    assert list(StateDirectory.of(state).running.iterdir()) == []  # its record is gone


def test_a_record_of_the_previous_version_is_read(state: Path) -> None:
    """Workers before this engine kept one batch per record (16,384 tasks): a reaper
    of this version on the same host still completes what such a worker finished."""
    records = StateDirectory.of(state).create().running
    records.mkdir()
    old = bytearray(16 + 16384 * 8)
    struct.pack_into("<qq", old, 0, 2 * 7 + 1, 20 | FINAL | RUN)  # batch 100..119, 107 ran
    struct.pack_into("<q", old, 16, 100)
    (records / "3").write_bytes(bytes(old))
    (records / "3").chmod(0o600)
    record = read_record(state, 3)
    assert record is not None
    assert record.finished == list(range(100, 107))
    assert record.running == 107
