#!/usr/bin/env bash
# Benchmarks, from a fresh machine, in one run: keyturn (file backend) against OpenBao
# transit (dev server) and nginx on loopback, keyturn's pkcs11 backend on a SoftHSM token
# beside its file backend, ES256 with token status lists beside the same key set without,
# plus the raw aws-lc-rs primitive, start-up time and memory. Prints a table of rates,
# latencies and CPU per request, then the HTTP floors (nginx answering the sign and
# sign-batch requests with no work), the ceilings they put on any signer here, and a bare
# signer on keyturn's own stack with nothing but the signature (benches/bare.rs);
# docs/benchmarks.md explains them and shows the latest results.
#
#   scripts/bench.sh                      # 15 s per wrk run, 32 connections
#   BENCH_DURATION=5 scripts/bench.sh     # quicker, noisier
#
# Settings (environment): BENCH_DURATION (s per run, 15), BENCH_CONNECTIONS (32),
# BENCH_WRK_THREADS (2), BENCH_BATCH_CONNECTIONS (2), BENCH_WRK_CPUS / BENCH_SERVER_CPUS
# (taskset CPU lists; default: load generator and servers share every CPU), BENCH_KEEP=1
# keeps the work directory, BENCH_KEYTURN_BIN=path benchmarks that binary instead of
# building one (to compare builds). Installs what it needs like the test command: OpenBao
# into the cached venv and SoftHSM (scripts/test-env.sh), wrk and nginx with apt-get when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${BENCH_DURATION:-15}
CONNS=${BENCH_CONNECTIONS:-32}
WRK_THREADS=${BENCH_WRK_THREADS:-2}
ALL_CPUS="0-$(($(nproc) - 1))"
LOAD_BEFORE=$(cut -d" " -f1-3 /proc/loadavg)
WRK_CPUS=${BENCH_WRK_CPUS:-$ALL_CPUS}
SERVER_CPUS=${BENCH_SERVER_CPUS:-$ALL_CPUS}

source scripts/test-env.sh
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  echo "==> installing wrk and nginx (apt-get)" >&2
  if ! apt-get install -y wrk nginx >/dev/null 2>&1; then
    apt-get update >/dev/null
    apt-get install -y wrk nginx >/dev/null
  fi
fi
NGINX=$(command -v nginx)

echo "==> building keyturn --release and the primitive bench" >&2
if [[ -n ${BENCH_KEYTURN_BIN:-} ]]; then
  BIN=$BENCH_KEYTURN_BIN # another build to compare, e.g. a copy of an older one
else
  cargo build --release --quiet --bin keyturn
  BIN=$CARGO_TARGET_DIR/release/keyturn
fi
cargo bench --quiet --bench primitive --no-run 2>/dev/null
BARE_BIN=$(cargo bench --quiet --bench bare --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "bare" and m.get("executable"):
        print(m["executable"])')

WORK=$(mktemp -d /tmp/keyturn-bench.XXXXXX)
chmod 700 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -z ${BENCH_KEEP:-} ]]; then rm -rf "$WORK"; else echo "work directory: $WORK" >&2; fi
}
trap cleanup EXIT

