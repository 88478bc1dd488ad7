#!/usr/bin/env bash
# Idempotent set-up of Apache Airflow in its OWN virtual environment (not the main .venv):
# Airflow 3.3 needs fastapi<0.137, which conflicts with Ray Serve, so the two never share a
# venv. The DAG that mlops_ray generates (mlops_ray.schedule.airflow) imports only Airflow
# and the Python stdlib, so this venv needs nothing else.
#   MLOPS_RAY_AIRFLOW_VENV  where the virtual environment lives (default: .venv-airflow in the repo)
#   PYTHON                  the Python 3.11 interpreter to create it with (default: python3)
# The lock cluster/airflow/requirements.lock is made from cluster/airflow/requirements.in with
#   uv pip compile cluster/airflow/requirements.in --python-version 3.11 -o cluster/airflow/requirements.lock
# A stamp (sha256 of the lock and this script) makes a second call do nothing.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AIRFLOW_VENV="${MLOPS_RAY_AIRFLOW_VENV:-$REPO/.venv-airflow}"
PY="${PYTHON:-python3}"

say() { printf '[setup-airflow] %s\n' "$*" >&2; }

"$PY" - <<'PYEOF' || { say "Python 3.11 is required (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11"; exit 2; }
import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PYEOF
AIRFLOW_LOCK="$REPO/cluster/airflow/requirements.lock"
AIRFLOW_STAMP="$AIRFLOW_VENV/.mlops_ray-airflow-lock-sha256"
AIRFLOW_WANT="$(cat "$AIRFLOW_LOCK" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$AIRFLOW_VENV/bin/python" ]; then
  say "creating $AIRFLOW_VENV"
  "$PY" -m venv "$AIRFLOW_VENV"
fi
if [ "$(cat "$AIRFLOW_STAMP" 2>/dev/null)" != "$AIRFLOW_WANT" ]; then
  say "installing Apache Airflow (locked) into $AIRFLOW_VENV (about 20 s on a fresh machine)"
  "$AIRFLOW_VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==0.13.*"
  "$AIRFLOW_VENV/bin/uv" pip install -q --compile-bytecode --python "$AIRFLOW_VENV/bin/python" -r "$AIRFLOW_LOCK"
  echo "$AIRFLOW_WANT" > "$AIRFLOW_STAMP"
fi
