#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Rust crates via
# cargo; OpenBao, moto and PyJWT from PyPI into a cached virtualenv; SoftHSM, OpenSC,
# Chromium and promtool with apt-get when missing), then runs lints and every Rust test
# (including those against real OpenBao and moto servers, SoftHSM tokens, PyJWT, the console
# in headless Chromium and promtool on the alert rules).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-env.sh

echo "==> rustfmt"
cargo fmt --all -- --check
echo "==> layers (src/ imports only downward, no cycles)"
python3 scripts/check-layers.py
echo "==> clippy"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
echo "==> cargo test"
cargo test --workspace --all-features