free_port() { # a free loopback port whose successor is free too (OpenBao's cluster port)
  python3 -c '
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 1)); print(p); break
    except OSError:
        pass
    finally:
        a.close(); b.close()'
}
wait_for() { # wait_for FILE PATTERN SECONDS
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "timed out waiting for '$2' in $1:" >&2; tail -20 "$1" >&2; exit 1; fi
    sleep 0.05
  done
}
cpu_ticks() { # utime + stime of the given processes, in clock ticks
  local t=0 pid
  for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
new_token() { head -c 32 /dev/urandom | base64 | tr -d '/+=' | cut -c1-40; }
sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------------------------------
# The raw primitive, before any server runs.
echo "==> raw aws-lc-rs primitive (3 s per case)" >&2
PRIM=$(cargo bench --quiet --bench primitive -- --secs 3 ES256 EdDSA RS256 2>/dev/null)
prim() { awk -v a="$1" -v t="$2" '$1 == "PRIMITIVE" && $2 == a && $3 == t {print $4}' <<<"$PRIM"; }

# ---------------------------------------------------------------------------------------
# A SoftHSM token (in the work directory) for the pkcs11 backend's key sets.
mkdir -p "$WORK/softhsm/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
  "$WORK/softhsm/tokens" >"$WORK/softhsm/softhsm2.conf"
export SOFTHSM2_CONF=$WORK/softhsm/softhsm2.conf
HSM_PIN=$(new_token)
softhsm2-util --init-token --free --label keyturn-bench --pin "$HSM_PIN" --so-pin "$(new_token)" >/dev/null
(umask 077 && printf '%s\n' "$HSM_PIN" >"$WORK/softhsm/pin")
HSM_BACKEND="backend = { type = \"pkcs11\", module = \"/usr/lib/softhsm/libsofthsm2.so\", token_label = \"keyturn-bench\", pin_file = \"$WORK/softhsm/pin\" }"

# ---------------------------------------------------------------------------------------
# keyturn: five key sets on the file backend, two on the SoftHSM token. "default" (RS256,
# RSA-4096, publish lead 1 s) is the JWKS served at /.well-known/jwks.json and the key set
# rotated under load; "es256-status" is "es256" (same issuer) with token status lists.
TOKEN=kt_$(new_token)
ADMIN=kt_$(new_token)
JWKS_PORT=$(free_port)
API_PORT=$(free_port)
keyset() { # name alg extra [issuer's last segment, default: name]
  printf '[[keyset]]\nname = "%s"\nissuer = "https://issuer.test/%s"\nalgorithm = "%s"\n%s\nrotate_every = "24h"\nmax_token_ttl = "10m"\njwks_max_age = "1s"\nclock_skew = "0s"\n\n' "$1" "${4:-$1}" "$2" "$3"
}
{
  printf '[server]\njwks_listen = "127.0.0.1:%s"\napi_listen = "127.0.0.1:%s"\ndata_dir = "%s"\n\n' \
    "$JWKS_PORT" "$API_PORT" "$WORK/data"
  keyset default RS256 'rsa_bits = 4096'
  keyset es256 ES256 ''
  keyset es256-status ES256 'status_list = { ttl = "5m" }' es256
  keyset eddsa EdDSA ''
  keyset rs256 RS256 'rsa_bits = 2048'
  keyset hsm-es256 ES256 "$HSM_BACKEND"
  keyset hsm-rs256 RS256 "rsa_bits = 2048
$HSM_BACKEND"
  printf '[[client]]\nname = "bench"\ntoken_sha256 = "%s"\nkeysets = ["es256", "es256-status", "eddsa", "rs256", "hsm-es256", "hsm-rs256"]\naudiences = ["orders-api"]\nsubject_pattern = "user:*"\nallowed_claims = ["scope"]\n\n' "$(sha256 "$TOKEN")"
  printf '[[client]]\nname = "ops"\ntoken_sha256 = "%s"\nkeysets = ["*"]\nadmin = true\n' "$(sha256 "$ADMIN")"
} >"$WORK/keyturn.toml"
echo "==> starting keyturn (first start generates the keys)" >&2
RUST_LOG=warn,keyturn=info taskset -c "$SERVER_CPUS" "$BIN" serve --config "$WORK/keyturn.toml" \
  2>"$WORK/keyturn.log" &
KT_PID=$!
PIDS+=("$KT_PID")
wait_for "$WORK/keyturn.log" "keyturn ready" 120
API=http://127.0.0.1:$API_PORT
JWKS=http://127.0.0.1:$JWKS_PORT

printf '{"claims": {"sub": "user:1", "aud": "orders-api", "scope": "read write"}, "ttl": "5m"}' \
  >"$WORK/sign.json"
python3 -c '
import json, sys
item = json.load(open(sys.argv[1]))
json.dump({"requests": [item] * 256}, open(sys.argv[2], "w"))' "$WORK/sign.json" "$WORK/batch.json"
# A real signing input for OpenBao: header.claims of a token keyturn signed.
for ks in es256 eddsa rs256; do
  curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data-binary @"$WORK/sign.json" "$API/v1/keysets/$ks/sign" >"$WORK/$ks.signed"
done
# Status lists on: the token's status list entry is in the response.
curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  --data-binary @"$WORK/sign.json" "$API/v1/keysets/es256-status/sign" >"$WORK/es256-status.signed"
grep -q '"status":{"uri":' "$WORK/es256-status.signed"
# A real sign-batch response, for the batch floor.
curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  --data-binary @"$WORK/batch.json" "$API/v1/keysets/es256/sign-batch" >"$WORK/batch.signed"
sleep 1
IDLE_RSS=$(rss_kb "$KT_PID")

# ---------------------------------------------------------------------------------------
# OpenBao dev server (in memory, root token, no audit device), transit with three keys.
BAO_PORT=$(free_port)
BAO=http://127.0.0.1:$BAO_PORT
echo "==> starting OpenBao $("$KEYTURN_BAO_BIN" version | head -1)" >&2
BAO_DEV_ROOT_TOKEN_ID=root taskset -c "$SERVER_CPUS" "$KEYTURN_BAO_BIN" server -dev -dev-no-store-token \
  -dev-listen-address="127.0.0.1:$BAO_PORT" >"$WORK/bao.log" 2>&1 &
BAO_PID=$!
PIDS+=("$BAO_PID")
deadline=$((SECONDS + 60))
until curl -sf "$BAO/v1/sys/health" >/dev/null; do
  if ((SECONDS > deadline)); then tail -20 "$WORK/bao.log" >&2; exit 1; fi
  sleep 0.2
done
bao() { curl -sf -H 'X-Vault-Token: root' -H 'Content-Type: application/json' "$@"; }
bao -X POST -d '{"type": "transit"}' "$BAO/v1/sys/mounts/transit" >/dev/null
bao -X POST -d '{"type": "ecdsa-p256"}' "$BAO/v1/transit/keys/es256" >/dev/null
bao -X POST -d '{"type": "ed25519"}' "$BAO/v1/transit/keys/eddsa" >/dev/null
bao -X POST -d '{"type": "rsa-2048"}' "$BAO/v1/transit/keys/rs256" >/dev/null
# The parameters keyturn's vault backend sends (backends/vault/src/transit.rs).
bao_body() { # keyset extra-json
  python3 -c '
import base64, json, sys
token = json.load(open(sys.argv[1]))["token"]
body = {"input": base64.b64encode(token.rsplit(".", 1)[0].encode()).decode(), "marshaling_algorithm": "jws"}
body.update(json.loads(sys.argv[2]))
print(json.dumps(body))' "$WORK/$1.signed" "$2" >"$WORK/bao-$1.json"
}
bao_body es256 '{"hash_algorithm": "sha2-256"}'
bao_body eddsa '{}'
bao_body rs256 '{"hash_algorithm": "sha2-256", "signature_algorithm": "pkcs1v15"}'
for ks in es256 eddsa rs256; do
  bao -X POST --data-binary @"$WORK/bao-$ks.json" "$BAO/v1/transit/sign/$ks" | grep -q '"signature":"vault:v1:'
done

# ---------------------------------------------------------------------------------------
# nginx serving keyturn's JWKS bytes as a static file, as tuned as a static JWKS would be.
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx/www/.well-known"
curl -sf "$JWKS/.well-known/jwks.json" >"$WORK/nginx/www/.well-known/jwks.json"
JWKS_BYTES=$(wc -c <"$WORK/nginx/www/.well-known/jwks.json")
cp "$WORK/batch.signed" "$WORK/nginx/www/batch.signed"
cat >"$WORK/nginx/nginx.conf" <<EOF
user root;
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 100000;
  open_file_cache max=100 inactive=60s;
  types { application/jwk-set+json json; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $WORK/nginx/www;
    add_header Cache-Control "public, max-age=1, stale-if-error=86400";
    # The HTTP floor: the sign request's bytes in, a sign response's bytes out, no work.
    location = /sign-floor {
      default_type application/json;
      return 200 '$(cat "$WORK/es256.signed")';
    }
    # The same for sign-batch: a 256-item request in, a 256-token response out (a file:
    # too long for "return"; the static module answers POST with 405, turned into 200).
    location = /sign-batch-floor {
      error_page 405 =200 /batch.signed;
      return 405;
    }
    location = /batch.signed {
      internal;
      default_type application/json;
    }
  }
}
EOF
taskset -c "$SERVER_CPUS" "$NGINX" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
deadline=$((SECONDS + 20))
until curl -sf "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json" >/dev/null; do
  if ((SECONDS > deadline)); then cat "$WORK/nginx/error.log" >&2; exit 1; fi
  sleep 0.1
