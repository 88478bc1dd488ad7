#!/usr/bin/env bash
# The test command: set up (environment, Python packages, Debian packages the tests need),
# then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
export MLOPS_RAY_DEV=1

# Debian packages the tests start for real: PostgreSQL (registry backend, JDBC ingest source)
# and its JDBC driver (/usr/share/java/postgresql.jar), Chromium and its driver (the report is
# opened in a headless browser), Prometheus (promtool checks the scrape config) and the
# Pushgateway (batch metrics are pushed to it).
need=()
for pkg in postgresql libpostgresql-jdbc-java chromium chromium-driver prometheus prometheus-pushgateway; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing Debian packages: ${need[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "[test] missing Debian packages ${need[*]}: run as root or install them with apt-get" >&2
    exit 2
  fi
fi

source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Apache Airflow in its own virtual environment (.venv-airflow): the generated DAG is loaded there.
bash "$REPO/scripts/setup_airflow.sh"
cd "$REPO"
exec python -m pytest tests -p no:cacheprovider --durations=20 "$@"
