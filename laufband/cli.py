"""The ``laufband`` command: watch, status, retry and reset (typer + rich)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

import laufband
from laufband.errors import StateError
from laufband.monitor import Monitor, WorkflowStatus
from laufband.store import DEFAULT_PATH, STATES

EXAMPLES = f"""
Examples:

  laufband watch                      live view of ./{DEFAULT_PATH}
  laufband status --json              one snapshot, for scripts
  laufband retry --failed -w main     run failed tasks of workflow 'main' again
  laufband reset -w main --yes        forget workflow 'main'
"""

app = typer.Typer(
    help="Watch and manage laufband state directories." + EXAMPLES,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
STATE_STYLES = {"pending": "white", "running": "cyan", "completed": "green",
                "failed": "red", "killed": "magenta", "blocked": "yellow"}
PathArgument = Annotated[Path | None, typer.Argument(
    help=f"State directory, or a directory containing {DEFAULT_PATH} (default: LAUFBAND_PATH"
    " or .).")]
PathOption = Annotated[Path | None, typer.Option("--path", help="State directory.")]
WorkflowOption = Annotated[str | None, typer.Option("--workflow", "-w", help="The workflow.")]


def _refuse_original(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> None:
    """Refuse laufband 0.2.x's ``--db``/``--lock`` with one line naming the replacement."""
    if value is None or ctx.resilient_parsing:
        return
    what = "its state" if param.name == "db" else "its lock files"
    Console(stderr=True, soft_wrap=True).print(Text.assemble(
        ("error:", "red"), f" {param.opts[0]} is from laufband 0.2.x: laufband keeps {what} in"
        f" a directory; pass --path DIR (default ./{DEFAULT_PATH})"))
    raise typer.Exit(2)


# Hidden options of every command: laufband 0.2.x's `laufband status --db FILE --lock FILE`.
OriginalDb = Annotated[str | None, typer.Option(
    "--db", hidden=True, is_eager=True, callback=_refuse_original)]
OriginalLock = Annotated[str | None, typer.Option(
    "--lock", hidden=True, is_eager=True, callback=_refuse_original)]


def _open(path: Path | None) -> Monitor:
    try:
        return Monitor(path)
    except StateError as error:
        _fail(str(error))
        raise  # unreachable: _fail exits


def _either(argument: Path | None, option: Path | None) -> Path | None:
    """Return the state directory given as DIR or as --path DIR (the other commands' spelling)."""
    if argument is not None and option is not None and argument != option:
        _fail(f"two state directories given, {str(argument)!r} and --path {str(option)!r}:"
              " give one")
    return argument if argument is not None else option


def _fail(message: str) -> None:
    # A Text, not markup: messages quote names and paths, which may hold brackets.
    # One line however narrow the terminal: scripts and logs grep for it.
    Console(stderr=True, soft_wrap=True).print(
        Text.assemble(("error:", "red"), " ", _shown(message)))
    raise typer.Exit(1)


def _status(monitor: Monitor, workflow: str | None) -> list[WorkflowStatus]:
    try:
        return monitor.status(workflow)
    except StateError as error:
        _fail(str(error))
        raise


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"laufband {laufband.__version__}")
        raise typer.Exit


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """Watch and manage laufband state directories."""


@app.command()
def status(
    path: PathArgument = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (shape documented in"
                                          " the README).")] = False,
    workflow: WorkflowOption = None,
    path_option: PathOption = None,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """Show every workflow once: progress, tasks per state, workers, latest failures."""
    monitor = _open(_either(path, path_option))
    found = _status(monitor, workflow)
    if as_json:
        typer.echo(json.dumps({"state": str(monitor.path),
                               "workflows": [w.to_json() for w in found]}, indent=2))
        return
    Console().print(_render(monitor.path, found, {}))


