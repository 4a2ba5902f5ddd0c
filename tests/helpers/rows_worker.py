"""A Laufband worker that appends one row per item to a shared file under worker.lock,
as the README's example does, as the last thing its loop body does.

usage: rows_worker.py STATE ROWS ITEMS SECONDS_PER_ITEM
"""

from __future__ import annotations

import os
import sys
import time

from laufband import Laufband

state, rows, items, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
worker = Laufband(list(range(items)), path=state, name="rows", tqdm_kwargs={"disable": True})
for item in worker:
    time.sleep(seconds)  # the work
    with worker.lock:
        fd = os.open(rows, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{item} {os.getpid()}\n".encode())
        os.close(fd)
