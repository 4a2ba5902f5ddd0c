"""A later run whose data has an item inserted, removed, reordered or changed is refused
(every item is compared, objects by their pickle); appending items stays allowed."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from filelock import FileLock

from laufband import Laufband, WorkflowMismatchError
from laufband.store import FILE_MODE

if TYPE_CHECKING:
    from tests.helpers.procs import Processes

PROGRAM = textwrap.dedent("""
    import json, sys
    from laufband import Laufband, WorkflowMismatchError

    class Atoms:  # like ase.Atoms: an object whose repr says little
        def __init__(self, numbers, positions):
            self.numbers, self.positions = numbers, positions
            self.info = {}

    edit, count = sys.argv[2], int(sys.argv[3])
    data = [Atoms([1, 8, 1], [[0.0, 0.0, float(i)]] * 3) for i in range(count)]
    if edit.startswith("insert:"):
        data.insert(int(edit[7:]), Atoms([6], [[9.9, 9.9, 9.9]]))
    elif edit.startswith("change:"):
        data[int(edit[7:])].positions[1] = [0.0, 0.1, 0.0]
    elif edit == "swap":
        data[3], data[4] = data[4], data[3]
    try:
        ran = [int(a.positions[0][2]) for a in Laufband(data, path=sys.argv[1], name="atoms",
                                                          tqdm_kwargs={"disable": True})]
    except WorkflowMismatchError as error:
        print(json.dumps({"error": str(error)}))
    else:
        print(json.dumps({"ran": ran}))
""")


def run(procs: Processes, tmp_path: Path, state: Path, edit: str,
        count: int = 100) -> dict[str, object]:
    import json

    script = tmp_path / "atoms.py"
    script.write_text(PROGRAM)
    done = procs.python(script, state, edit, str(count))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("edit", ["insert:5", "change:5", "change:50", "change:64", "swap"])
def test_a_changed_list_of_objects_is_refused(tmp_path: Path, state: Path, procs: Processes,
                                              edit: str) -> None:
    assert run(procs, tmp_path, state, "none") == {"ran": list(range(100))}
    outcome = run(procs, tmp_path, state, edit)
    assert "error" in outcome, f"{edit} was accepted: {outcome}"
    error = str(outcome["error"])
    assert "'atoms'" in error
    assert str(state) in error
    assert "key=" in error
    assert "\n" not in error


@pytest.mark.timeout(120)
def test_appending_objects_stays_allowed(tmp_path: Path, state: Path, procs: Processes) -> None:
    assert run(procs, tmp_path, state, "none", count=70) == {"ran": list(range(70))}
    assert run(procs, tmp_path, state, "none", count=150) == {"ran": list(range(70, 150))}
    assert run(procs, tmp_path, state, "none", count=150) == {"ran": []}
    assert "error" in run(procs, tmp_path, state, "change:69", count=150)
    assert "error" in run(procs, tmp_path, state, "change:149", count=150)


def test_changed_plain_values_are_refused_at_every_position(state: Path) -> None:
    data = list(range(1000))
    assert list(Laufband(data, path=state, name="ints")) == data
    for position in (5, 50, 64, 999):
        changed = [*data[:position], -1, *data[position + 1:]]
        with pytest.raises(WorkflowMismatchError, match="ints"):
            list(Laufband(changed, path=state, name="ints"))
    assert list(Laufband([*data, 1000, 1001], path=state, name="ints")) == [1000, 1001]
    with pytest.raises(WorkflowMismatchError):  # True is not 1, "1" is not 1
        list(Laufband([True, *data[1:], 1000, 1001], path=state, name="ints"))


def test_unpicklable_items_name_the_item_and_key(state: Path) -> None:
    data = [1, 2, lambda: 3]
    with pytest.raises(TypeError, match=r"item 2 \(function\).*key="):
        list(Laufband(data, path=state, name="lambdas"))
    keyed = Laufband(data, path=state, name="keyed", key=lambda item: str(id(item)))
    assert len(list(keyed)) == 3


SETS = textwrap.dedent("""
    import sys
    from laufband import Laufband, pmap

    class Molecule:
        def __init__(self, i):
            self.elements = {"H", "C", "O", "N", "S", "Cl"}  # order follows the hash seed
            self.tags = frozenset({f"tag{i}", "organic"})
            self.i = i

    data = [Molecule(i) for i in range(30)]
    ran = [m.i for m in Laufband(data, path=sys.argv[1], name="sets",
                                 tqdm_kwargs={"disable": True})]
    calls = pmap(lambda m: len(m.elements), data, n=1, path=sys.argv[1], name="pmap-sets",
                 progress=False)
    print(len(ran))
