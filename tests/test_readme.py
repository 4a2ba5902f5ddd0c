"""Every example of the reference README (shared/SEED.md), run as written."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.procs import Processes, task_events, task_states

pytestmark = pytest.mark.timeout(120)


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


DATA_JSON_EXAMPLE = """
    import json
    import time
    from pathlib import Path
    from laufband import Laufband

    output_file = Path("data.json")
    output_file.write_text(json.dumps({"processed_data": []}))
    data = list(range(100))

    worker = Laufband(data, tqdm_kwargs={"desc": "using Laufband"})

    for item in worker:
        # Simulate some computationally intensive task
        time.sleep(0.1)
        with worker.lock:
            # Access and modify a shared resource (e.g., a file) safely using the lock
            file_content = json.loads(output_file.read_text())
            file_content["processed_data"].append(item)
            output_file.write_text(json.dumps(file_content))
"""


def test_data_json_example_ten_processes(tmp_path: Path, procs: Processes) -> None:
    # The README truncates data.json in every process at start-up; started all at once
    # that races with the first appends, so create it once and drop that line here.
    source = DATA_JSON_EXAMPLE.replace(
        'output_file.write_text(json.dumps({"processed_data": []}))', "")
    (tmp_path / "data.json").write_text(json.dumps({"processed_data": []}))
    script = write(tmp_path / "main.py", source)
    started = [procs.start(script, cwd=tmp_path) for _ in range(10)]
    results = procs.wait_all(started)
    assert [code for code, _, _ in results] == [0] * 10, results
    processed = json.loads((tmp_path / "data.json").read_text())["processed_data"]
    assert sorted(processed) == list(range(100))
    assert set(task_states(tmp_path / ".laufband", "main").values()) == {"completed"}


def test_data_json_example_as_written_sequentially(tmp_path: Path, procs: Processes) -> None:
    script = write(tmp_path / "main.py", DATA_JSON_EXAMPLE.replace("time.sleep(0.1)", "pass"))
    [(code, _, err)] = procs.wait_all([procs.start(script, cwd=tmp_path)])
    assert code == 0, err
    assert "using Laufband" in err  # the tqdm description
    processed = json.loads((tmp_path / "data.json").read_text())["processed_data"]
    assert processed == list(range(100))


def test_failure_policy_break_exception_and_close(tmp_path: Path, procs: Processes) -> None:
    script = write(tmp_path / "policy.py", """
        from laufband import Laufband

        data = list(range(100))

        # Example 1: break
        for item in Laufband(data):
            if item == 50:
                break  # Job 50 will be marked as failed

        # Example 2: Exception
        try:
            for item in Laufband(data):
                if item == 70:
                    raise ValueError("Something went wrong")  # Job 70 will be marked as failed
        except ValueError as error:
            print("re-raised:", error)

        worker = Laufband(data)
        seen = []
        for item in worker:
            seen.append(item)
            if item == 80:
                worker.close()  # Job 80 will be marked as completed, and iteration will stop
        print("after close:", seen)
    """)
    [(code, out, err)] = procs.wait_all([procs.start(script, cwd=tmp_path)])
    assert code == 0, err
    assert "re-raised: Something went wrong" in out
    assert "after close: [71, 72, 73, 74, 75, 76, 77, 78, 79, 80]" in out
    states = task_states(tmp_path / ".laufband", "policy")
    assert states["50"] == "failed"
    assert states["70"] == "failed"
    assert states["80"] == "completed"
    assert Counter(states.values()) == {"completed": 79, "failed": 2, "pending": 19}
    assert [(task, state) for task, state, _ in task_events(tmp_path / ".laufband", "policy")] \
        == [("50", "failed"), ("70", "failed")]

    # A later run continues with the rest.
    rerun = write(tmp_path / "policy_rerun.py", """
        from laufband import Laufband
        print(list(Laufband(list(range(100)), name="policy")))
    """)
    [(code, out, err)] = procs.wait_all([procs.start(rerun, cwd=tmp_path)])
    assert code == 0, err
    assert out.strip() == str(list(range(81, 100)))


def test_uncaught_exception_fails_task_with_its_error(tmp_path: Path, procs: Processes) -> None:
    script = write(tmp_path / "crash.py", """
        from laufband import Laufband
        for item in Laufband(list(range(10))):
            if item == 3:
                raise ValueError("Something went wrong")
    """)
    [(code, _, err)] = procs.wait_all([procs.start(script, cwd=tmp_path)])
    assert code == 1
    assert "ValueError: Something went wrong" in err
    states = task_states(tmp_path / ".laufband", "crash")
    assert states["3"] == "failed"
    assert [states[str(i)] for i in range(3)] == ["completed"] * 3
    assert {states[str(i)] for i in range(4, 10)} == {"pending"}
    assert task_events(tmp_path / ".laufband", "crash") == [
        ("3", "failed", "ValueError: Something went wrong")]


GRAPH_EXAMPLE = """
    import networkx as nx
    from laufband import Task

    def graph_tasks():
        digraph = nx.DiGraph()
        edges = [
            ("a", "b"),
            ("a", "c"),
            ("b", "d"),
            ("b", "e"),
            ("c", "f"),
            ("c", "g"),
        ]
        digraph.add_edges_from(edges)
        for node in nx.topological_sort(digraph):
            yield Task(
                id=node,  # unique string representation of the task
                data=node, # optional data associated with the task
                dependencies=digraph.predecessors(node), # dependencies of the task
            )

    from laufband import Graphband

    worker = Graphband(graph_tasks())

    for task in worker:
        print(task.id, task.data)
