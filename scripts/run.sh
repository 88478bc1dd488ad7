#!/usr/bin/env bash
# The main command: set up (first time only), then run the whole pipeline on the 2013 flights.
# Extra arguments go to `mlops-ray run` (e.g. --keep-serving, --config PATH).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec mlops-ray run "$@"