done
cmp -s "$WORK/nginx/www/.well-known/jwks.json" <(curl -sf "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json")
cmp -s "$WORK/batch.signed" <(curl -sf --data-binary @"$WORK/batch.json" "http://127.0.0.1:$NGINX_PORT/sign-batch-floor")
NGINX_PIDS=("$NGINX_PID" $(pgrep -P "$NGINX_PID"))

# ---------------------------------------------------------------------------------------
# The bare signer: keyturn's stack (tokio, hyper, aws-lc-rs) and nothing but the signature.
BARE_PORT=$(free_port)
taskset -c "$SERVER_CPUS" "$BARE_BIN" "$BARE_PORT" >"$WORK/bare.log" 2>&1 &
BARE_PID=$!
PIDS+=("$BARE_PID")
wait_for "$WORK/bare.log" "BARE READY" 20
BARE=http://127.0.0.1:$BARE_PORT

# ---------------------------------------------------------------------------------------
# Load. Each run: "<requests/s> <p50 ms> <p99 ms> <server CPU us per request>"; a run with
# errors stops the bench. The CPU figure is the server processes' own time (user + system,
# from /proc) divided by the requests they answered: what a request costs the server,
# whatever share of the CPUs the load generator took.
wrk_run() { # name url script connections "server pids" [ENV=value ...]
  local name=$1 url=$2 script=$3 conns=$4 pids=$5
  shift 5
  echo "==> wrk $name (${DURATION}s, $conns connections)" >&2
  local out before after
  # shellcheck disable=SC2086 # pids is a list
  before=$(cpu_ticks $pids)
  out=$(env "$@" taskset -c "$WRK_CPUS" wrk -t"$WRK_THREADS" -c"$conns" -d"${DURATION}s" \
    -s "$ROOT/scripts/bench/$script" "$url")
  # shellcheck disable=SC2086
  after=$(cpu_ticks $pids)
  local line
  line=$(grep '^RESULT' <<<"$out") || { echo "$out" >&2; exit 1; }
  read -r _ reqs dur p50 p99 errors <<<"$line"
  if ((errors > 0)); then echo "wrk $name: $errors errors" >&2; echo "$out" >&2; exit 1; fi
  awk -v r="$reqs" -v d="$dur" -v a="$p50" -v b="$p99" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.0f %.2f %.2f %.1f\n", r / (d / 1e6), a / 1000, b / 1000, (r > 0 ? t / hz * 1e6 / r : 0)}'
}
kt_sign() { # keyset
  wrk_run "keyturn sign $1" "$API/v1/keysets/$1/sign" post.lua "$CONNS" "$KT_PID" \
    BENCH_BODY="$WORK/sign.json" BENCH_AUTH_VALUE="Bearer $TOKEN"
}
bao_sign() { # key
  wrk_run "OpenBao transit sign $1" "$BAO/v1/transit/sign/$1" post.lua "$CONNS" "$BAO_PID" \
    BENCH_BODY="$WORK/bao-$1.json" BENCH_AUTH_HEADER=X-Vault-Token BENCH_AUTH_VALUE=root
}

