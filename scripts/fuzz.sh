#!/usr/bin/env bash
# Runs every cargo-fuzz target for a set time (default 60 s each), growing the corpus in
# fuzz/corpus/<target>/; crashes land in fuzz/artifacts/<target>/. Commit new corpus
# entries that found new coverage: tests/it/fuzz_corpus.rs replays them in the normal
# test suite. Needs cargo-fuzz (installed here if missing). The machine has only a stable
# toolchain; RUSTC_BOOTSTRAP=1 lets it accept the sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/keyturn/target-fuzz}
for target in config sign_request verify_token jwks; do
  echo "==> fuzzing $target for ${SECONDS_EACH}s"
  cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- -max_total_time="$SECONDS_EACH" -max_len=65536
done
