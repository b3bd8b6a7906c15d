#!/usr/bin/env bash
# Instructions per request, counted by callgrind: repeatable whatever else the machine is
# doing, unlike requests/s on this VM (the same binary moved by 20% between runs). Use it to
# compare two builds' own overhead:
#
#   scripts/bench/instructions.sh [KEYTURN_BIN]      # default: a fresh --release build
#
# Runs keyturn (file backend, one ES256 key set) under `valgrind --tool=callgrind`, sends
# 40N then 80N JWKS GETs, 20N then 40N sign requests and N then 2N sign-batch requests (256
# tokens each; N from INSTRUCTIONS_N, 10), and prints the differences per request and per
# token (start-up and
# shutdown cancel out). Under valgrind aws-lc takes its portable code paths (no AVX-512,
# no RDRAND), so the signature's own count is higher than natively; our code is not.
# INSTRUCTIONS_PROFILE=DIR keeps the callgrind profile of each run there, e.g. for
# `callgrind_annotate --inclusive=yes DIR/sign-batch.20.out | head -60`.
# Needs valgrind (apt-get install valgrind) and curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
source scripts/bench/daemon.sh
N=${INSTRUCTIONS_N:-10}

# count PATH BODY REQUESTS: total instructions of a daemon that answered REQUESTS requests
# (PATH "jwks": GETs of the JWKS instead of POSTs of BODY to the API).
count() {
  local out="$WORK/callgrind.out" log="$WORK/daemon.log" pid
  rm -f "$out"
  RUST_LOG=warn,keyturn=info valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN" serve --config "$WORK/keyturn.toml" 2>"$log" &
  pid=$!
  for _ in $(seq 1 600); do grep -q "keyturn ready" "$log" && break; sleep 0.1; done
  grep -q "keyturn ready" "$log" || { tail "$log" >&2; kill "$pid"; exit 1; }
  # One curl, one connection, every request: little wall time for timers to count in.
  local urls=()
  if [[ $1 == jwks ]]; then
    for _ in $(seq 1 "$3"); do urls+=("http://127.0.0.1:$JWKS_PORT/.well-known/jwks.json"); done
    curl -sf "${urls[@]}" >/dev/null
  else
    for _ in $(seq 1 "$3"); do urls+=("http://127.0.0.1:$PORT/v1/keysets/es256/$1"); done
    curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      --data-binary @"$WORK/$2" "${urls[@]}" >/dev/null
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  if [[ -n ${INSTRUCTIONS_PROFILE:-} ]]; then
    mkdir -p "$INSTRUCTIONS_PROFILE"
    cp "$out" "$INSTRUCTIONS_PROFILE/$1.$3.out"
  fi
  awk '/^summary:|^totals:/ {print $2; exit}' "$out"
}
# The first daemon creates the key; every later one loads it.
count sign sign.json 1 >/dev/null
echo "==> callgrind: JWKS GETs, sign requests, sign-batch requests ($(basename "$BIN"))" >&2
a=$(count sign sign.json $((20 * N)))
b=$(count sign sign.json $((40 * N)))
c=$(count sign-batch batch.json "$N")
d=$(count sign-batch batch.json $((2 * N)))
e=$(count jwks - $((40 * N)))
f=$(count jwks - $((80 * N)))
awk -v e="$e" -v f="$f" -v n=$((40 * N)) 'BEGIN {printf "INSTRUCTIONS jwks %.0f per request\n", (f - e) / n}'
awk -v a="$a" -v b="$b" -v n=$((20 * N)) 'BEGIN {printf "INSTRUCTIONS sign %.0f per request\n", (b - a) / n}'
awk -v c="$c" -v d="$d" -v n="$N" 'BEGIN {printf "INSTRUCTIONS sign-batch %.0f per token\n", (d - c) / n / 256}'
