#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent.  Two targets:
#
#   bootstrap.sh runtime   what `make demo` and a stall need: a CJK font (receipt previews)
#                          and a virtual environment with wetmarket and its runtime
#                          dependencies only (the recognizer runs on onnxruntime: no torch,
#                          no training extras);
#   bootstrap.sh test      what `make test`, `make lint` and `make bench` need (the default):
#                          the runtime, Chromium for the page tests, systemd-analyze and
#                          nginx for the deployment's tests, Debian's PostgreSQL
#                          server binaries when no server answers on 127.0.0.1:5432 (the tests
#                          then start a private one), and the dev and train extras (CI tests the
#                          training code on a tiny slice, so torch comes from the local CPU wheel).
#
# Each target has its own stamp in the virtual environment; the test stamp covers the
# runtime.  VENV (default .venv) and PYTHON (default python3) choose where and with what.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
target=${1:-test}
case "$target" in
    runtime|test) ;;
    *) echo "usage: $0 [runtime|test]" >&2; exit 2 ;;
esac

postgres_answers() {
    timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432' 2>/dev/null
}

need_apt=()
fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk" || need_apt+=(fonts-wqy-microhei)
if [ "$target" = test ]; then
    command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
    # tests/test_deploy.py: the systemd units verified and scored, the TLS proxy run.
    command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
    [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
    # tests/drills: a stall whose clock is 10 minutes off (libfaketime preloaded).
    compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null || need_apt+=(faketime)
    if ! postgres_answers && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
        need_apt+=(postgresql)
    fi
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "bootstrap: installing system packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# A venv cut off while it was being made (no pip in it) is made again, not half-used.
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "bootstrap: $VENV is incomplete (no pip): making it again"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

# A stamp is current when it is newer than pyproject.toml (the dependencies' list).
current() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }
full_stamp="$VENV/.installed"            # runtime + dev + train
runtime_stamp="$VENV/.installed-runtime"

if [ "$target" = test ]; then
    if ! current "$full_stamp"; then
        echo "bootstrap: installing wetmarket with its dev and train extras into $VENV"
        # torch first, from the CPU wheel; otherwise a package that needs torch pulls a CUDA build.
        "$VENV/bin/python" -m pip install -q "torch==2.13.0"
        "$VENV/bin/python" -m pip install -q -e ".[dev,train]"
        touch "$full_stamp"
    fi
elif ! current "$full_stamp" && ! current "$runtime_stamp"; then
    echo "bootstrap: installing wetmarket (runtime only: no torch) into $VENV"
    "$VENV/bin/python" -m pip install -q -e .
    touch "$runtime_stamp"
fi

# The receipt tests also read the ESC/POS bytes back with npm's npos (a decoder nobody here
# wrote), installed in tests/edge/npos_decoder as its package-lock.json pins it.
npos_dir=tests/edge/npos_decoder
if [ "${target:-test}" = test ] && { [ ! -d "$npos_dir/node_modules/npos" ] \
        || [ "$npos_dir/package-lock.json" -nt "$npos_dir/node_modules" ]; }; then
    if ! command -v npm >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    fi
    echo "bootstrap: installing the receipt tests' ESC/POS decoder (npm ci in $npos_dir)"
    npm ci --prefix "$npos_dir" --omit=optional --no-audit --no-fund --silent
fi
