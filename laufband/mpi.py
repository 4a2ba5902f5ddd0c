"""MPI rank and size from the launcher's environment, without importing mpi4py."""

from __future__ import annotations

import os

# (rank variable, size variable) per launcher: MPICH/Hydra (PMI), Open MPI, PMIx,
# MVAPICH. SLURM's variables count only when srun started the process, which it
# signals with SLURM_STEP_ID; a batch script alone sets SLURM_PROCID=0 too.
_LAUNCHERS = (
    ("PMI_RANK", "PMI_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMIX_RANK", "PMIX_SIZE"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),
)


def rank_and_size() -> tuple[int, int] | None:
    """Return ``(rank, size)`` when started by an MPI launcher or ``srun``, else None."""
    for rank_var, size_var in _LAUNCHERS:
        rank = os.environ.get(rank_var)
        if rank is not None and rank.isdigit():
            size = os.environ.get(size_var, "")
            return int(rank), int(size) if size.isdigit() else int(rank) + 1
    if "SLURM_STEP_ID" in os.environ and os.environ.get("SLURM_PROCID", "").isdigit():
        size = os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", ""))
        procid = int(os.environ["SLURM_PROCID"])
        return procid, int(size) if size.isdigit() else procid + 1
    return None
