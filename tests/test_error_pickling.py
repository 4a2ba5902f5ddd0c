"""Every exception laufband defines survives pickling whole: type, message, attributes
and notes. An error raised in a pmap helper or an MPI rank arrives in another
interpreter by pickle, so a lost attribute is lost for the user."""

from __future__ import annotations

import base64
import copy
import importlib
import inspect
import os
import pickle
import pkgutil
import textwrap
from pathlib import Path

import pytest

import laufband
from laufband import (
    NoResultError,
    OriginalStateWarning,
    RemoteTraceback,
    StateError,
    TaskFailedError,
    TaskGraphError,
    TaskTimeoutError,
    WorkflowMismatchError,
    pmap,
)
from tests.helpers.procs import Processes, wait_for

pytestmark = pytest.mark.timeout(120)

STATE = Path("/data/run/.laufband")
TRACEBACK = 'Traceback (most recent call last):\n  File "job.py", line 3\nValueError: bad 1\n'
HEADER = "worker (rank 1 of 4) on node7, pid 4321"
NOTE = "raised while computing item 7"
HELPER_DEADLINE = 60.0  # seconds a spawned helper may take to start and take an item
# Enough items that pmap finds spawning a helper worth it, whatever its first estimate
# (items x at least 30 ms of start-up > 1 s: pmap's PROBE and HELPER_START).
ITEMS = 40

# Each exception with every attribute set to a value of its own, and those values as
# the test expects them (written out, not read back from the exception).
ROWS: list[tuple[BaseException, dict[str, object]]] = [
    (StateError("state.db is locked", path=STATE), {"path": str(STATE)}),
    (WorkflowMismatchError("the data differs", workflow="squares", path=STATE),
     {"workflow": "squares", "path": str(STATE)}),
    (TaskGraphError("a cycle", workflow="graph", task="a"),
     {"workflow": "graph", "task": "a"}),
    (TaskFailedError("item not computed", workflow="squares", index=7, state="killed"),
     {"workflow": "squares", "index": 7, "state": "killed"}),
    (RemoteTraceback(TRACEBACK, header=HEADER), {"text": TRACEBACK, "header": HEADER}),
    (OriginalStateWarning("laufband.sqlite was written by laufband 0.2.x"), {}),
    (NoResultError("task 'b' has no saved result", workflow="graph", task="b",
                   state="failed"), {"workflow": "graph", "task": "b", "state": "failed"}),
    (TaskTimeoutError("item 3 timed out after 2 s", task="item 3", seconds=2.0),
     {"task": "item 3", "seconds": 2.0}),
]
IDS = [type(error).__name__ for error, _ in ROWS]


def noted(error: BaseException, note: str = NOTE) -> BaseException:
    """``error`` with ``note`` added, as Python 3.11's add_note does (3.10 has none)."""
    error.__notes__ = [*getattr(error, "__notes__", []), note]
    return error


def assert_whole(copied: BaseException, original: BaseException,
                 attributes: dict[str, object], notes: list[str]) -> None:
    assert type(copied) is type(original)
    assert copied.args == original.args
    assert str(copied) == str(original)
    assert {name: getattr(copied, name) for name in attributes} == attributes
    assert copied.__notes__ == notes
    assert vars(copied) == vars(original)  # nothing else lost either


def laufband_exceptions() -> set[type[BaseException]]:
    """Every public exception (and warning) class defined in a module of laufband."""
    found = set()
    for module in pkgutil.walk_packages(laufband.__path__, "laufband."):
        if module.name.endswith("__main__"):  # runs the command line
            continue
        namespace = importlib.import_module(module.name)
        for name, obj in vars(namespace).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == namespace.__name__ and not name.startswith("_")):
                found.add(obj)
    return found


def test_every_exception_of_laufband_has_a_row() -> None:
    assert {type(error) for error, _ in ROWS} == laufband_exceptions()


