"""Options, environment variables, progress and the in-process API."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from laufband import Graphband, Laufband, Task
from laufband.batching import JUMP, BatchSizer
from laufband.mpi import rank_and_size
from laufband.store import _ranges
from tests.helpers.procs import Processes, online_workers, task_events, task_states

QUIET = {"disable": True}


def test_environment_sets_path_and_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_PATH", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("LAUFBAND_NAME", "from-env")
    assert list(Laufband([1, 2], tqdm_kwargs=QUIET)) == [1, 2]
    assert task_states(tmp_path / "elsewhere", "from-env") == {"0": "completed", "1": "completed"}


def test_argument_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_PATH", str(tmp_path / "env"))
    worker = Laufband([1], path=tmp_path / "arg", tqdm_kwargs=QUIET)
    assert list(worker) == [1]
    assert (tmp_path / "arg" / "state.db").exists() and not (tmp_path / "env").exists()


def test_default_path_is_dot_laufband(tmp_path: Path) -> None:
    assert list(Laufband([1], tqdm_kwargs=QUIET)) == [1]
    assert (tmp_path / ".laufband" / "state.db").exists()
    assert (tmp_path / ".laufband").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / ".laufband" / "state.db").stat().st_mode & 0o777 == 0o600


def test_disabled_is_a_plain_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_DISABLED", "1")
    worker = Laufband([1, 2, 3], path=tmp_path / "state", tqdm_kwargs=QUIET)
    assert list(worker) == [1, 2, 3]
    assert list(worker) == [1, 2, 3]  # nothing is remembered
    with worker.lock:
        pass
    assert not (tmp_path / "state").exists()


def test_failed_task_retried_up_to_max_failed_retries(state: Path) -> None:
    attempts: list[int] = []
    for _ in range(3):
        try:
            for item in Laufband([0, 1], path=state, name="retry", max_failed_retries=1,
                                  tqdm_kwargs=QUIET):
                attempts.append(item)
                if item == 1:
                    raise RuntimeError("flaky")
        except RuntimeError:
            pass
    assert attempts == [0, 1, 1]  # one retry, then it stays failed
    assert task_states(state, "retry") == {"0": "completed", "1": "failed"}
    assert [event[:2] for event in task_events(state, "retry")] == [
        ("1", "failed"), ("1", "failed")]


def test_context_manager_records_error_and_goes_offline(state: Path) -> None:
    with pytest.raises(KeyError):
        with Laufband(["a", "b"], path=state, name="ctx", tqdm_kwargs=QUIET) as worker:
            for item in worker:
                raise KeyError(item)
    assert task_events(state, "ctx") == [("0", "failed", "KeyError: 'a'")]
    assert task_states(state, "ctx") == {"0": "failed", "1": "pending"}
    assert online_workers(state) == 0


def test_has_more_jobs(state: Path) -> None:
    worker = Laufband([1, 2], path=state, tqdm_kwargs=QUIET)
    assert worker.has_more_jobs
    assert list(worker) == [1, 2]
    assert not worker.has_more_jobs
    worker.close()
    assert online_workers(state) == 0


def test_global_progress_in_the_bar(state: Path) -> None:
    assert list(Laufband(list(range(30)), path=state, name="p", tqdm_kwargs=QUIET))[:1] == [0]
    more = Laufband(list(range(40)), path=state, name="p",
                    tqdm_kwargs={"file": io.StringIO(), "desc": "second"})
    bar = more.iterator
    assert bar.desc == "second" and bar.total == 40
    assert list(more) == list(range(30, 40))
    assert more.iterator.n == 40  # the first run's 30 completions count too


def test_graphband_tasks_yield_task_objects_with_data(state: Path) -> None:
    tasks = [Task("x", data={"value": 1}), Task("y", data=[2], dependencies=["x"])]
    got = list(Graphband(tasks, path=state, tqdm_kwargs=QUIET))
    assert [(t.id, t.data) for t in got] == [("x", {"value": 1}), ("y", [2])]


def test_later_graph_run_adds_tasks_and_keeps_completed(state: Path) -> None:
    assert [t.id for t in Graphband([Task("a")], path=state, name="g", tqdm_kwargs=QUIET)] \
        == ["a"]
    grown = [Task("a"), Task("b", dependencies=["a"])]
    assert [t.id for t in Graphband(grown, path=state, name="g", tqdm_kwargs=QUIET)] == ["b"]


def test_failed_dependency_blocks_dependents(state: Path) -> None:
    tasks = [Task("a"), Task("b", dependencies=["a"]), Task("c", dependencies=["b"]), Task("d")]
    with pytest.raises(RuntimeError):
        for task in Graphband(tasks, path=state, name="g", tqdm_kwargs=QUIET):
            if task.id == "a":
                raise RuntimeError("a breaks")
    rest = [t.id for t in Graphband(tasks, path=state, name="g", tqdm_kwargs=QUIET)]
    assert rest == ["d"]  # b and c can never run: the worker does not wait for them
    assert task_states(state, "g") == {"a": "failed", "b": "blocked", "c": "blocked",
                                       "d": "completed"}


def test_rank_detection_and_bar_only_on_rank_zero(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMI_RANK", "3")
    monkeypatch.setenv("PMI_SIZE", "4")
    assert rank_and_size() == (3, 4)
    worker = Laufband([1], path=state)
    assert "rank3" in worker.identifier
    assert worker.iterator.disable


@pytest.mark.parametrize(("env", "expected"), [
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, (1, 2)),
    ({"PMIX_RANK": "5"}, (5, 6)),
    ({"MV2_COMM_WORLD_RANK": "0", "MV2_COMM_WORLD_SIZE": "8"}, (0, 8)),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"}, (2, 4)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),  # a batch script, not srun
    ({}, None),
])
def test_rank_from_launchers(monkeypatch: pytest.MonkeyPatch, env: dict, expected) -> None:
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK",
                 "SLURM_PROCID", "SLURM_STEP_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert rank_and_size() == expected


def test_ranges_fold_task_numbers() -> None:
    assert _ranges([]) == []
    assert _ranges([3, 4, 5]) == [(3, 5)]
    assert _ranges([7, 1, 2, 9, 8]) == [(1, 2), (7, 9)]


def test_batches_grow_for_fast_tasks_and_stay_single_for_slow_ones() -> None:
    fast = BatchSizer()
    for _ in range(20):
        size = fast.next_size(remaining=1_000_000, workers=1)
        fast.observe_tasks(size, size * 1e-6)
    assert fast.size >= 4096
    # Fewer left than two transactions' worth of work: all in one claim.
    assert fast.next_size(remaining=10, workers=2) == 10
    medium = BatchSizer()
    medium.observe_tasks(1, 0.01)
    assert medium.next_size(remaining=10, workers=2) == 2  # guided: unclaimed / (2 x workers)
    assert medium.next_size(remaining=10, workers=2, all_counted=True) == 5  # / workers
    jump = BatchSizer()
    jump.observe_tasks(1, 1e-4)  # timed: growth jumps to 50 ms of work, past doubling
    assert jump.next_size(remaining=1_000_000, workers=1) == int(JUMP / 1e-4)
    slow = BatchSizer()
    for _ in range(10):
        slow.observe_transaction(0.002)
        slow.observe_tasks(slow.next_size(remaining=1000, workers=8), 2.0)
    assert slow.next_size(remaining=1000, workers=8) == 1


def test_cli_help_and_version(procs: Processes) -> None:
    import laufband

    [(code, out, _)] = procs.wait_all([procs.start("-m", "laufband", "--version")])
    assert code == 0 and out.strip() == f"laufband {laufband.__version__}"
    [(code, out, _)] = procs.wait_all([procs.start("-m", "laufband", "--help")])
    assert code == 0 and "Usage" in out


def test_import_is_light(procs: Processes) -> None:
    heavy = ["joblib", "networkx", "typer", "rich", "mpi4py"]
    code = f"import sys, laufband; print([m for m in {heavy!r} if m in sys.modules])"
    [(status, out, err)] = procs.wait_all([procs.start("-c", code)])
    assert status == 0, err
    assert out.strip() == "[]"


def test_worker_does_not_claim_tasks_registered_later_by_others(state: Path) -> None:
    early = Graphband([Task("a"), Task("b")], path=state, name="g", tqdm_kwargs=QUIET)
    iterator = iter(early)
    assert next(iterator).id == "a"
    late = Graphband([Task(x) for x in "abcd"], path=state, name="g", tqdm_kwargs=QUIET)
    assert late.has_more_jobs  # registers c and d, then goes offline again
    assert [t.id for t in iterator] == ["b"]  # not c or d: no data for them
    assert [t.id for t in late] == ["c", "d"]
    assert task_states(state, "g") == dict.fromkeys("abcd", "completed")


def test_shorter_positional_run_leaves_appended_tasks_alone(state: Path) -> None:
    short = Laufband(list(range(5)), path=state, name="p", tqdm_kwargs=QUIET)
    iterator = iter(short)
    assert next(iterator) == 0
    longer = Laufband(list(range(8)), path=state, name="p", tqdm_kwargs=QUIET)
    assert longer.has_more_jobs
    assert list(iterator) == [1, 2, 3, 4]
    assert list(longer) == [5, 6, 7]


def test_interrupt_right_after_a_claim_hands_the_batch_back(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def interrupted(self, seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 2:  # the claim of the first batch has just committed
            raise KeyboardInterrupt

    monkeypatch.setattr(BatchSizer, "observe_transaction", interrupted)
    with pytest.raises(KeyboardInterrupt):
        list(Laufband(list(range(10)), path=state, name="gap", tqdm_kwargs=QUIET))
    assert "running" not in task_states(state, "gap").values()
    assert online_workers(state) == 0


def test_interrupt_during_a_flush_keeps_the_finished_task(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import laufband.graphband as graphband

    monkeypatch.setattr(BatchSizer, "flush_interval", lambda self: 0.0)
    original = graphband.Graphband._flush

    def interrupted_flush(self) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(graphband.Graphband, "_flush", interrupted_flush)
    worker = Laufband(list(range(10)), path=state, name="flush", tqdm_kwargs=QUIET)
    monkeypatch.setattr(worker, "_sizer", BatchSizer())
    worker._sizer.size = 4  # a batch of several tasks, so a flush happens mid-batch
    with pytest.raises(KeyboardInterrupt):
        for _ in worker:
            pass
    monkeypatch.setattr(graphband.Graphband, "_flush", original)
    states = task_states(state, "flush")
    assert states["0"] == "completed"
    assert "running" not in states.values()


def test_labels_and_identifier_from_environment(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUFBAND_LABELS", "gpu, big")
    monkeypatch.setenv("LAUFBAND_IDENTIFIER", "node7")
    tasks = [Task("small"), Task("large", requirements={"gpu", "big"})]
    worker = Graphband(tasks, path=state, tqdm_kwargs=QUIET)
    assert worker.labels == {"gpu", "big"} and worker.identifier == "node7"
    assert [t.id for t in worker] == ["small", "large"]


def test_graphband_generator_survives_early_bar_access(state: Path) -> None:
    def tasks():
        yield Task("a")
        yield Task("b", dependencies=["a"])

    worker = Graphband(tasks(), path=state, tqdm_kwargs=QUIET)
    assert worker.iterator.total == 2  # reads the generator, and keeps what it read
    assert [t.id for t in worker] == ["a", "b"]


def test_has_more_jobs_before_the_loop_keeps_a_working_bar(state: Path) -> None:
    worker = Laufband(list(range(5)), path=state, tqdm_kwargs={"file": io.StringIO()})
    assert worker.has_more_jobs
    assert list(worker) == list(range(5))
    assert worker.iterator.n == 5


def test_a_heartbeat_timeout_shorter_than_two_beats_is_refused(monkeypatch) -> None:
    """A timeout under two intervals takes live workers for dead between two beats
    (their tasks then ran twice): refused in one line that says what to change."""
    from laufband import Laufband

    with pytest.raises(ValueError, match=r"heartbeat_timeout \(2 s\) must be at least twice"
                       r" heartbeat_interval \(10 s\)"):
        Laufband(range(2), heartbeat_timeout=2)
    monkeypatch.setenv("LAUFBAND_HEARTBEAT_TIMEOUT", "5")
    monkeypatch.setenv("LAUFBAND_HEARTBEAT_INTERVAL", "3")
    with pytest.raises(ValueError, match="LAUFBAND_HEARTBEAT_TIMEOUT"):
        Laufband(range(2))
    monkeypatch.setenv("LAUFBAND_HEARTBEAT_INTERVAL", "2.5")
    assert Laufband(range(2)).heartbeat_timeout == 5.0
