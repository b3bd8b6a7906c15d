#!/usr/bin/env bash
# Runs the shipped unit under a real systemd as PID 1: boots a minimal Debian 12
# (systemd 252) in systemd-nspawn with keyturn's binary, unit, sysusers file and a
# file-backend config, and inside it checks what only a real service manager shows:
#
#   - the keyturn user comes from systemd/keyturn.sysusers;
#   - `systemctl start` returns once READY=1 is sent (Type=notify), with the JWKS served
#     and a token signed, by a process running as keyturn, under the full sandbox;
#   - the API socket in /run/keyturn admits a member of the keyturn group who is a
#     configured client (unix_uid) and refuses another local user at the file mode;
#   - the Kubernetes signer on an abstract socket (no file mode to protect it) answers
#     root and drops a connection from any other uid (tests elsewhere run as root);
#   - the watchdog is fed (a 2 s WatchdogSec= drop-in: the service outlives several
#     intervals and WatchdogTimestamp advances);
#   - `systemctl reload` succeeds (ExecReload= check-config, then SIGHUP) and the daemon
#     keeps its PID; a reload with a broken config fails and leaves the daemon running;
#   - `systemctl stop` ends cleanly, and the audit log verifies;
#   - the unit logged no error.
#
#   scripts/systemd-boot-test.sh [path/to/keyturn]     # default: a fresh --release build
#
# Needs root, debootstrap and systemd-nspawn (installed with apt-get when missing) and a
# Debian mirror (KEYTURN_DEBIAN_MIRROR, default deb.debian.org) for the first run; the
# root file system is cached under ~/.cache/keyturn/nsroot and each run boots a throwaway
# copy of it. Takes about a minute once the cache exists.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[[ $(id -u) == 0 ]] || { echo "systemd-boot-test.sh: needs root (debootstrap, systemd-nspawn)" >&2; exit 1; }

if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
  echo "==> installing debootstrap and systemd-container (apt-get)" >&2
  apt-get install -y debootstrap systemd-container >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y debootstrap systemd-container >/dev/null; }
fi

if [[ -n ${1:-} ]]; then
  BIN=$(realpath "$1")
else
  source scripts/test-env.sh
  echo "==> building keyturn --release" >&2
  cargo build --release --quiet --bin keyturn
  BIN=$CARGO_TARGET_DIR/release/keyturn
fi

CACHE=${KEYTURN_CACHE:-$HOME/.cache/keyturn}
NSROOT=$CACHE/nsroot
if [[ ! -x $NSROOT/usr/lib/systemd/systemd ]]; then
  echo "==> debootstrap: a minimal Debian 12 with systemd into $NSROOT (once, about a minute)" >&2
  rm -rf "$NSROOT.partial"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,ca-certificates \
    bookworm "$NSROOT.partial" "${KEYTURN_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
  mv "$NSROOT.partial" "$NSROOT"
fi

