"""Real filesystems for fault tests: a small tmpfs that fills up or turns read-only."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

COMMAND_DEADLINE = 30.0  # seconds a mount or umount may take


def run(*command: str) -> subprocess.CompletedProcess[str]:
    """Run a system command within COMMAND_DEADLINE."""
    return subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=COMMAND_DEADLINE)


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """``directory`` (created 0700) as a tmpfs of ``size``; skip the test where mounting
    is not allowed (not root); every mount on it undone afterwards."""
    directory.mkdir(mode=0o700, exist_ok=True)
    mounted = run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                  str(directory))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        start = time.monotonic()
        while os.path.ismount(directory) and time.monotonic() - start < COMMAND_DEADLINE:
            if run("umount", str(directory)).returncode != 0:
                run("umount", "-l", str(directory))  # still busy: detach it at least
