#!/usr/bin/env bash
# Soak: sustained traffic against one `taskscope serve`, with retention and housekeeping
# shortened so that housekeeping runs during the soak; the server's RSS sampled every few
# seconds; prints the curve (one line a minute), where the memory is at the end
# (/proc/<pid>/smaps_rollup) and whether the RSS grew by less than 5 % over the last half.
#
#   bench/soak.sh                         # 500 lifecycles/s of Celery, 60 minutes
#   bench/soak.sh --minutes 15 --rate 500 --broker celery --retention 10m --every 5
#   bench/soak.sh --minutes 15 --broker demo --rate 200   # `taskscope demo`: all brokers
#   MALLOC_ARENA_MAX=2 bench/soak.sh ...   # any TASKSCOPE_* / MALLOC_* reaches the server
#   # where the heap is, at chosen moments: a build with jemalloc's profiler
#   cargo build --release -p taskscope --features heap-profile   # then copy it to a BIN_DIR
#   MALLOC_CONF=prof:true,lg_prof_interval:32,prof_prefix:/tmp/hp/jeprof BIN_DIR=... bench/soak.sh
#   kill -USR2 <server pid>   # one more profile now; read them with jemalloc's jeprof
#   # (target/release/build/tikv-jemalloc-sys-*/out/build/bin/jeprof --text --base=A bin B)
#
# Traffic: `taskscope-bench load --no-baseline --broker <b>` (one broker, steady rate, 0 s
# tasks, --tasks = rate x duration), or with `--broker demo` `taskscope demo --duration`
# (every broker, a rate that swells and ebbs, runtimes 50 ms - 3 s). The server is the child
# `taskscope serve` of either. Housekeeping: every job every `--housekeeping` (cron, default
# every 2 minutes), retention `--retention`. Raw rows are deleted once their hour is rolled
# up (15 minutes after it ends), so with the defaults retention deletes from ~75 minutes on.
# (Before 2026-12-07's fourth round they waited for their whole day's roll-up, after 00:15 UTC.)
#
# Samples go to $OUT (default /tmp/taskscope-soak.csv: seconds, rss_kib, anon_kib, file_kib,
# and from the server's /healthz transitions_written and the store writer's backlog, which tell
# whether ingest kept up: memory that grows with a backlog is not memory that grows with time).
# Build first: `cargo build --release -p taskscope -p taskscope-bench`. Runs under
# flock /tmp/taskscope-bench.lock (one benchmark at a time on the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
rate=500 minutes=60 broker=celery retention=10m every=5 housekeeping='0 */2 * * * *'
out=${OUT:-/tmp/taskscope-soak.csv}
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --broker) broker=$2; shift 2 ;;
    --retention) retention=$2; shift 2 ;;
    --every) every=$2; shift 2 ;;
    --housekeeping) housekeeping=$2; shift 2 ;;
    *) echo "soak: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=${BIN_DIR:-target/release}
for exe in "$bin/taskscope" "$bin/taskscope-bench"; do
  [ -x "$exe" ] || { echo "soak: no $exe: cargo build --release -p taskscope -p taskscope-bench" >&2; exit 1; }
done
exec 9>/tmp/taskscope-bench.lock
flock 9
log=$(mktemp /tmp/taskscope-soak-XXXXXX.log)
export TASKSCOPE_RETENTION=$retention TASKSCOPE_HOUSEKEEPING=$housekeeping
if [ "$broker" = demo ]; then
  dbdir=$(mktemp -d /tmp/taskscope-soak-db-XXXXXX)
  "$bin/taskscope" demo --listen 127.0.0.1:17979 --rate "$rate" --duration "${minutes}m" \
    --db "$dbdir/soak.duckdb" >"$log" 2>&1 &
else
  dbdir=""
  "$bin/taskscope-bench" load --no-baseline --broker "$broker" --rate "$rate" \
    --tasks $((rate * 60 * minutes)) >"$log" 2>&1 &