WORK=$(mktemp -d /tmp/keyturn-boot.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/results" "$WORK/etc"
TOKEN=kt_$(head -c 32 /dev/urandom | base64 | tr -d '/+=' | cut -c1-40)
PORT_BASE=$((20000 + RANDOM % 20000))
JWKS_PORT=$PORT_BASE
API_PORT=$((PORT_BASE + 1))
cat >"$WORK/etc/keyturn.toml" <<EOF
[server]
jwks_listen = "127.0.0.1:$JWKS_PORT"
api_listen = "127.0.0.1:$API_PORT"
api_socket = "/run/keyturn/api.sock"
k8s_signer_socket = "@keyturn-boot-k8s"
k8s_signer_keyset = "default"

[[keyset]]
name = "default"
issuer = "https://issuer.boot.test"
algorithm = "ES256"
rotate_every = "24h"
max_token_ttl = "10m"

[[client]]
name = "issuer"
token_sha256 = "$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)"
keysets = ["default"]
subject_pattern = "*"

[[client]]
name = "socket-issuer"
unix_uid = 1500
keysets = ["default"]
subject_pattern = "*"
EOF

# Runs inside the container as a oneshot unit once the system is up; writes its findings
# to /results and powers the container off.
cat >"$WORK/check.sh" <<EOF
#!/bin/bash
exec >/results/log 2>&1
set -x
fail() { echo "FAIL: \$*"; echo "FAIL: \$*" >>/results/failures; }
prop() { systemctl show keyturn -p "\$1" --value; }
getent passwd keyturn || fail "systemd-sysusers did not create the keyturn user"
mkdir -p /etc/systemd/system/keyturn.service.d
printf '[Service]\nWatchdogSec=2s\n' >/etc/systemd/system/keyturn.service.d/watchdog.conf
systemctl daemon-reload
systemctl start keyturn || fail "systemctl start keyturn failed"
[[ \$(prop ActiveState) == active ]] || fail "not active after start: \$(prop ActiveState)/\$(prop SubState)"
PID=\$(prop MainPID)
grep -E '^Uid:' /proc/\$PID/status | grep -qw "\$(id -u keyturn)" || fail "the daemon does not run as keyturn"
curl -sf http://127.0.0.1:$JWKS_PORT/.well-known/jwks.json | grep -q '"kid"' || fail "no JWKS with a key right after start returned"
curl -sf -H 'Authorization: Bearer $TOKEN' -H 'Content-Type: application/json' \
  -d '{"claims": {"sub": "boot"}}' http://127.0.0.1:$API_PORT/v1/keysets/default/sign | grep -q '"token"' ||
  fail "signing failed under the sandbox"
# The socket: 0660 in a 0750 directory, both group keyturn. uid 1500 is a configured
# client in the group; uid 1501 is neither.
useradd -u 1500 -G keyturn issuer && useradd -u 1501 stranger
SIGN_ARGS=(-s -o /dev/null -w '%{http_code}' --unix-socket /run/keyturn/api.sock -H 'Content-Type: application/json'
  -d '{"claims": {"sub": "socket"}}' http://keyturn/v1/keysets/default/sign)
[[ \$(runuser -u issuer -- curl "\${SIGN_ARGS[@]}") == 200 ]] || fail "the socket client in the keyturn group cannot sign"
[[ \$(runuser -u stranger -- curl "\${SIGN_ARGS[@]}") == 000 ]] || fail "a user outside the keyturn group reached the socket"
stat -c '%a %U:%G %n' /run/keyturn /run/keyturn/api.sock
# The Kubernetes signer: an empty gRPC Metadata call over HTTP/2.
printf '\\0\\0\\0\\0\\0' >/tmp/metadata.grpc
GRPC_ARGS=(-s --http2-prior-knowledge --abstract-unix-socket keyturn-boot-k8s -H 'content-type: application/grpc'
  -H 'te: trailers' --data-binary @/tmp/metadata.grpc -o /dev/null -w '%{http_code}' http://localhost/v1.ExternalJWTSigner/Metadata)
[[ \$(curl -D /tmp/grpc.headers "\${GRPC_ARGS[@]}") == 200 ]] && grep -qi '^grpc-status: 0' /tmp/grpc.headers ||
  fail "root cannot call the Kubernetes signer: \$(tr -d '\\r' </tmp/grpc.headers | grep -i grpc- | tr '\\n' ' ')"
[[ \$(runuser -u stranger -- curl "\${GRPC_ARGS[@]}") == 000 ]] || fail "another uid reached the Kubernetes signer"
journalctl -u keyturn --no-pager -o cat | grep -q 'connection refused: only root or keyturn.s own user may connect.*1501' ||
  journalctl -u keyturn --no-pager -o cat | grep -q 'uid=1501.*connection refused' ||
  fail "no log line for the refused Kubernetes signer connection"
W1=\$(prop WatchdogTimestampMonotonic)
for i in \$(seq 60); do
  W2=\$(prop WatchdogTimestampMonotonic)
  [[ \$W2 != "\$W1" && \$i -ge 30 ]] && break
  sleep 0.2
done
[[ \$(prop WatchdogTimestampMonotonic) != "\$W1" ]] || fail "the watchdog timestamp did not advance"
[[ \$(prop MainPID) == "\$PID" && \$(prop NRestarts) == 0 ]] || fail "restarted within 3 watchdog intervals"
systemctl reload keyturn || fail "systemctl reload failed"
journalctl -u keyturn --no-pager -o cat | grep -q 'configuration reloaded' || fail "the daemon did not log a reload"
[[ \$(prop ActiveState) == active && \$(prop MainPID) == "\$PID" ]] || fail "not the same active daemon after reload"
journalctl -u keyturn -p err --no-pager -o cat | grep -v '^-- ' | grep . && fail "the unit logged errors"
cp /etc/keyturn/keyturn.toml /tmp/good.toml
echo 'this is not toml [' >>/etc/keyturn/keyturn.toml
systemctl reload keyturn && fail "a reload with a broken config succeeded"
cp /tmp/good.toml /etc/keyturn/keyturn.toml
CURSOR=\$(journalctl -u keyturn -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
[[ \$(prop ActiveState) == active && \$(prop MainPID) == "\$PID" ]] || fail "a refused reload disturbed the daemon"
systemctl stop keyturn
[[ \$(prop Result) == success ]] || fail "stop did not end cleanly: \$(prop Result)"
# Result=success also covers death by SIGTERM; the daemon's own last line shows it drained
# and returned from main.
journalctl -u keyturn --no-pager -o cat | grep -q 'INFO keyturn::app: stopped' || fail "no 'stopped' line: the drain did not finish"
journalctl -u keyturn -p err --no-pager -o cat --after-cursor="\$CURSOR" | grep -v '^-- ' | grep . &&
  fail "the unit logged errors after the refused reload"
VERIFIED=\$(/usr/bin/keyturn audit verify /var/lib/keyturn/audit.log) || fail "the audit log does not verify"
echo "\$VERIFIED"
LINES=\$(sed -n 's/.*: \\([0-9]*\\) lines, hash chain intact/\\1/p' <<<"\$VERIFIED")
(( LINES >= 3 )) || fail "the audit log holds \$LINES lines, fewer than the key's publication and the two signatures"
journalctl -u keyturn --no-pager -o cat >/results/journal
systemd-analyze security keyturn --no-pager | tail -1 >/results/exposure
echo done >/results/finished
systemctl poweroff
EOF
chmod 755 "$WORK/check.sh"
cat >"$WORK/keyturn-boot-check.service" <<EOF
[Unit]
Description=keyturn boot test
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/check.sh
[Install]
WantedBy=multi-user.target
EOF

echo "==> booting Debian 12 with systemd $(chroot "$NSROOT" /usr/lib/systemd/systemd --version | head -1 | cut -d' ' -f2) under systemd-nspawn" >&2
cp "$ROOT/systemd/keyturn.sysusers" "$WORK/keyturn.sysusers"
# --ephemeral: a throwaway copy of the cached root. The bind mounts put keyturn where the
# .deb would; /etc/keyturn is writable so that the check can break and restore the config.
timeout 300 systemd-nspawn --quiet --register=no --keep-unit --ephemeral -D "$NSROOT" --machine="keyturn-boot-$$" \
  --bind-ro="$BIN:/usr/bin/keyturn" \
  --bind-ro="$ROOT/systemd/keyturn.service:/etc/systemd/system/keyturn.service" \
  --bind-ro="$WORK/keyturn.sysusers:/usr/lib/sysusers.d/keyturn.conf" \
  --bind="$WORK/etc:/etc/keyturn" \
  --bind-ro="$WORK/check.sh:/check.sh" \
  --bind-ro="$WORK/keyturn-boot-check.service:/etc/systemd/system/keyturn-boot-check.service" \
  --bind="$WORK/results:/results" \
  --boot systemd.wants=keyturn-boot-check.service >"$WORK/console" 2>&1 </dev/null || true

if [[ ! -f $WORK/results/finished ]]; then
  echo "FAIL: the check did not finish; console and check log follow" >&2
  tail -30 "$WORK/console" >&2
  cat "$WORK/results/log" >&2 2>/dev/null || true
  exit 1
fi
if [[ -s $WORK/results/failures ]]; then
  cat "$WORK/results/failures" >&2
  echo "--- the unit's journal:" >&2
  cat "$WORK/results/journal" >&2
  exit 1
fi
echo "systemd boot test: start (notify), JWKS, signing as user keyturn, the API socket's"
echo "access by group, the Kubernetes signer refusing another uid, watchdog, reload,"
echo "refused reload, stop and audit log all as expected under a real PID 1."
echo "exposure inside the container: $(cat "$WORK/results/exposure")"
