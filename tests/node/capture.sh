#!/usr/bin/env bash
# Regenerates broker-adapters/tests/fixtures/bullmq/ from real BullMQ workers: starts a private
# redis-server on a free port, runs tests/node/capture.js against it, stops it.
set -euo pipefail
cd "$(dirname "$0")"
[ -d node_modules ] || npm ci --silent --no-audit --no-fund
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --save '' --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" >/dev/null
trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
node capture.js "redis://127.0.0.1:$port" ../../broker-adapters/tests/fixtures/bullmq
echo "fixtures written to broker-adapters/tests/fixtures/bullmq/"
