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

# Disk: a fresh .venv takes ~3.3 GB and one run of the suite wrote ~2.2 GB more (measured on this machine). A full disk
# otherwise shows up minutes in as an unrelated OSError (ENOSPC) in whichever test writes next.
for dir in "$(dirname "${BASH_SOURCE[0]}")" "${TMPDIR:-/tmp}"; do
  free_gb=$(( $(df -Pk "$dir" | awk 'NR==2 {print $4}') / 1048576 ))
  if [ "$free_gb" -lt 4 ]; then
    echo "[test] only ${free_gb} GB free on the disk of $dir; the suite needs ~6 GB: free some space (for example \`uv cache prune\`, old clones' .venv folders) and re-run" >&2
    exit 2
  elif [ "$free_gb" -lt 8 ]; then
    echo "[test] warning: ${free_gb} GB free on the disk of $dir; the suite needs ~6 GB" >&2
  fi
done

source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Apache Airflow in its own virtual environment (.venv-airflow): the generated DAG is loaded there.
bash "$REPO/scripts/setup_airflow.sh"
cd "$REPO"
exec python -m pytest tests -p no:cacheprovider --durations=20 "$@"
