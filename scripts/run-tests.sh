#!/usr/bin/env bash
# Install everything, start the local single-node Slurm, run the whole test suite
# (slurm, mpi and slow markers included). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
if [ -f scripts/slurm-up.sh ]; then
  bash scripts/slurm-up.sh
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/python -m ruff check matra_hpc tests benchmarks
.venv/bin/python -m pytest tests --durations=10 "$@"
