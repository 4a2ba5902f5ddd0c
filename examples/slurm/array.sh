#!/bin/bash
# A job array: 20 independent single-process workers on one workflow. Array tasks
# start whenever the scheduler has room; each takes the next items from the shared
# state, and a task that hits its time limit loses nothing (its item goes back to
# pending and another array task picks it up).
#SBATCH --job-name=laufband-array
#SBATCH --array=1-20
#SBATCH --ntasks=1
#SBATCH --time=00:30:00

# A readable worker name in `laufband watch`.
export LAUFBAND_IDENTIFIER="array-${SLURM_ARRAY_JOB_ID}-${SLURM_ARRAY_TASK_ID}"
# Workers with a GPU can announce it: tasks with requirements={"gpu"} go to them.
# export LAUFBAND_LABELS=gpu

python main.py