"""


def test_graphband_example(tmp_path: Path, procs: Processes) -> None:
    script = write(tmp_path / "graph.py", GRAPH_EXAMPLE)
    [(code, out, err)] = procs.wait_all([procs.start(script, cwd=tmp_path)])
    assert code == 0, err
    lines = out.split("\n")[:-1]
    assert sorted(lines) == [f"{n} {n}" for n in "abcdefg"]
    order = [line.split()[0] for line in lines]
    for parent, child in [("a", "b"), ("a", "c"), ("b", "d"), ("b", "e"), ("c", "f"), ("c", "g")]:
        assert order.index(parent) < order.index(child)


def test_labels_and_requirements_example(tmp_path: Path, procs: Processes) -> None:
    script = write(tmp_path / "labels.py", """
        from laufband import Task, Graphband

        def iterator():
            yield Task(id="task1")
            yield Task(id="task2", requirements={"gpu"})

        w1 = Graphband(iterator(), identifier="w1")
        w2 = Graphband(iterator(), identifier="w2", labels={"gpu"})

        print([x.id for x in w1])
        # [task1]
        print([x.id for x in w2])
        # [task2]
    """)
    [(code, out, err)] = procs.wait_all([procs.start(script, cwd=tmp_path)])
    assert code == 0, err
    assert out.split("\n")[:2] == ["['task1']", "['task2']"]


def test_max_parallel_workers_example(tmp_path: Path, procs: Processes) -> None:
    script = write(tmp_path / "multi.py", """
        from laufband import Task, Graphband

        def iterator():
            yield Task(id="task1", max_parallel_workers=2)
            # a maximum of 2 workers will be assign to this job until both successfully finish .

        worker = Graphband(iterator())

        for item in worker:
            # code that can be executed multiple times, e.g. via laufband itself.
            print(item.id)
    """)
    [(code, out, err)] = procs.wait_all([procs.start(script, cwd=tmp_path)])
    assert code == 0, err
    assert out.split() == ["task1"]
    assert task_states(tmp_path / ".laufband", "multi") == {"task1": "completed"}


def test_ase_example_with_emt(tmp_path: Path, procs: Processes) -> None:
    pytest.importorskip("ase")
    script = write(tmp_path / "ase_main.py", """
        import ase.io
        from ase.calculators.emt import EMT
        from ase.collections import s22
        from laufband import Laufband

        # Initialize calculator (EMT stands in for the MACE model, which needs a download)
        calc = EMT()

        worker = Laufband(list(s22))

        for atoms in worker:
            atoms.calc = calc
            energy = atoms.get_potential_energy()
            worker.iterator.set_description(f"{energy = }")
            with worker.lock:
                ase.io.write("frames.xyz", atoms, append=True)
    """)
    started = [procs.start(script, cwd=tmp_path) for _ in range(4)]
    results = procs.wait_all(started)
    assert [code for code, _, _ in results] == [0] * 4, results
    assert any("energy = " in err for _, _, err in results)
    import ase.io
    from ase.collections import s22

    frames = ase.io.read(tmp_path / "frames.xyz", index=":")
    assert len(frames) == 22
    assert sorted(f.get_chemical_formula() for f in frames) == sorted(
        a.get_chemical_formula() for a in s22)
    assert all("energy" in f.calc.results for f in frames)
