#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz layout, libFuzzer) for a bounded time each and
# keeps what they find as regression cases.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh json_bodies node_http
#   scripts/fuzz.sh --replay        # replay the saved crash inputs through the targets
#
# Targets (fuzz/fuzz_targets, checks in fuzz/checks):
#   frame_codec     the frame decoder on an arbitrary stream, each frame as request and answer
#   request_frame   every binary request (protocol::wire::decode::<RequestFrame>), round trip
#   response_frame  every binary answer (ResponseFrame), round trip
#   handshake       Hello / HelloReply, both sides of the handshake, with and without a secret
#   json_bodies     object_body, rows_from_json, row_from_json, key_field, schema_from_json,
#                   shard_specs_from_json; accepted rows round-trip through JSON
#   node_http       a node's HTTP request path as a function (Node::handle(Forward)): never
#                   a 5xx, every error in the contract's JSON shape
#   stored_records  node WAL records (node::Change), manager log events, control frames
#
# Toolchain: cargo-fuzz passes nightly-only `-Z` flags to rustc. This machine has only the
# stable toolchain (none can be fetched), so the script sets RUSTC_BOOTSTRAP=1, which makes
# stable rustc accept them, and builds without a sanitizer by default (`-s none`; the code
# under test has no `unsafe`). libFuzzer itself (libfuzzer-sys) builds with the system C++
# compiler. FUZZ_SANITIZER=address asks for ASan where the toolchain ships its runtime.
#
# Crashes: libFuzzer writes each failing input to fuzz/artifacts/<target>/. They are copied
# to protocol/tests/fuzz_regressions/<target>/, where CI replays them: the protocol-level
# targets in protocol/tests/fuzz_regressions.rs, node_http and stored_records in
# tests/bad_input.rs (they need the node and lb crates). A new file there fails CI until
# the bug is fixed, which is the point. Seeds: `cargo test -p shardgate-protocol --test
# fuzz_regressions -- --exact write_seeds` writes valid encodings into fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH="${FUZZ_SECONDS:-60}"
SANITIZER="${FUZZ_SANITIZER:-none}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
command -v c++ >/dev/null || { apt-get update -qq && apt-get install -y -qq g++; }

ALL=(frame_codec request_frame response_frame handshake json_bodies node_http stored_records)
REPLAY=0
TARGETS=()
for a in "$@"; do
  case "$a" in
    --replay) REPLAY=1 ;;
    *) TARGETS+=("$a") ;;
  esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

REG="$ROOT/protocol/tests/fuzz_regressions"
cd fuzz
cargo fuzz build -s "$SANITIZER" -O -a

if [ "$REPLAY" = 1 ]; then
  for t in "${TARGETS[@]}"; do
    [ -d "$REG/$t" ] || continue
    files=("$REG/$t"/*)
    [ -e "${files[0]}" ] || continue
    echo "== replay $t: ${#files[@]} inputs"
    cargo fuzz run -s "$SANITIZER" -O -a "$t" "${files[@]}"
  done
  exit 0
fi

# Seeds: valid encodings and bodies, so the fuzzers start past the first byte.
if [ ! -d corpus/request_frame ]; then
  (cd "$ROOT" && SHARDGATE_FUZZ_SEEDS="$ROOT/fuzz/corpus" \
    cargo test -q -p shardgate-protocol --test fuzz_regressions -- --exact write_seeds >/dev/null) \
    || echo "seeds not written (the protocol tests do not build?); starting from empty corpora"
fi

found=0
summary=()
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  dict=()
  case "$t" in json_bodies|node_http) dict=(-dict=dicts/json.dict) ;; esac
  before=$(ls "artifacts/$t" | wc -l)
  echo "== fuzz $t for ${SECONDS_EACH}s"
  log="artifacts/$t.log"
  set +e
  cargo fuzz run -s "$SANITIZER" -O -a "$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 "${dict[@]}" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  new=$(( $(ls "artifacts/$t" | wc -l) - before ))
  summary+=("$t: ${runs} runs, coverage ${cov}, corpus $(ls "corpus/$t" | wc -l), exit $rc, new crash inputs $new")
  if [ "$new" -gt 0 ] || [ "$rc" -ne 0 ]; then
    mkdir -p "$REG/$t"
    for f in "artifacts/$t"/*; do
      [ -f "$f" ] || continue
      cp -n "$f" "$REG/$t/" && found=$((found + 1))
    done
    echo "!! $t failed (exit $rc); see fuzz/$log; inputs copied to protocol/tests/fuzz_regressions/$t/"
    grep -m3 -E "panicked|ERROR|SUMMARY" "$log" || true
  fi
done
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "$found" -gt 0 ]; then
  echo "$found crash inputs saved as regression cases; fix them, then run the tests"
  exit 1
fi
