#!/bin/bash
# One SLURM job, 64 ranks: each rank is a laufband worker (no MPI code in main.py).
# Submit it several times, or resubmit after a time limit: every job shares the
# state in ./.laufband and continues where the others are.
#SBATCH --job-name=laufband
#SBATCH --ntasks=64
#SBATCH --time=02:00:00
# SLURM sends SIGTERM at the time limit: laufband hands the running tasks back.
#SBATCH --signal=TERM@60

# The state directory must be on a filesystem every node mounts (not node-local
# scratch). Without working flock there, uncomment the next line.
# export LAUFBAND_LOCK=soft

srun python main.py