declare -A R
R[kt_es256]=$(kt_sign es256)
LOADED_RSS=$(rss_kb "$KT_PID")
R[kt_es256_status]=$(kt_sign es256-status)
R[kt_eddsa]=$(kt_sign eddsa)
R[kt_rs256]=$(kt_sign rs256)
R[kt_hsm_es256]=$(kt_sign hsm-es256)
R[kt_hsm_rs256]=$(kt_sign hsm-rs256)
R[bao_es256]=$(bao_sign es256)
R[bao_eddsa]=$(bao_sign eddsa)
R[bao_rs256]=$(bao_sign rs256)
R[kt_jwks]=$(wrk_run "keyturn JWKS" "$JWKS/.well-known/jwks.json" get.lua "$CONNS" "$KT_PID")
R[nginx_jwks]=$(wrk_run "nginx JWKS" "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json" get.lua "$CONNS" "${NGINX_PIDS[*]}")
R[floor]=$(wrk_run "nginx HTTP floor (sign-sized request and response, no work)" \
  "http://127.0.0.1:$NGINX_PORT/sign-floor" post.lua "$CONNS" "${NGINX_PIDS[*]}" \
  BENCH_BODY="$WORK/sign.json" BENCH_AUTH_VALUE="Bearer $TOKEN")
