"""The state directory's layout: where it is, what it holds, and how it is protected."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from laufband import Laufband, pmap
from laufband.errors import StateError
from laufband.store import DEFAULT_PATH, StateDirectory, Store


def test_the_default_is_dot_laufband_in_the_working_directory(tmp_path: Path) -> None:
    assert DEFAULT_PATH == ".laufband"
    assert StateDirectory.resolve(None).path == tmp_path / ".laufband"  # conftest: cwd


def test_laufband_path_comes_before_the_default(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_PATH", "from-env")
    assert StateDirectory.resolve(None).path == tmp_path / "from-env"
    monkeypatch.setenv("LAUFBAND_PATH", "  ")  # blank: not set
    assert StateDirectory.resolve(None).path == tmp_path / ".laufband"


def test_the_argument_comes_before_laufband_path(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_PATH", str(tmp_path / "from-env"))
    assert StateDirectory.resolve("given").path == tmp_path / "given"
    assert StateDirectory.resolve(tmp_path / "given").path == tmp_path / "given"
    state = StateDirectory("x")
    assert StateDirectory.resolve(state) is state
    assert StateDirectory.of(state) is state


def test_it_is_an_absolute_path(tmp_path: Path) -> None:
    state = StateDirectory("relative")
    assert state.path.is_absolute()
    assert os.fspath(state) == str(state) == str(tmp_path / "relative")
    assert state == StateDirectory(tmp_path / "relative")
    assert len({state, StateDirectory(tmp_path / "relative")}) == 1
    assert state / "x" == tmp_path / "relative" / "x"


def test_every_file_and_folder_has_one_name(tmp_path: Path) -> None:
    state = StateDirectory(tmp_path / "s")
    root = tmp_path / "s"
    assert state.database == root / "state.db"
    assert state.journal == root / "state.db-journal"
    assert state.state_lock == root / "state.lock"
    assert state.queue == root / "state.queue"
    assert state.holder == root / "state.holder"
    assert state.running == root / "running"
    assert state.in_flight(7) == root / "running" / "7"
    assert state.results == root / "results"
    assert state.results_of(3) == root / "results" / "3"
    assert state.result_file(3, 12) == root / "results" / "3" / "12"
    assert not root.exists()  # naming creates nothing
    assert state.user_lock() == root / "user.lock"  # ready to open: the directory exists
    assert root.is_dir()


def test_temporary_files_name_their_writer(tmp_path: Path) -> None:
    target = StateDirectory(tmp_path).result_file(1, 12)
    temporary = StateDirectory.temporary(target, "41.4026531836.host.example")
    assert temporary == target.with_name(".12.41.4026531836.host.example.tmp")
    assert StateDirectory.temporary_writer(temporary.name) == ("12", "41.4026531836.host.example")
    assert StateDirectory.temporary_writer("12") is None
    assert StateDirectory.temporary_writer(".12.tmp") is None


def test_the_files_a_loop_leaves_are_named_by_the_layout(tmp_path: Path) -> None:
    state = StateDirectory(tmp_path / "s")
    worker = Laufband(range(3), path=state, tqdm_kwargs={"disable": True})
    for _ in worker:
        with worker.lock:
            pass
    assert pmap(str, [b"x" * (1 << 21)], n=1, path=state, progress=False) == [str(b"x" * (1 << 21))]
    expected = {state.database, state.journal, state.state_lock, state.holder,
                state.user_lock(), state.running, state.results}
    assert set(state.path.iterdir()) - {state.queue} == expected
    [files] = [list(folder.iterdir()) for folder in state.results.iterdir()]
    assert [path.parent.parent for path in files] == [state.results]


def test_directory_and_files_are_private(tmp_path: Path) -> None:
    state = StateDirectory(tmp_path / "deep" / "s").create()
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700
    with Store(state).transaction() as tx:
        tx.workflow_names()
    for path in (state.database, state.state_lock):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.parametrize("mode", [0o777, 0o720, 0o702], ids=oct)
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s").chmod(mode)
    with pytest.raises(StateError, match="writable by group or others") as caught:
        StateDirectory(tmp_path / "s").create()
    assert caught.value.path == str(tmp_path / "s")


def test_a_file_is_no_state_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(StateError, match="is a file, not a directory"):
        StateDirectory(tmp_path / "f").create()


def test_a_symlink_to_a_directory_is_the_users_choice(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    StateDirectory(tmp_path / "link").create()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(StateError, match="which does not exist"):
        StateDirectory(tmp_path / "dangling").create()


def open_database(state: StateDirectory) -> None:
    """Open the state's database (a first transaction)."""
    with Store(state).transaction():
        pass


@pytest.mark.parametrize(("name", "use"), [("state.db", open_database),
                                           ("state.db-journal", open_database),
                                           ("user.lock", StateDirectory.user_lock)])
def test_a_symlink_inside_is_refused(tmp_path: Path, name: str, use: Callable) -> None:
    state = StateDirectory(tmp_path / "s").create()
    (state / name).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateError, match=re.escape(f"{name}' is a symlink")) as caught:
        use(state)
    assert caught.value.path == str(state / name)
    assert not (tmp_path / "elsewhere").exists()


def test_find_takes_the_directory_or_its_dot_laufband(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StateError, match="no laufband state in") as caught:
        StateDirectory.find(None)
    assert caught.value.path == str(tmp_path)
    with Store(StateDirectory.resolve(None)).transaction():
        pass  # ./.laufband
    assert StateDirectory.find(None) == StateDirectory(".laufband")
    assert StateDirectory.find(tmp_path / ".laufband") == StateDirectory(".laufband")
    monkeypatch.setenv("LAUFBAND_PATH", str(tmp_path / "elsewhere"))
    with pytest.raises(StateError, match="elsewhere"):
        StateDirectory.find(None)
    assert StateDirectory.find(tmp_path) == StateDirectory(".laufband")  # argument first
