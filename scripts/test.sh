#!/usr/bin/env bash
# Set everything up (see setup.sh), then run the whole test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python -m pytest "$@"
