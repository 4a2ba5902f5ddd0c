"""MPI ranks found from the launcher's environment; only rank 0 draws a bar."""

from __future__ import annotations

from pathlib import Path

import pytest

from laufband import Laufband
from laufband.mpi import rank_and_size


def test_rank_detection_and_bar_only_on_rank_zero(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMI_RANK", "3")
    monkeypatch.setenv("PMI_SIZE", "4")
    assert rank_and_size() == (3, 4)
    worker = Laufband([1], path=state)
    assert "rank3" in worker.identifier
    assert worker.iterator.disable


@pytest.mark.parametrize(("env", "expected"), [
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, (1, 2)),
    ({"PMIX_RANK": "5"}, (5, 6)),
    ({"MV2_COMM_WORLD_RANK": "0", "MV2_COMM_WORLD_SIZE": "8"}, (0, 8)),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"}, (2, 4)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),  # a batch script, not srun
    ({}, None),
])
def test_rank_from_launchers(monkeypatch: pytest.MonkeyPatch, env: dict, expected) -> None:
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK",
                 "SLURM_PROCID", "SLURM_STEP_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert rank_and_size() == expected
