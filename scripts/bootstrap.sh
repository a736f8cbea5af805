#!/usr/bin/env bash
# Make sure a fresh Debian machine can build the virtual environment: python3 with venv/pip.
set -euo pipefail
PYTHON=${1:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "installing python3 and python3-venv from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
fi
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"mtaserver needs Python 3.11 or newer, found {sys.version.split()[0]}")
PY
