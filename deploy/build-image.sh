#!/usr/bin/env bash
# Builds the `memoryrouter` container image from deploy/Dockerfile.
#
#   bash deploy/build-image.sh [STATIC_BINARY] [TAG]
#
# STATIC_BINARY defaults to the one .ci/build-static writes (built first when missing);
# TAG defaults to memoryrouter:latest. Uses docker when its daemon answers, else podman,
# else buildah. The build context is a temporary directory holding only the binary, an
# /etc/passwd line for the unprivileged user (65532) and the empty /data directory (0700;
# staged as volume/data because COPY of a directory copies its contents, not its mode).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="${1:-$root/target/x86_64-unknown-linux-gnu/release/memoryrouter}"
tag="${2:-memoryrouter:latest}"

if [ ! -x "$binary" ]; then
  bash "$root/.ci/build-static"
fi
# FROM scratch has no dynamic loader: refuse a dynamically linked binary up front.
if command -v file >/dev/null && ! file -L "$binary" | grep -q "static"; then
  echo "$binary is not statically linked; build it with .ci/build-static" >&2
  exit 1
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
# Debug line tables make backtraces readable but triple the image; the image ships without.
if command -v strip >/dev/null; then
  strip -o "$context/memoryrouter" "$binary"
else
  cp "$binary" "$context/memoryrouter"
fi
mkdir -p "$context/volume" && mkdir -m 0700 "$context/volume/data"
printf 'memoryrouter:x:65532:65532:MemoryRouter:/data:/sbin/nologin\n' > "$context/passwd"

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  docker build -f "$root/deploy/Dockerfile" -t "$tag" "$context"
elif command -v podman >/dev/null; then
  podman build -f "$root/deploy/Dockerfile" -t "$tag" "$context"
elif command -v buildah >/dev/null; then
  buildah build --format docker -f "$root/deploy/Dockerfile" -t "$tag" "$context"
else
  echo "no image builder: install docker, podman or buildah" >&2
  exit 1
fi
echo "built $tag"
