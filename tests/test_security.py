"""Planted links in the state directory: laufband never writes through them.

Each worker records its running task in ``running/<worker number>``. Someone who can
write there could plant a symlink so that the next worker truncates a file of its
choice; laufband must neither follow nor truncate it, and still run every item.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from laufband import Laufband
from laufband.inflight import forget, read_record

pytestmark = pytest.mark.timeout(120)
QUIET = {"disable": True}
CONTENT = "precious: must stay as it is\n"
NUMBERS = range(1, 11)  # worker numbers the next workers get in a fresh state


def run(state: Path, name: str, count: int = 20) -> list[int]:
    return list(Laufband(list(range(count)), path=state, name=name, tqdm_kwargs=QUIET))


def make_state(state: Path) -> Path:
    """Run one loop so the state directory and ``running/`` exist; return ``running/``."""
    assert run(state, "first", 3) == [0, 1, 2]
    running = state / "running"
    running.mkdir(exist_ok=True)
    return running


def test_symlinked_records_are_not_followed(state: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text(CONTENT)
    running = make_state(state)
    for number in NUMBERS:
        (running / str(number)).symlink_to(target)
    assert run(state, "second") == list(range(20))
    assert target.read_bytes() == CONTENT.encode()


def test_hard_linked_records_are_not_truncated(state: Path) -> None:
    running = make_state(state)
    target = state / "precious.txt"  # a hard link needs the same filesystem
    target.write_text(CONTENT)
    for number in NUMBERS:
        os.link(target, running / str(number))
    assert run(state, "second") == list(range(20))
    assert target.read_bytes() == CONTENT.encode()


def outside_directory(tmp_path: Path) -> Path:
    """A directory outside the state holding files named like records."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for number in NUMBERS:
        (outside / str(number)).write_text(CONTENT)
    return outside


def link_running_to(state: Path, outside: Path) -> None:
    shutil.rmtree(state / "running")
    (state / "running").symlink_to(outside, target_is_directory=True)


def unchanged(outside: Path) -> bool:
    names = sorted(path.name for path in outside.iterdir())
    return names == sorted(map(str, NUMBERS)) and all(
        (outside / name).read_text() == CONTENT for name in names)


def test_a_symlinked_running_directory_is_not_used(state: Path, tmp_path: Path) -> None:
    outside = outside_directory(tmp_path)
    make_state(state)
    link_running_to(state, outside)
    assert run(state, "second") == list(range(20))
    assert unchanged(outside)


def test_reaper_reads_and_removes_no_linked_record(state: Path, tmp_path: Path) -> None:
    # What a reaper does with a dead worker's record: read it, then remove it.
    blame_seven = struct.pack("<q", 7)
    record = tmp_path / "record"
    record.write_bytes(blame_seven)
    running = make_state(state)
    (running / "1").symlink_to(record)
    assert read_record(state, 1) is None
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "2").write_bytes(blame_seven)
    link_running_to(state, outside)
    assert read_record(state, 2) is None
    forget(state, 2)
    assert (outside / "2").read_bytes() == blame_seven
    assert record.read_bytes() == blame_seven


def test_a_symlinked_results_directory_is_not_written_through(state: Path,
                                                              tmp_path: Path) -> None:
    """``results/<workflow>`` replaced by a link to a directory elsewhere: a large
    result is not written there (a file of the same name was overwritten)."""
    from laufband import StateError, pmap

    def big(x: int) -> object:
        return bytes(2 << 20) if x == 5 else x

    assert pmap(big, [0], n=1, path=state, name="big", progress=False) == [0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "1").write_bytes(b"PRECIOUS")
    (state / "results").mkdir(mode=0o700, exist_ok=True)
    (state / "results" / "1").symlink_to(elsewhere)  # workflow 1; item 5 is its task 1
    with pytest.raises(StateError, match="symlink"):
        pmap(big, [0, 5], n=1, path=state, name="big", progress=False)
    assert (elsewhere / "1").read_bytes() == b"PRECIOUS"
    assert [p.name for p in elsewhere.iterdir()] == ["1"]
