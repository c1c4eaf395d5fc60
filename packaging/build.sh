#!/usr/bin/env bash
# Build the one-folder RetouchFormer Studio bundle; all options are packaging/build.py's:
#   packaging/build.sh                      # CPU bundle in an isolated venv (packaging/build/venv-cpu)
#   packaging/build.sh --variant cuda       # CUDA bundle
#   packaging/build.sh --use-current-env    # use the active Python's packages
# PYTHON=python3.11 packaging/build.sh ... picks the interpreter the build venv is made from.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" packaging/build.py "$@"
