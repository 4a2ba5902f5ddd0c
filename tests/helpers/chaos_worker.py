"""A worker for chaos runs: 2-20 ms tasks, half of each inside worker.lock.

Logs every finished item to LOGS/<pid>.done under worker.lock, as its body's last act.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from laufband import Laufband

state, logs, items = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
logs.mkdir(exist_ok=True)
worker = Laufband(list(range(items)), path=state, name="chaos", tqdm_kwargs={"disable": True})
for item in worker:
    time.sleep((1 + item * 7919 % 10) / 1000)  # 1-10 ms outside the lock
    with worker.lock:  # kills land here too: the lock must never stay held
        time.sleep((1 + item * 7919 % 10) / 1000)
        # The output row, written under worker.lock as the body's last act.
        with (logs / f"{os.getpid()}.done").open("a") as log:
            log.write(f"{item}\n")