""")


@pytest.mark.timeout(120)
def test_the_same_objects_with_sets_are_not_refused_in_a_fresh_process(
        tmp_path: Path, state: Path, procs: Processes) -> None:
    """Sets of strings pickle in hash-seed order, which differs per process: the same
    data rebuilt by another process must still be the same data."""
    script = tmp_path / "sets.py"
    script.write_text(SETS)
    ran = []
    for seed in ("1", "2", "3"):
        done = procs.python(script, state, env={"PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr
        ran.append(int(done.stdout))
    assert ran == [30, 0, 0]


def test_numpy_data_is_digested_from_its_bytes(state: Path) -> None:
    np = pytest.importorskip("numpy")  # comes with ase (the test extra)
    positions = np.arange(3000.0).reshape(1000, 3)
    assert len(list(Laufband(positions, path=state, name="np"))) == 1000
    moved = positions.copy()
    moved[500, 1] += 1e-9
    with pytest.raises(WorkflowMismatchError, match="items 448 to 511"):
        list(Laufband(moved, path=state, name="np"))
    longer = np.vstack([positions, np.ones((5, 3))])
    assert len(list(Laufband(longer, path=state, name="np"))) == 5
    assert list(Laufband(np.array(longer), path=state, name="np")) == []


class Frames(Sequence[int]):
    """A sequence of the user's own class (like a trajectory file): every item read
    notes whether the reading thread held laufband's state lock (user code runs outside
    it, so a slow read never keeps other workers waiting)."""

    def __init__(self, count: int, state: Path) -> None:
        self.count, self.state, self.under_lock = count, state, 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        # The thread reading holds no state lock (a worker's background thread may
        # hold it meanwhile: its transaction does not wait for user code).
        lock = FileLock(self.state / "state.lock", mode=FILE_MODE, is_singleton=True,
                        thread_local=True)
        self.under_lock += lock.is_locked
        if not 0 <= index < self.count:
            raise IndexError(index)
        return index * 10


def test_a_users_sequence_is_read_outside_the_state_lock(state: Path) -> None:
    first = Frames(70, state)  # 70: the next run compares 64 + a cut of 6 items
    assert list(Laufband(first, path=state, name="frames")) == [i * 10 for i in range(70)]
    longer = Frames(150, state)
    assert list(Laufband(longer, path=state, name="frames")) == [
        i * 10 for i in range(70, 150)]
    assert first.under_lock == longer.under_lock == 0


def test_lists_of_numpy_scalars_and_small_arrays_are_compared(state: Path) -> None:
    np = pytest.importorskip("numpy")
    for name, data in (("scalars", list(np.arange(300.0))),
                       ("rows", list(np.arange(900.0).reshape(300, 3)))):
        assert len(list(Laufband(data, path=state, name=name))) == 300
        changed = [x.copy() for x in data]
        changed[150] = changed[150] + 1e-9
        with pytest.raises(WorkflowMismatchError, match="items 128 to 191"):
            list(Laufband(changed, path=state, name=name))
        assert list(Laufband([x.copy() for x in data], path=state, name=name)) == []
