#!/usr/bin/env bash
# Alternated A/B runs of sign-batch (ES256, 256 per request; AB_LOAD=sign for single ES256
# signs at 32 connections) against two or more keyturn binaries started side by side on
# the same config: per run, tokens/s, keyturn's CPU time per token and the machine's idle
# time per token. Alternating cancels most of this VM's
# drift between runs; compare medians, and expect about ±0.2 us per token between copies
# of one binary. docs/benchmarks.md says how to read its figures.
#
#   scripts/bench/ab.sh ROUNDS SECONDS BIN_A BIN_B [BIN...]
#   AB_CONNECTIONS=4 scripts/bench/ab.sh 4 5 old/keyturn new/keyturn
#   AB_LOAD=sign scripts/bench/ab.sh 4 5 old/keyturn new/keyturn
set -euo pipefail
(($# >= 4)) || { sed -n '2,9p' "$0" >&2; exit 2; }
ROUNDS=$1 SECS=$2
shift 2
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || { echo "==> installing wrk (apt-get)" >&2; apt-get install -y wrk >/dev/null; }
source scripts/bench/daemon.sh /bin/true # the config and request bodies; no build
PIDS=() PORTS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for i in $(seq 0 $(($# - 1))); do
  bin=${*:i+1:1}
  api=$(free_port) jwks=$(free_port)
  sed -e "s/127.0.0.1:$PORT/127.0.0.1:$api/" -e "s/127.0.0.1:$JWKS_PORT/127.0.0.1:$jwks/" \
    -e "s#$WORK/data#$WORK/data$i#" "$WORK/keyturn.toml" >"$WORK/k$i.toml"
  RUST_LOG=warn "$bin" serve --config "$WORK/k$i.toml" 2>"$WORK/d$i.log" &
  PIDS+=($!) PORTS+=("$api")
done
for i in "${!PIDS[@]}"; do # ready: the API answers
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:${PORTS[$i]}/" && break
    sleep 0.1
  done
done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
idle() { awk '/^cpu /{print $5 + $6}' /proc/stat; }
HZ=$(getconf CLK_TCK)
case ${AB_LOAD:-sign-batch} in
  sign-batch) BODY=batch.json PER=256 CONNS=${AB_CONNECTIONS:-2} ;;
  sign) BODY=sign.json PER=1 CONNS=${AB_CONNECTIONS:-32} ;;
  *) echo "ab.sh: AB_LOAD is sign-batch or sign" >&2; exit 2 ;;
esac
for r in $(seq 1 "$ROUNDS"); do
  for i in "${!PIDS[@]}"; do
    t0=$(ticks "${PIDS[$i]}") i0=$(idle)
    out=$(BENCH_BODY="$WORK/$BODY" BENCH_AUTH_VALUE="Bearer $TOKEN" \
      wrk -t2 -c"$CONNS" -d"${SECS}s" -s scripts/bench/post.lua \
      "http://127.0.0.1:${PORTS[$i]}/v1/keysets/es256/${AB_LOAD:-sign-batch}" | grep '^RESULT')
    t1=$(ticks "${PIDS[$i]}") i1=$(idle)
    read -r _ reqs dur _ _ errors <<<"$out"
    awk -v r="$r" -v b="${*:i+1:1}" -v n=$((reqs * PER)) -v d="$dur" -v t=$((t1 - t0)) \
      -v id=$((i1 - i0)) -v e="$errors" -v hz="$HZ" 'BEGIN {
        printf "round %d  %-40s %7.0f tokens/s  %5.2f us CPU/token  %4.2f us idle/token  %d errors\n",
          r, b, n / (d / 1e6), t / hz * 1e6 / n, id / hz * 1e6 / n, e }'
  done
done
