#!/usr/bin/env bash
# Issue 3's load benchmark: prepare/ingest over HTTP against a vault of N memories.
#
#   bash benches/scripts/load.sh [MEMORIES=100000] [CONNECTIONS=1,8,32] [SECONDS=10]
#
# Builds the release server and the load generator, starts the server on a free loopback port
# with a temp data dir (per-key rate limit off: one key drives all the load), runs
# `loadgen`, and stops the server. Prints p50/p99 and throughput for each phase.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
memories=${1:-100000}
connections=${2:-1,8,32}
seconds=${3:-10}

cargo build --release --locked -p server --bin memoryrouter -p benches --bin loadgen
data=$(mktemp -d)
log="$data.log"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data" "$log"' EXIT

MEMORYROUTER_REQUESTS_PER_MINUTE=0 target/release/memoryrouter serve \
  --listen 127.0.0.1:0 --data-dir "$data" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  grep -q '^listening on ' "$log" && [ -s "$data/admin.key" ] && break
  sleep 0.05
done
base=$(sed -n 's/^listening on //p' "$log" | head -n1)
[ -n "$base" ] || { cat "$log"; echo "server did not start" >&2; exit 1; }

echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
target/release/loadgen --base-url "$base" --admin-key "$(cat "$data/admin.key")" \
  --memories "$memories" --connections "$connections" --seconds "$seconds"
