"""What the ``laufband`` command draws: workflow panels, worker tables, failure lists (rich).

Names, task ids, items and error texts are the user's: they are shown as plain
``Text`` (never markup) with control characters escaped, so a name cannot restyle
or split the terminal's lines.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from laufband.commands import command
from laufband.monitor import COUNTED, FailureStatus, WorkerStatus, WorkflowStatus

STATE_STYLES = {"pending": "white", "claimed": "blue", "running": "cyan", "completed": "green",
                "failed": "red", "killed": "magenta", "blocked": "yellow"}
ALWAYS_COUNTED = ("pending", "running", "completed")  # the others: shown when not 0
SHOWN_WORKERS = 4  # without --all: the online workers, then others up to this many
SHOWN_FAILURES = 3  # newest failures in a panel; `laufband failures` lists them all
MINUTE, HOUR = 60, 3600  # seconds


def render(path: Path, found: list[WorkflowStatus], *, all_workers: bool) -> Group:
    """Return one panel per workflow (or a line saying there are none yet)."""
    if not found:
        return Group(Text(f"{path}: no workflows yet"))
    return Group(*(_panel(flow, all_workers=all_workers) for flow in found))


def _panel(flow: WorkflowStatus, *, all_workers: bool) -> Panel:
    done = flow.counts["completed"]
    line = Table.grid(padding=(0, 1), expand=True)
    line.add_column(ratio=1)
    line.add_column(justify="right")
    line.add_row(ProgressBar(total=max(flow.total, 1), completed=done),
                 Text(f"{done:,}/{flow.total:,}{speed(flow)}"))
    counts = Text()
    for state in COUNTED:
        if flow.counts[state] or state in ALWAYS_COUNTED:
            counts.append(f"{state} {flow.counts[state]:,}  ", style=STATE_STYLES[state])
    parts: list[Any] = [line, counts]
    if flow.invalidated:
        more = flow.invalidated - len(flow.invalidated_tasks)
        parts.append(Text(f"invalidated {flow.invalidated:,} (a fingerprint changed), to run"
                          f" again: {', '.join(map(shown, flow.invalidated_tasks))}"
                          + (f" and {more:,} more" if more > 0 else ""),
                          style=STATE_STYLES["blocked"], overflow="ellipsis", no_wrap=True))
    if flow.workers:
        parts.append(_workers_table(flow, all_workers=all_workers))
    parts.extend(Text(failure_line(failure), style=STATE_STYLES[failure.state],
                      overflow="ellipsis", no_wrap=True)
                 for failure in flow.failures[:SHOWN_FAILURES])
    more = flow.failure_count - min(len(flow.failures), SHOWN_FAILURES)
    if more > 0:
        parts.append(Text(f"... {more:,} more: {command('failures', '-w', flow.name)}",
                          style="dim", overflow="ellipsis", no_wrap=True))
    return Panel(Group(*parts), title=Text(shown(flow.name), style="bold"), title_align="left")


def speed(flow: WorkflowStatus) -> str:
    """Return `` 12.5/s ETA 3m20s`` (rate over the last minute; empty when unknown)."""
    if flow.rate is None:
        return ""
    eta = f" ETA {duration(math.ceil(flow.eta))}" if flow.eta else ""  # 0.4 s left: 1s
    return f" {rate(flow.rate)}/s{eta}"


def rate(value: float) -> str:
    """Return a rate with as many digits as it needs: ``1,234``, ``12.5``, ``0.04``."""
    if value >= 100:  # noqa: PLR2004 - whole numbers from here on
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _workers_table(flow: WorkflowStatus, *, all_workers: bool) -> Table:
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold")
    for column, kwargs in (("worker", {"ratio": 3, "overflow": "ellipsis", "no_wrap": True}),
                           ("host", {"ratio": 1, "overflow": "ellipsis", "no_wrap": True}),
                           ("pid", {"justify": "right"}), ("rank", {"justify": "right"}),
                           ("state", {}), ("task", {"overflow": "ellipsis", "no_wrap": True}),
                           ("done", {"justify": "right"}), ("/s", {"justify": "right"}),
                           ("beat", {"justify": "right"})):
        table.add_column(column, **kwargs)
    shown_workers = flow.workers if all_workers else _some(flow.workers)
    for w in shown_workers:
        table.add_row(*_worker_row(w))
    hidden = len(flow.workers) - len(shown_workers)
    if hidden:
        table.add_row(Text(f"... {hidden} more (--all)"), *[""] * 8)
    return table


def _some(workers: list[WorkerStatus]) -> list[WorkerStatus]:
    online = [w for w in workers if w.state == "online"]
    return online + [w for w in workers if w.state != "online"][: max(0, SHOWN_WORKERS
                                                                       - len(online))]


def _worker_row(w: WorkerStatus) -> list[Any]:
    label = w.identifier + (f" [{','.join(w.labels)}]" if w.labels else "")
    return [Text(shown(label)), Text(shown(w.host)), str(w.pid),
            "" if w.rank is None else str(w.rank),
            Text(w.state, style="green" if w.state == "online" else "dim"),
            Text(shown(w.current or "") + info(w.current_info)), f"{w.done:,}",
            "" if w.rate is None else rate(w.rate), duration(w.last_seen)]


def failure_line(failure: FailureStatus) -> str:
    """Return ``failed 47 ('h2o'): RuntimeError: SCF did not converge`` (escaped).

    A message of several lines shows its first, which names the exception, then ``...``.
    """
    item = f" ({failure.item})" if failure.item else ""
    lines = (failure.error or "").strip().splitlines() or [""]
    more = " ..." if len(lines) > 1 else ""
    return (f"{failure.what()} {shown(failure.task)}{shown(item)}{info(failure.info)}:"
            f" {shown(lines[0])}{more}")


def failure_block(failure: FailureStatus, *, tracebacks: bool) -> Group:
    """Return one failure as ``laufband failures`` lists it: its line, where, traceback."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(failure.time))
    where = f"attempt {failure.attempt or '?'}, worker {failure.worker or '?'}"
    where += f" on {failure.host}" if failure.host else ""
    parts: list[Any] = [
        Text(failure_line(failure), style=STATE_STYLES[failure.state]),
        Text(shown(f"  {where}, {when}"), style="dim"),
    ]
    if tracebacks and failure.traceback:
        lines = failure.traceback.rstrip().splitlines()
        parts.append(Text("\n".join("    " + shown(line) for line in lines)))
    return Group(*parts)


def info(task_info: dict[str, Any]) -> str:
    """``Task.info`` after a task id, as compact JSON: `` {"lr": 0.1}``; empty if none."""
    return " " + shown(json.dumps(task_info, ensure_ascii=False)) if task_info else ""


def shown(text: str) -> str:
    r"""Return ``text`` with characters a terminal would act on shown escaped.

    Escape sequences, newlines and bidirectional overrides are shown as ``\x1b``,
    ``\n`` ...; the rest as it is.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def duration(seconds: float | None) -> str:
    """Return ``42s``, ``3m20s`` or ``2h05m``."""
    seconds = int(seconds or 0)
    if seconds < MINUTE:
        return f"{seconds}s"
    if seconds < HOUR:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
