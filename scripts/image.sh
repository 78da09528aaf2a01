#!/usr/bin/env bash
# Builds the shardgate Docker image with no network access: a statically linked release
# binary (glibc, +crt-static; into target/static so the normal build is not invalidated),
# staged as target/docker/shardgate, then `FROM scratch` + that one file (Dockerfile).
#
#   scripts/image.sh                 # tags shardgate:latest
#   IMAGE=shardgate:dev scripts/image.sh
#
# Needs: cargo (with the crates already fetched: --offline), a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-shardgate:latest}"
TARGET="${SHARDGATE_TARGET:-x86_64-unknown-linux-gnu}"
STATIC_DIR="${SHARDGATE_STATIC_TARGET_DIR:-target/static}"
BIN="$STATIC_DIR/$TARGET/release/shardgate"
STAGE="target/docker/shardgate"

echo "image.sh: building the static binary ($BIN)" >&2
# --offline: no registry is reachable from here; the crates come from the local cache.
# No debug info and symbols stripped at link time: a 9 MiB binary instead of 50 MiB with
# line tables, and a faster build.
RUSTFLAGS='-C target-feature=+crt-static' \
  CARGO_PROFILE_RELEASE_DEBUG=false \
  CARGO_PROFILE_RELEASE_STRIP=symbols \
  CARGO_TARGET_DIR="$STATIC_DIR" \
  cargo build --release --offline --locked --target "$TARGET" --bin shardgate >&2

# A binary that needs a dynamic loader would fail in the scratch image with a bare
# "no such file or directory"; refuse it here with a clear message instead.
if command -v file >/dev/null && ! file "$BIN" | grep -q 'static'; then
  echo "image.sh: $BIN is not statically linked: $(file "$BIN")" >&2
  exit 1
fi

mkdir -p "$(dirname "$STAGE")"
cp -f "$BIN" "$STAGE.tmp"
mv -f "$STAGE.tmp" "$STAGE"

echo "image.sh: building image $IMAGE (FROM scratch)" >&2
# The classic builder: it needs no buildx plugin and, FROM scratch, pulls nothing.
# (Its deprecation notice is shown only when the build fails.)
if ! out=$(DOCKER_BUILDKIT=0 docker build --quiet --tag "$IMAGE" . 2>&1); then
  echo "$out" >&2
  exit 1
fi
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
echo "image.sh: built $IMAGE ($((size / 1024 / 1024)) MiB)" >&2
echo "$IMAGE"
