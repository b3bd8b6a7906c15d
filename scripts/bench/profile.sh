#!/usr/bin/env bash
# Where a token's CPU time goes, natively: perf samples keyturn (file backend) under wrk
# load, groups the samples by what keyturn was doing, and prints each group's time per
# token beside the raw primitive's time per signature measured on the same CPUs.
# docs/benchmarks.md explains the split.
#
#   scripts/bench/profile.sh [KEYTURN_BIN]                  # default: a fresh --release build
#   PROFILE_LOAD=sign-rs256 scripts/bench/profile.sh
#
# Settings (environment): PROFILE_LOAD: sign-batch (ES256, 256 per request, 2 connections;
# the default), sign-es256 or sign-rs256 (one token per request, 32 connections, as
# scripts/bench.sh); PROFILE_SECONDS (load time, 8; perf samples the middle of it);
# PROFILE_CONNECTIONS; PROFILE_KEEP=DIR keeps perf.data there.
# Installs perf and wrk with apt-get when missing, like scripts/bench.sh; perf must be
# allowed to sample the daemon (root, or kernel.perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v perf >/dev/null || ! command -v wrk >/dev/null; then
  echo "==> installing linux-perf and wrk (apt-get)" >&2
  if ! apt-get install -y linux-perf wrk >/dev/null 2>&1; then
    apt-get update >/dev/null
    apt-get install -y linux-perf wrk >/dev/null
  fi
fi
SECONDS_LOAD=${PROFILE_SECONDS:-8}
LOAD=${PROFILE_LOAD:-sign-batch}
case $LOAD in
  sign-batch) ALG=ES256 KEYSET=es256 ROUTE=sign-batch BODY=batch.json PER=256 TARGET=0.8 CONNS=2 ;;
  sign-es256) ALG=ES256 KEYSET=es256 ROUTE=sign BODY=sign.json PER=1 TARGET= CONNS=32 ;;
  sign-rs256) ALG=RS256 KEYSET=rs256 ROUTE=sign BODY=sign.json PER=1 TARGET=0.9 CONNS=32 ;;
  *) echo "profile.sh: PROFILE_LOAD is sign-batch, sign-es256 or sign-rs256" >&2; exit 1 ;;
esac
CONNS=${PROFILE_CONNECTIONS:-$CONNS}
source scripts/bench/daemon.sh
source scripts/test-env.sh
# An RS256-2048 key set beside the ES256 one.
sed -i 's/^keysets = \["es256"\]$/keysets = ["es256", "rs256"]/' "$WORK/keyturn.toml"
printf '\n[[keyset]]\nname = "rs256"\nissuer = "https://issuer.test/rs256"\nalgorithm = "RS256"\nrsa_bits = 2048\nrotate_every = "24h"\nmax_token_ttl = "10m"\n' \
  >>"$WORK/keyturn.toml"

echo "==> raw primitive: aws-lc-rs $ALG, 2 threads (3 s)" >&2
cargo bench --quiet --bench primitive --no-run 2>/dev/null
PRIM=$(cargo bench --quiet --bench primitive -- --secs 3 --threads 2 "$ALG" 2>/dev/null |
  awk '$1 == "PRIMITIVE" {print $4}')

RUST_LOG=warn,keyturn=info "$BIN" serve --config "$WORK/keyturn.toml" 2>"$WORK/daemon.log" &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT # a failed step leaves no daemon
for _ in $(seq 1 300); do grep -q "keyturn ready" "$WORK/daemon.log" && break; sleep 0.1; done
grep -q "keyturn ready" "$WORK/daemon.log" || { tail "$WORK/daemon.log" >&2; exit 1; }
URL=http://127.0.0.1:$PORT/v1/keysets/$KEYSET/$ROUTE
load() { # seconds
  BENCH_BODY="$WORK/$BODY" BENCH_AUTH_VALUE="Bearer $TOKEN" \
    wrk -t2 -c"$CONNS" -d"$1s" -s scripts/bench/post.lua "$URL"
}
load 2 >/dev/null # warm-up
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
# The rate and the CPU time per token from a run without perf (sampling with call graphs
# slows the daemon), then the samples from a second run: they give each part's share.
echo "==> $LOAD load (${SECONDS_LOAD}s, $CONNS connections x $PER tokens)" >&2
T0=$(ticks)
load "$SECONDS_LOAD" >"$WORK/wrk.out"
T1=$(ticks)
read -r _ REQS DUR _ _ ERRORS < <(grep '^RESULT' "$WORK/wrk.out")
((ERRORS == 0)) || { cat "$WORK/wrk.out" >&2; exit 1; }
echo "==> again, perf sampling the middle of it" >&2
load "$SECONDS_LOAD" >/dev/null &
LOADER=$!
sleep 1
perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$PID" -o "$WORK/perf.data" \
  -- sleep $((SECONDS_LOAD - 2)) 2>"$WORK/perf.err" || { cat "$WORK/perf.err" >&2; exit 1; }
wait "$LOADER"
kill -TERM "$PID"
wait "$PID" || true
if [[ -n ${PROFILE_KEEP:-} ]]; then mkdir -p "$PROFILE_KEEP" && cp "$WORK/perf.data" "$PROFILE_KEEP/"; fi

TOKENS=$((REQS * PER))
perf script -i "$WORK/perf.data" 2>/dev/null |
  python3 scripts/bench/perf-groups.py --what "$LOAD ($CONNS connections x $PER tokens)" \
    ${TARGET:+--target "$TARGET"} \
    --tokens-per-s "$(awk -v n="$TOKENS" -v d="$DUR" 'BEGIN {print n / (d / 1e6)}')" \
    --cpu-us-per-token "$(awk -v t=$((T1 - T0)) -v hz="$(getconf CLK_TCK)" -v n="$TOKENS" 'BEGIN {print t / hz * 1e6 / n}')" \
    --primitive-per-s "$PRIM" --cpus "$(nproc)"
