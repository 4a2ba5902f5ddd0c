"""Task(fingerprint=...): a changed fingerprint runs its task and every dependent again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from laufband import Graphband, Monitor, Task
from tests.helpers.procs import HELPERS, Processes, wait_for

pytestmark = pytest.mark.timeout(120)
QUIET = {"disable": True}
ALL = ["r1", "r2", "m1", "m2", "m3", "l1", "l2", "l3", "l4"]


def run(procs: Processes, state: Path, changed: str = "") -> list[str]:
    result = procs.python(HELPERS / "features_worker.py", "fingerprints", state,
                          "--changed", changed)
    assert result.returncode == 0, result.stderr
    ran: list[str] = json.loads(result.stdout)
    return ran


def test_a_changed_fingerprint_in_a_3_level_graph_reruns_that_task_and_its_descendants(
        state: Path, procs: Processes) -> None:
    assert sorted(run(procs, state)) == sorted(ALL)
    assert run(procs, state) == []  # nothing changed: nothing runs
    # m2 depends on r1, r2; l2 and l3 depend on m2; nothing else does
    ran = run(procs, state, changed="m2")
    assert ran[0] == "m2"  # before the tasks depending on it
    assert sorted(ran) == ["l2", "l3", "m2"]
    assert run(procs, state, changed="m2") == []  # the new fingerprint is stored
    ran = run(procs, state, changed="r2")  # r2, then m2 and m3, then l2, l3, l4
    assert sorted(ran) == ["l2", "l3", "l4", "m2", "m3", "r2"]
    assert ran.index("r2") < min(ran.index("m2"), ran.index("m3"))
    assert max(ran.index("m2"), ran.index("m3")) < min(ran.index(x) for x in ("l2", "l3", "l4"))


def test_status_shows_invalidated_tasks_until_they_ran_again(state: Path,
                                                             procs: Processes) -> None:
    run(procs, state)
    tasks = [Task("a", fingerprint=b"1"), Task("b", dependencies=["a"]), Task("c")]
    for _ in Graphband(tasks, path=state, name="shown", tqdm_kwargs=QUIET):
        pass
    tasks[0] = Task("a", fingerprint=b"2")
    worker = Graphband(tasks, path=state, name="shown", tqdm_kwargs=QUIET)
    for task in worker:
        assert task.id == "a"
        status = procs.run([sys.executable, "-m", "laufband", "status", "--path", str(state),
                            "-w", "shown"], env={"COLUMNS": "120"})
        as_json = procs.run([sys.executable, "-m", "laufband", "status", "--json", "--path",
                             str(state), "-w", "shown"])
        worker.close()
    assert "invalidated 2 (a fingerprint changed), to run again: b, a" in status.stdout, \
        status.stdout
    [flow] = json.loads(as_json.stdout)["workflows"]
    assert (flow["invalidated"], flow["invalidated_tasks"]) == (2, ["b", "a"])
    ran = [t.id for t in Graphband(tasks, path=state, name="shown", tqdm_kwargs=QUIET)]
    assert ran == ["b"]
    [after] = Monitor(state).status("shown")
    assert (after.invalidated, after.counts["completed"]) == (0, 3)


def test_a_first_fingerprint_is_adopted_without_a_rerun(state: Path) -> None:
    for _ in Graphband([Task("x"), Task("y", dependencies=["x"])], path=state, name="adopt",
                       tqdm_kwargs=QUIET):
        pass
    tasks = [Task("x", fingerprint="v1"), Task("y", dependencies=["x"])]
    assert [t.id for t in Graphband(tasks, path=state, name="adopt", tqdm_kwargs=QUIET)] == []
    tasks[0] = Task("x", fingerprint="v2")
    assert [t.id for t in Graphband(tasks, path=state, name="adopt",
                                    tqdm_kwargs=QUIET)] == ["x", "y"]


def test_str_and_bytes_fingerprints_differ(state: Path) -> None:
    for _ in Graphband([Task("x", fingerprint="1")], path=state, name="kinds",
                       tqdm_kwargs=QUIET):
        pass
    assert [t.id for t in Graphband([Task("x", fingerprint=b"1")], path=state, name="kinds",
                                    tqdm_kwargs=QUIET)] == ["x"]


@pytest.mark.parametrize("fingerprint", [1, 2.5, ["a"]])
def test_a_fingerprint_of_the_wrong_type_is_refused(fingerprint: object) -> None:
    with pytest.raises(TypeError, match=r"^Task 'x': fingerprint must be a string or bytes,"
                       r" got .*: pass a hash of the inputs") as caught:
        Task("x", fingerprint=fingerprint)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


SLOW_V1 = """
import sys, time
from pathlib import Path
from laufband import Graphband, Task
for task in Graphband([Task("a", fingerprint="v1")], path=sys.argv[1], name="moving",
                      tqdm_kwargs={"disable": True}):
    Path(sys.argv[2]).touch()
    time.sleep(2)
"""


def test_a_fingerprint_changed_while_its_task_runs_reruns_it(state: Path, tmp_path: Path,
                                                              procs: Processes) -> None:
    started = tmp_path / "started"
    slow = procs.start("-c", SLOW_V1, state, started)
    wait_for(started.exists, what="task a running with v1")
    tasks = [Task("a", fingerprint="v2")]  # registered while v1 runs elsewhere
    # This worker waits for a; finished with v1, a is pending again, and runs here.
    assert [t.id for t in Graphband(tasks, path=state, name="moving",
                                    tqdm_kwargs=QUIET)] == ["a"]
    [(code, _, err)] = procs.wait_all([slow])
    assert code == 0, err
    assert "1 task of workflow 'moving' (a) has a newer fingerprint" in err
    assert [t.id for t in Graphband(tasks, path=state, name="moving",
                                    tqdm_kwargs=QUIET)] == []
