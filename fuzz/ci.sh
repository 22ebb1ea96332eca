#!/usr/bin/env bash
# CI slice of the fuzz targets: builds every target, then runs each for a short, bounded time
# from its seed corpus (seeds.py) and fails on the first crash, overflow, timeout or OOM.
#
#   bash fuzz/ci.sh                      # FUZZ_SECONDS=20 per target, FUZZ_JOBS=2 at a time
#
# Stable toolchain: no nightly is needed. cargo-fuzz builds on stable with `--sanitizer none`
# (libFuzzer's coverage instrumentation uses only stable `-C` flags; the sanitizers need `-Z`).
# What that keeps: every panic, debug assertion and arithmetic overflow (`-a`), Rust's bounds
# checks, hangs (`-timeout`) and memory blow-ups (`-rss_limit_mb`). What it loses: ASan on the
# dependencies' unsafe code (ours has none, `unsafe_code = "deny"`); run
# `cargo +nightly fuzz run TARGET` by hand for that (README.md).
#
# A failing input is saved as artifacts/<target>/crash-… (or timeout-…, oom-…) and its log
# printed; reproduce with `cargo fuzz run -O -a -s none TARGET artifacts/TARGET/crash-…`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
start=$(date +%s)
seconds=${FUZZ_SECONDS:-20}
jobs=${FUZZ_JOBS:-2}
flags=(-O -a -s none)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

echo "==> seed corpora (seeds.py)"
python3 seeds.py

echo "==> cargo fuzz build ${flags[*]}"
cargo fuzz build "${flags[@]}"
bin_dir="target/$(rustc -vV | sed -n 's/^host: //p')/release"

mapfile -t targets < <(cargo fuzz list)
logs=$(mktemp -d)
# The targets write their logs and vaults under $TMPDIR and fsync them: on tmpfs the WAL
# targets run about five times as many inputs in the same time.
scratch_root=${TMPDIR:-/tmp}
if [ -d /dev/shm ] && [ -w /dev/shm ]; then scratch_root=/dev/shm; fi
scratch=$(mktemp -d -p "$scratch_root" fuzz-ci.XXXXXX)
trap 'rm -rf "$logs" "$scratch"' EXIT

# Runs one target; its libFuzzer output goes to $logs/<target>.log.
run() {
  local target=$1
  mkdir -p "corpus/$target" "artifacts/$target"
  # New interesting inputs are added to corpus/<target> (git-ignored), so a local re-run
  # starts where the last one stopped; CI starts from the seeds.
  TMPDIR="$scratch" "$bin_dir/$target" "corpus/$target" \
    -artifact_prefix="artifacts/$target/" \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$logs/$target.log" 2>&1
}

echo "==> fuzzing ${#targets[@]} targets for ${seconds}s each, ${jobs} at a time"
declare -A pids=()
failed=()
finish() {
  local target=$1
  if wait "${pids[$target]}"; then
    printf '    %-14s ok (%s runs)\n' "$target" \
      "$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target.log")"
  else
    failed+=("$target")
    printf '    %-14s FAILED\n' "$target"
  fi
  unset "pids[$target]"
}
for target in "${targets[@]}"; do
  while [ "${#pids[@]}" -ge "$jobs" ]; do
    # Wait for the oldest running target (they all run for the same time).
    oldest=""
    for t in "${targets[@]}"; do
      if [ -n "${pids[$t]:-}" ]; then oldest=$t; break; fi
    done
    finish "$oldest"
  done
  run "$target" &
  pids[$target]=$!
done
for target in "${targets[@]}"; do
  if [ -n "${pids[$target]:-}" ]; then finish "$target"; fi
done

for target in "${failed[@]}"; do
  printf '\n==> %s failed; the end of its log:\n' "$target"
  tail -n 60 "$logs/$target.log"
  ls -1 "artifacts/$target/" 2>/dev/null | sed 's/^/    artifact: /'
done
echo "==> fuzz slice finished in $(($(date +%s) - start)) s"
[ "${#failed[@]}" -eq 0 ]
