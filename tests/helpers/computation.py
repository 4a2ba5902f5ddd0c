"""The work of the pmap and joblib caller scripts: log each computation, and
optionally let the first helper process (not the caller) that gets one die mid-task."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def compute(x: int, logs: Path, sleep: float, *, kill_helper: bool, caller: int) -> None:
    """Sleep ``sleep`` seconds and append ``x`` to LOGS/<pid>.done; with ``kill_helper``
    the first helper to get here SIGKILLs itself instead, once (LOGS/killed-once)."""
    marker = logs / "killed-once"
    if kill_helper and os.getpid() != caller and not marker.exists():
        marker.write_text(str(x))
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(sleep)
    with (logs / f"{os.getpid()}.done").open("a") as log:
        log.write(f"{x}\n")
