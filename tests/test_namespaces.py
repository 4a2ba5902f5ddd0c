"""Workers in separate PID namespaces on one host (``apptainer --containall``).

Containers that share the host name but not the pids used to break liveness: every
worker is pid 1, identifiers collided, and a worker looked the pids of another
namespace up in its own /proc, so live workers were reaped. Liveness now tells
namespaces (and boots) apart: a worker it cannot check locally is judged by its
heartbeat, like one on another host. Each namespaced worker here runs under
``unshare --pid --fork --mount-proc`` and is pid 1 inside.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from tests.helpers.procs import (
    HELPERS,
    Processes,
    completions,
    read_log,
    signal_sessions,
    task_events,
    task_states,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

WORKER = HELPERS / "worker.py"
PROBE_DEADLINE = 10.0  # seconds for `unshare ... true`
RUN = 30.0  # seconds for a group of workers to share the items (about 2 s; 5 s in test 3)
SURVIVOR_DEADLINE = 20.0  # seconds for a worker to finish after a namespaced one died
HEARTBEAT = {"LAUFBAND_HEARTBEAT_TIMEOUT": "1.5",  # for every worker of a test
             "LAUFBAND_HEARTBEAT_INTERVAL": "0.5"}
BEAT = ("--heartbeat-interval", "0.2")

Spawn = Callable[..., "subprocess.Popen[str]"]


@cache
def unshare_prefix() -> tuple[list[str], str]:
    """The command that runs a program as pid 1 of a new pid namespace, and why there
    is none when it is empty. ``--kill-child`` (where supported) makes killing
    ``unshare`` also kill the worker."""
    if shutil.which("unshare") is None:
        return [], "the unshare command is missing"
    reason = ""
    for extra in (["--kill-child"], []):
        prefix = ["unshare", "--pid", "--fork", "--mount-proc", *extra]
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, text=True,
                                   timeout=PROBE_DEADLINE, check=False)
        except subprocess.TimeoutExpired:
            return [], f"`unshare ... true` took more than {PROBE_DEADLINE} s"
        if probe.returncode == 0:
            return prefix, ""
        reason = f"`{' '.join(prefix)} true` failed: {probe.stderr.strip()}"
    return [], reason


@pytest.fixture
def namespaced(procs: Processes) -> Spawn:
    """Start ``python ARGS...`` as pid 1 of a new pid namespace, in a session of its own
    (so the whole group can be killed); ``procs`` ends what is left at teardown."""
    prefix, reason = unshare_prefix()
    if not prefix:
        pytest.skip(f"no pid namespaces here: {reason}")

    def spawn(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return procs.popen([*prefix, sys.executable, *map(str, args)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    return spawn


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a worker that still runs, with its session (``unshare`` and its pid-1
    child: killing ``unshare`` alone may leave the child)."""
    if proc.poll() is not None:
        return  # reaped: its pid may belong to someone else by now
    signal_sessions({proc.pid}, signal.SIGKILL)


def describe_tasks(state: Path) -> str:
    """How many tasks are in each state (a task stuck ``running`` shows here)."""
    try:
        return str(dict(Counter(task_states(state, "work").values())))
    except Exception as error:  # noqa: BLE001 - a diagnosis only
        return f"unreadable: {error}"


def finish(proc: subprocess.Popen[str], deadline: float, what: str,
           state: Path) -> tuple[str, str]:
    """Wait for ``proc`` to exit 0; on a timeout or an error, fail with its stderr and
    the task states."""
    try:
        out, err = proc.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        kill(proc)
        _, err = proc.communicate(timeout=RUN)
        pytest.fail(f"{what} still running after {deadline} s (tasks:"
                    f" {describe_tasks(state)}):\n{err[-2000:]}")
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{err[-2000:]}"
    return out, err


def all_completions(*logs: Path) -> Counter[str]:
    """Items done, over the logs of several workers."""
    total: Counter[str] = Counter()
    for log in logs:
        total += completions(log)
    return total


def kills(state: Path) -> list[tuple[str, str, str | None]]:
    """Events of tasks whose worker was taken for dead."""
    return [event for event in task_events(state, "work") if event[1] == "killed"]


def only_pid_one(logs: Path) -> None:
    """A namespaced worker's logs are named after pid 1 (it ran inside its namespace)."""
    names = {log.name.split(".")[0] for log in logs.glob("*.*")}
    assert names <= {"1"}, f"logs of a namespaced worker name pids {names}, not 1"


