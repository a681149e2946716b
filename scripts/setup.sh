#!/usr/bin/env bash
# Idempotent set-up: a pinned uv under .state/uv, then the locked environment in .venv/
# (or in $UV_PROJECT_ENVIRONMENT, uv's own variable, e.g. .venv-3.12 beside the default one).
#
# The interpreter: PYTHON if set (a name on PATH or a path); else the one the venv was built with;
# else the newest of python3.13, python3.12, python3.11 on PATH; else `uv python install` fetches
# 3.13 where the network allows. Re-running is a no-op unless uv.lock, pyproject.toml or the
# interpreter changed (a new PYTHON, or the old interpreter gone or upgraded).
#
#   scripts/setup.sh [--dry-run]   --dry-run: say which interpreter and whether a sync is due; change nothing
set -euo pipefail
dry_run=false
[[ ${1:-} == --dry-run ]] && dry_run=true
cd "$(dirname "$0")/.."
source scripts/python.sh

UV_VERSION=0.13.9
venv=${UV_PROJECT_ENVIRONMENT:-.venv}
stamp=$venv/.greenr-setup
uv=.state/uv/bin/uv

stamped_python() { [[ -f $stamp ]] && sed -n 's/^python //p' "$stamp"; }

# "VERSION EXECUTABLE" of the interpreter to build the venv with.
choose_python() {
    local found previous
    if [[ -n ${PYTHON:-} ]]; then
        found=$(python_resolve "$PYTHON") || {
            echo "setup: PYTHON=$PYTHON does not run." >&2; python_help; return 1; }
        echo "$found"; return 0
    fi
    # Keep the interpreter the venv was built with while it still runs as the same version.
    if previous=$(stamped_python) && [[ -n $previous ]] && found=$(python_probe "${previous#* }") \
        && [[ $found == "$previous" ]]; then
        echo "$found"; return 0
    fi
    if found=$(python_find_newest); then echo "$found"; return 0; fi
    fetch_python
}

# No supported interpreter on PATH: let uv fetch one, unless downloads are off or fail (offline).
fetch_python() {
    local want=${GREENR_PYTHONS[0]} found
    echo "setup: no supported Python on PATH (tried $(python_names))." >&2
    if [[ ${UV_PYTHON_DOWNLOADS:-} == never || ${UV_OFFLINE:-} =~ ^(1|true)$ ]]; then
        python_help; return 1
    fi
    if $dry_run; then echo "setup: would try \`uv python install $want\`" >&2; return 1; fi
    echo "setup: trying \`uv python install $want\`" >&2
    if ensure_uv >&2 && "$uv" python install "$want" >&2 \
        && found=$(python_probe "$("$uv" python find --managed-python "$want")"); then
        echo "$found"; return 0
    fi
    echo "setup: \`uv python install $want\` failed (offline? it downloads from GitHub)." >&2
    python_help; return 1
}

# The pinned uv, bootstrapped with any Python 3 that runs (it only hosts pip; uv is a binary).
ensure_uv() {
    [[ -x $uv && "$("$uv" --version 2>/dev/null)" == "uv $UV_VERSION"* ]] && return 0
    local host=${python_exe:-}
    if [[ -z $host ]]; then
        host=$(python_probe python3 || python_probe python) || {
            echo "setup: no Python at all to install uv with" >&2; return 1; }
        host=${host#* }
    fi
    echo "setup: installing uv $UV_VERSION into .state/uv"
    mkdir -p .state
    rm -rf .state/uv
    "$host" -m venv .state/uv
    .state/uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
}

chosen=$(choose_python) || exit 1
python_version=${chosen%% *}
python_exe=${chosen#* }
if python_too_old "$python_version"; then
    echo "setup: $python_exe is Python $python_version; greenr needs $GREENR_PYTHON_MIN or newer." >&2
    python_help
    exit 1
fi
if ! python_supported "$python_version"; then
    echo "setup: warning: Python $python_version is newer than CI checks (${GREENR_PYTHONS[*]}); it may work." >&2
fi

wanted="python $chosen
uv.lock $(sha256sum uv.lock | cut -d' ' -f1)
pyproject.toml $(sha256sum pyproject.toml | cut -d' ' -f1)
bytecode compiled"
if [[ -f $stamp && "$(cat "$stamp")" == "$wanted" ]] && python_probe "$venv/bin/python" >/dev/null; then
    echo "setup: environment is up to date ($venv, Python $python_version)"
    exit 0
fi

if $dry_run; then
    echo "setup: would sync $venv from uv.lock with Python $python_version ($python_exe)"
    exit 0
fi
ensure_uv
echo "setup: syncing $venv from uv.lock with Python $python_version ($python_exe)"
# uv replaces the venv when it was built with another interpreter. Bytecode is compiled once here
# (uv does not by default): otherwise every process where PYTHONDONTWRITEBYTECODE is set, or whose
# venv is read-only, compiles what it imports from source again (torch: seconds per process).
"$uv" sync --locked --compile-bytecode --python "$python_exe"
got=$(python_probe "$venv/bin/python") || { echo "setup: $venv/bin/python does not run after uv sync" >&2; exit 1; }
if [[ ${got%% *} != "$python_version" ]]; then
    echo "setup: $venv has Python ${got%% *}, not $python_version; remove $venv and rerun" >&2
    exit 1
fi
# `dvc plots show/diff` pages that render offline: Vega from the npm registry, inlined once.
if ! "$venv/bin/greenr" plots-template; then
    echo "setup: warning: could not fetch Vega from the npm registry; dvc plots pages will load it from a CDN" >&2
fi
echo "$wanted" > "$stamp"
echo "setup: done ($venv, Python $python_version). Activate with: source $venv/bin/activate"
