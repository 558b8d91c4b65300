#!/usr/bin/env bash
# Installs everything taskscope needs to build and test on a fresh Debian machine:
#   - redis-server (Debian package) for the integration tests,
#   - make (Debian package) for jemalloc, the binary's allocator, built from C by its crate,
#   - Sidekiq 6.4 and its Redis client (Debian packages ruby-sidekiq, ruby-redis,
#     ruby-redis-namespace) for the Sidekiq tests' workers (tests/ruby),
#   - with TASKSCOPE_SETUP_BROWSER=1 (as .ci/run sets), Debian's chromium for tests/browser.rs,
#   - the official libduckdb.so 1.5.6 (from the npm package that ships it) into .deps/duckdb,
#     so the duckdb crate links in a minute instead of compiling DuckDB for 25,
#   - a Python venv (.venv) with the pinned worker libraries of tests/python/requirements.txt,
#   - Node (Debian's nodejs/npm, only when `node` is missing) and the pinned BullMQ of
#     tests/node/package-lock.json (`npm ci`, when node_modules is missing or the lock changed).
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

want_apt=()
command -v redis-server >/dev/null 2>&1 || want_apt+=(redis-server)
command -v make >/dev/null 2>&1 || want_apt+=(make)
command -v node >/dev/null 2>&1 || want_apt+=(nodejs npm)
command -v sidekiq >/dev/null 2>&1 || want_apt+=(ruby-sidekiq ruby-redis)
ruby -e 'require "redis/namespace"' >/dev/null 2>&1 || want_apt+=(ruby-redis-namespace)
if [ "${TASKSCOPE_SETUP_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  want_apt+=(chromium)
fi
if [ ${#want_apt[@]} -gt 0 ]; then
  echo "setup: installing ${want_apt[*]} from Debian packages"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${want_apt[@]}" >/dev/null
fi

DUCKDB_NPM_VERSION=1.5.6-r.1   # must match the duckdb crate (=1.10506.1 <-> engine 1.5.6)
if [ ! -f .deps/duckdb/libduckdb.so ] || [ "$(cat .deps/duckdb/VERSION 2>/dev/null)" != "$DUCKDB_NPM_VERSION" ]; then
  echo "setup: fetching libduckdb.so $DUCKDB_NPM_VERSION"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@duckdb/node-bindings-linux-x64@$DUCKDB_NPM_VERSION" >/dev/null && tar xzf ./*.tgz)
  mkdir -p .deps/duckdb
  cp "$tmp/package/libduckdb.so" .deps/duckdb/
  echo "$DUCKDB_NPM_VERSION" > .deps/duckdb/VERSION
  rm -rf "$tmp"
fi

# requirements-nodeps.txt: pinned libraries whose declared dependencies contradict ours (arq).
wanted_requirements() { cat tests/python/requirements.txt tests/python/requirements-nodeps.txt; }
if [ ! -x .venv/bin/python ] || ! wanted_requirements | cmp -s - .venv/.requirements 2>/dev/null; then
  echo "setup: creating .venv with tests/python/requirements*.txt"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r tests/python/requirements.txt
  .venv/bin/pip install -q --no-deps -r tests/python/requirements-nodeps.txt
  wanted_requirements > .venv/.requirements
fi
# tests/node: the real BullMQ workers of tests/bullmq.rs, pinned by the committed lock file.
if ! cmp -s tests/node/package-lock.json tests/node/node_modules/.taskscope-lock 2>/dev/null; then
  echo "setup: npm ci in tests/node (bullmq)"
  (cd tests/node && npm ci --silent --no-audit --no-fund && cp package-lock.json node_modules/.taskscope-lock)
fi
echo "setup: done (redis-server $(redis-server --version | awk '{print $3}'), libduckdb $(cat .deps/duckdb/VERSION), $(.venv/bin/python --version), node $(node --version))"
