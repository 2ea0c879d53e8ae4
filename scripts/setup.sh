#!/usr/bin/env bash
# Shared set-up for scripts/demo and scripts/test: redis-server and redis-tools from Debian's
# packages when missing, a virtual environment in .venv, and this project installed into it.
# Safe to run again; it only does what is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: Python 3.11 or newer is needed as '$PY' (set PYTHON=/path/to/python3.11)" >&2
    exit 2
fi

packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || packages+=(redis-tools)
"$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv)
# The dashboard's browser test (headless Chromium driven by selenium).
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
# The TLS tests make their certificates with the openssl command.
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
# The link-fault test drops packets at random with iptables where the kernel has no netem.
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || packages+=(iptables)
if [ ${#packages[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${packages[*]} with apt-get" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.predis-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing predis and its dependencies into .venv" >&2
    # (Not compiled as it installs: pip would compile all 12,700 modules, a minute on a 2-core
    # machine, where a run imports about 2,000. They are compiled once, when first imported:
    # scripts/test and scripts/demo let Python write its bytecode cache even where the
    # environment sets PYTHONDONTWRITEBYTECODE, and torch, imported by every training and model
    # process, is compiled here.)
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-compile -e '.[dev,ml]'
    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c 'import torch, numpy, scipy.stats, pyarrow.parquet'
    touch "$stamp"
fi
