#!/usr/bin/env bash
# Create .venv in the project root and install matra-hpc with its pinned dependencies.
#   scripts/install.sh          runtime only
#   scripts/install.sh --test   also the test extras
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "[install] matra-hpc needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1
fi
# Debian's python3 ships venv/ensurepip in a separate package.
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[install] apt-get install python3-venv"
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned on its own: a looser request would pull the multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".${extras}"
# The report page test opens the HTML in a real headless browser: Debian's chromium and its
# driver (selenium drives it through the executable path; browser downloads are not needed).
if [ -n "$extras" ] && ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[install] apt-get install chromium chromium-driver (report page test)"
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
fi
echo "[install] matra-hpc $(.venv/bin/python -c 'import matra_hpc; print(matra_hpc.__version__)') in $(pwd)/.venv"
