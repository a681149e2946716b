#!/usr/bin/env bash
# Idempotent set-up: a uv bootstrap under .state/, then the locked environment in .venv/.
# Re-running is a no-op unless pyproject.toml or uv.lock changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
UV_VERSION=0.13.9
stamp=.state/setup.stamp

if [[ -f $stamp && $stamp -nt uv.lock && $stamp -nt pyproject.toml && -x .venv/bin/python ]]; then
    echo "setup: environment is up to date (.venv)"
    exit 0
fi
command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2; exit 1; }

mkdir -p .state
if [[ ! -x .state/uv/bin/uv ]] || [[ "$(.state/uv/bin/uv --version)" != "uv $UV_VERSION"* ]]; then
    echo "setup: installing uv $UV_VERSION into .state/uv"
    "$PYTHON" -m venv .state/uv
    .state/uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
echo "setup: syncing .venv from uv.lock (torch, DVC, MLflow, SeaweedFS, ...)"
.state/uv/bin/uv sync --locked --python "$PYTHON"
# `dvc plots show/diff` pages that render offline: Vega from the npm registry, inlined once.
if ! .venv/bin/greenr plots-template; then
    echo "setup: warning: could not fetch Vega from the npm registry; dvc plots pages will load it from a CDN" >&2
fi
touch "$stamp"
echo "setup: done. Activate with: source .venv/bin/activate"
