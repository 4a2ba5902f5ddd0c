from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procs import Processes

# Run as a background job of a shell script (as CI may be), this process and every
# child inherit SIGINT ignored, and the Ctrl-C tests would test nothing: give SIGINT
# Python's handler back, so children start with the default action (and their own).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