BATCH_CONNS=${BENCH_BATCH_CONNECTIONS:-2}
R[batch_floor]=$(wrk_run "nginx HTTP floor for sign-batch (256 per request, no work)" \
  "http://127.0.0.1:$NGINX_PORT/sign-batch-floor" post.lua "$BATCH_CONNS" "${NGINX_PIDS[*]}" \
  BENCH_BODY="$WORK/batch.json" BENCH_AUTH_VALUE="Bearer $TOKEN")
kt_batch() { # keyset
  wrk_run "keyturn sign-batch $1 (256 per request)" "$API/v1/keysets/$1/sign-batch" \
    post.lua "$BATCH_CONNS" "$KT_PID" BENCH_BODY="$WORK/batch.json" BENCH_AUTH_VALUE="Bearer $TOKEN"
}
R[kt_batch]=$(kt_batch es256)
R[kt_batch_status]=$(kt_batch es256-status)
for alg in ES256 EdDSA RS256; do # the same requests as keyturn's; the body is read, not parsed
  R[bare_$alg]=$(wrk_run "bare signer $alg" "$BARE/$alg" post.lua "$CONNS" "$BARE_PID" \
    BENCH_BODY="$WORK/sign.json" BENCH_AUTH_VALUE="Bearer $TOKEN")
done
R[bare_batch]=$(wrk_run "bare signer, 256 ES256 per request" "$BARE/batch" post.lua "$BATCH_CONNS" "$BARE_PID" \
  BENCH_BODY="$WORK/batch.json" BENCH_AUTH_VALUE="Bearer $TOKEN")
# The same with the bytes a status list adds to each token and result: the bound on the
# status-list ratio that the longer tokens and answers alone set on this stack.
R[bare_batch_status]=$(wrk_run "bare signer, 256 ES256 per request, status claim" "$BARE/batch-status" post.lua \
  "$BATCH_CONNS" "$BARE_PID" BENCH_BODY="$WORK/batch.json" BENCH_AUTH_VALUE="Bearer $TOKEN")
kill "$BARE_PID"

# ES256 signing while the RSA-4096 key set rotates: each rotation activates the pending key
# (publish lead 1 s) and generates a new RSA-4096 pending key (spawn_blocking).
published() { grep -c '"event":"published","keyset":"default"\|"keyset":"default".*"event":"published"' "$WORK/data/audit.log" || true; }
BEFORE=$(published)
(
  end=$((SECONDS + DURATION))
  while ((SECONDS < end)); do
    curl -sf -X POST -H "Authorization: Bearer $ADMIN" "$API/v1/keysets/default/rotate" >/dev/null || true
    sleep 1
  done
) &
ROTATOR=$!
R[kt_es256_rot]=$(wrk_run "keyturn sign es256 during RSA-4096 rotations" "$API/v1/keysets/es256/sign" post.lua "$CONNS" \
  "$KT_PID" BENCH_BODY="$WORK/sign.json" BENCH_AUTH_VALUE="Bearer $TOKEN")
