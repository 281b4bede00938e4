#!/usr/bin/env bash
# Make this checkout runnable on a Debian/Ubuntu machine; safe to run again (it only does what is missing).
#
#   1. Debian packages, installed only when absent: ffmpeg, openssl, fonts-dejavu-core (the burn-in font), espeak-ng
#      (speech for the subtitle tests), chromium (the web page's tests), postgresql (only when no
#      PostgreSQL answers at 127.0.0.1:5432 and no server binaries exist), python3-venv (when venv is broken).
#   2. .venv with Python >= 3.11 (PYTHON=/path/to/python3.x picks the interpreter), then
#      pip install -e '.[test,local]' (output in .venv/pip-install.log), skipped while
#      .venv/.installed-<sha256 of pyproject.toml> exists.
#
# Runs as root, or through sudo when that is available.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv
MIN_PYTHON=3.11
PG_HOST=127.0.0.1
PG_PORT=5432
PG_PROBE_TIMEOUT_S=2

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

# --- Debian packages ------------------------------------------------------------------------------------
have_pkg() { dpkg -s "$1" >/dev/null 2>&1; }

postgres_reachable() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t "$PG_PROBE_TIMEOUT_S" && return 0
    fi
    timeout "$PG_PROBE_TIMEOUT_S" bash -c "exec 3<>/dev/tcp/$PG_HOST/$PG_PORT" 2>/dev/null
}

postgres_installed() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }

# The first interpreter >= MIN_PYTHON among $PYTHON, python3, python3.13 ... python3.11.
python_ok() { "$1" -c "import sys; sys.exit(sys.version_info < (${MIN_PYTHON/./, }))" 2>/dev/null; }
find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

missing=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # the SSRF suite's local TLS origin
if command -v dpkg >/dev/null 2>&1; then
    have_pkg fonts-dejavu-core || missing+=(fonts-dejavu-core)
fi
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the web page's tests drive it (Playwright)
if ! postgres_reachable && ! postgres_installed; then
    missing+=(postgresql)
fi
PY=$(find_python) || PY=""
venv_ready=false
[[ -x $VENV/bin/python ]] && python_ok "$VENV/bin/python" && venv_ready=true
if ! $venv_ready; then
    if ! command -v python3 >/dev/null 2>&1; then
        missing+=(python3 python3-venv)
    elif [[ -n $PY ]] && ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
        missing+=(python3-venv)  # Debian ships venv's ensurepip separately
    fi
fi

if ((${#missing[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "please install: ${missing[*]} (no apt-get on this machine)"
    SUDO=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to install: ${missing[*]}"
        SUDO=(sudo)
    fi
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq >/dev/null
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ -z $PY ]]; then PY=$(find_python || true); fi
    command -v ffmpeg >/dev/null 2>&1 || die "ffmpeg is still missing after apt-get install"
fi

# --- virtual environment --------------------------------------------------------------------------------
if ! $venv_ready; then
    [[ -n $PY ]] || die "Python >= $MIN_PYTHON is needed (found: $(python3 --version 2>&1 || echo none)); \
install one and run again, or set PYTHON=/path/to/python3.x"
    rm -rf "$VENV"
    say "creating $VENV with $PY ($("$PY" --version 2>&1))"
    "$PY" -m venv "$VENV" || die "'$PY -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi

stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-64)"
if [[ ! -e $stamp ]]; then
    say "installing clipjet and its test tools into $VENV (pip, quiet)"
    pip_log="$VENV/pip-install.log"
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,local]' >"$pip_log" 2>&1; then
        tail -n 30 "$pip_log" >&2
        die "pip install failed; full output in $pip_log"
    fi
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
say "ready ($("$VENV/bin/python" --version), $(command -v ffmpeg))"
