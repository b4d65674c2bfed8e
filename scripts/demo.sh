#!/usr/bin/env bash
# Set everything up (see setup.sh), then run the main job: CA-SAM on Fashion-MNIST with 50 %
# symmetric label noise (10,000-sample subset, small CNN; about 10 minutes on 2 CPU cores).
# Extra arguments go to `casam train`, e.g. `bash scripts/demo.sh --optimizer sam`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
casam train --out runs/demo --overwrite "$@"
casam plot runs/demo --out runs/demo/curves.png
