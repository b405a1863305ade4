#!/bin/bash
#SBATCH --job-name=matra-vasp
#SBATCH --partition=gpu
#SBATCH --account=my_project
#SBATCH --qos=normal
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --mem=200G
#SBATCH --time=04:00:00
#SBATCH --array=0-1000%16
#SBATCH --output=/runs/r1/logs/%A_%a.log
#SBATCH --open-mode=append
#SBATCH --constraint=a100

set -uo pipefail

# site setup (profile)
module purge
module load cuda/12.4
source $HOME/matra-hpc/.venv/bin/activate

export OMP_NUM_THREADS=8
export PYTHONPATH=REPO${PYTHONPATH:+:$PYTHONPATH}
# candidates of task (offset + array index) in the task file; the array index comes from Slurm
TASK=$(( 1001 + SLURM_ARRAY_TASK_ID ))
echo "[matra-hpc] $(date -u +%FT%TZ) task $TASK on $(hostname)"
# exec: the time-limit SIGTERM reaches the runner, which records the candidate in flight
exec python -m matra_hpc.dft.runner /runs/r1/vasp-tasks.json "$TASK" --job "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