@pytest.mark.parametrize(("error", "attributes"), ROWS, ids=IDS)
def test_the_row_sets_what_it_expects(error: BaseException,
                                      attributes: dict[str, object]) -> None:
    # The constructors keep what they are given, so the copies below are compared
    # with the right values.
    assert {name: getattr(error, name) for name in attributes} == attributes


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize(("error", "attributes"), ROWS, ids=IDS)
def test_pickle_round_trip(error: BaseException, attributes: dict[str, object],
                           protocol: int) -> None:
    original = noted(copy.copy(error))
    copied = pickle.loads(pickle.dumps(original, protocol=protocol))
    assert_whole(copied, original, attributes, [NOTE])


@pytest.mark.parametrize("duplicate", [copy.copy, copy.deepcopy])
@pytest.mark.parametrize(("error", "attributes"), ROWS, ids=IDS)
def test_copies_keep_everything(error: BaseException, attributes: dict[str, object],
                                duplicate) -> None:
    original = noted(copy.copy(error))
    assert_whole(duplicate(original), original, attributes, [NOTE])


def test_remote_traceback_shows_its_header_and_text() -> None:
    copied = pickle.loads(pickle.dumps(RemoteTraceback(TRACEBACK, header=HEADER)))
    assert str(copied) == f'\n"""\n{HEADER}\n{TRACEBACK}"""'
    assert str(RemoteTraceback(TRACEBACK)) == f'\n"""\n{TRACEBACK}"""'


# A fresh interpreter unpickles each error (finding its class by import), checks it,
# adds a note and pickles it back.
OTHER_INTERPRETER = textwrap.dedent("""
    import base64, os, pickle, sys
    errors = pickle.loads(base64.b64decode(sys.argv[1]))
    for error in errors:
        assert type(error).__module__ == "laufband.errors", type(error)
        error.__notes__ = [*getattr(error, "__notes__", []), f"seen by pid {os.getpid()}"]
    print(base64.b64encode(pickle.dumps(errors)).decode())
""")


def test_round_trip_through_another_interpreter(procs: Processes) -> None:
    originals = [noted(copy.copy(error)) for error, _ in ROWS]
    payload = base64.b64encode(pickle.dumps(originals)).decode()
    child = procs.start("-c", OTHER_INTERPRETER, payload)
    [(code, out, err)] = procs.wait_all([child])
    assert code == 0, err
    returned = pickle.loads(base64.b64decode(out.strip().splitlines()[-1]))
    assert len(returned) == len(ROWS)
    for copied, original, (_, attributes) in zip(returned, originals, ROWS, strict=True):
        seen = f"seen by pid {child.pid}"
        assert_whole(copied, noted(copy.copy(original), seen), attributes, [NOTE, seen])


def test_an_error_raised_in_a_spawned_helper_arrives_whole(state: Path,
                                                           tmp_path: Path) -> None:
    # A laufband exception raised by the function in a pmap helper (another
    # interpreter) reaches the caller with its attributes and notes.
    caller, marker = os.getpid(), tmp_path / "a helper took an item"

    def fails(x: int) -> int:
        if os.getpid() == caller:  # let a helper start and take one (at most ~1 s)
            wait_for(marker.exists, HELPER_DEADLINE, "a spawned helper to take an item")
        else:
            marker.touch()
        error = TaskFailedError(f"item {x} failed", workflow="inner", index=x,
                                state=str(os.getpid()))
        raise noted(error, f"noted in pid {os.getpid()}")

    out = pmap(fails, range(ITEMS), n=2, path=state, progress=False, on_error="return",
               start_method="spawn")
    assert [type(error) for error in out] == [TaskFailedError] * ITEMS
    for x, error in enumerate(out):
        assert (str(error), error.workflow, error.index) == (f"item {x} failed", "inner", x)
        assert error.__notes__[0] == f"noted in pid {error.state}"
    assert {error.state for error in out} - {str(caller)}, "no helper computed an item"
