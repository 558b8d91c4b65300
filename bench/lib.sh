# Shared by the benchmark scripts (sourced, not run).

# Prints the pid of the `taskscope` child of `$1` (a driver such as `taskscope-bench load`) once
# it exists; if the driver exits first, prints its log `$2` to stderr and fails.
server_of() {
  local driver=$1 log=$2 server=""
  for _ in $(seq 1 600); do
    server=$(pgrep -P "$driver" -x taskscope || true)
    [ -n "$server" ] && { echo "$server"; return 0; }
    kill -0 "$driver" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  return 1
}
