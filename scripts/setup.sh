#!/usr/bin/env bash
# Idempotent set-up for a fresh Linux machine: Fashion-MNIST files, a virtual environment in .venv,
# PyTorch (CPU build) and casam with every optional extra. Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)" >&2
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# pip's notes about unreachable mirror folders are noise; errors still show, and the import check
# below is what decides whether the set-up worked.
quiet_pip() { grep -v "^WARNING: Location" >&2 || true; }

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build on x86 Linux.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0" >&2
    .venv/bin/pip install -q "torch==2.13.0" 2>&1 | quiet_pip
fi
.venv/bin/pip install -q -e ".[test]" 2>&1 | quiet_pip
.venv/bin/python -c "import casam, torch, sklearn, yaml, tqdm, matplotlib" \
    || { echo "setup: the installation is incomplete (see the pip messages above)" >&2; exit 1; }
export PATH="$PWD/.venv/bin:$PATH"
