"""retry_delay=: a failed task with retries left waits retry_delay * 2**(attempt-1)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from laufband import Laufband
from tests.helpers.procs import HELPERS, Processes

pytestmark = pytest.mark.timeout(120)
QUIET = {"disable": True}
DELAY = 0.6


def test_a_failing_task_is_retried_after_growing_delays_while_other_work_goes_on(
        state: Path, tmp_path: Path, procs: Processes) -> None:
    log = tmp_path / "tries.log"
    workers = [procs.start(HELPERS / "features_worker.py", "retries", state, "--log", log,
                           "--items", 12, "--delay", DELAY, "--sleep", 0.05)
               for _ in range(2)]
    results = procs.wait_all(workers)
    assert [code for code, _, _ in results] == [0, 0], results
    lines = [line.split() for line in log.read_text().splitlines()]
    item0 = [(kind, float(at)) for kind, item, at in lines if item == "0"]
    assert [kind for kind, _ in item0] == ["fail", "fail", "done"]
    (_, first), (_, second), (_, third) = item0
    assert second - first >= DELAY  # attempt 1 failed: DELAY
    assert third - second >= 2 * DELAY  # attempt 2 failed: 2 x DELAY
    others = sorted(float(at) for kind, item, at in lines if item != "0")
    assert len(others) == 11  # every other item once
    assert first < others[0] < second  # the others ran while 0 waited
    # Both workers stayed for the retries rather than leaving with the task pending.
    assert max(others) < third


def test_the_environment_sets_the_delay(state: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_RETRY_DELAY", "0.4")
    worker = Laufband(["a", "b"], path=state, max_failed_retries=1, tqdm_kwargs=QUIET)
    runs: list[tuple[str, float]] = []
    for item in worker:
        runs.append((item, time.monotonic()))
        with worker.catch():
            if len(runs) == 1:
                raise RuntimeError("first attempt")
    assert [item for item, _ in runs] == ["a", "b", "a"]
    assert runs[2][1] - runs[0][1] >= 0.4


@pytest.mark.parametrize("delay", [-1, "soon", True, float("inf"), float("nan")])
def test_a_bad_delay_is_refused_with_one_line(state: Path, delay: object) -> None:
    with pytest.raises(ValueError, match=r"^retry_delay must be a finite number of seconds >= 0"
                       r" \(0: retry at once\), got ") as caught:
        Laufband([1], path=state, retry_delay=delay)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)
