#!/bin/bash
#SBATCH --job-name=matra-vasp
#SBATCH --partition=debug
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=1G
#SBATCH --time=0-00:10:00
#SBATCH --output=/scratch/runs/r1/logs/job.log
#SBATCH --open-mode=append

set -euo pipefail

export OMP_NUM_THREADS=1
cd '/scratch/run 1/mp-149'
echo "[matra-hpc] $(date -u +%FT%TZ) start on $(hostname): 1 ranks"
srun --mpi=pmix --ntasks=8 --kill-on-bad-exit=1 vasp_std
echo "[matra-hpc] $(date -u +%FT%TZ) done"
