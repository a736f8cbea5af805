#!/usr/bin/env bash
# Make sure a fresh Debian machine can build the virtual environment: python3 with venv/pip.
set -euo pipefail
PYTHON=${1:-python3}
need=()
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need+=(python3 python3-venv python3-pip)
fi
# What README.md's examples after `make run` use besides .venv: openssl (a certificate for the
# AUTH example) and curl (the admin API). tests/unit/test_readme.py checks the list.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing from Debian: ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"mtaserver needs Python 3.11 or newer, found {sys.version.split()[0]}")
PY
