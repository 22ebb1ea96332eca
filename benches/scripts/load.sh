#!/usr/bin/env bash
# The load benchmark (issues 3 and 15): prepare/ingest over HTTP against a vault of N memories,
# in the phases a user meets.
#
#   bash benches/scripts/load.sh [MEMORIES=100000] [CONNECTIONS=1,8,32] [SECONDS=10]
#
# PROFILE=dev builds and runs the dev profile's binaries instead (optimized too, and far quicker
# to build on a busy machine); SERVER_BIN=path runs that server binary instead of the one built
# (a copy of main's, say, for a before/after in the same hour).
#
# Builds the release server and the load generator, starts the server on a free loopback port
# with a temp data dir (per-key rate limit off: one key drives all the load), and runs
# `loadgen`: it imports N memories in batches of 500, measures prepare while the vault seals
# and compacts the import (and reports when it settles, the server's CPU time and resident
# memory), then prepare and ingest on the settled vault. The server is then restarted on the
# same data and prepare measured again, with the resident memory of a fresh process beside
# the settled one's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
memories=${1:-100000}
connections=${2:-1,8,32}
seconds=${3:-10}

profile=${PROFILE:-release}
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
cargo build --profile "$profile" --locked -p server --bin memoryrouter -p benches --bin loadgen
server_bin=${SERVER_BIN:-target/$dir/memoryrouter}
loadgen=target/$dir/loadgen
data=$(mktemp -d)
log="$data.log"
out="$data.out"
pid=
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data" "$log" "$out"' EXIT

start_server() {
  : >"$log"
  MEMORYROUTER_REQUESTS_PER_MINUTE=0 "$server_bin" serve \
    --listen 127.0.0.1:0 --data-dir "$data" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do
    grep -q '^listening on ' "$log" && [ -s "$data/admin.key" ] && break
    sleep 0.05
  done
  base=$(sed -n 's/^listening on //p' "$log" | head -n1)
  [ -n "$base" ] || { cat "$log"; echo "server did not start" >&2; exit 1; }
}

echo "server: $server_bin"
echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average $(cut -d' ' -f1-3 /proc/loadavg)"
start_server
"$loadgen" --base-url "$base" --admin-key "$(cat "$data/admin.key")" \
  --memories "$memories" --connections "$connections" --seconds "$seconds" \
  --server-pid "$pid" | tee "$out"
key=$(sed -n "s/^seeded vault's key: //p" "$out")

echo "--- restarted on the same data"
kill -TERM "$pid"
wait "$pid" || true
start_server
"$loadgen" --base-url "$base" --admin-key "$(cat "$data/admin.key")" \
  --key "$key" --memories "$memories" --connections 1 --seconds "$seconds" \
  --phases prepare --server-pid "$pid"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