fi
driver=$!
cleanup() {
  kill "$driver" 2>/dev/null || true
  wait "$driver" 2>/dev/null || true
  [ -n "$dbdir" ] && rm -rf "$dbdir"
  true
}
trap cleanup EXIT
# The driver's child `taskscope serve` (not any other taskscope on the machine).
server=$(server_of "$driver" "$log") || true
[ -n "$server" ] || { echo "soak: no taskscope serve appeared" >&2; exit 1; }
echo "soak: ${minutes} min, broker $broker at $rate/s, retention $retention, housekeeping '$housekeeping', server pid $server, samples in $out"
listen=$(tr '\0' '\n' <"/proc/$server/cmdline" | awk 'prev == "--listen" {print; exit} {prev = $0}')
health() {
  curl -s -m 2 "http://$listen/healthz" |
    jq -r '[.store.transitions_written // "", .store.backlog // ""] | @csv' 2>/dev/null || echo ","
}
# DuckDB's buffer manager (cached blocks, hash tables...), summed over its tags, in KiB.
engine() {
  curl -s -m 5 "http://$listen/metrics" |
    awk '/^taskscope_store_engine_memory_bytes\{/ {s += $NF} END {printf "%d", s / 1024}' 2>/dev/null || true
}
echo "seconds,rss_kib,anon_kib,file_kib,transitions,backlog,duckdb_kib" >"$out"
start=$(date +%s)
last_rollup=""
while kill -0 "$server" 2>/dev/null; do
  now=$(( $(date +%s) - start ))
  [ "$now" -gt $((minutes * 60)) ] && break
  line=$(awk '/^Rss:/ {r=$2} /^Anonymous:/ {a=$2} END {if (r) print r "," a "," r - a}' \
    "/proc/$server/smaps_rollup" 2>/dev/null || true)
  [ -n "$line" ] && echo "$now,$line,$(health),$(engine)" >>"$out"
  last_rollup=$(cat "/proc/$server/smaps_rollup" 2>/dev/null || echo "$last_rollup")
  sleep "$every"
done
# The server's own log (its driver deletes it at exit): warnings, lags, housekeeping runs.
cp "/proc/$server/fd/2" "$out.server.log" 2>/dev/null &&
  echo "soak: the server's log is in $out.server.log"
echo "--- smaps_rollup of the server at the end of the traffic"
echo "$last_rollup" | grep -E '^(Rss|Pss_Anon|Pss_File|Anonymous|Shared|Private)' || true
if [ "$broker" = demo ]; then
  kill -INT "$driver" 2>/dev/null || true
fi
wait "$driver" || true
trap - EXIT
cleanup
echo "--- the driver's last lines ($log)"
tail -n 20 "$log"
awk -F, '
  NR > 1 && $2 > 0 { t[n] = $1; r[n] = $2; a[n] = $3; w[n] = $5; b[n] = $6; d[n] = $7; n++ }
  END {
    if (n < 4) { print "soak: too few samples"; exit 1 }
    for (i = 0; i < n; i++)
      if (i == 0 || int(t[i] / 60) != int(t[i - 1] / 60))
        printf "  %5d s  RSS %7.1f MiB  (anonymous %7.1f MiB, DuckDB buffers %6.1f MiB)  transitions %9s  writer backlog %6s\n", t[i], r[i] / 1024, a[i] / 1024, d[i] / 1024, w[i], b[i]
    h = int(n / 2); peak = 0
    for (i = 0; i < n; i++) if (r[i] > peak) peak = r[i]
    growth = (r[n - 1] - r[h]) * 100 / r[h]
    printf "soak: %d samples; RSS at half-time (%d s) %.1f MiB, at the end (%d s) %.1f MiB: last half %+.1f %%, peak %.1f MiB: %s\n",
      n, t[h], r[h] / 1024, t[n - 1], r[n - 1] / 1024, growth, peak / 1024,
      (growth < 5 ? "flat (< 5 %)" : "GROWS (>= 5 %)")
  }' "$out"
