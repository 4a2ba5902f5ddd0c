"""The loop's promises with real processes: a worker leaves when what it could run
waits for labels nobody online has, a body can fail a task and go on, and a run that
leaves failed or blocked tasks says so in one line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.helpers.procs import (
    RUN_DEADLINE,
    Processes,
    next_line,
    read_log,
    task_states,
    wait_for,
)

GRAPH = textwrap.dedent("""
    import sys, time
    from laufband import Graphband, Task

    labels = [x for x in sys.argv[2].split(",") if x]
    tasks = [Task("a", requirements={"gpu"}), Task("b", dependencies=["a"]),
             Task("c", dependencies=["b"]), Task("d")]
    worker = Graphband(tasks, path=sys.argv[1], name="graph", labels=labels,
                       tqdm_kwargs={"disable": True})
    for task in worker:
        print("ran", task.id, flush=True)
        time.sleep(float(sys.argv[3]))
""")


@pytest.mark.timeout(60)
def test_a_worker_leaves_when_its_tasks_wait_for_labels_nobody_online_has(
        tmp_path: Path, state: Path, procs: Processes) -> None:
    script = tmp_path / "graph.py"
    script.write_text(GRAPH)
    done = procs.python(script, state, "", "0", timeout=RUN_DEADLINE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ran", "d"]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "'b', 'c'" in lines[0]
    assert "'gpu'" in lines[0]
    assert "labels=" in lines[0]
    assert task_states(state, "graph") == {"a": "pending", "b": "pending", "c": "pending",
                                           "d": "completed"}


@pytest.mark.timeout(60)
def test_a_worker_waits_while_a_worker_with_the_labels_is_online(
        tmp_path: Path, state: Path, procs: Processes) -> None:
    script = tmp_path / "graph.py"
    script.write_text(GRAPH)
    gpu = procs.start(script, state, "gpu", "2.0")  # runs a (2 s), leaves b, c, d
    assert next_line(gpu, what="the gpu worker to run a").split() == ["ran", "a"]
    cpu = procs.start(script, state, "", "0")
    results = procs.wait_all([gpu, cpu], deadline=30)
    assert [code for code, _, _ in results] == [0, 0], results
    ran = " ".join(out for _, out, _ in results).split()
    assert sorted(ran[1::2]) == ["b", "c", "d"]  # a is on the first stdout line read above
    assert set(task_states(state, "graph").values()) == {"completed"}
    assert results[1][2] == ""  # nothing to complain about


CATCH = textwrap.dedent("""
    import sys
    from laufband import Laufband

    worker = Laufband(list(range(20)), path=sys.argv[1], name="catch",
                      tqdm_kwargs={"disable": True})
    for item in worker:
        with worker.catch():
            if item % 5 == 3:
                raise ValueError(f"item {item} is bad")
            print(item, flush=True)
""")


@pytest.mark.timeout(60)
def test_catch_fails_the_task_and_the_loop_goes_on(tmp_path: Path, state: Path,
                                                   procs: Processes) -> None:
    from tests.helpers.procs import task_events

    script = tmp_path / "catch.py"
    script.write_text(CATCH)
    done = procs.python(script, state, timeout=RUN_DEADLINE)
    assert done.returncode == 0, done.stderr
    bad = {3, 8, 13, 18}
    assert [int(x) for x in done.stdout.split()] == [i for i in range(20) if i not in bad]
    states = task_states(state, "catch")
    assert {int(k) for k, v in states.items() if v == "failed"} == bad
    errors = {seq: error for seq, kind, error in task_events(state, "catch")}
    assert errors["8"] == "ValueError: item 8 is bad"
    # The end of the run says how many failed and how to see them, in one line.
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "4 failed" in lines[0]
    assert "laufband status" in lines[0]
    again = procs.python(script, state, timeout=RUN_DEADLINE)
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    assert "4 failed" in again.stderr


@pytest.mark.timeout(60)
def test_failure_policy_stop_stops_the_other_workers(tmp_path: Path, state: Path,
                                                     procs: Processes) -> None:
    script = tmp_path / "stop.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from laufband import Laufband

        worker = Laufband(list(range(400)), path=sys.argv[1], name="stop",
                          failure_policy="stop", tqdm_kwargs={"disable": True})
        for item in worker:
            if sys.argv[2] == "fail":
                print(item, flush=True)
                raise RuntimeError("the SCF did not converge")
            with open(sys.argv[3], "a") as log:
                log.write(f"{item}\\n")
            time.sleep(0.01)
    """))
    working = tmp_path / "working.log"
    other = procs.start(script, state, "work", working)
    wait_for(lambda: len(read_log(working)) >= 3, what="the first worker to finish items")
    failing = procs.start(script, state, "fail", working)  # fails its first item
    code, out, err = procs.wait_all([failing], deadline=30)[0]
    assert code != 0
    assert "SCF did not converge" in err
    failed = out.split()[0]
    code, _, err = procs.wait_all([other], deadline=30)[0]
    assert code != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("RuntimeError:")
    assert f"'{failed}'" in last
    assert "'stop'" in last
    states = task_states(state, "stop")
    assert states[failed] == "failed"
    assert sum(v == "completed" for v in states.values()) < 399  # nobody ran to the end
    # A new worker does not start on the workflow either.
    again = procs.start(script, state, "work")
    code, _, err = procs.wait_all([again], deadline=30)[0]
    assert code != 0
    assert f"'{failed}'" in err


def test_two_catches_in_one_body_fail_the_item_once(state: Path) -> None:
    from laufband import Laufband
    from tests.helpers.procs import task_events

    worker = Laufband(list(range(4)), path=state, name="twice", tqdm_kwargs={"disable": True})
    after = []
    for item in worker:
        with worker.catch():
            if item == 1:
                raise ValueError("first step")
        with worker.catch():
            if item == 1:
                raise ValueError("second step")
        after.append(item)
    assert after == [0, 1, 2, 3]
    assert task_states(state, "twice") == {"0": "completed", "1": "failed", "2": "completed",
                                           "3": "completed"}
    assert task_events(state, "twice") == [("1", "failed", "ValueError: first step")]


def test_catch_outside_a_loop_and_in_a_disabled_loop(state: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from laufband import Laufband

    worker = Laufband([1, 2], path=state, name="outside")
    with pytest.raises(RuntimeError, match="inside the body of the loop"), worker.catch():
        pass
    plain = Laufband([1, 2], path=state, name="plain", disabled=True)
    seen = []
    for item in plain:
        with plain.catch():
            if item == 1:
                raise ValueError("bad")
        seen.append(item)
    assert seen == [1, 2]
    assert "an item failed: ValueError: bad" in capsys.readouterr().err
