#!/bin/bash
#SBATCH --job-name=matra-vasp
#SBATCH --partition=gpu
#SBATCH --account=my_project
#SBATCH --qos=normal
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-node=4
#SBATCH --mem=200G
#SBATCH --time=1-00:00:00
#SBATCH --output=/scratch/runs/r1/logs/job.log
#SBATCH --open-mode=append
#SBATCH --dependency=afterok:41:42
#SBATCH --constraint=a100

set -euo pipefail

# site setup (profile)
module purge
module load cuda/12.4
source $HOME/matra-hpc/.venv/bin/activate

export OMP_NUM_THREADS=8
cd '/scratch/run 1/mp-149'
echo "[matra-hpc] $(date -u +%FT%TZ) start on $(hostname): 8 ranks"
srun --mpi=pmix --ntasks=8 --kill-on-bad-exit=1 vasp_std
echo "[matra-hpc] $(date -u +%FT%TZ) done"
