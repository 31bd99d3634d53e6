#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent: system packages (Chromium for the
# page tests, a CJK font for receipt previews and screenshots), then a virtual
# environment in .venv with wetmarket installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk" || need_apt+=(fonts-wqy-microhei)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "bootstrap: installing system packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

stamp="$VENV/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first, from the CPU wheel; otherwise a package that needs torch pulls a CUDA build.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e ".[dev,train]"
    touch "$stamp"
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
