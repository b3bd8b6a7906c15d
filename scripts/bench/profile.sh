#!/usr/bin/env bash
# Where a sign-batch token's CPU time goes, natively: perf samples keyturn (file backend,
# ES256) under sign-batch load, groups them by what keyturn was doing, and prints each
# group's time per token beside the raw primitive's time per signature measured on the
# same CPUs. BENCHMARKS.md reads the sign-batch target from it.
#
#   scripts/bench/profile.sh [KEYTURN_BIN]      # default: a fresh --release build
#
# Settings (environment): PROFILE_SECONDS (load time, 8; perf samples the middle of it),
# PROFILE_CONNECTIONS (2, as scripts/bench.sh), PROFILE_KEEP=DIR keeps perf.data there.
# Needs perf (apt-get install linux-perf) allowed to sample the daemon (root, or
# kernel.perf_event_paranoid <= 1), wrk and curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in perf wrk curl; do
  command -v "$tool" >/dev/null || {
    echo "profile.sh: $tool is missing (apt-get install linux-perf wrk curl)" >&2
    exit 1
  }
done
SECONDS_LOAD=${PROFILE_SECONDS:-8}
CONNS=${PROFILE_CONNECTIONS:-2}
source scripts/bench/daemon.sh
source scripts/test-env.sh

echo "==> raw primitive: aws-lc-rs ES256, 2 threads (3 s)" >&2
cargo bench --quiet --bench primitive --no-run 2>/dev/null
PRIM=$(cargo bench --quiet --bench primitive -- --secs 3 --threads 2 ES256 2>/dev/null |
  awk '$1 == "PRIMITIVE" {print $4}')

RUST_LOG=warn,keyturn=info "$BIN" serve --config "$WORK/keyturn.toml" 2>"$WORK/daemon.log" &
PID=$!
for _ in $(seq 1 300); do grep -q "keyturn ready" "$WORK/daemon.log" && break; sleep 0.1; done
grep -q "keyturn ready" "$WORK/daemon.log" || { tail "$WORK/daemon.log" >&2; exit 1; }
URL=http://127.0.0.1:$PORT/v1/keysets/es256/sign-batch
load() { # seconds
  BENCH_BODY="$WORK/batch.json" BENCH_AUTH_VALUE="Bearer $TOKEN" \
    wrk -t"$CONNS" -c"$CONNS" -d"$1s" -s scripts/bench/post.lua "$URL"
}
load 2 >/dev/null # warm-up
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
echo "==> sign-batch load (${SECONDS_LOAD}s, $CONNS connections x 256 tokens), perf in the middle" >&2
T0=$(ticks)
load "$SECONDS_LOAD" >"$WORK/wrk.out" &
LOAD=$!
sleep 1
perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$PID" -o "$WORK/perf.data" \
  -- sleep $((SECONDS_LOAD - 2)) 2>"$WORK/perf.err" || { cat "$WORK/perf.err" >&2; exit 1; }
wait "$LOAD"
T1=$(ticks)
kill -TERM "$PID"
wait "$PID" || true
read -r _ REQS DUR _ _ ERRORS < <(grep '^RESULT' "$WORK/wrk.out")
((ERRORS == 0)) || { cat "$WORK/wrk.out" >&2; exit 1; }
if [[ -n ${PROFILE_KEEP:-} ]]; then mkdir -p "$PROFILE_KEEP" && cp "$WORK/perf.data" "$PROFILE_KEEP/"; fi

TOKENS=$((REQS * 256))
perf script -i "$WORK/perf.data" 2>/dev/null |
  python3 scripts/bench/perf-groups.py \
    --tokens-per-s "$(awk -v n="$TOKENS" -v d="$DUR" 'BEGIN {print n / (d / 1e6)}')" \
    --cpu-us-per-token "$(awk -v t=$((T1 - T0)) -v hz="$(getconf CLK_TCK)" -v n="$TOKENS" 'BEGIN {print t / hz * 1e6 / n}')" \
    --primitive-per-s "$PRIM" --cpus "$(nproc)"
