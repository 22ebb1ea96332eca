#!/usr/bin/env bash
# The long kill -9 campaign (issue: no acknowledged write lost): CYCLES cycles of 16 writers
# mixing ingest, delete-by-id and session clears over 3 vaults, a 32-record memtable so seals
# and merges race the kill, `memoryrouter verify` and a full export check after every cycle.
#
#   bash benches/scripts/crash_campaign.sh [CYCLES]      # default 200
#
# Release build: more writes per cycle. CI runs the same test with 4 cycles.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
MEMORYROUTER_CAMPAIGN_CYCLES="${1:-200}" \
  cargo test --release -p server --test campaign -- --nocapture
