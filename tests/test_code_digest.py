"""Workflow digests follow the code a function calls in the user's own files.

Every test runs real scripts in fresh interpreters: a first run computes, a user file
is edited, a second run must compute again (or, for code the digest must not follow,
must not).
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.helpers.procs import Processes

pytestmark = pytest.mark.timeout(180)
DIGEST_DEADLINE = 0.2  # seconds a first default_name may take in a fresh interpreter

HARNESS = """
import json, os, sys, time
import laufband
from laufband.memo import default_name

LOG = os.path.abspath("calls.log")


def logged(x):
    with open(LOG, "a") as log:
        log.write(f"{x}\\n")
"""

PMAP = """
start = time.perf_counter()
name = default_name(job)
took = time.perf_counter() - start
results = laufband.pmap(job, range(5), n=2, path="state", progress=False,
                        start_method={start_method!r})
print(json.dumps({{"results": results, "name": name, "took": took}}))
"""

JOBLIB = """
from joblib import Parallel, delayed

os.environ["LAUFBAND_PATH"] = "state"

results = Parallel(n_jobs=2, backend="laufband")(delayed(job)(x) for x in range(5))
print(json.dumps({{"results": results, "name": default_name(job), "took": 0}}))
"""


class Project:
    """User files in a directory, and the scripts run against them."""

    def __init__(self, root: Path, procs: Processes, files: dict[str, str]) -> None:
        self.root, self.procs = root, procs
        for name, text in files.items():
            self.write(name, text)

    def write(self, name: str, text: str) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))

    def edit(self, name: str, old: str, new: str) -> None:
        text = (self.root / name).read_text()
        assert old in text, f"{old!r} not in {name}"
        (self.root / name).write_text(text.replace(old, new))

    def run(self, job: str, tail: str = PMAP, start_method: str = "fork", *,
            via_c: bool = False, seed: str = "0") -> dict[str, Any]:
        """Run HARNESS + ``job`` + ``tail`` as a script (or with ``-c``); its report."""
        code = HARNESS + textwrap.dedent(job) + tail.format(start_method=start_method)
        script = self.root / "run.py"
        script.write_text(code)
        env = {"PYTHONPATH": os.pathsep.join([str(self.root), str(self.root / "site-packages")]),
               # Edits within one second keep a file's size and mtime: no stale .pyc.
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": seed}
        args = ["-c", code] if via_c else [script]
        [(status, out, err)] = self.procs.wait_all([self.procs.start(*args, env=env,
                                                                     cwd=self.root)])
        assert status == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def calls(self) -> int:
        log = self.root / "calls.log"
        return len(log.read_text().splitlines()) if log.exists() else 0


PHYSICS = """
    def physics(x):
        return x * 1.5
