"""Where the state lives: ``path=``, ``LAUFBAND_PATH``, the default ``./.laufband``,
and the permissions it is created with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from laufband import Laufband
from tests.helpers.procs import task_states

if TYPE_CHECKING:
    import pytest

QUIET = {"disable": True}


def test_environment_sets_path_and_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_PATH", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("LAUFBAND_NAME", "from-env")
    assert list(Laufband([1, 2], tqdm_kwargs=QUIET)) == [1, 2]
    assert task_states(tmp_path / "elsewhere", "from-env") == {"0": "completed", "1": "completed"}


def test_argument_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_PATH", str(tmp_path / "env"))
    worker = Laufband([1], path=tmp_path / "arg", tqdm_kwargs=QUIET)
    assert list(worker) == [1]
    assert (tmp_path / "arg" / "state.db").exists()
    assert not (tmp_path / "env").exists()


def test_default_path_is_dot_laufband(tmp_path: Path) -> None:
    assert list(Laufband([1], tqdm_kwargs=QUIET)) == [1]
    assert (tmp_path / ".laufband" / "state.db").exists()
    assert (tmp_path / ".laufband").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / ".laufband" / "state.db").stat().st_mode & 0o777 == 0o600
