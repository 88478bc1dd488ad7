#!/usr/bin/env bash
# Start a Spark Connect server (gRPC, default port 15002) from the pyspark pip install, so
# thin clients (`SparkSession.builder.remote("sc://HOST:PORT")`) can use a shared Spark.
#
# Source: Spark's "Spark Connect Overview" (https://spark.apache.org/docs/latest/spark-connect-overview.html)
# and its sbin/start-connect-server.sh, which runs
#   spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer --name "Spark Connect server"
# (spark-submit is `spark-class org.apache.spark.deploy.SparkSubmit`; SparkSubmit matches this class
# name and runs it without an application jar). The class ships in pyspark's
# jars/spark-connect_2.13-<version>.jar. This script runs the same command in the foreground of
# its own process, so DIR/pids/connect.pid is the server JVM; stop it (and a standalone cluster
# started with the same --dir) with cluster/spark/stop-standalone.sh --dir DIR.
#
# The last line on stdout is the client URL (sc://HOST:PORT). Exit codes: 0 serving;
# 1 the server did not come up (log tail printed, process stopped); 2 usage or environment error.
# Clients need pyspark's connect extras (grpcio, grpcio-status, googleapis-common-protos,
# zstandard): pip install "pyspark[connect]==<same version>".
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: cluster/spark/start-connect.sh --dir DIR [options]

  --dir DIR          state folder (shared with start-standalone.sh): DIR/pids/connect.pid, DIR/logs/connect.out
  --host HOST        gRPC bind address and driver host        [$SPARK_CONNECT_HOST or 127.0.0.1]
  --port P           gRPC port                                [$SPARK_CONNECT_PORT or 15002]
  --master URL       where the server's driver runs its jobs  [DIR/master-url if start-standalone.sh wrote it, else local[2]]
  --driver-memory M  spark.driver.memory of the server        [1g]
  --conf K=V         extra Spark setting (repeatable)
  --python PATH      Python with pyspark                      [$PYSPARK_PYTHON, else the repo's .venv/bin/python, else python3]
  --timeout-s S      give up after S seconds                  [120]
  -h, --help         this message

Example:
  cluster/spark/start-standalone.sh --dir /tmp/spark --workers 1
  cluster/spark/start-connect.sh --dir /tmp/spark --port 15002     # uses the standalone master
  cluster/spark/stop-standalone.sh --dir /tmp/spark                # stops the server too
EOF
}

say() { printf '[spark-connect] %s\n' "$*" >&2; }
die_usage() { say "$*"; say "see --help"; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CLASS="org.apache.spark.sql.connect.service.SparkConnectServer"

DIR=""
HOST="${SPARK_CONNECT_HOST:-127.0.0.1}"
PORT="${SPARK_CONNECT_PORT:-15002}"
MASTER=""
DRIVER_MEMORY="1g"
CONFS=()
PY="${PYSPARK_PYTHON:-}"
TIMEOUT_S=120
while [ $# -gt 0 ]; do
  if [[ "$1" == --* && "$1" != --help && $# -lt 2 ]]; then die_usage "$1 needs a value"; fi
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --host) HOST="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --master) MASTER="$2"; shift 2 ;;
    --driver-memory) DRIVER_MEMORY="$2"; shift 2 ;;
    --conf) CONFS+=(--conf "$2"); shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --timeout-s) TIMEOUT_S="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
[ -n "$DIR" ] || die_usage "--dir is required"
{ [[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ]; } \
  || die_usage "--port must be a port number 1-65535; got '$PORT'"
[[ "$TIMEOUT_S" =~ ^[0-9]+$ ]] || die_usage "--timeout-s must be an integer; got '$TIMEOUT_S'"

if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY="python3"; fi
fi
command -v "$PY" >/dev/null 2>&1 || { say "Python '$PY' not found; pass --python PATH"; exit 2; }
SPARK_HOME="$("$PY" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))' 2>/dev/null)" \
  || { say "'$PY' cannot import pyspark; pass --python PATH"; exit 2; }
export SPARK_HOME
ls "$SPARK_HOME"/jars/spark-connect_*.jar >/dev/null 2>&1 \
  || { say "no jars/spark-connect_*.jar under $SPARK_HOME: this pyspark has no Spark Connect server"; exit 2; }
command -v "${JAVA_HOME:+$JAVA_HOME/bin/}java" >/dev/null 2>&1 \
  || { say "Java not found (Spark 4 needs Java 17+): apt-get install openjdk-17-jre-headless, or set JAVA_HOME"; exit 2; }
PYSPARK_PYTHON="$(command -v "$PY")"
export PYSPARK_PYTHON
export SPARK_LOCAL_IP="$HOST"

mkdir -p "$DIR/pids" "$DIR/logs" "$DIR/local"
DIR="$(cd "$DIR" && pwd)"
if [ -z "$MASTER" ]; then
  if [ -s "$DIR/master-url" ]; then MASTER="$(cat "$DIR/master-url")"; else MASTER="local[2]"; fi
fi
# Alive = exists and is not a zombie.
is_alive() { kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != *Z* ]]; }
PIDFILE="$DIR/pids/connect.pid"
LOG="$DIR/logs/connect.out"
if [ -e "$PIDFILE" ] && is_alive "$(cat "$PIDFILE")"; then
  say "a Spark Connect server (pid $(cat "$PIDFILE")) is already running for $DIR; stop it first"
  exit 2
fi

nohup "$SPARK_HOME/bin/spark-submit" --class "$CLASS" --name "Spark Connect server" \
  --master "$MASTER" --driver-memory "$DRIVER_MEMORY" \
  --conf "spark.connect.grpc.binding.address=$HOST" \
  --conf "spark.connect.grpc.binding.port=$PORT" \
  --conf "spark.connect.grpc.port.maxRetries=0" \
  --conf "spark.driver.host=$HOST" --conf "spark.driver.bindAddress=$HOST" \
  --conf "spark.local.dir=$DIR/local" \
  ${CONFS[@]+"${CONFS[@]}"} >"$LOG" 2>&1 </dev/null &
PID=$!
echo "$PID" >"$PIDFILE"
say "started Spark Connect server (pid $PID, master $MASTER, log $LOG)"

fail() {
  say "ERROR: $*"
  if grep -qE 'ERROR|Exception' "$LOG"; then
    say "first errors in $LOG:"
    grep -m 5 -E 'ERROR|Exception' "$LOG" | sed 's/^/    /' >&2 || true
  fi
  say "last lines of $LOG:"
  tail -n 25 "$LOG" | sed 's/^/    /' >&2
  kill "$PID" 2>/dev/null || true
  for _ in $(seq 1 50); do is_alive "$PID" || break; sleep 0.2; done
  kill -9 "$PID" 2>/dev/null || true
  rm -f "$PIDFILE"
  exit 1
}

port_open() {
  "$PY" - "$HOST" "$PORT" <<'PYEOF'
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2):
    pass
PYEOF
}

deadline=$(( $(date +%s) + TIMEOUT_S ))
# SparkConnectServer logs "Spark Connect server started at: HOST:PORT" once gRPC is listening.
until grep -q "Spark Connect server started" "$LOG" 2>/dev/null && port_open 2>/dev/null; do
  is_alive "$PID" || fail "the server exited during start-up (port $PORT busy? master $MASTER unreachable?)"
  [ "$(date +%s)" -lt "$deadline" ] || fail "the server did not listen on $HOST:$PORT within ${TIMEOUT_S}s"
  sleep 0.5
done
echo "sc://$HOST:$PORT" >"$DIR/connect-url"
say "serving at sc://$HOST:$PORT"
echo "sc://$HOST:$PORT"
