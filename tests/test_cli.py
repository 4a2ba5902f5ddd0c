"""The laufband command, run for real in subprocesses (and watch in a pseudo-terminal)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from laufband import Laufband
from tests.helpers.procs import Processes, completions, read_log, task_states, wait_for

pytestmark = pytest.mark.timeout(120)
CLI = [sys.executable, "-m", "laufband"]
LEFT = "the loop was left by break or an exception"  # a failed task's error, body unseen
SCREEN_DEADLINE = 30.0  # seconds for `laufband watch` to show both workers
QUIT_DEADLINE = 20.0  # seconds for `laufband watch` to end after Ctrl-C


def cli(procs: Processes, *args: object, cwd: Path | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI on an 80-column terminal."""
    return procs.run([*CLI, *map(str, args)], cwd=cwd, stdin=stdin, env={"COLUMNS": "80"})


def failing_run(procs: Processes, state: Path, logs: Path) -> None:
    worker = procs.worker(state, logs, "--items", 10, "--fail-on", 2, 5)
    assert procs.wait_all([worker])[0][0] == 0


def test_status_json_counts_after_failures(state: Path, procs: Processes) -> None:
    failing_run(procs, state, state.parent / "logs")
    result = cli(procs, "status", state, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == str(state)
    [flow] = data["workflows"]
    assert flow["name"] == "work"
    assert flow["total"] == 10
    assert flow["counts"] == {"pending": 0, "claimed": 0, "running": 0, "completed": 8,
                              "failed": 2, "killed": 0, "blocked": 0}
    # worker.py catches the RuntimeError outside its loop: the loop only sees itself left.
    assert [(e["task"], e["state"], e["error"]) for e in flow["events"]] == [
        ("5", "failed", LEFT), ("2", "failed", LEFT)]  # latest first
    [worker] = flow["workers"]
    assert worker["state"] == "offline"
    assert worker["done"] == 8


def test_status_finds_dot_laufband_in_a_directory(tmp_path: Path, procs: Processes) -> None:
    failing_run(procs, tmp_path / ".laufband", tmp_path / "logs")
    result = cli(procs, "status", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "work" in result.stdout
    assert "completed 8" in result.stdout


def test_retry_failed_then_a_run_runs_exactly_those(state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    failing_run(procs, state, logs)
    result = cli(procs, "retry", "--failed", "--path", state)
    assert result.returncode == 0, result.stderr
    assert "2 task(s) of workflow 'work' are pending again" in result.stdout
    again = procs.worker(state, logs, "--items", 10)
    assert procs.wait_all([again])[0][0] == 0
    assert Counter(read_log(logs / f"{again.pid}.start")) == {"2": 1, "5": 1}
    assert set(task_states(state, "work").values()) == {"completed"}
    assert completions(logs) == Counter({str(i): 1 for i in range(10)})


def test_retry_single_task_id(state: Path, procs: Processes) -> None:
    failing_run(procs, state, state.parent / "logs")
    assert cli(procs, "retry", "5", "-w", "work", "--path", state).returncode == 0
    assert task_states(state, "work")["5"] == "pending"
    assert task_states(state, "work")["2"] == "failed"


def test_reset_asks_and_deletes(state: Path, procs: Processes) -> None:
    failing_run(procs, state, state.parent / "logs")
    refused = cli(procs, "reset", "--path", state, stdin="n\n")
    assert refused.returncode == 1
    assert "Delete workflow 'work' with 10 task(s)?" in refused.stdout
    assert cli(procs, "status", state, "--json").stdout.count('"name": "work"') == 1
    done = cli(procs, "reset", "--path", state, "--yes")
    assert done.returncode == 0
    assert "workflow 'work' deleted" in done.stdout
    assert json.loads(cli(procs, "status", state, "--json").stdout)["workflows"] == []


def test_watch_once_prints_a_frame(state: Path, procs: Processes) -> None:
    failing_run(procs, state, state.parent / "logs")
    result = cli(procs, "watch", state, "--once")
    assert result.returncode == 0, result.stderr
    assert "work" in result.stdout
    assert "8/10" in result.stdout
    assert f"failed 5 (5): {LEFT}" in result.stdout  # task 5, item 5
    assert f"failed 2 (2): {LEFT}" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


@pytest.mark.parametrize(("args", "message"), [
    (["status", "nowhere"], "no laufband state in"),
    (["retry", "--path", "STATE", "-w", "nope"], "no workflow 'nope' in"),
    (["status", "CORRUPT"], "state.db is not a laufband state database"),
])
def test_helpful_errors(tmp_path: Path, procs: Processes, args: list[str], message: str) -> None:
    state = tmp_path / "state"
    failing_run(procs, state, tmp_path / "logs")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "state.db").write_bytes(b"garbage" * 200)
    args = [str(state) if a == "STATE" else str(corrupt) if a == "CORRUPT" else a for a in args]
    result = cli(procs, *args, cwd=tmp_path)
    assert result.returncode == 1
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_watch_in_a_terminal_shows_workers_and_quits_on_ctrl_c(
        state: Path, procs: Processes) -> None:
    logs = state.parent / "logs"
    workers = [procs.worker(state, logs, "--items", 400, "--sleep", 0.05) for _ in range(2)]
    wait_for(lambda: len(list(logs.glob("*.start"))) == 2, what="both workers to start")
    main, child = pty.openpty()
    os.set_inheritable(child, True)
    env = {**os.environ, "COLUMNS": "80", "LINES": "40", "TERM": "xterm"}
    watcher = procs.popen([*CLI, "watch", str(state)], stdin=child, stdout=child,
                          stderr=child, env=env, close_fds=True)
    os.close(child)
    screen = b""
    deadline = time.monotonic() + SCREEN_DEADLINE
    # Both workers, and a rate with an ETA once tasks have finished.
    wanted = [*(str(w.pid).encode() for w in workers), b"/s ETA "]
    while time.monotonic() < deadline and not all(p in screen for p in wanted):
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            screen += os.read(main, 65536)
    watcher.send_signal(signal.SIGINT)
    code = watcher.wait(timeout=QUIT_DEADLINE)
    with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
        while select.select([main], [], [], 0.2)[0]:
            screen += os.read(main, 65536)
    os.close(main)
    text = screen.decode(errors="replace")
    assert all(p in screen for p in wanted), text[-2000:]
    assert "work" in text
    assert "online" in text
    assert code == 0
    assert "Traceback" not in text
    for worker in workers:  # the workers' own outcome is not what this test is about
        worker.kill()
        worker.wait(timeout=QUIT_DEADLINE)


HOSTILE = "[bold red]x[/] [/bold]"  # a closing tag that matches nothing: MarkupError
SWEEP = "sweep[lr=0.1]"  # looks like a style tag: rich would drop it
QUIET = {"disable": True}


def wide_cli(procs: Processes, *args: object,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI with room for whole names and identifiers on each line."""
    return procs.run([*CLI, *map(str, args)], cwd=cwd, env={"COLUMNS": "200"})


def hostile_run(state: Path) -> None:
    """Two finished workflows whose name, worker identifier and label read as markup."""
    for name in (HOSTILE, SWEEP):
        for _ in Laufband(range(3), path=state, name=name, identifier=f"{name}-[i]w[/i]",
                          labels=["[gpu]"], tqdm_kwargs=QUIET):
            pass


@pytest.mark.parametrize("command", [["status"], ["watch", "--once"]])
def test_names_that_look_like_markup_are_shown_literally(state: Path, procs: Processes,
                                                         command: list[str]) -> None:
    hostile_run(state)
    result = wide_cli(procs, *command, state)
    assert result.returncode == 0, result.stderr
    for name in (HOSTILE, SWEEP):
        assert name in result.stdout
        assert f"{name}-[i]w[/i] [[gpu]]" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def boom_run(state: Path) -> None:
    """A run whose item 1 fails with markup in its error; keys and worker too."""
    with Laufband(range(3), key=lambda i: f"[b]{i}", path=state, name="boom",
                  identifier="[/]w", tqdm_kwargs=QUIET) as worker:
        for i in worker:
            if i == 1:
                raise RuntimeError("[red]boom[/]")


def test_markup_in_error_text_and_task_ids_is_shown_literally(state: Path,
                                                              procs: Processes) -> None:
    with pytest.raises(RuntimeError, match=r"^\[red\]boom\[/\]$"):
        boom_run(state)
    for command in (["status"], ["watch", "--once"]):
        result = wide_cli(procs, *command, state)
        assert result.returncode == 0, result.stderr
        assert "failed [b]1: RuntimeError: [red]boom[/]" in result.stdout
        assert "[/]w" in result.stdout


def test_error_messages_with_markup_are_shown_literally(state: Path, tmp_path: Path,
                                                        procs: Processes) -> None:
    hostile_run(state)
    result = wide_cli(procs, "retry", "-w", "[/bold]nope", "--path", state)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "Traceback" not in message
    assert "no workflow '[/bold]nope' in" in message
    assert f"known: {HOSTILE!r}, {SWEEP!r}" in message
    missing = tmp_path / "[b]nowhere[/b]"
    result = wide_cli(procs, "status", missing)
    assert result.returncode == 1
    assert f"no laufband state in {str(missing)!r}" in " ".join(result.stderr.split())


def fail_every_task(worker: Laufband) -> None:
    """Run a loop whose body fails (with an escape sequence in the error)."""
    for _ in worker:
        raise RuntimeError("fails\x1b[2J")


@pytest.mark.parametrize("command", [["status"], ["watch", "--once"]], ids=["status", "watch"])
def test_control_characters_in_names_are_shown_escaped(state: Path, procs: Processes,
                                                       command: list[str]) -> None:
    """Escape sequences, newlines and bidirectional overrides in names and task ids
    reach the terminal escaped: a name could recolour it, or split a line in two."""
    name, task = "\x1b[31mansi\x1b[0m", "two\nlines\u202e"
    with pytest.raises(RuntimeError, match=r"^fails"):
        fail_every_task(Laufband([task], key=str, path=state, name=name, tqdm_kwargs=QUIET))
    result = wide_cli(procs, *command, state)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert "\u202e" not in result.stdout
    assert "\\x1b[31mansi\\x1b[0m" in result.stdout
    assert "two\\nlines\\u202e" in result.stdout


def test_help_and_version(procs: Processes) -> None:
    import laufband

    version = procs.run([*CLI, "--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"laufband {laufband.__version__}"
    usage = procs.run([*CLI, "--help"])
    assert usage.returncode == 0, usage.stderr
    assert "Usage" in usage.stdout


COMMAND_EXAMPLES = {
    "status": ["laufband status", "laufband status --json | jq '.workflows[].counts'"],
    "watch": ["laufband watch", "laufband watch -w main --all", "laufband watch --once"],
    "failures": ["laufband failures -w main", "laufband failures -w main --brief"],
    "results": ["laufband results -w NAME --format csv -o results.csv"],
    "retry": ["laufband retry --failed -w main", "laufband retry -w main 17 42"],
    "reset": ["laufband reset -w main", "laufband reset -w main --yes"],
    "prune": ["laufband prune --superseded --dry-run", "laufband prune --older-than 7d"],
}


def test_help_prints_its_examples_one_per_line(procs: Processes) -> None:
    usage = cli(procs, "--help")
    assert usage.returncode == 0, usage.stderr
    lines = [line.strip() for line in usage.stdout.splitlines()]
    for example in ("laufband watch", "laufband status --json", "laufband failures -w main",
                    "laufband results -w NAME -o r.json", "laufband retry --failed -w main",
                    "laufband reset -w main --yes", "laufband prune --superseded"):
        [line] = [line for line in lines if line.startswith(example + " ")]
        assert line.count("laufband ") == 1, line  # one example per line
    for command in COMMAND_EXAMPLES:
        assert any(line.startswith(command + " ") for line in lines), command
    assert max(map(len, usage.stdout.splitlines())) <= 80


@pytest.mark.parametrize("command", list(COMMAND_EXAMPLES))
def test_each_command_prints_its_examples_one_per_line(procs: Processes, command: str) -> None:
    usage = cli(procs, command, "--help")
    assert usage.returncode == 0, usage.stderr
    lines = [line.strip() for line in usage.stdout.splitlines()]
    assert "Examples:" in lines
    for example in COMMAND_EXAMPLES[command]:
        assert example in lines, (example, usage.stdout)
    assert "--path" in usage.stdout  # every command takes the state directory the same way


def test_every_command_takes_the_state_directory_as_path_or_laufband_path(
        state: Path, procs: Processes) -> None:
    failing_run(procs, state, state.parent / "logs")
    for command in (["status"], ["watch", "--once"], ["failures"], ["retry", "--failed"]):
        by_option = cli(procs, *command, "--path", state)
        assert by_option.returncode == 0, (command, by_option.stderr)
        by_env = procs.run([*CLI, *command], env={"COLUMNS": "80", "LAUFBAND_PATH": str(state)})
        assert by_env.returncode == 0, (command, by_env.stderr)
    assert cli(procs, "status", state).returncode == 0  # the positional path, still


def test_status_lists_a_few_workers_or_all_of_them(state: Path, procs: Processes) -> None:
    for number in range(6):
        for _ in Laufband(range(2), path=state, name="many", identifier=f"worker-{number}",
                          tqdm_kwargs=QUIET):
            pass
    few = wide_cli(procs, "status", "--path", state)
    assert few.returncode == 0, few.stderr
    assert sum(f"worker-{n} " in few.stdout for n in range(6)) == 4
    assert "... 2 more (--all)" in few.stdout
    every = wide_cli(procs, "status", "--path", state, "--all")
    assert all(f"worker-{n} " in every.stdout for n in range(6))
    assert "more (--all)" not in every.stdout
