#!/usr/bin/env bash
# Checks systemd/keyturn.service: `systemd-analyze verify` must be clean and
# `systemd-analyze security --offline=yes` must score 1.5 or less.
#
#   scripts/check-systemd.sh [path/to/keyturn]
#
# verify checks that ExecStart= points at an executable, and /usr/bin/keyturn exists only
# once the package is installed. So the unit is verified as a copy (same name, in a temp
# directory) whose /usr/bin/keyturn is replaced by a built binary: the argument, else
# $CARGO_TARGET_DIR (or target/)/{release,debug}/keyturn, building a debug one if neither
# exists. Every other line is verified as shipped.
set -euo pipefail

cd "$(dirname "$0")/.."
unit=systemd/keyturn.service
max_exposure=1.5

bin=${1:-}
if [[ -z $bin ]]; then
    target=${CARGO_TARGET_DIR:-target}
    for candidate in "$target/release/keyturn" "$target/debug/keyturn"; do
        if [[ -x $candidate ]]; then
            bin=$candidate
            break
        fi
    done
fi
if [[ -z $bin ]]; then
    cargo build --quiet --bin keyturn
    bin=${CARGO_TARGET_DIR:-target}/debug/keyturn
fi
bin=$(realpath "$bin")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/bin/keyturn|$bin|g" "$unit" >"$tmp/keyturn.service"

echo "== systemd-analyze verify $unit (ExecStart=$bin)"
# verify exits 0 on some warnings, so any output at all counts as a failure.
if ! out=$(systemd-analyze verify "$tmp/keyturn.service" 2>&1) || [[ -n $out ]]; then
    echo "$out"
    echo "FAIL: systemd-analyze verify is not clean"
    exit 1
fi
echo "clean"

echo "== systemd-analyze security --offline=yes $unit"
report=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1)
echo "$report" | grep -v '^✓' || true
score=$(echo "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
if [[ -z $score ]]; then
    echo "FAIL: no exposure level in the output"
    exit 1
fi
echo "exposure score: $score (must be <= $max_exposure)"
if ! awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
    echo "FAIL: exposure $score is above $max_exposure"
    exit 1
fi
echo "OK"
