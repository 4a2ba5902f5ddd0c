"""Bad input: one clear line that says what is wrong and what to do; nothing lost."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import pytest

from laufband import Graphband, Laufband, StateError, Task, TaskGraphError, WorkflowMismatchError
from laufband.store import SCHEMA_VERSION
from tests.helpers.procs import task_states

QUIET = {"disable": True}
# The store's raise site for an unknown dependency passes no workflow=/task= yet:
# strict, so the test fails once it does, and this marker goes.


def run(worker: Laufband | Graphband) -> list:
    return list(worker)


def finished_run(state: Path, data: list, **options) -> None:
    assert run(Laufband(data, path=state, name="w", tqdm_kwargs=QUIET, **options)) == data


def test_shorter_data_is_refused_and_state_kept(state: Path) -> None:
    finished_run(state, list(range(10)))
    with pytest.raises(WorkflowMismatchError, match=r"workflow 'w' in .* has 10 tasks but the "
                       r"data has 5 items: pass the same data, a new name=, or remove") as info:
        run(Laufband(list(range(5)), path=state, name="w", tqdm_kwargs=QUIET))
    assert (info.value.workflow, info.value.path) == ("w", str(state.absolute()))
    assert set(task_states(state, "w").values()) == {"completed"}


def test_changed_data_is_refused(state: Path) -> None:
    finished_run(state, [f"file-{i}" for i in range(10)])
    changed = [f"file-{i}" for i in range(10)]
    changed[7] = "other"
    with pytest.raises(WorkflowMismatchError, match=r"the data differs from the run that created"
                       r" workflow 'w' in .*: one of items 0 to 9 was inserted, removed,"
                       r" reordered or changed\. Pass the same data, key=") as info:
        run(Laufband(changed, path=state, name="w", tqdm_kwargs=QUIET))
    assert (info.value.workflow, info.value.path) == ("w", str(state.absolute()))
    assert len(task_states(state, "w")) == 10


def test_longer_data_appends_tasks(state: Path) -> None:
    finished_run(state, list(range(10)))
    assert run(Laufband(list(range(15)), path=state, name="w", tqdm_kwargs=QUIET)) == [
        10, 11, 12, 13, 14]


def test_key_gives_stable_ids_across_reordering(state: Path) -> None:
    words = ["a", "b", "c", "d"]
    first = Laufband(words, key=str, path=state, name="k", tqdm_kwargs=QUIET)
    for word in first:
        if word == "b":
            first.close()
    again = Laufband(["e", "d", "c", "b", "a"], key=str, path=state, name="k",
                     tqdm_kwargs=QUIET)
    assert sorted(again) == ["c", "d", "e"]
    assert task_states(state, "k") == dict.fromkeys("abcde", "completed")


def test_key_and_positional_ids_do_not_mix(state: Path) -> None:
    finished_run(state, list(range(3)))
    with pytest.raises(WorkflowMismatchError, match="has positional ids; key= changes them") \
            as info:
        run(Laufband(list(range(3)), key=str, path=state, name="w", tqdm_kwargs=QUIET))
    assert (info.value.workflow, info.value.path) == ("w", str(state.absolute()))


def test_duplicate_keys(state: Path) -> None:
    with pytest.raises(TaskGraphError, match=r"key\(\) returned 'x' for items 0 and 2") as info:
        run(Laufband(["x", "y", "x"], key=str, path=state, name="k", tqdm_kwargs=QUIET))
    assert (info.value.workflow, info.value.task) == ("k", "x")


def test_duplicate_task_ids(state: Path) -> None:
    tasks = [Task("a"), Task("b"), Task("a")]
    with pytest.raises(TaskGraphError, match=r"^task id 'a' appears twice in workflow 'g':"
                       r" give each Task an id of its own$") as info:
        run(Graphband(tasks, path=state, name="g", tqdm_kwargs=QUIET))
    assert (info.value.workflow, info.value.task) == ("g", "a")
    assert task_states(state, "g") == {}


def test_unknown_dependency(state: Path) -> None:
    tasks = [Task("a"), Task("b", dependencies=["zzz"])]
    with pytest.raises(TaskGraphError, match="task 'b' of workflow 'g' depends on unknown task "
                       "'zzz': yield a Task with id='zzz' too"):
        run(Graphband(tasks, path=state, name="g", tqdm_kwargs=QUIET))
    assert task_states(state, "g") == {}  # nothing half-registered


def test_unknown_dependency_names_workflow_and_task(state: Path) -> None:
    tasks = [Task("a"), Task("b", dependencies=["zzz"])]
    with pytest.raises(TaskGraphError) as info:
        run(Graphband(tasks, path=state, name="g", tqdm_kwargs=QUIET))
    assert (info.value.workflow, info.value.task) == ("g", "b")


def test_dependency_cycle(state: Path) -> None:
    tasks = [Task("a", dependencies=["c"]), Task("b", dependencies=["a"]),
             Task("c", dependencies=["b"])]
    # a needs c, c needs b, b needs a: the cycle is named from the first task given.
    with pytest.raises(TaskGraphError, match=r"^tasks of workflow 'g' depend on each other in a"
                       r" cycle \(a -> c -> b -> a\): remove one dependency$") as info:
        run(Graphband(tasks, path=state, name="g", tqdm_kwargs=QUIET))
    assert (info.value.workflow, info.value.task) == ("g", "a")
    assert task_states(state, "g") == {}


def test_self_dependency_is_a_cycle(state: Path) -> None:
    with pytest.raises(TaskGraphError, match=r"^tasks of workflow 's' depend on each other in a"
                       r" cycle \(a -> a\): remove one dependency$") as info:
        run(Graphband([Task("a", dependencies=["a"])], path=state, name="s",
                      tqdm_kwargs=QUIET))
    assert (info.value.workflow, info.value.task) == ("s", "a")


@pytest.mark.parametrize(("task", "error", "message"), [
    (lambda: Task(5), TypeError, "Task id must be a string, got 5 (int): use str(...)"),
    (lambda: Task("a", dependencies="b"), TypeError,
     "Task 'a': dependencies must be a collection of ids, got the string 'b': pass ['b']"),
    (lambda: Task("a", requirements=["gpu", 2]), TypeError,
     "Task 'a': requirements must be strings, got 2 (int): use str(...)"),
    (lambda: Task("a", max_parallel_workers=0), ValueError,
     "Task 'a': max_parallel_workers must be an integer >= 1, got 0"),
])
def test_malformed_task(task, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$") as info:
        task()
    assert type(info.value) is error


def test_graphband_wants_tasks(state: Path) -> None:
    with pytest.raises(TypeError, match="Graphband takes Task objects, got 'a'"):
        run(Graphband(["a"], path=state, tqdm_kwargs=QUIET))


@pytest.mark.parametrize(("options", "message"), [
    ({"max_failed_retries": -1}, "max_failed_retries must be an integer >= 0, got -1"),
    ({"max_killed_retries": "2"}, "max_killed_retries must be an integer >= 0, got '2'"),
    ({"heartbeat_interval": 0}, "heartbeat_interval must be a number of seconds > 0, got 0"),
])
def test_invalid_options(state: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Laufband([1], path=state, **options)


def test_invalid_environment_option(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_MAX_FAILED_RETRIES", "many")
    with pytest.raises(ValueError, match=r"^LAUFBAND_MAX_FAILED_RETRIES='many' is not valid"
                       r" \(expected an integer\): correct or unset"
                       r" LAUFBAND_MAX_FAILED_RETRIES$"):
        Laufband([1], path=state)


@pytest.mark.parametrize(("variable", "raw", "refusal"), [
    ("LAUFBAND_TIMEOUT", "0",
     "timeout must be a number of seconds > 0 (or None for no limit), got 0.0"),
    ("LAUFBAND_RETRY_DELAY", "inf",
     "retry_delay must be a finite number of seconds >= 0 (0: retry at once), got inf"),
    ("LAUFBAND_MAX_FAILED_RETRIES", "-1", "max_failed_retries must be an integer >= 0, got -1"),
    ("LAUFBAND_HEARTBEAT_INTERVAL", "0",
     "heartbeat_interval must be a number of seconds > 0, got 0.0"),
])
def test_an_environment_value_out_of_range_names_its_variable(
        state: Path, monkeypatch: pytest.MonkeyPatch, variable: str, raw: str,
        refusal: str) -> None:
    monkeypatch.setenv(variable, raw)
    message = f"{variable}={raw!r} is not valid ({refusal}): correct or unset {variable}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Laufband([1], path=state)


def test_state_path_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("mine")
    with pytest.raises(StateError, match="is a file, not a directory: pass another path="):
        run(Laufband([1], path=target))
    assert target.read_text() == "mine"


def test_state_path_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: use a place nobody may create in
        locked = Path("/proc/1")
    with pytest.raises(StateError, match="pass a writable path="):
        run(Laufband([1], path=locked / "state"))


def test_corrupt_database_is_left_alone(state: Path) -> None:
    state.mkdir()
    (state / "state.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateError, match=r"state.db is not a laufband state database"):
        run(Laufband([1], path=state, tqdm_kwargs=QUIET))
    assert (state / "state.db").read_bytes() == b"not a database at all" * 100


def test_foreign_sqlite_database(state: Path) -> None:
    state.mkdir()
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute("CREATE TABLE mine(x)")
    with pytest.raises(StateError, match="is not a laufband state database"):
        run(Laufband([1], path=state, tqdm_kwargs=QUIET))


def test_newer_schema_is_refused(state: Path) -> None:
    finished_run(state, [1, 2])
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    expected = f"has schema version 99, this laufband reads version {SCHEMA_VERSION}"
    with pytest.raises(StateError, match=expected):
        run(Laufband([1, 2], path=state, name="w", tqdm_kwargs=QUIET))


def test_identifier_in_use_by_a_live_worker(state: Path) -> None:
    first = Laufband([1, 2], path=state, identifier="same", tqdm_kwargs=QUIET)
    second = Laufband([1, 2], path=state, identifier="same", tqdm_kwargs=QUIET)
    iterator = iter(first)
    next(iterator)
    with pytest.raises(StateError, match="worker identifier 'same' is in use by a live worker"):
        run(second)
    assert list(iterator) == [2]
