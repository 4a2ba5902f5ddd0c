"""Options given as arguments or environment variables: parsed, checked, applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from laufband import Graphband, Laufband, Task

QUIET = {"disable": True}


def test_disabled_is_a_plain_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_DISABLED", "1")
    worker = Laufband([1, 2, 3], path=tmp_path / "state", tqdm_kwargs=QUIET)
    assert list(worker) == [1, 2, 3]
    assert list(worker) == [1, 2, 3]  # nothing is remembered
    with worker.lock:
        pass
    assert not (tmp_path / "state").exists()


def test_labels_and_identifier_from_environment(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_LABELS", "gpu, big")
    monkeypatch.setenv("LAUFBAND_IDENTIFIER", "node7")
    tasks = [Task("small"), Task("large", requirements={"gpu", "big"})]
    worker = Graphband(tasks, path=state, tqdm_kwargs=QUIET)
    assert worker.labels == {"gpu", "big"}
    assert worker.identifier == "node7"
    assert [t.id for t in worker] == ["small", "large"]


def test_a_heartbeat_timeout_shorter_than_two_beats_is_refused(monkeypatch) -> None:
    """A timeout under two intervals takes live workers for dead between two beats
    (their tasks then ran twice): refused in one line that says what to change."""
    from laufband import Laufband

    with pytest.raises(ValueError, match=r"heartbeat_timeout \(2 s\) must be at least twice"
                       r" heartbeat_interval \(10 s\)"):
        Laufband(range(2), heartbeat_timeout=2)
    monkeypatch.setenv("LAUFBAND_HEARTBEAT_TIMEOUT", "5")
    monkeypatch.setenv("LAUFBAND_HEARTBEAT_INTERVAL", "3")
    with pytest.raises(ValueError, match="LAUFBAND_HEARTBEAT_TIMEOUT"):
        Laufband(range(2))
    monkeypatch.setenv("LAUFBAND_HEARTBEAT_INTERVAL", "2.5")
    assert Laufband(range(2)).heartbeat_timeout == 5.0
