"""The joblib backend "laufband", exercised through joblib's public API only."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.procs import HELPERS, Processes, completions
from tests.helpers.scale import Scale

pytestmark = pytest.mark.timeout(180)


def cubes(n: int) -> list[int]:
    return [x**3 + 1 for x in range(n)]


def run(procs: Processes, state: Path, logs: Path, *args: object):
    return procs.start(HELPERS / "joblib_caller.py", state, logs, *map(str, args))


def output(result: tuple[int, str, str]) -> list[int]:
    code, out, err = result
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("first", [[], ["--import-joblib-first"]])
def test_backend_registered_whichever_is_imported_first(
        state: Path, procs: Processes, first: list[str]) -> None:
    logs = state.parent / "logs"
    assert output(procs.wait_all([run(procs, state, logs, "--items", 6, *first)])[0]) \
        == cubes(6)


def test_import_laufband_does_not_import_joblib(procs: Processes) -> None:
    code = "import sys, laufband; print('joblib' in sys.modules)"
    [(status, out, err)] = procs.wait_all([procs.start("-c", code)])
    assert status == 0, err
    assert out.strip() == "False"


def test_rerun_computes_nothing(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    assert output(procs.wait_all([run(procs, state, logs)])[0]) == cubes(20)
    assert completions(logs) == Counter({str(i): 1 for i in range(20)})
    assert output(procs.wait_all([run(procs, state, logs)])[0]) == cubes(20)
    assert sum(completions(logs).values()) == 20


def test_n_jobs_1_still_goes_through_laufband(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    for _ in range(2):
        assert output(procs.wait_all([run(procs, state, logs, "--n-jobs", 1)])[0]) == cubes(20)
    assert sum(completions(logs).values()) == 20  # the second run was served from state


def test_two_processes_share_the_calls(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    both = [run(procs, state, logs, "--items", 40, "--sleep", 0.05) for _ in range(2)]
    assert [output(r) for r in procs.wait_all(both)] == [cubes(40)] * 2
    assert completions(logs) == Counter({str(i): 1 for i in range(40)})


def test_killed_worker_call_is_recomputed(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    result = procs.wait_all([run(procs, state, logs, "--items", 60, "--sleep", 0.05,
                                 "--kill-helper", "--n-jobs", 3)])[0]
    assert output(result) == cubes(60)
    killed_on = (logs / "killed-once").read_text()
    assert completions(logs)[killed_on] == 1


def test_in_process_forms_kwargs_generator_and_errors(state: Path) -> None:
    from joblib import Parallel, delayed, parallel_backend, parallel_config

    def power(x: int, exponent: int = 2) -> int:
        return x**exponent

    with parallel_backend("laufband", n_jobs=2, path=state):
        assert Parallel()(delayed(power)(i, exponent=3) for i in range(5)) == [
            0, 1, 8, 27, 64]
    with parallel_config(backend="laufband", n_jobs=2, path=state):
        generator = Parallel(return_as="generator")(delayed(power)(i) for i in range(4))
        assert list(generator) == [0, 1, 4, 9]

    def broken(x: int) -> int:
        if x == 3:
            raise KeyError("three")
        return x

    with parallel_config(backend="laufband", n_jobs=2, path=state), \
            pytest.raises(KeyError, match="three"):
        Parallel()(delayed(broken)(i) for i in range(6))


def test_a_callable_object_changed_between_calls_is_computed_again(state: Path) -> None:
    from joblib import Parallel, delayed, parallel_config

    scale = Scale(2)
    with parallel_config(backend="laufband", n_jobs=1, path=str(state)):
        first = Parallel()(delayed(scale)(x) for x in range(3))
        scale.factor = 3  # the same object, now computing something else
        second = Parallel()(delayed(scale)(x) for x in range(3))
    assert (first, second) == ([0, 2, 4], [0, 3, 6])


def test_nested_parallel_runs_sequentially_inside_a_task(state: Path) -> None:
    from joblib import Parallel, delayed, parallel_config

    def inner(x: int) -> list[str]:
        from joblib.parallel import get_active_backend

        backend, _ = get_active_backend()
        return [type(backend).__name__, *Parallel(n_jobs=4)(delayed(str)(x + i) for i in range(2))]

    with parallel_config(backend="laufband", n_jobs=2, path=state):
        out = Parallel()(delayed(inner)(i) for i in range(2))
    assert out == [["SequentialBackend", "0", "1"], ["SequentialBackend", "1", "2"]]


def test_verbose_output_still_works(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from joblib import Parallel, delayed

    Parallel(n_jobs=2, backend="laufband", verbose=10)(delayed(abs)(-i) for i in range(8))
    assert "Using backend LaufbandBackend with 2 concurrent workers." in capsys.readouterr().err
