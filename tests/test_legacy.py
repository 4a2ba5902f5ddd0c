"""State files of the original laufband (0.2.x): one clear warning, never silence."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest

from laufband import Graphband, Laufband, OriginalStateWarning, Task
from laufband.legacy import warn_about_original_state

QUIET = {"disable": True}


def caught(directory: Path) -> list[warnings.WarningMessage]:
    """The warnings one call emits, with no filter hiding repeats."""
    with warnings.catch_warnings(record=True) as found:
        warnings.simplefilter("always")
        warn_about_original_state(directory)
    return list(found)


def test_a_loop_warns_when_the_original_laufband_state_is_in_the_cwd(
        tmp_path: Path, state: Path) -> None:
    (tmp_path / "laufband.sqlite").write_bytes(b"")
    with pytest.warns(OriginalStateWarning, match="laufband.sqlite"):
        assert list(Laufband(range(2), path=state, tqdm_kwargs=QUIET)) == [0, 1]


def test_a_graph_loop_warns_about_graphband_sqlite(tmp_path: Path, state: Path) -> None:
    (tmp_path / "graphband.sqlite").write_bytes(b"")
    with pytest.warns(OriginalStateWarning, match="graphband.sqlite"):
        for _ in Graphband([Task("a"), Task("b", dependencies=["a"])], path=state,
                           tqdm_kwargs=QUIET):
            pass


def test_no_original_files_no_warning(tmp_path: Path) -> None:
    (tmp_path / "laufband.lock").write_bytes(b"")  # a lock file alone holds no progress
    assert caught(tmp_path) == []


def test_both_files_give_one_warning_naming_both_then_none(tmp_path: Path) -> None:
    for name in ("laufband.sqlite", "graphband.sqlite"):
        (tmp_path / name).write_bytes(b"")
    [warning] = caught(tmp_path)
    assert warning.category is OriginalStateWarning
    message = str(warning.message)
    assert "\n" not in message
    assert "laufband.sqlite and graphband.sqlite" in message
    assert str(tmp_path) in message
    assert "original laufband (0.2.x)" in message
    assert "every item runs again" in message
    assert "delete or move" in message
    assert warning.filename == __file__  # points at the caller, not into laufband
    assert caught(tmp_path) == []
    assert caught(Path(os.path.relpath(tmp_path))) == []  # the same directory, spelled again


def test_each_directory_warns_once(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
        (directory / "graphband.sqlite").write_bytes(b"")
    [warning] = caught(first)
    assert "graphband.sqlite in" in str(warning.message)
    assert "laufband.sqlite and" not in str(warning.message)
    assert len(caught(second)) == 1
    assert caught(first) == caught(second) == []


def test_the_check_is_two_stat_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_stat = os.stat

    def counting_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        calls.append(str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", counting_stat)
    warn_about_original_state(tmp_path)
    assert len(calls) == 2


def test_the_warning_pickles() -> None:
    warning = OriginalStateWarning("laufband.sqlite in '/x' was written by ...")
    again = pickle.loads(pickle.dumps(warning))
    assert type(again) is OriginalStateWarning
    assert again.args == warning.args
    assert issubclass(OriginalStateWarning, UserWarning)
