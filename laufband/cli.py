"""The ``laufband`` command: status, watch, failures, results, retry, reset, prune (typer)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

import laufband
from laufband.commands import command
from laufband.display import failure_block, render, shown
from laufband.errors import StateError
from laufband.monitor import Monitor, WorkflowStatus
from laufband.store import DEFAULT_PATH, StateDirectory

# "\b" keeps click from joining the lines of a block into one paragraph.
EXAMPLES = f"""

\b
Examples:
  laufband watch                      live view of ./{DEFAULT_PATH}
  laufband status --json              one snapshot, for scripts
  laufband failures -w main           every failure of 'main', tracebacks too
  laufband results -w NAME -o r.json  the results of a pmap workflow
  laufband retry --failed -w main     run the failed tasks of 'main' again
  laufband reset -w main --yes        forget workflow 'main'
  laufband prune --superseded         drop pmap workflows of edited code

\b
Every command takes the state directory as --path DIR (default:
LAUFBAND_PATH, else ./{DEFAULT_PATH}, or . itself if it holds state.db).
"""

SHOWN_IDS = 5  # unknown task ids named in an error

app = typer.Typer(
    help="Watch and manage laufband state directories." + EXAMPLES,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
PathArgument = Annotated[Path | None, typer.Argument(
    help="Same as --path (kept for older scripts).", show_default=False)]
PathOption = Annotated[Path | None, typer.Option(
    "--path", help=f"State directory, or a directory holding {DEFAULT_PATH} (default:"
    " LAUFBAND_PATH, else .).", show_default=False)]
WorkflowOption = Annotated[str | None, typer.Option(
    "--workflow", "-w", help="The workflow (needed when the directory holds several).")]
AllOption = Annotated[bool, typer.Option("--all", help="List every worker, not only the"
                                         " first few.")]


def _examples(*lines: str) -> str:
    """Return command help's example block, one example per line."""
    return "\n\n\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


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


def _open(path: Path | None, option: Path | None = None) -> Monitor:
    """Open the state directory given as --path DIR (or as the positional DIR)."""
    try:
        monitor = Monitor(path if path is not None else option)
        if path is not None and option is not None \
                and StateDirectory.find(option).path.resolve() != monitor.path.resolve():
            _fail(f"two state directories given, {str(path)!r} and --path {str(option)!r}:"
                  " give one")
    except StateError as error:
        _fail(str(error))
    except ValueError as error:  # a LAUFBAND_* variable that is not valid
        _fail(str(error))
    return monitor


def _fail(message: str) -> None:
    # A Text, not markup: messages quote names and paths, which may hold brackets.
    # One line however narrow the terminal: scripts and logs grep for it.
    Console(stderr=True, soft_wrap=True).print(
        Text.assemble(("error:", "red"), " ", shown(message)))
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


@app.command(help="Show every workflow once: progress, rate and ETA, tasks per state,"
             " workers, latest failures." + _examples(
                 "laufband status", "laufband status --path /scratch/run1/.laufband --all",
                 "laufband status --json | jq '.workflows[].counts'"))
def status(
    path: PathArgument = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (shape documented in"
                                          " the README).")] = False,
    workflow: WorkflowOption = None,
    all_workers: AllOption = False,
    path_option: PathOption = None,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """Show every workflow once."""
    monitor = _open(path, path_option)
    found = _status(monitor, workflow)
    if as_json:
        typer.echo(json.dumps({"state": str(monitor.path),
                               "workflows": [w.to_json() for w in found]}, indent=2))
        return
    Console().print(render(monitor.path, found, all_workers=all_workers))


@app.command(help="Follow all workers live (Ctrl-C to quit)." + _examples(
    "laufband watch", "laufband watch -w main --all", "laufband watch --once"))
