#!/usr/bin/env bash
# Install matra-hpc, then run the end-to-end demo on the shipped data with the local executor:
# tokenize the flla_2015 MP structures, train the tiny model, sample a temperature sweep with
# mpirun, and write the reports (JSON, CSV, PNG) under demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/matra-hpc demo --out "${DEMO_OUT:-demo-out}" "$@"
