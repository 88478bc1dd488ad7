#!/usr/bin/env bash
# Start a Spark standalone master and N workers on this machine from the pyspark pip install
# (no separate Spark download), or, with --join, only workers for a master on another machine.
#
# Source: Spark's "Spark Standalone Mode" guide, "Starting a Cluster Manually":
#   ./bin/spark-class org.apache.spark.deploy.master.Master
#   ./bin/spark-class org.apache.spark.deploy.worker.Worker <master-spark-URL>
#   https://spark.apache.org/docs/latest/spark-standalone.html
# The daemons run in the foreground of their own processes (no spark-daemon.sh), so the pids
# written under DIR/pids are exactly the JVMs; cluster/spark/stop-standalone.sh stops those.
#
# The last line on stdout is the master URL (spark://HOST:PORT); progress goes to stderr.
# Exit codes: 0 started; 1 a daemon did not come up (its log tail is printed and everything
# this call started is stopped again); 2 usage or environment error.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: cluster/spark/start-standalone.sh --dir DIR [options]

Starts a Spark standalone master and workers from the pyspark pip install, waits until the
master's web UI lists every worker ALIVE, and prints the master URL as the last stdout line.

  --dir DIR              state folder: DIR/pids/*.pid, DIR/logs/*.out, DIR/work, DIR/local (required)
  --host HOST            address the daemons bind to and advertise   [$SPARK_MASTER_HOST or 127.0.0.1]
  --master-port P        master RPC port                             [$SPARK_MASTER_PORT or 7077]
  --webui-port W         master web UI port (its JSON is polled)     [$SPARK_MASTER_WEBUI_PORT or 8080]
  --workers N            worker processes to start (0 = master only) [$SPARK_WORKER_INSTANCES or 1]
  --worker-cores C       cores each worker offers                    [$SPARK_WORKER_CORES or 1]
  --worker-memory M      memory each worker offers, e.g. 1g, 512m    [$SPARK_WORKER_MEMORY or 1g]
  --join spark://H:P     start no master; add the workers to this master (another machine).
                         --webui-port is then that master's web UI port on H.
  --python PATH          Python with pyspark; also PYSPARK_PYTHON of the workers
                         [$PYSPARK_PYTHON, else the repo's .venv/bin/python, else python3]
  --spark-home DIR       Spark to run [the folder of the pyspark package that --python imports]
  --timeout-s S          give up after S seconds in all                [$SPARK_START_TIMEOUT_S or 120]
  -h, --help             this message

Example (what the tests run):
  cluster/spark/start-standalone.sh --dir /tmp/spark --master-port 7077 --webui-port 8080 \
      --workers 1 --worker-cores 1 --worker-memory 1g
  cluster/spark/stop-standalone.sh --dir /tmp/spark
EOF
}

say() { printf '[spark-standalone] %s\n' "$*" >&2; }
die_usage() { say "$*"; say "see --help"; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

DIR=""
HOST="${SPARK_MASTER_HOST:-127.0.0.1}"
MASTER_PORT="${SPARK_MASTER_PORT:-7077}"
WEBUI_PORT="${SPARK_MASTER_WEBUI_PORT:-8080}"
WORKERS="${SPARK_WORKER_INSTANCES:-1}"
WORKER_CORES="${SPARK_WORKER_CORES:-1}"
WORKER_MEMORY="${SPARK_WORKER_MEMORY:-1g}"
JOIN=""
PY="${PYSPARK_PYTHON:-}"
SPARK_HOME_ARG=""
TIMEOUT_S="${SPARK_START_TIMEOUT_S:-120}"

while [ $# -gt 0 ]; do
  if [[ "$1" == --* && "$1" != --help && $# -lt 2 ]]; then die_usage "$1 needs a value"; fi
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --host) HOST="$2"; shift 2 ;;
    --master-port) MASTER_PORT="$2"; shift 2 ;;
    --webui-port) WEBUI_PORT="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --worker-cores) WORKER_CORES="$2"; shift 2 ;;
    --worker-memory) WORKER_MEMORY="$2"; shift 2 ;;
    --join) JOIN="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --spark-home) SPARK_HOME_ARG="$2"; shift 2 ;;
    --timeout-s) TIMEOUT_S="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done

# ---------------------------------------------------------------------------- check arguments
[ -n "$DIR" ] || die_usage "--dir is required (where pids, logs and work dirs go)"
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for pair in "master-port:$MASTER_PORT" "webui-port:$WEBUI_PORT"; do
  name="${pair%%:*}"; value="${pair#*:}"
  { is_uint "$value" && [ "$value" -ge 1 ] && [ "$value" -le 65535 ]; } \
    || die_usage "--$name must be a port number 1-65535; got '$value'"
done
is_uint "$WORKERS" || die_usage "--workers must be an integer >= 0; got '$WORKERS'"
{ is_uint "$WORKER_CORES" && [ "$WORKER_CORES" -ge 1 ]; } \
  || die_usage "--worker-cores must be an integer >= 1; got '$WORKER_CORES'"
[[ "$WORKER_MEMORY" =~ ^[0-9]+[mMgGtT]$ ]] \
  || die_usage "--worker-memory must look like 512m or 2g; got '$WORKER_MEMORY'"
{ is_uint "$TIMEOUT_S" && [ "$TIMEOUT_S" -ge 1 ]; } \
  || die_usage "--timeout-s must be an integer >= 1; got '$TIMEOUT_S'"
if [ -n "$JOIN" ]; then
  [[ "$JOIN" =~ ^spark://([^:/]+):([0-9]+)$ ]] || die_usage "--join must look like spark://HOST:PORT; got '$JOIN'"
  MASTER_HOST="${BASH_REMATCH[1]}"; MASTER_PORT="${BASH_REMATCH[2]}"
  [ "$WORKERS" -ge 1 ] || die_usage "--join with --workers 0 starts nothing"
else
  MASTER_HOST="$HOST"
fi
MASTER_URL="spark://$MASTER_HOST:$MASTER_PORT"
WEBUI_URL="http://$MASTER_HOST:$WEBUI_PORT/json/"

# ---------------------------------------------------------------------------- environment
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY="python3"; fi
fi
command -v "$PY" >/dev/null 2>&1 || { say "Python '$PY' not found; pass --python PATH (a Python with pyspark)"; exit 2; }
if [ -n "$SPARK_HOME_ARG" ]; then
  SPARK_HOME="$SPARK_HOME_ARG"
else
  SPARK_HOME="$("$PY" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))' 2>/dev/null)" \
    || { say "'$PY' cannot import pyspark; install the project (bash scripts/setup.sh) or pass --python"; exit 2; }
fi
[ -x "$SPARK_HOME/bin/spark-class" ] || { say "no bin/spark-class under SPARK_HOME=$SPARK_HOME"; exit 2; }
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
command -v "$JAVA" >/dev/null 2>&1 || {
  say "Java not found (Spark 4 needs Java 17+): apt-get install openjdk-17-jre-headless, or set JAVA_HOME"; exit 2; }
export SPARK_HOME
PYSPARK_PYTHON="$(command -v "$PY")"
export PYSPARK_PYTHON
export SPARK_LOCAL_IP="$HOST"                 # bind the daemons and their web UIs to --host only
mkdir -p "$DIR/pids" "$DIR/logs" "$DIR/work" "$DIR/local"
DIR="$(cd "$DIR" && pwd)"
export SPARK_LOCAL_DIRS="$DIR/local"          # shuffle/spill space handed to executors
# A busy port is an error, not a silent move to the next port (Spark's default retries 16
# ports up, which would make the URL printed below wrong). The master's REST submission server
# (fixed port 6066, no authentication) is off: jobs reach the cluster through the master URL.
export SPARK_MASTER_OPTS="-Dspark.port.maxRetries=0 -Dspark.master.rest.enabled=false ${SPARK_MASTER_OPTS:-}"
export SPARK_WORKER_OPTS="-Dspark.port.maxRetries=0 ${SPARK_WORKER_OPTS:-}"

# Alive = exists and is not a zombie (an exited daemon whose parent has not reaped it yet).
is_alive() { kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != *Z* ]]; }
for f in "$DIR"/pids/*.pid; do
  [ -e "$f" ] || continue
  if is_alive "$(cat "$f")"; then
    say "$f: process $(cat "$f") is still running; stop it first: cluster/spark/stop-standalone.sh --dir $DIR"
    exit 2
  fi
  rm -f "$f"                                  # stale pid file of a process that is gone
done

# ---------------------------------------------------------------------------- helpers
DEADLINE=$(( $(date +%s) + TIMEOUT_S ))
STARTED=()                                    # "name:pid" of what this call started

stop_started() {
  local item pid
  for item in "${STARTED[@]}"; do
    pid="${item#*:}"
    is_alive "$pid" && kill "$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 50); do
    local any=0
    for item in "${STARTED[@]}"; do is_alive "${item#*:}" && any=1; done
    [ "$any" = 0 ] && break
    sleep 0.2
  done
  for item in "${STARTED[@]}"; do
    pid="${item#*:}"
    is_alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    rm -f "$DIR/pids/${item%%:*}.pid"
  done
}

fail() {  # fail LOGNAME MESSAGE: print the message and the log tail, stop what we started, exit 1
  local log="$DIR/logs/$1.out"
  say "ERROR: $2"
  if [ -f "$log" ] && grep -qE 'ERROR|Exception' "$log"; then
    say "first errors in $log:"
    grep -m 5 -E 'ERROR|Exception' "$log" | sed 's/^/    /' >&2 || true
  fi
  if [ -f "$log" ]; then
    say "last lines of $log:"
    tail -n 25 "$log" | sed 's/^/    /' >&2
  fi
  if [ "${#STARTED[@]}" -gt 0 ]; then
    say "stopping what this call started"
    stop_started
  fi
  exit 1
}

# Interrupted (Ctrl-C, SIGTERM) while starting: stop what this call started, then exit.
trap 'say "interrupted: stopping what this call started"; [ "${#STARTED[@]}" -gt 0 ] && stop_started; exit 130' INT TERM

launch() {  # launch NAME CLASS ARGS...: start a daemon in the background, record its pid
  local name="$1"; shift
  nohup "$SPARK_HOME/bin/spark-class" "$@" >"$DIR/logs/$name.out" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$DIR/pids/$name.pid"
  STARTED+=("$name:$pid")
  say "started $name (pid $pid, log $DIR/logs/$name.out)"
}

master_json() {  # print the master's /json/ or fail quietly
  "$PY" - "$WEBUI_URL" <<'PYEOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    sys.stdout.write(r.read().decode())
PYEOF
}

alive_ports() {  # RPC ports of the workers the master lists as ALIVE, one per line
  master_json 2>/dev/null | "$PY" -c '
import json, sys
for w in json.load(sys.stdin).get("workers", []):
    if w.get("state") == "ALIVE":
        print(w["port"])' 2>/dev/null || true
}

# ---------------------------------------------------------------------------- master
if [ -z "$JOIN" ]; then
  launch master org.apache.spark.deploy.master.Master \
    --host "$HOST" --port "$MASTER_PORT" --webui-port "$WEBUI_PORT"
  MASTER_PID="${STARTED[0]#*:}"
  # Up = the web UI answers and the master reports status ALIVE (it has become the leader).
  until url="$(master_json 2>/dev/null | "$PY" -c '
import json, sys
state = json.load(sys.stdin)
if state.get("status") != "ALIVE":
    sys.exit(1)
print(state["url"])' 2>/dev/null)"; do
    is_alive "$MASTER_PID" || fail master "the master exited before its web UI came up (port $MASTER_PORT or $WEBUI_PORT busy?)"
    ! grep -q "BindException" "$DIR/logs/master.out" || fail master "the master could not bind a port"
    [ "$(date +%s)" -lt "$DEADLINE" ] || fail master "the master did not report status ALIVE at $WEBUI_URL within ${TIMEOUT_S}s"
    sleep 0.3
  done
  [ "$url" = "$MASTER_URL" ] || fail master "the master reports URL $url, expected $MASTER_URL"
  say "master up at $MASTER_URL (web UI http://$HOST:$WEBUI_PORT)"
fi

# ---------------------------------------------------------------------------- workers
first=1
while [ -e "$DIR/pids/worker-$first.pid" ]; do first=$((first + 1)); done
names=()
for i in $(seq "$first" $((first + WORKERS - 1))); do
  launch "worker-$i" org.apache.spark.deploy.worker.Worker \
    --host "$HOST" --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" \
    --webui-port 0 --work-dir "$DIR/work/worker-$i" "$MASTER_URL"
  names+=("worker-$i")
done

# Each worker logs "Starting Spark worker HOST:PORT ..."; the master must list that port ALIVE.
for name in "${names[@]}"; do
  pid="$(cat "$DIR/pids/$name.pid")"
  log="$DIR/logs/$name.out"
  port=""
  while :; do
    is_alive "$pid" || fail "$name" "$name exited before registering with $MASTER_URL"
    [ -n "$port" ] || port="$(sed -n 's/.*Starting Spark worker [^ ]*:\([0-9][0-9]*\) with.*/\1/p' "$log" | head -n 1)"
    if [ -n "$port" ] && grep -qx "$port" <<<"$(alive_ports)"; then break; fi
    [ "$(date +%s)" -lt "$DEADLINE" ] \
      || fail "$name" "$name is not listed ALIVE by the master ($WEBUI_URL) within ${TIMEOUT_S}s"
    sleep 0.3
  done
  say "$name ALIVE (port $port, $WORKER_CORES cores, $WORKER_MEMORY)"
done

trap - INT TERM
echo "$MASTER_URL" >"$DIR/master-url"
echo "$MASTER_URL"