wait "$ROTATOR"
sleep 3
ROTATIONS=$(($(published) - BEFORE))
PEAK_RSS=$(hwm_kb "$KT_PID")

# ---------------------------------------------------------------------------------------
# Start-to-ready with ten file-backed key sets (keys exist: the first start made them).
echo "==> start-to-ready, ten key sets" >&2
{
  printf '[server]\njwks_listen = "127.0.0.1:0"\napi_listen = "127.0.0.1:0"\ndata_dir = "%s"\n\n' "$WORK/ready"
  for i in 1 2 3 4; do keyset "es256-$i" ES256 ''; done
  for i in 1 2 3; do keyset "eddsa-$i" EdDSA ''; done
  for i in 1 2 3; do keyset "rs256-$i" RS256 'rsa_bits = 2048'; done
} >"$WORK/ready.toml"
python3 "$ROOT/scripts/bench/ready.py" "$BIN" "$WORK/ready.toml" 1 >/dev/null
READY=$(python3 "$ROOT/scripts/bench/ready.py" "$BIN" "$WORK/ready.toml" 10)

# ---------------------------------------------------------------------------------------
field() { cut -d' ' -f"$2" <<<"${R[$1]}"; }
ratio() { awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN {printf "%." d "fx", (b > 0 ? a / b : 0)}'; } # a/b [decimals]
us() { awk -v r="$1" 'BEGIN {printf "%.1f", (r > 0 ? 1e6 / r : 0)}'; } # per-signature time of a rate
tokens() { awk -v r="$(field "$1" 1)" 'BEGIN {printf "%.0f", r * 256}'; }      # a batch run's tokens/s
token_cpu() { awk -v c="$(field "$1" 4)" 'BEGIN {printf "%.1f", c / 256}'; }   # its CPU per token
line() { # 12 cells
  printf '| %-26s | %8s | %6s | %6s | %7s | %-22s | %8s | %6s | %6s | %7s | %7s | %-26s |\n' "$@"
}
row() { # what keyturn-key baseline-name baseline-rps baseline-p50 baseline-p99 baseline-cpu target
  line "$1" "$(field "$2" 1)" "$(field "$2" 2)" "$(field "$2" 3)" "$(field "$2" 4)" "$3" "$4" "$5" "$6" "$7" \
    "$(ratio "$(field "$2" 1)" "$4")" "$8"
}
bao_row() { # what kt-key bao-key target
  row "$1" "$2" "OpenBao transit" "$(field "$3" 1)" "$(field "$3" 2)" "$(field "$3" 3)" "$(field "$3" 4)" "$4"
}
ES1=$(prim ES256 1) ES2=$(prim ES256 2) ED1=$(prim EdDSA 1) ED2=$(prim EdDSA 2) RS1=$(prim RS256 1) RS2=$(prim RS256 2)
echo
echo "keyturn $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') on $(nproc) CPUs, $(date -u +%FT%TZ); wrk ${DURATION}s, $CONNS connections, $WRK_THREADS thread(s)"
echo "CPUs: wrk on $WRK_CPUS, servers on $SERVER_CPUS; load average before: ${LOAD_BEFORE:-$(cut -d' ' -f1-3 /proc/loadavg)}"
echo "JWKS body: $JWKS_BYTES bytes; latencies in ms; CPU = the server's own CPU time per request in us"
echo "(for the primitive: one thread's time per signature)"
echo
line "keyturn" "req/s" "p50" "p99" "CPU" "baseline" "req/s" "p50" "p99" "CPU" "ratio" "target"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..28})" "----------" \
  "--------" "--------" "---------" "$(printf -- '-%.0s' {1..24})" "----------" "--------" "--------" \
  "---------" "---------" "$(printf -- '-%.0s' {1..28})"
