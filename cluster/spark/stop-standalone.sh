#!/usr/bin/env bash
# Stop exactly the Spark processes that cluster/spark/start-standalone.sh and
# cluster/spark/start-connect.sh started with the same --dir: the pids in DIR/pids/*.pid.
# A pid whose process is no longer a Spark JVM (the pid was reused) is left alone.
# Order: Spark Connect server, workers, master. SIGTERM first, SIGKILL after --timeout-s.
# Exit codes: 0 nothing of ours is left running; 1 something survived SIGKILL; 2 usage error.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: cluster/spark/stop-standalone.sh --dir DIR [--timeout-s S]

Stops the processes whose pids start-standalone.sh / start-connect.sh wrote to DIR/pids/
(connect server, then workers, then master) and removes their pid files.

  --dir DIR        the --dir given to start-standalone.sh (required)
  --timeout-s S    seconds to wait after SIGTERM before SIGKILL [20]
  -h, --help       this message
EOF
}

say() { printf '[spark-standalone] %s\n' "$*" >&2; }

DIR=""
TIMEOUT_S=20
while [ $# -gt 0 ]; do
  if [[ "$1" == --* && "$1" != --help && $# -lt 2 ]]; then say "$1 needs a value; see --help"; exit 2; fi
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --timeout-s) TIMEOUT_S="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) say "unknown argument '$1'; see --help"; exit 2 ;;
  esac
done
[ -n "$DIR" ] || { say "--dir is required; see --help"; exit 2; }
[[ "$TIMEOUT_S" =~ ^[0-9]+$ ]] || { say "--timeout-s must be an integer; got '$TIMEOUT_S'"; exit 2; }
if [ ! -d "$DIR/pids" ]; then
  say "no $DIR/pids: nothing was started with --dir $DIR"
  exit 0
fi

# Alive = exists and is not a zombie (an exited daemon whose parent has not reaped it yet).
is_alive() { kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != *Z* ]]; }
is_spark() {  # the process's full command line names a Spark class (checked before any kill)
  local cmd
  if [ -r "/proc/$1/cmdline" ]; then cmd="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)"
  else cmd="$(ps -ww -o args= -p "$1" 2>/dev/null)"; fi
  [[ "$cmd" == *org.apache.spark.* ]]   # no `| grep -q`: with pipefail its early exit can fail the pipe
}

files=()
for pattern in 'connect*.pid' 'worker-*.pid' 'master*.pid'; do
  for f in "$DIR"/pids/$pattern; do [ -e "$f" ] && files+=("$f"); done
done
for f in "$DIR"/pids/*.pid; do              # anything else in there, last
  [ -e "$f" ] || continue
  case " ${files[*]:-} " in *" $f "*) ;; *) files+=("$f") ;; esac
done

pids=()
for f in "${files[@]}"; do
  pid="$(cat "$f")"
  if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! is_alive "$pid"; then
    rm -f "$f"
    continue
  fi
  if ! is_spark "$pid"; then
    say "$(basename "$f" .pid): pid $pid is no longer a Spark process; left alone"
    rm -f "$f"
    continue
  fi
  kill -TERM "$pid" 2>/dev/null || true
  say "stopping $(basename "$f" .pid) (pid $pid)"
  pids+=("$pid:$f")
  # Stop workers before the master, so they do not spend their last seconds reconnecting.
  if [[ "$(basename "$f")" == connect* ]]; then
    for _ in $(seq 1 $((TIMEOUT_S * 5))); do is_alive "$pid" || break; sleep 0.2; done
  fi
done

deadline=$(( $(date +%s) + TIMEOUT_S ))
for item in "${pids[@]}"; do
  pid="${item%%:*}"
  while is_alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
done
left=0
for item in "${pids[@]}"; do
  pid="${item%%:*}"; f="${item#*:}"
  if is_alive "$pid"; then
    say "pid $pid did not stop after SIGTERM within ${TIMEOUT_S}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  if is_alive "$pid"; then left=1; else rm -f "$f"; fi
done
rm -f "$DIR/master-url" "$DIR/connect-url"
[ "$left" = 0 ] || { say "ERROR: some processes survived SIGKILL; see ps"; exit 1; }
say "stopped"
