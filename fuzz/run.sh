#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (needs cargo-fuzz: `cargo install cargo-fuzz`).
# Seeds come from fuzz/seeds/<target>; new corpus entries go to fuzz/corpus/<target> (not
# committed). Exit 1 on the first crash (artifact in fuzz/artifacts).
#
# By default the targets build on the stable toolchain without a sanitizer (`-s none`): the
# code under test has no `unsafe`, so what a fuzzer can find is a panic or an abort, which
# libFuzzer catches either way. FUZZ_SANITIZER=address (with FUZZ_TOOLCHAIN=+nightly) adds ASan.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-60}"
for target in frame_decoder handshake inflater config router proxy_h1; do
  mkdir -p "fuzz/corpus/$target"
  echo "== $target: ${SECS}s"
  cargo ${FUZZ_TOOLCHAIN:-} fuzz run -s "${FUZZ_SANITIZER:-none}" -O "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$SECS" -max_len=4096 -rss_limit_mb=1024 2>&1 | grep -E "^(#[0-9]+ +DONE|Done|==[0-9]+==|SUMMARY|.*panicked)" || true
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "fuzz: $target crashed (see fuzz/artifacts/$target)"; exit 1; }
done
echo "fuzz: no crash"
