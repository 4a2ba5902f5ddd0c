from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procs import Processes


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A fresh state directory for this test."""
    return tmp_path / "state"


@pytest.fixture
def procs() -> Iterator[Processes]:
    """Real processes, all reaped at teardown; a test that leaves one running fails."""
    group = Processes()
    yield group
    leftovers = group.cleanup()
    assert not leftovers, f"processes still running at teardown: {leftovers}"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LAUFBAND_* variable from the caller's shell leaks into a test; work in tmp."""
    for name in list(os.environ):
        if name.startswith("LAUFBAND_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