def test_pid_one_in_two_namespaces_and_a_host_worker_share_the_work(
    state: Path, procs: Processes, namespaced: Spawn, tmp_path: Path
) -> None:
    """Two workers that are both pid 1 (own namespaces) and a normal one: every item
    once, nobody taken for dead."""
    items = ("--items", "60", "--sleep", "0.03")
    logs = [tmp_path / "logs-ns-a", tmp_path / "logs-ns-b", tmp_path / "logs-host"]
    workers = [namespaced(WORKER, state, logs[0], *items),
               namespaced(WORKER, state, logs[1], *items),
               procs.worker(state, logs[2], *items)]
    for name, worker in zip(("namespaced a", "namespaced b", "host"), workers, strict=True):
        finish(worker, RUN, f"{name} worker", state)
    only_pid_one(logs[0])
    only_pid_one(logs[1])
    done = all_completions(*logs)
    assert done == Counter({str(item): 1 for item in range(60)}), (
        f"items done twice: {sorted(k for k, n in done.items() if n > 1)}; never:"
        f" {sorted(set(map(str, range(60))) - set(done))}")
    assert not kills(state), f"live workers were taken for dead: {kills(state)}"
    states = task_states(state, "work")
    assert set(states.values()) == {"completed"}, Counter(states.values())


def test_dead_worker_of_another_namespace_is_reaped_by_heartbeat(
    state: Path, procs: Processes, namespaced: Spawn, tmp_path: Path
) -> None:
    """A namespaced worker SIGKILLed in the middle of item 5: a host worker cannot look
    its pid up, so it takes it for dead once its heartbeat has stood still for the
    timeout (not at once, from whatever its own /proc says about pid 1), runs item 5
    again and finishes everything."""
    victim_logs, survivor_logs = tmp_path / "logs-victim", tmp_path / "logs-survivor"
    victim = namespaced(WORKER, state, victim_logs, "--items", "20", "--sleep-on", "5",
                        "--sleep", "30", *BEAT, env=HEARTBEAT)
    # Inside its namespace the victim is pid 1: its log is 1.start.
    wait_for(lambda: "5" in read_log(victim_logs / "1.start"),
             what="the namespaced worker to start item 5")
    kill(victim)
    victim.wait(timeout=RUN)
    survivor = procs.worker(state, survivor_logs, "--items", "20", *BEAT, env=HEARTBEAT)
    survivor_log = survivor_logs / f"{survivor.pid}.start"
    try:
        retaken = wait_for(lambda: "5" in read_log(survivor_log), deadline=SURVIVOR_DEADLINE,
                           what="the host worker to run item 5 again")
    except AssertionError as error:
        kill(survivor)
        pytest.fail(f"{error} (tasks: {describe_tasks(state)})")
    finish(survivor, SURVIVOR_DEADLINE, "the host worker", state)
    timeout = float(HEARTBEAT["LAUFBAND_HEARTBEAT_TIMEOUT"])
    assert retaken >= timeout, (
        f"item 5 was taken over {retaken:.2f} s after the host worker started, before the"
        f" {timeout} s heartbeat timeout: the namespaced worker was judged by a pid lookup")
    states = task_states(state, "work")
    assert states["5"] == "completed", f"item 5 is {states['5']}"
    assert set(states.values()) == {"completed"}, Counter(states.values())
    assert [event[0] for event in kills(state)] == ["5"], kills(state)


def test_live_worker_of_another_namespace_is_not_reaped(
    state: Path, procs: Processes, namespaced: Spawn, tmp_path: Path
) -> None:
    """A namespaced worker, alive and busy for longer than the heartbeat timeout, is
    never taken for dead by a host worker (nor the host worker by it)."""
    items = ("--items", "160", "--sleep", "0.05", *BEAT)
    logs = [tmp_path / "logs-ns", tmp_path / "logs-host"]
    started = time.monotonic()
    workers = [namespaced(WORKER, state, logs[0], *items, env=HEARTBEAT),
               procs.worker(state, logs[1], *items, env=HEARTBEAT)]
    for name, worker in zip(("namespaced", "host"), workers, strict=True):
        finish(worker, RUN, f"the {name} worker", state)
    took = time.monotonic() - started
    assert took > 2 * float(HEARTBEAT["LAUFBAND_HEARTBEAT_TIMEOUT"]), (
        f"the run took only {took:.1f} s: too short to outlast the heartbeat timeout")
    only_pid_one(logs[0])
    done = all_completions(*logs)
    assert completions(logs[0]), "the namespaced worker did no item"
    twice = sorted((k for k, n in done.items() if n > 1), key=int)
    assert not twice, f"items done twice (a live worker was reaped): {twice}"
    assert set(done) == set(map(str, range(160))), "some items were never done"
    assert not kills(state), f"live workers were taken for dead: {kills(state)}"
