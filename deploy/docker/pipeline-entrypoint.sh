#!/usr/bin/env bash
# Entry point of the pipeline image (also used by the Kubernetes training Job).
#
#   GIT_REPO / GIT_REF   clone this repository at this ref into $GREENR_WORKSPACE/repo and run there
#   (else)               run in $GREENR_WORKSPACE if it holds a checkout (compose mounts one),
#                        else in a copy of the project baked into the image
#   DVC_S3_ENDPOINT      endpoint of the DVC remote `minio` (e.g. http://minio:9000)
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   credentials of the object store
#   DATA_SOURCE          where `greenr ingest` reads images when `dvc pull` finds none
#
# `dvc-pipeline` (the default command) = data present (pull or ingest) -> dvc repro -> dvc push.
# Any other command runs as is, inside the chosen checkout.
set -euo pipefail

log() { printf '%s pipeline: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

workspace="${GREENR_WORKSPACE:-/workspace}"
if [[ -n "${GIT_REPO:-}" ]]; then
    target="$workspace/repo"
    if [[ ! -d "$target/.git" ]]; then
        log "cloning $GIT_REPO at ${GIT_REF:-HEAD}"
        git clone --quiet ${GIT_REF:+--branch "$GIT_REF"} "$GIT_REPO" "$target"
    fi
elif [[ -f "$workspace/dvc.yaml" ]]; then
    target="$workspace"
else
    target="$workspace/repo"
    if [[ ! -f "$target/dvc.yaml" ]]; then
        log "no GIT_REPO and no checkout in $workspace: using the project baked into the image"
        cp -a /opt/greenr "$target"
    fi
fi
cd "$target"
export GREENR_ROOT="$target"

if [[ ! -d .git ]]; then
    # A copy without git history: DVC still runs, with no SCM.
    dvc config --local core.no_scm true
fi
if [[ -n "${DVC_S3_ENDPOINT:-}" ]]; then
    dvc remote modify --local minio endpointurl "$DVC_S3_ENDPOINT"
fi

if [[ "${1:-dvc-pipeline}" != "dvc-pipeline" ]]; then
    exec "$@"
fi

if [[ ! -d data ]] || [[ -z "$(ls -A data 2>/dev/null)" ]]; then
    log "no data/ yet: dvc pull"
    if ! dvc pull --quiet data.dvc; then
        if [[ -n "${DATA_SOURCE:-}" ]]; then
            log "nothing to pull: greenr ingest (DATA_SOURCE=$DATA_SOURCE)"
            greenr ingest
        else
            log "dvc pull failed and DATA_SOURCE is not set: cannot get the images"
            exit 2
        fi
    fi
fi
log "dvc repro"
dvc repro
log "promotion gate"
greenr promote --base "${PROMOTE_BASE:-main}"
log "dvc push"
dvc push
log "done"