"""

JOBS = {
    "module": """
        import helper

        def job(x):
            logged(x)
            return helper.physics(x)
    """,
    "from": """
        from helper import physics

        def job(x):
            logged(x)
            return physics(x)
    """,
    "local import": """
        def job(x):
            from helper import physics
            logged(x)
            return physics(x)
    """,
    "lambda": """
        import helper

        job = lambda x: logged(x) or helper.physics(x)
    """,
}


@pytest.mark.parametrize(("spelling", "start_method", "via_c"), [
    ("module", "fork", False), ("from", "spawn", False), ("local import", "fork", False),
    ("lambda", "spawn", True), ("module", "spawn", True)])
def test_editing_a_called_function_in_another_file_recomputes(
        tmp_path: Path, procs: Processes, spelling: str, start_method: str,
        *, via_c: bool) -> None:
    project = Project(tmp_path, procs, {"helper.py": PHYSICS})
    first = project.run(JOBS[spelling], start_method=start_method, via_c=via_c, seed="1")
    assert first["results"] == [x * 1.5 for x in range(5)]
    again = project.run(JOBS[spelling], start_method=start_method, via_c=via_c, seed="2")
    assert (again["name"], again["results"], project.calls()) == (first["name"],
                                                                   first["results"], 5)
    project.edit("helper.py", "x * 1.5", "x * 2.25")
    edited = project.run(JOBS[spelling], start_method=start_method, via_c=via_c)
    assert edited["results"] == [x * 2.25 for x in range(5)]
    assert edited["name"] != first["name"]
    assert project.calls() == 10


def test_editing_a_method_of_a_class_it_uses_recomputes(tmp_path: Path,
                                                        procs: Processes) -> None:
    project = Project(tmp_path, procs, {
        "helper.py": """
            from base import Base

            class Model(Base):
                def __init__(self, x):
                    self.x = x

                def energy(self):
                    return self.x * self.factor()
        """,
        "base.py": """
            class Base:
                def factor(self):
                    return 3
        """,
    })
    job = """
        from helper import Model

        def job(x):
            logged(x)
            return Model(x).energy()
    """
    assert project.run(job)["results"] == [0, 3, 6, 9, 12]
    project.edit("helper.py", "self.x * self.factor()", "self.x * self.factor() + 1")
    assert project.run(job)["results"] == [1, 4, 7, 10, 13]
    project.edit("base.py", "return 3", "return 30")  # an inherited method
    assert project.run(job)["results"] == [1, 31, 61, 91, 121]
    assert project.calls() == 15


def test_a_function_two_hops_away_in_another_file_is_followed(tmp_path: Path,
                                                              procs: Processes) -> None:
    project = Project(tmp_path, procs, {
        "a.py": """
            import b

            def first(x):
                return b.second(x) if x >= 0 else -1
        """,
        "b.py": """
            import a

            def second(x):  # calls back into a: a cycle the walk must stop on
                return a.first(-1) + x * 10 + 1
        """,
    })
    job = """
        from a import first

        def job(x):
            logged(x)
            return first(x)
    """
    assert project.run(job)["results"] == [0, 10, 20, 30, 40]
    project.edit("b.py", "x * 10 + 1", "x * 100 + 1")
    assert project.run(job)["results"] == [0, 100, 200, 300, 400]
    assert project.calls() == 10


def test_an_edit_elsewhere_does_not_recompute(tmp_path: Path, procs: Processes) -> None:
    project = Project(tmp_path, procs, {
        "helper.py": textwrap.dedent(PHYSICS) + textwrap.dedent("""
            def unused(x):
                return x - 1
        """),
        "unrelated.py": """
            def noise(x):
                return x + 1
        """,
    })
    job = """
        import helper
        import unrelated

        def job(x):
            logged(x)
            return helper.physics(x)
    """
    first = project.run(job)
    project.edit("unrelated.py", "x + 1", "x + 2")
    project.edit("helper.py", "x - 1", "x - 2")  # same file, another function
    same = project.run(job)
    assert (same["name"], project.calls()) == (first["name"], 5)
    project.edit("helper.py", "x * 1.5", "x * 2.25")
    assert project.run(job)["results"] == [x * 2.25 for x in range(5)]


def test_installed_and_standard_library_code_is_not_followed(tmp_path: Path,
                                                             procs: Processes) -> None:
    pytest.importorskip("numpy")
    project = Project(tmp_path, procs, {
        "helper.py": PHYSICS,
        "site-packages/installed.py": """
            def identity(x):
                return x
        """,
    })
    job = """
        import json
        import numpy as np
        import installed
        import helper

        def job(x):
            logged(x)
            value = float(np.sqrt(helper.physics(x) ** 2))
            return installed.identity(json.loads(json.dumps(value)))
    """
    first = project.run(job)
    assert first["results"] == [x * 1.5 for x in range(5)]
    assert first["took"] < DIGEST_DEADLINE
    project.edit("site-packages/installed.py", "return x", "return x  # edited")
    assert (project.run(job)["name"], project.calls()) == (first["name"], 5)
    project.edit("helper.py", "x * 1.5", "x * 2.25")
    assert project.run(job)["results"] == [x * 2.25 for x in range(5)]


def test_joblib_backend_recomputes_after_an_edit(tmp_path: Path, procs: Processes) -> None:
    pytest.importorskip("joblib")
    project = Project(tmp_path, procs, {"helper.py": PHYSICS})
    job = JOBS["module"]
    assert project.run(job, JOBLIB)["results"] == [x * 1.5 for x in range(5)]
    assert project.run(job, JOBLIB)["results"] == [x * 1.5 for x in range(5)]
    assert project.calls() == 5
    project.edit("helper.py", "x * 1.5", "x * 2.25")
    assert project.run(job, JOBLIB)["results"] == [x * 2.25 for x in range(5)]
    assert project.calls() == 10


SET_STATE = textwrap.dedent("""
    import os, sys
    from joblib import Parallel, delayed
    from laufband import pmap

    log = sys.argv[2]

    class Energy:  # a callable whose state holds a set of strings
        def __init__(self):
            self.elements = {"H", "C", "O", "N", "S", "Cl"}

        def __call__(self, item):
            with open(log, "a") as out:
                out.write("call\\n")
            return len(item)

    def count(item, elements):
        with open(log, "a") as out:
            out.write("call\\n")
        return len(elements)

    items = [frozenset({f"a{i}", "b", "c"}) for i in range(4)]
    assert pmap(Energy(), items, n=1, path=sys.argv[1], progress=False) == [3] * 4
    assert Parallel(n_jobs=1, backend="laufband", path=sys.argv[1])(
        delayed(count)(i, {"x", "y", "z"}) for i in range(3)) == [3] * 3
""")


def test_sets_in_state_items_and_arguments_do_not_change_digests(
        tmp_path: Path, procs: Processes) -> None:
    """Sets of strings pickle in hash-seed order: the same call from another process
    (another seed) must find the results (on main: recomputed at random)."""
    script = tmp_path / "sets.py"
    script.write_text(SET_STATE)
    log = tmp_path / "calls.txt"
    for seed in ("1", "2", "3", "4"):
        proc = procs.start(script, tmp_path / "state", log,
                           env={"PYTHONHASHSEED": seed})
        code, _, err = procs.wait_all([proc])[0]
        assert code == 0, err
    assert log.read_text().split() == ["call"] * 7