bao_row "sign ES256" kt_es256 bao_es256 ">= 8x, p99 <= 2 ms"
bao_row "sign EdDSA" kt_eddsa bao_eddsa ""
bao_row "sign RS256-2048" kt_rs256 bao_rs256 ""
file_row() { # what kt-key file-key
  row "$1" "$2" "keyturn, file backend" "$(field "$3" 1)" "$(field "$3" 2)" "$(field "$3" 3)" "$(field "$3" 4)" ""
}
file_row "sign ES256 pkcs11/SoftHSM" kt_hsm_es256 kt_es256
file_row "sign RS256 pkcs11/SoftHSM" kt_hsm_rs256 kt_rs256
row "sign ES256" kt_es256 "aws-lc-rs, 2 threads" "$ES2" "" "" "$(us "$ES1")" "(1 thread: $ES1/s)"
row "sign EdDSA" kt_eddsa "aws-lc-rs, 2 threads" "$ED2" "" "" "$(us "$ED1")" ""
row "sign RS256-2048" kt_rs256 "aws-lc-rs, 2 threads" "$RS2" "" "" "$(us "$RS1")" ">= 0.9x (1 thread: $RS1/s)"
row "JWKS GET" kt_jwks "nginx static file" "$(field nginx_jwks 1)" "$(field nginx_jwks 2)" "$(field nginx_jwks 3)" "$(field nginx_jwks 4)" ">= 1.0x"
BATCH_TPS=$(tokens kt_batch)
line "sign-batch ES256 tokens/s" "$BATCH_TPS" "$(field kt_batch 2)" "$(field kt_batch 3)" "$(token_cpu kt_batch)" \
  "aws-lc-rs, 2 threads" "$ES2" "" "" "$(us "$ES1")" "$(ratio "$BATCH_TPS" "$ES2")" ">= 0.8x ($BATCH_CONNS conns x 256)"
# Status lists on against off, the same key set otherwise; ratios to three places, against 0.95.
line "sign ES256, status list" "$(field kt_es256_status 1)" "$(field kt_es256_status 2)" "$(field kt_es256_status 3)" \
  "$(field kt_es256_status 4)" "without (above)" "$(field kt_es256 1)" "$(field kt_es256 2)" "$(field kt_es256 3)" \
  "$(field kt_es256 4)" "$(ratio "$(field kt_es256_status 1)" "$(field kt_es256 1)" 3)" ">= 0.95x"
BATCH_STATUS_TPS=$(tokens kt_batch_status)
line "sign-batch, status list" "$BATCH_STATUS_TPS" "$(field kt_batch_status 2)" "$(field kt_batch_status 3)" \
  "$(token_cpu kt_batch_status)" "without (above)" "$BATCH_TPS" "$(field kt_batch 2)" "$(field kt_batch 3)" \
  "$(token_cpu kt_batch)" "$(ratio "$BATCH_STATUS_TPS" "$BATCH_TPS" 3)" ">= 0.95x (tokens/s)"
line "bound: bare, status bytes" "$(tokens bare_batch_status)" "$(field bare_batch_status 2)" \
  "$(field bare_batch_status 3)" "$(token_cpu bare_batch_status)" "bare, without" "$(tokens bare_batch)" \
  "$(field bare_batch 2)" "$(field bare_batch 3)" "$(token_cpu bare_batch)" \
  "$(ratio "$(tokens bare_batch_status)" "$(tokens bare_batch)" 3)" "the bytes alone"
line "sign ES256, RSA-4096 rot." "$(field kt_es256_rot 1)" "$(field kt_es256_rot 2)" "$(field kt_es256_rot 3)" \
  "$(field kt_es256_rot 4)" "steady p99 (above)" "" "" "$(field kt_es256 3)" "" \
  "$(ratio "$(field kt_es256_rot 3)" "$(field kt_es256 3)")" "p99 <= 2x ($ROTATIONS keys made)"

