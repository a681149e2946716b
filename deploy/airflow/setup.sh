#!/usr/bin/env bash
# Airflow 3 in its own venv (.state/airflow-venv): Airflow caps fastapi below the version the
# project's server uses, so the two cannot share one environment. Idempotent.
#
#   deploy/airflow/setup.sh              install from deploy/airflow/constraints.txt (repeatable)
#   deploy/airflow/setup.sh --refreeze   resolve apache-airflow afresh and rewrite the constraints
#
# Then: AIRFLOW_HOME=.state/airflow .state/airflow-venv/bin/airflow db migrate (the tests do it).
set -euo pipefail

AIRFLOW_VERSION=3.3.2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${AIRFLOW_VENV:-$root/.state/airflow-venv}"
constraints="$root/deploy/airflow/constraints.txt"
stamp="$venv/.greenr-constraints.sha256"

uv_bin="${UV:-$(command -v uv || true)}"
# Fall back to the uv that scripts/setup.sh installs for the project.
if [[ -z "$uv_bin" && -x "$root/.state/uv/bin/uv" ]]; then uv_bin="$root/.state/uv/bin/uv"; fi

wanted="$AIRFLOW_VERSION none"
if [[ -f "$constraints" ]]; then wanted="$AIRFLOW_VERSION $(sha256sum "$constraints" | cut -d' ' -f1)"; fi
if [[ "${1:-}" != "--refreeze" && -x "$venv/bin/airflow" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    echo "airflow venv up to date: $venv"
    exit 0
fi

echo "creating the airflow venv in $venv"
if [[ -n "$uv_bin" ]]; then
    "$uv_bin" venv --quiet --allow-existing --python 3.11 "$venv"
    install() { "$uv_bin" pip install --quiet --python "$venv/bin/python" "$@"; }
    freeze() { "$uv_bin" pip freeze --python "$venv/bin/python"; }
else
    python3.11 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    install() { "$venv/bin/python" -m pip install --quiet "$@"; }
    freeze() { "$venv/bin/python" -m pip freeze; }
fi

if [[ "${1:-}" == "--refreeze" || ! -f "$constraints" ]]; then
    install "apache-airflow==$AIRFLOW_VERSION"
    {
        echo "# Constraints for deploy/airflow/setup.sh: apache-airflow==$AIRFLOW_VERSION, Python 3.11."
        echo "# Regenerate with: deploy/airflow/setup.sh --refreeze"
        freeze | grep -v -E '^(-e |#)'
    } > "$constraints"
    echo "wrote $constraints"
else
    install "apache-airflow==$AIRFLOW_VERSION" --constraint "$constraints"
fi
echo "$AIRFLOW_VERSION $(sha256sum "$constraints" | cut -d' ' -f1)" > "$stamp"
"$venv/bin/airflow" version
