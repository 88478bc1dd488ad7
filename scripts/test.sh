#!/usr/bin/env bash
# The test command: set up (environment, Python packages, Debian packages the tests need),
# then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
export MLOPS_RAY_DEV=1
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$REPO"
exec python -m pytest tests -p no:cacheprovider --durations=20 "$@"
