#!/bin/bash

set -euo pipefail

export OMP_NUM_THREADS=1
cd '/scratch/run 1/mp-149'
echo "[matra-hpc] $(date -u +%FT%TZ) start on $(hostname): 1 ranks"
mpirun -n 8 vasp_std
echo "[matra-hpc] $(date -u +%FT%TZ) done"
