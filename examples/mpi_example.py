"""Every MPI rank is a worker: no MPI code needed.

    mpiexec -n 4 python mpi_example.py

Each rank takes different items; only rank 0 draws the progress bar. The same script
runs unchanged without MPI, or as several SLURM jobs.
"""

import os
import time

from laufband import Laufband

worker = Laufband(list(range(100)), name="mpi-example")
for item in worker:
    time.sleep(0.02)  # the real work
    with worker.lock:
        with open("mpi_results.txt", "a") as out:
            out.write(f"{item} {os.environ.get('PMI_RANK', '-')}\n")
