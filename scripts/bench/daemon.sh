# Sourced by scripts/bench/instructions.sh and profile.sh: a keyturn binary to measure and
# its setting. Sets BIN (the script's first argument, else a fresh --release build), WORK
# (a private temporary directory, removed at exit), TOKEN, PORT, JWKS_PORT, and writes
# $WORK/keyturn.toml (file backend, one ES256 key set, one client), $WORK/sign.json (one
# sign request) and $WORK/batch.json (256 of them).
if [[ -n ${1:-} ]]; then
  BIN=$1
else
  source scripts/test-env.sh
  cargo build --release --quiet --bin keyturn
  BIN=$CARGO_TARGET_DIR/release/keyturn
fi
WORK=$(mktemp -d /tmp/keyturn-bench.XXXXXX)
chmod 700 "$WORK"
trap 'rm -rf "$WORK"' EXIT

TOKEN=kt_$(head -c 32 /dev/urandom | base64 | tr -d '/+=' | cut -c1-40)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
JWKS_PORT=$(free_port)
cat >"$WORK/keyturn.toml" <<EOF
[server]
jwks_listen = "127.0.0.1:$JWKS_PORT"
api_listen = "127.0.0.1:$PORT"
data_dir = "$WORK/data"

[[keyset]]
name = "es256"
issuer = "https://issuer.test/es256"
algorithm = "ES256"
rotate_every = "24h"
max_token_ttl = "10m"

[[client]]
name = "bench"
token_sha256 = "$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)"
keysets = ["es256"]
audiences = ["orders-api"]
subject_pattern = "user:*"
allowed_claims = ["scope"]
EOF
printf '{"claims": {"sub": "user:1", "aud": "orders-api", "scope": "read write"}, "ttl": "5m"}' >"$WORK/sign.json"
python3 -c '
import json, sys
item = json.load(open(sys.argv[1]))
json.dump({"requests": [item] * 256}, open(sys.argv[2], "w"))' "$WORK/sign.json" "$WORK/batch.json"
