#!/usr/bin/env bash
# Kills the daemon with SIGKILL at random moments during rotations (a rotation every 2 s),
# restarts it, and checks after each restart that every published key is still published,
# exactly one key is active and no due rotation ran twice. Default 300 kills.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-env.sh
KEYTURN_CRASH_RUNS=${1:-300} cargo test --test it crash:: -- --nocapture
