#!/usr/bin/env bash
# Peak memory of a full scan of a large keyspace: a private redis-server holding N Celery
# results (`celery-task-meta-<uuid>`, as a day of results with Celery's default expiry leaves
# them), then `taskscope serve --brokers celery` started on it; prints how long the start-up
# scan took to be folded and the server's peak RSS (VmHWM). The same scan runs hourly
# (the periodic full rescan) and after every reconnect.
#
#   bench/scan_spike.sh                 # 300,000 results
#   bench/scan_spike.sh --results 1000000
#   TASKSCOPE_BIN=target/release/taskscope-before bench/scan_spike.sh
#
# Build first: `cargo build --release -p taskscope`. Runs under flock /tmp/taskscope-bench.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
results=300000
while [ $# -gt 0 ]; do
  case "$1" in
    --results) results=$2; shift 2 ;;
    *) echo "scan_spike: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=${TASKSCOPE_BIN:-target/release/taskscope}
[ -x "$bin" ] || { echo "scan_spike: no $bin: cargo build --release -p taskscope" >&2; exit 1; }
exec 9>/tmp/taskscope-bench.lock
flock 9
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d /tmp/taskscope-scan-spike-XXXXXX)
redis_port=$(free_port)
http_port=$(free_port)
redis-server --port "$redis_port" --save "" --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
redis_pid=$!
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
python3 - "$results" <<'PY' | redis-cli -p "$redis_port" --pipe >/dev/null
import json, sys, uuid
out = sys.stdout
for i in range(int(sys.argv[1])):
    tid = str(uuid.uuid4())
    v = json.dumps({"status": "SUCCESS", "result": i, "traceback": None, "children": [],
                    "date_done": "2026-12-07T09:00:00.000000+00:00", "task_id": tid})
    k = "celery-task-meta-" + tid
    out.write("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
PY
echo "scan_spike: $(redis-cli -p "$redis_port" dbsize) keys in Redis; starting $bin"
"$bin" serve --redis "redis://127.0.0.1:$redis_port/0" --db "$dir/t.duckdb" \
  --listen "127.0.0.1:$http_port" --brokers celery >"$dir/taskscope.log" 2>&1 &
server=$!
start=$(date +%s.%N)
applied=0
for _ in $(seq 1 1200); do
  applied=$(curl -s -m 2 "127.0.0.1:$http_port/healthz" | jq -r '.store.observations_applied // 0' 2>/dev/null || echo 0)
  [ "${applied:-0}" -ge "$results" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$dir/taskscope.log" >&2; exit 1; }
  sleep 0.5
done
end=$(date +%s.%N)
awk -v a="$applied" -v s="$start" -v e="$end" \
  '/^VmHWM/ {h = $2} /^VmRSS/ {r = $2}
   END {printf "scan_spike: %d results folded in %.1f s; peak RSS %.1f MiB, RSS after %.1f MiB\n", a, e - s, h / 1024, r / 1024}' \
  "/proc/$server/status"
