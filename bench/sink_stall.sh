#!/usr/bin/env bash
# Memory while the store's sink is stalled (as a slow disk or a long checkpoint stalls it) under
# steady Celery traffic, and after it catches up: `taskscope-bench load` drives Celery's event
# stream into a private Redis and a `taskscope serve`; after 15 s, gdb (non-stop mode) holds the
# sink thread at its next `duckdb_appender_create_ext` for --stall seconds while every other
# thread runs on. Prints RSS every 2 s with the writer's channel (`/healthz` `store.backlog`,
# `store.backlog_observations`), then RSS before / at the end of the stall / peak, and the
# load's own summary (lost, wrong, messages dropped and re-read).
#
#   bench/sink_stall.sh                       # 45 s stall at 3,000 lifecycles/s
#   bench/sink_stall.sh --stall 120 --rate 2000
#   TASKSCOPE_BIN=target/release/taskscope-before bench/sink_stall.sh
#
# Needs gdb (`apt-get install gdb`) and ptrace rights over the server (root, or
# kernel.yama.ptrace_scope=0). Build first: `cargo build --release -p taskscope -p taskscope-bench`.
# Runs under flock /tmp/taskscope-bench.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
stall=45 rate=3000
while [ $# -gt 0 ]; do
  case "$1" in
    --stall) stall=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    *) echo "sink_stall: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v gdb >/dev/null || { echo "sink_stall: needs gdb (apt-get install gdb)" >&2; exit 1; }
bin=${TASKSCOPE_BIN:-target/release/taskscope}
bench=target/release/taskscope-bench
for exe in "$bin" "$bench"; do
  [ -x "$exe" ] || { echo "sink_stall: no $exe: cargo build --release -p taskscope -p taskscope-bench" >&2; exit 1; }
done
exec 9>/tmp/taskscope-bench.lock
flock 9
dir=$(mktemp -d /tmp/taskscope-sink-stall-XXXXXX)
# Traffic for 15 s before, the stall, and 45 s after.
tasks=$((rate * (stall + 60)))
TASKSCOPE_BIN=$bin "$bench" load --no-baseline --broker celery --rate "$rate" --tasks "$tasks" \
  >"$dir/load.log" 2>&1 &
driver=$!
gdb_pid=""
cleanup() {
  [ -n "$gdb_pid" ] && kill "$gdb_pid" 2>/dev/null || true
  kill "$driver" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
server=$(server_of "$driver" "$dir/load.log")
listen=$(tr '\0' '\n' <"/proc/$server/cmdline" | awk 'prev == "--listen" {print; exit} {prev = $0}')
rss() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$server/status" 2>/dev/null || echo 0; }
sample() {
  local h
  h=$(curl -s -m 1 "http://$listen/healthz" |
    jq -r '"channel \(.store.backlog) commands / \(.store.backlog_observations // "-") observations, unflushed \(.store.unflushed)"' 2>/dev/null || true)
  # DuckDB's buffer manager, summed over its tags.
  local engine
  engine=$(curl -s -m 2 "http://$listen/metrics" |
    awk '/^taskscope_store_engine_memory_bytes\{/ {s += $NF} END {printf "%.1f", s / 1048576}' 2>/dev/null || true)
  echo "  $(date +%T)  RSS $(rss) MiB (DuckDB ${engine:--} MiB)  ${h:-(no answer)}"
}
echo "sink_stall: $bin, Celery events at $rate lifecycles/s, sink held for $stall s after 15 s"
for _ in $(seq 1 8); do sample; sleep 2; done
before=$(rss)
# gdb reads its commands from a pipe and keeps handling the other threads' events meanwhile
# (a batch gdb blocked in `shell sleep` freezes every thread that clones or signals).
mkfifo "$dir/gdb.in"
gdb -q -nx -ex 'set non-stop on' -ex 'set pagination off' -ex 'set confirm off' \
  <"$dir/gdb.in" >"$dir/gdb.log" 2>&1 &
gdb_pid=$!
exec 8>"$dir/gdb.in"
echo "attach $server" >&8
sleep 2
echo "break duckdb_appender_create_ext" >&8
echo "continue -a &" >&8
end=$(( $(date +%s) + stall ))
while [ "$(date +%s)" -lt "$end" ]; do sample; sleep 2; done
during=$(rss)
printf 'delete\ndetach\nquit\n' >&8
exec 8>&-
wait "$gdb_pid" || true
gdb_pid=""
kill -CONT "$server" 2>/dev/null || true
grep -q "taskscope-sink\" hit Breakpoint" "$dir/gdb.log" ||
  echo "sink_stall: the sink never reached the breakpoint (see gdb's log below)" >&2
while kill -0 "$server" 2>/dev/null; do sample; sleep 2; done
wait "$driver" || true
echo "RSS before the stall $before MiB, at its end $during MiB"
# The load's table (peak RSS is its `rss MB`), without the examples of wrong tasks.
grep -E "^(broker|celery) |fell behind|notifications waiting" "$dir/load.log" | tail -6