# What the machine allows: a server whose only cost beyond the HTTP floor (nginx answering
# the same request with a sign-sized response and no work) is the signature itself. CPU
# time per request adds up, so its rate C on these CPUs, shared with wrk, satisfies
# 1/C = 1/floor + 1/primitive(2 threads): no signer on this machine can go faster.
FLOOR=$(field floor 1)
BATCH_FLOOR=$(tokens batch_floor)
ceiling() { awk -v f="${2:-$FLOOR}" -v p="$1" 'BEGIN {printf "%.0f", 1 / (1 / f + 1 / p)}'; }
echo
echo "HTTP floor: nginx answers the sign request with a sign-sized response and no work at $FLOOR req/s"
echo "(p50 $(field floor 2) ms, p99 $(field floor 3) ms, $(field floor 4) us of nginx CPU per request)."
echo "Batch floor: nginx answers the 256-item sign-batch request with a 256-token response at"
echo "$(field batch_floor 1) req/s, $BATCH_FLOOR tokens/s ($(field batch_floor 4) us of nginx CPU per request)."
echo "Ceiling for a zero-overhead signer on these CPUs: 1 / (1/floor + 1/primitive(2 threads))."
echo "Bare signer: keyturn's stack (tokio, hyper, aws-lc-rs) answering the same requests with"
echo "nothing but the signature (benches/bare.rs), measured; \"bare vs\" is its ratio to the"
echo "target's baseline, \"keyturn of bare\" keyturn's rate as a fraction of it."
echo
printf '| %-16s | %9s | %11s | %-18s | %9s | %15s | %-34s |\n' "" "ceiling" "bare signer" "bare vs" "keyturn" "keyturn of bare" "the target needs"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' "------------------" "-----------" "-------------" "--------------------" "-----------" "-----------------" "------------------------------------"
cel_row() { # what kt-rps bare-rps primitive-2 baseline-rps baseline-name target-text [floor]
  local c
  c=$(ceiling "$4" "${8:-}")
  printf '| %-16s | %9s | %11s | %-18s | %9s | %15s | %-34s |\n' "$1" "$c" "$3" \
    "$(ratio "$3" "$5") $6" "$2" "$(ratio "$2" "$3")" "$7"
}
ES_NEED=$(awk -v b="$(field bao_es256 1)" 'BEGIN {printf "%.0f", 8 * b}')
RS_NEED=$(awk -v p="$RS2" 'BEGIN {printf "%.0f", 0.9 * p}')
cel_row "sign ES256" "$(field kt_es256 1)" "$(field bare_ES256 1)" "$ES2" "$(field bao_es256 1)" "OpenBao" \
  "8x OpenBao: $ES_NEED req/s"
cel_row "sign EdDSA" "$(field kt_eddsa 1)" "$(field bare_EdDSA 1)" "$ED2" "$(field bao_eddsa 1)" "OpenBao" ""
cel_row "sign RS256-2048" "$(field kt_rs256 1)" "$(field bare_RS256 1)" "$RS2" "$RS2" "primitive" \
  "0.9x primitive: $RS_NEED req/s"
BATCH_NEED=$(awk -v p="$ES2" 'BEGIN {printf "%.0f", 0.8 * p}')
BARE_BATCH_TPS=$(tokens bare_batch)
cel_row "sign-batch ES256" "$BATCH_TPS" "$BARE_BATCH_TPS" "$ES2" "$ES2" "primitive" \
  "0.8x primitive: $BATCH_NEED tokens/s" "$BATCH_FLOOR"
echo "Bare signer p99 at $CONNS connections, ms: ES256 $(field bare_ES256 3), EdDSA $(field bare_EdDSA 3), RS256 $(field bare_RS256 3);"
echo "its CPU per request, us: ES256 $(field bare_ES256 4), EdDSA $(field bare_EdDSA 4), RS256 $(field bare_RS256 4), per batch token $(token_cpu bare_batch)."
echo
read -r _ runs median max <<<"$READY"
echo "keyturn RSS: idle $((IDLE_RSS / 1024)) MB ($IDLE_RSS kB, target <= 20 MB), after ES256 load $((LOADED_RSS / 1024)) MB, peak $((PEAK_RSS / 1024)) MB"
echo "keyturn start-to-ready, ten file-backed key sets: median $median ms, max $max ms over $runs starts (target <= 100 ms)"
