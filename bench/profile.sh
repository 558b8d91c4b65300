#!/usr/bin/env bash
# Where `taskscope serve` spends its CPU under a steady load: `perf record` of the server child of
# `taskscope-bench load`, then the share of each thread and the top functions overall and per
# thread.
#
#   bench/profile.sh                                   # Celery events at 3,150 lifecycles/s
#   bench/profile.sh --broker dramatiq --rate 3600 --seconds 20
#   TASKSCOPE_BIN=target/release/taskscope-before bench/profile.sh   # profile another build
#
# Uses the `cpu-clock` software event (a VM has no PMU: the default `cycles` event gives a few
# samples) at 1,999 Hz. Symbols of libduckdb.so are its exported C++ names; call graphs through
# it are unreliable (no frame pointers), so the report is flat (self time). The recording stays
# in $OUT (default /tmp/taskscope-profile.data) for `perf report -i`. Runs under
# flock /tmp/taskscope-bench.lock. Build first: `cargo build --release -p taskscope -p taskscope-bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
broker=celery-events rate=3150 seconds=15 tasks=""
out=${OUT:-/tmp/taskscope-profile.data}
while [ $# -gt 0 ]; do
  case "$1" in
    --broker) broker=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --tasks) tasks=$2; shift 2 ;;
    *) echo "profile: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v perf >/dev/null || { echo "profile: needs perf (apt-get install linux-perf)" >&2; exit 1; }
bench=target/release/taskscope-bench
[ -x "$bench" ] || { echo "profile: no $bench: cargo build --release -p taskscope -p taskscope-bench" >&2; exit 1; }
# Enough lifecycles to outlast the recording, with a margin for the start.
tasks=${tasks:-$((rate * (seconds + 10)))}
exec 9>/tmp/taskscope-bench.lock
flock 9
log=$(mktemp /tmp/taskscope-profile-XXXXXX.log)
"$bench" load --no-baseline --broker "$broker" --rate "$rate" --tasks "$tasks" >"$log" 2>&1 &
driver=$!
trap 'kill "$driver" 2>/dev/null || true; wait "$driver" 2>/dev/null || true' EXIT
server=$(server_of "$driver" "$log") || true
[ -n "$server" ] || { echo "profile: no taskscope serve appeared" >&2; exit 1; }
# The server starts before the traffic: let the traffic begin.
sleep 3
echo "profile: $broker at $rate/s, server pid $server, recording ${seconds} s into $out"
perf record -q -e cpu-clock -F 1999 -p "$server" -o "$out" -- sleep "$seconds" 2>/dev/null
wait "$driver" || true
trap - EXIT
echo "--- the load's report ($log)"
grep -v -E "INFO|WARN" "$log" | tail -n 4 || true
report() { perf report -i "$out" --no-children -g none --percent-limit "$1" "${@:2}" 2>/dev/null | grep -v '^#' | grep '%' || true; }
echo "--- CPU by thread (share of the server's samples)"
report 0.5 --sort comm
echo "--- top functions, all threads"
report 0.8 --sort comm,dso,sym | head -30
# Thread names as the kernel keeps them (15 characters).
for thread in taskscope-inges taskscope-fold taskscope-sink taskscope-prefe tokio-rt-worker; do
  echo "--- top functions of $thread (share of all samples)"
  report 0.3 --comm "$thread" --sort dso,sym | head -12
done
