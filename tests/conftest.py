from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procs import Processes

CALL_REPORT = pytest.StashKey[pytest.TestReport]()

# Run as a background job of a shell script (as CI may be), this process and every
# child inherit SIGINT ignored, and the Ctrl-C tests would test nothing: give SIGINT
# Python's handler back, so children start with the default action (and their own).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Tests whose checks a slower test repeats in full: left out when that one runs too.
SUBSUMED = {"test_first_worker_killed_at_sampled_steps_of_creation":
            "test_first_worker_killed_at_every_step_of_creation"}


@pytest.hookimpl(trylast=True)  # after -m and -k have chosen
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out a test whose kill points are a subset of another selected test's."""
    names = {item.name for item in items}
    subsumed = [item for item in items if SUBSUMED.get(item.name) in names]
    if subsumed:
        config.hook.pytest_deselected(items=subsumed)
        items[:] = [item for item in items if item not in subsumed]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A fresh state directory for this test."""
    return tmp_path / "state"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    """Keep the outcome of each test's body, for the ``procs`` teardown."""
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report


@pytest.fixture(autouse=True)
def procs(request: pytest.FixtureRequest) -> Iterator[Processes]:
    """Every process a test starts: each in a session of its own, with all it starts,
    and the children the test runner itself gains meanwhile (pmap's helpers). At
    teardown what still runs is terminated, then killed; a test whose body passed fails
    if it left any of them running."""
    group = Processes()
    yield group
    leftovers = group.cleanup()
    report = request.node.stash.get(CALL_REPORT, None)
    if leftovers and report is not None and report.passed:
        pytest.fail("the test left processes running (terminated at teardown):\n  "
                    + "\n  ".join(leftovers), pytrace=False)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LAUFBAND_* variable from the caller's shell leaks into a test; work in tmp."""
    for name in list(os.environ):
        if name.startswith("LAUFBAND_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
