#!/bin/sh
# Install Synapse (a real Matrix homeserver) into its own venv for the Matrix adapter tests.
# A separate venv, so Synapse's pinned deps never fight ours. Idempotent; tests skip if this fails.
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${CHATOPS_SYNAPSE_VENV:-$ROOT/.venv-synapse}"
PY="${PY:-python3.11}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import synapse.app.homeserver" >/dev/null 2>&1; then
    exit 0
fi
if ! "$PY" -m venv "$VENV"; then
    echo "ensure_synapse: cannot create $VENV; Matrix tests will be skipped" >&2
    exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -m pip install -q "matrix-synapse==1.163.2"; then
    echo "ensure_synapse: cannot install matrix-synapse; Matrix tests will be skipped" >&2
    exit 0
fi
