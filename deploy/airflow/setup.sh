#!/usr/bin/env bash
# Airflow 3 in its own venv (.state/airflow-venv): Airflow caps fastapi below the version the
# project's server uses, so the two cannot share one environment. Idempotent.
#
#   deploy/airflow/setup.sh              install from deploy/airflow/constraints.txt (repeatable)
#   deploy/airflow/setup.sh --refreeze   resolve apache-airflow afresh and rewrite the constraints
#
# The constraints are one universal file (markers where a pin applies to some Pythons only), valid
# for every Python the project supports, like uv.lock. The venv's interpreter: AIRFLOW_PYTHON if
# set, else the one the project's venv (.venv, or $UV_PROJECT_ENVIRONMENT) was built with, else
# the newest supported one on PATH (scripts/python.sh).
#
# Then: AIRFLOW_HOME=.state/airflow .state/airflow-venv/bin/airflow db migrate (the tests do it).
set -euo pipefail

AIRFLOW_VERSION=3.3.2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$root/scripts/python.sh"
venv="${AIRFLOW_VENV:-$root/.state/airflow-venv}"
constraints="$root/deploy/airflow/constraints.txt"
stamp="$venv/.greenr-constraints.sha256"
project_venv="${UV_PROJECT_ENVIRONMENT:-.venv}"
[[ $project_venv == /* ]] || project_venv="$root/$project_venv"

uv_bin="${UV:-$(command -v uv || true)}"
# Fall back to the uv that scripts/setup.sh installs for the project.
if [[ -z "$uv_bin" && -x "$root/.state/uv/bin/uv" ]]; then uv_bin="$root/.state/uv/bin/uv"; fi

# "VERSION EXECUTABLE" of the interpreter for the Airflow venv.
if [[ -n ${AIRFLOW_PYTHON:-} ]]; then
    python=$(python_resolve "$AIRFLOW_PYTHON") || { echo "AIRFLOW_PYTHON=$AIRFLOW_PYTHON does not run" >&2; exit 1; }
elif base=$("$project_venv/bin/python" -c 'import sys; print(sys._base_executable)' 2>/dev/null); then
    python=$(python_probe "$base")
else
    python=$(python_find_newest) || { python_help; exit 1; }
fi
python_version=${python%% *}
python_exe=${python#* }

refreeze() {
    [[ -n "$uv_bin" ]] || { echo "--refreeze needs uv (run make setup first)" >&2; exit 1; }
    {
        echo "# Constraints for deploy/airflow/setup.sh: apache-airflow==$AIRFLOW_VERSION, Python >= $GREENR_PYTHON_MIN"
        echo "# (universal: one file for every supported Python). Regenerate with: deploy/airflow/setup.sh --refreeze"
        echo "apache-airflow==$AIRFLOW_VERSION" | "$uv_bin" pip compile --quiet --universal \
            --python-version "$GREENR_PYTHON_MIN" --no-header --no-annotate -
    } > "$constraints.tmp"
    mv "$constraints.tmp" "$constraints"
    echo "wrote $constraints"
}

if [[ "${1:-}" == "--refreeze" || ! -f "$constraints" ]]; then refreeze; fi

wanted="$AIRFLOW_VERSION $(sha256sum "$constraints" | cut -d' ' -f1) python $python_version bytecode"
if [[ -x "$venv/bin/airflow" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]] \
    && python_probe "$venv/bin/python" >/dev/null; then
    echo "airflow venv up to date: $venv (Python $python_version)"
    exit 0
fi

echo "creating the airflow venv in $venv with Python $python_version ($python_exe)"
if [[ -n "$uv_bin" ]]; then
    # A venv of another interpreter is replaced, not patched.
    if [[ -f "$venv/pyvenv.cfg" ]] && ! python_probe "$venv/bin/python" | grep -q "^$python_version "; then
        rm -rf "$venv"
    fi
    "$uv_bin" venv --quiet --allow-existing --python "$python_exe" "$venv"
    # Bytecode compiled once (pip does it by default, uv does not): see scripts/setup.sh.
    install() { "$uv_bin" pip install --quiet --compile-bytecode --python "$venv/bin/python" "$@"; }
else
    rm -rf "$venv"
    "$python_exe" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    install() { "$venv/bin/python" -m pip install --quiet "$@"; }
fi
install "apache-airflow==$AIRFLOW_VERSION" --constraint "$constraints"
echo "$wanted" > "$stamp"
"$venv/bin/airflow" version