def watch(
    path: PathArgument = None,
    workflow: WorkflowOption = None,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 0.5,
    all_workers: AllOption = False,
    path_option: PathOption = None,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """Follow all workers live."""
    monitor = _open(path, path_option)
    if once:
        Console().print(render(monitor.path, _status(monitor, workflow), all_workers=all_workers))
        return
    try:
        with Live(auto_refresh=False, redirect_stdout=False) as live:
            while True:
                found = _status(monitor, workflow)
                live.update(render(monitor.path, found, all_workers=all_workers), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        pass


@app.command(help="List every failure a workflow keeps, newest first: the task and its"
             " item, what happened, attempt, worker, host, time and traceback. A failure"
             " is kept until its task completes or is retried." + _examples(
                 "laufband failures -w main", "laufband failures -w main --brief",
                 "laufband failures -w main --json > failures.json"))
def failures(
    workflow: WorkflowOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    brief: Annotated[bool, typer.Option("--brief", help="One line per failure, no"
                                        " tracebacks.")] = False,
    path: PathOption = None,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """List a workflow's failures."""
    monitor = _open(path)
    name = _one_workflow(monitor, workflow)
    try:
        found = monitor.failures(name)
    except StateError as error:
        _fail(str(error))
    if as_json:
        typer.echo(json.dumps({"state": str(monitor.path), "workflow": name,
                               "failures": [f._asdict() for f in found]}, indent=2))
        return
    console = Console(soft_wrap=True)  # the terminal wraps: tracebacks stay as they were
    console.print(Text(f"{len(found)} failure(s) of workflow {name!r}, newest first"))
    for failure in found:
        console.print(failure_block(failure, tracebacks=not brief))


@app.command(help="Write the stored results of a workflow, in input order: a pmap or"
             " joblib workflow's results (one per distinct item), or a loop's {task,"
             " result} pairs saved by worker.save() (items without a result are left out"
             " and counted on stderr). JSON writes NaN and infinities as null."
             + _examples(
                 "laufband results -w pmap-simulate-3f2a9c0d1e2b",
                 "laufband results -w NAME --format csv -o results.csv",
                 "laufband results -w NAME --format pickle -o results.pkl"))
def results(
    workflow: WorkflowOption = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json, csv or pickle.")] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file"
                                                " (default: standard output).")] = None,
    path: PathOption = None,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """Export a workflow's results."""
    from laufband.exports import FORMATS, export, unloadable

    if fmt not in FORMATS:
        _fail(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "pickle" and output is None and sys.stdout.isatty():
        _fail("pickle is binary: write it to a file with -o FILE")
    monitor = _open(path)
    name = _one_workflow(monitor, workflow)
    # As `python -m` and `python script.py` do: the classes of a project's results
    # import from the directory it is run in.
    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        found = monitor.results(name)
    except StateError as error:
        _fail(str(error))
    except Exception as error:  # noqa: BLE001 - whatever the user's classes raise as they load
        _fail(unloadable(name, error))
    try:
        [flow] = monitor.status(name)
        data = export(found, fmt)
    except (StateError, ValueError) as error:
        _fail(str(error))
    missing = flow.total - len(found)
    if missing:
        Console(stderr=True, soft_wrap=True).print(Text(
            f"{missing} of {flow.total} task(s) of workflow {name!r} have no result"
            f" (pending, running, failed or killed, or a loop body saved none): see"
            f" {command('failures', '-w', name, '--path', monitor.path)}"))
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        output.write_bytes(data)
    except OSError as error:
        _fail(f"cannot write {output} ({error.strerror}): give -o a file in a directory that"
              " exists and that you can write")
    Console(stderr=True).print(Text(f"{len(found)} result(s) written to {output}"))


@app.command(help="Put failed and/or killed tasks back to pending; the next run runs them."
             " Workers that are gone (their process, on this host; their heartbeat,"
             " older than the heartbeat timeout, elsewhere) are reaped first, as a"
             " worker would: their tasks go back to pending." + _examples(
                 "laufband retry --failed -w main", "laufband retry -w main 17 42"))
def retry(
    task_ids: Annotated[list[str] | None, typer.Argument(help="Only these task ids.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Retry failed tasks.")] = False,
    killed: Annotated[bool, typer.Option("--killed", help="Retry killed tasks.")] = False,
    workflow: WorkflowOption = None,
    path: PathOption = None,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """Put failed and/or killed tasks back to pending."""
    tasks = tuple(task_ids or ())
    _refuse_state_directories(tasks)
    monitor = _open(path)
    states = tuple(s for s, chosen in (("failed", failed), ("killed", killed)) if chosen)
    name = _one_workflow(monitor, workflow)
    try:
        _check_tasks(monitor, name, tasks)
        gone = monitor.reap_gone()
        count = monitor.retry(name, states or ("failed", "killed"), tasks)
    except StateError as error:
        _fail(str(error))
    for identifier, host, pid, returned in gone:
        typer.echo(f"worker {shown(identifier)} (host {shown(host)}, pid {pid}) is gone: its"
                   f" {returned} task(s) are pending again (the one it ran counts a kill)")
    typer.echo(f"{count} task(s) of workflow {name!r} are pending again")


@app.command(help="Delete a workflow's state: the next run starts it from scratch." +
             _examples("laufband reset -w main", "laufband reset -w main --yes"))
def reset(
    workflow: WorkflowOption = None,
    path: PathOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """Delete a workflow's state."""
    monitor = _open(path)
    name = _one_workflow(monitor, workflow)
    [found] = _status(monitor, name)
    online = sum(w.state == "online" for w in found.workers)
    warning = f" ({online} worker(s) still online)" if online else ""
    if not yes and not typer.confirm(
            f"Delete workflow {name!r} with {found.total} task(s){warning}?"):
        raise typer.Exit(1)
    try:
        monitor.reset(name)
    except StateError as error:
        _fail(str(error))
    typer.echo(f"workflow {name!r} deleted from {monitor.path}")


@app.command(help="Remove workflows unused for a given age, or all but the newest (most"
             " recently used) digest of each pmap (or joblib) function: every edit of the"
             " function leaves a workflow behind. Both options: superseded digests unused"
             " for that age. Lists them and asks first; workflows with an online worker,"
             " or used since they were listed, are kept." + _examples(
                 "laufband prune --superseded --dry-run", "laufband prune --older-than 7d",
                 "laufband prune --superseded --older-than 30d --yes"))
def prune(
    older_than: Annotated[str | None, typer.Option(
        "--older-than", help="Unused for this long: 90s, 30m, 12h, 7d, 2w.")] = None,
    superseded: Annotated[bool, typer.Option(
        "--superseded", help="All but the newest digest of each pmap/joblib function.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list them.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
    path: PathOption = None,
    db: OriginalDb = None,
    lock: OriginalLock = None,
) -> None:
    """Remove untouched or superseded workflows."""
    from laufband.pruning import candidates, parse_age

    if older_than is None and not superseded:
        _fail("say what to prune: --older-than AGE (e.g. 7d) and/or --superseded")
    try:
        age = None if older_than is None else parse_age(older_than)
    except ValueError as error:
        _fail(str(error))
    monitor = _open(path)
    listed = time.time()
    try:
        chosen = candidates(monitor.activity(), listed, older_than=age, superseded=superseded)
    except StateError as error:
        _fail(str(error))
    console = Console(soft_wrap=True)
    if not chosen:
        console.print(Text(f"nothing to prune in {monitor.path}"))
        return
    console.print(Text(f"{'would remove' if dry_run else 'removing'} {len(chosen)}"
                       f" workflow(s) from {monitor.path}:"))
    for candidate in chosen:
        console.print(Text(f"  {shown(candidate.name)}  ({shown(candidate.reason)})"))
    if dry_run:
        return
    if not yes and not typer.confirm(f"Remove these {len(chosen)} workflow(s)?"):
        raise typer.Exit(1)
    try:
        removed = monitor.prune([candidate.name for candidate in chosen], listed)
    except StateError as error:
        _fail(str(error))
    for candidate in chosen:
        if candidate.name not in removed:
            console.print(Text(f"kept {shown(candidate.name)}: used since it was listed"))
    console.print(Text(f"{len(removed)} workflow(s) removed"))


def _refuse_state_directories(tasks: tuple[str, ...]) -> None:
    """Refuse a state directory given where task ids go (``laufband retry DIR``)."""
    for task in tasks:
        if Path(task).is_dir():
            with contextlib.suppress(StateError):
                StateDirectory.find(task)
                _fail(f"{task!r} is a state directory, not a task id: give it as"
                      f" {command('retry', '--path', task)} ...")


def _check_tasks(monitor: Monitor, workflow: str, tasks: tuple[str, ...]) -> None:
    """Refuse task ids the workflow lacks."""
    unknown = monitor.unknown_tasks(workflow, tasks) if tasks else []
    if unknown:
        shown_ids = ", ".join(map(repr, unknown[:SHOWN_IDS])) + (
            ", ..." if len(unknown) > SHOWN_IDS else "")
        _fail(f"workflow {workflow!r} in {monitor.path} has no task {shown_ids}: give task"
              f" ids as status and failures show them ({command('failures', '-w', workflow)})")


def _one_workflow(monitor: Monitor, workflow: str | None) -> str:
    try:
        names = monitor.workflows()
    except StateError as error:
        _fail(str(error))
    if workflow is not None:
        if workflow not in names:
            _fail(f"no workflow {workflow!r} in {monitor.path} (known:"
                  f" {', '.join(map(repr, names)) or 'none'})")
        return workflow
    if len(names) != 1:
        _fail(f"{monitor.path} holds {len(names)} workflows ({', '.join(map(repr, names))}):"
              " choose one with --workflow")
    return names[0]