@app.command()
def watch(
    path: PathArgument = None,
    workflow: WorkflowOption = None,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 0.5,
    path_option: PathOption = None,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """Follow all workers live (Ctrl-C to quit)."""
    monitor = _open(_either(path, path_option))
    rates = _Rates()
    if once:
        Console().print(_render(monitor.path, _status(monitor, workflow), {}))
        return
    try:
        with Live(auto_refresh=False, redirect_stdout=False) as live:
            while True:
                found = _status(monitor, workflow)
                live.update(_render(monitor.path, found, rates.update(found)), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        pass


@app.command()
def retry(
    task_ids: Annotated[list[str] | None, typer.Argument(help="Only these task ids.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Retry failed tasks.")] = False,
    killed: Annotated[bool, typer.Option("--killed", help="Retry killed tasks.")] = False,
    workflow: WorkflowOption = None,
    path: PathOption = None,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """Put failed and/or killed tasks back to pending; the next run runs them.

    Tasks named by id are also freed when they are stuck running on a worker that is
    no longer online.
    """
    monitor = _open(path)
    states = tuple(s for s, chosen in (("failed", failed), ("killed", killed)) if chosen)
    name = _one_workflow(monitor, workflow)
    try:
        count = monitor.retry(name, states or ("failed", "killed"), tuple(task_ids or ()))
    except StateError as error:
        _fail(str(error))
    typer.echo(f"{count} task(s) of workflow {name!r} are pending again")


@app.command()
def reset(
    workflow: WorkflowOption = None,
    path: PathOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """Delete a workflow's state: the next run starts it from scratch."""
    monitor = _open(path)
    name = _one_workflow(monitor, workflow)
    [found] = _status(monitor, name)
    online = sum(w.state == "online" for w in found.workers)
    warning = f" ({online} worker(s) still online)" if online else ""
    if not yes and not typer.confirm(
            f"Delete workflow {name!r} with {found.total} task(s){warning}?"):
        raise typer.Exit(1)
    monitor.reset(name)
    typer.echo(f"workflow {name!r} deleted from {monitor.path}")


def _one_workflow(monitor: Monitor, workflow: str | None) -> str:
    names = monitor.workflows()
    if workflow is not None:
        if workflow not in names:
            _fail(f"no workflow {workflow!r} in {monitor.path} (known:"
                  f" {', '.join(map(repr, names)) or 'none'})")
        return workflow
    if len(names) != 1:
        _fail(f"{monitor.path} holds {len(names)} workflows ({', '.join(map(repr, names))}):"
              " choose one with --workflow")
    return names[0]


class _Rates:
    """Completions per second per workflow, smoothed over successive frames."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}
        self._rates: dict[str, float] = {}

    def update(self, found: list[WorkflowStatus]) -> dict[str, float]:
        now = time.monotonic()
        for flow in found:
            done = flow.counts["completed"]
            if flow.name in self._last:
                then, before = self._last[flow.name]
                rate = (done - before) / max(now - then, 1e-6)
                old = self._rates.get(flow.name)
                self._rates[flow.name] = rate if old is None else 0.7 * old + 0.3 * rate
            self._last[flow.name] = (now, done)
        return self._rates


def _render(path: Path, found: list[WorkflowStatus], rates: dict[str, float]) -> Group:
    if not found:
        return Group(Text(f"{path}: no workflows yet"))
    return Group(*(_panel(flow, rates.get(flow.name)) for flow in found))


def _panel(flow: WorkflowStatus, rate: float | None) -> Panel:
    done = flow.counts["completed"]
    line = Table.grid(padding=(0, 1), expand=True)
    line.add_column(ratio=1)
    line.add_column(justify="right")
    left = flow.total - flow.finished
    eta = f"ETA {_duration(left / rate)}" if rate and rate > 0 and left else ""
    speed = f"{rate:,.1f}/s" if rate is not None else ""
    line.add_row(ProgressBar(total=max(flow.total, 1), completed=done),
                 Text(f"{done:,}/{flow.total:,} {speed} {eta}".rstrip()))
    counts = Text()
    for state in STATES:
        counts.append(f"{state} {flow.counts[state]:,}  ", style=STATE_STYLES[state])
    parts: list[Any] = [line, counts]
    if flow.workers:
        parts.append(_workers_table(flow))
    failures = [e for e in flow.events if e.state != "retried"]
    for event in failures:
        error = (event.error or "").strip().splitlines()
        last = _shown(error[-1]) if error else ""
        parts.append(Text(f"{event.state} {_shown(event.task)}{_info(event.info)}: {last}",
                          style=STATE_STYLES.get(event.state, "white"), overflow="ellipsis",
                          no_wrap=True))
    return Panel(Group(*parts), title=Text(_shown(flow.name), style="bold"), title_align="left")


def _workers_table(flow: WorkflowStatus) -> Table:
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold")
    for column, kwargs in (("worker", {"ratio": 3, "overflow": "ellipsis", "no_wrap": True}),
                           ("host", {"ratio": 1, "overflow": "ellipsis", "no_wrap": True}),
                           ("pid", {"justify": "right"}), ("rank", {"justify": "right"}),
                           ("state", {}), ("task", {"overflow": "ellipsis", "no_wrap": True}),
                           ("done", {"justify": "right"}), ("beat", {"justify": "right"})):
        table.add_column(column, **kwargs)
    online = [w for w in flow.workers if w.state == "online"]
    shown = online + [w for w in flow.workers if w.state != "online"][: max(0, 4 - len(online))]
    for w in shown:
        label = w.identifier + (f" [{','.join(w.labels)}]" if w.labels else "")
        table.add_row(Text(_shown(label)), Text(_shown(w.host)), str(w.pid),
                      "" if w.rank is None else str(w.rank),
                      Text(w.state, style="green" if w.state == "online" else "dim"),
                      Text(_shown(w.current or "") + _info(w.current_info)), f"{w.done:,}",
                      _duration(w.last_seen))
    hidden = len(flow.workers) - len(shown)
    if hidden:
        table.add_row(Text(f"... {hidden} more"), *[""] * 7)
    return table


def _info(info: dict[str, Any]) -> str:
    """``Task.info`` after a task id, as compact JSON: `` {"lr": 0.1}``; empty if none."""
    return " " + _shown(json.dumps(info, ensure_ascii=False)) if info else ""


def _shown(text: str) -> str:
    r"""Return ``text`` with characters a terminal would act on shown escaped.

    Escape sequences, newlines and bidirectional overrides are shown as ``\x1b``,
    ``\n`` ...; the rest as it is.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


MINUTE, HOUR = 60, 3600  # seconds


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < MINUTE:
        return f"{seconds}s"
    if seconds < HOUR:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
