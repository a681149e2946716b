#!/usr/bin/env bash
# podman for building and running the project's images on a machine with no image registry:
#   1. podman, runc and mmdebstrap from apt (if missing);
#   2. configuration under .state/containers (runc, cgroupfs, file events, limits this machine allows,
#      overlay storage in the project), used through scripts/podman;
#   3. local stand-ins for the images the Dockerfiles pull (arguments; default: the serving image's), as
#      no registry can be reached: the Python image bootstrapped from Debian bookworm with mmdebstrap,
#      the uv image from uv's PyPI wheel.
# Idempotent: a re-run checks and exits in about a second; a stand-in is rebuilt only when its recipe
# (or the machine's extra CA certificates) changed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
conf_dir=$root/.state/containers
# The Dockerfiles whose base images are made here (arguments; default: the serving image's).
dockerfiles=("${@:-deploy/docker/serve.Dockerfile}")
SUDO=""
[[ $(id -u) == 0 ]] || SUDO=sudo

# 1. Packages.
missing=()
for cmd in podman runc mmdebstrap; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if (( ${#missing[@]} )); then
    echo "podman: installing ${missing[*]} with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Configuration (rewritten on every run: cheap, and a moved checkout gets its own paths).
mkdir -p "$conf_dir/storage" "$conf_dir/run" "$conf_dir/tmp"
write_if_changed() {  # path, content: keeps the mtime when nothing changed
    if [[ ! -f $1 ]] || [[ "$(cat "$1")" != "$2" ]]; then printf '%s\n' "$2" >"$1"; fi
}
# crun fails on this kernel's hybrid cgroups; there is no systemd to manage cgroups or journald to log
# to; raising the file and process limits above the machine's own is not permitted.
write_if_changed "$conf_dir/containers.conf" "[containers]
default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]

[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
events_logfile_path = \"$conf_dir/events.log\"
tmp_dir = \"$conf_dir/tmp\""
write_if_changed "$conf_dir/storage.conf" "[storage]
driver = \"overlay\"
graphroot = \"$conf_dir/storage\"
runroot = \"$conf_dir/run\""
# Short names resolve as Docker resolves them (docker.io/library/...), to the local stand-ins.
write_if_changed "$conf_dir/registries.conf" "unqualified-search-registries = [\"docker.io\"]
short-name-mode = \"permissive\""
# shellcheck source=scripts/podman
. scripts/podman

# 3. Base images: a stand-in for every image the Dockerfiles pull (FROM, COPY --from).
label=greenr.stand-in.recipe
current_recipe() { podman image inspect --format "{{ index .Labels \"$label\" }}" "$1" 2>/dev/null || true; }
pulled_images() {  # FROM and COPY --from images of the Dockerfiles, ARG defaults expanded, stages left out
    awk '
        function expand(ref,   name) {
            while (match(ref, /\$\{?[A-Za-z_][A-Za-z0-9_]*\}?/)) {
                name = substr(ref, RSTART, RLENGTH); gsub(/[${}]/, "", name)
                ref = substr(ref, 1, RSTART - 1) args[name] substr(ref, RSTART + RLENGTH)
            }
            return ref
        }
        FNR == 1 { delete args; delete stages }
        toupper($1) == "ARG" && index($2, "=") { split($2, kv, "="); args[kv[1]] = kv[2] }
        toupper($1) == "FROM" {
            i = 2; while ($i ~ /^--/) i++
            image = expand($i); if (toupper($(i + 1)) == "AS") stages[tolower($(i + 2))] = 1
            if (image != "scratch" && !(tolower(image) in stages)) print image
        }
        toupper($1) == "COPY" {
            for (i = 2; i <= NF && $i ~ /^--/; i++) if ($i ~ /^--from=/) {
                image = expand(substr($i, 8))
                if (!(tolower(image) in stages) && image !~ /^[0-9]+$/) print image
            }
        }' "$@" | sort -u
}
qualified() {  # the name Docker pulls for a short one: python:3.11 -> docker.io/library/python:3.11
    local first=${1%%/*}
    if [[ $1 != */* ]]; then echo "docker.io/library/$1"
    elif [[ $first == *.* || $first == *:* || $first == localhost ]]; then echo "$1"
    else echo "docker.io/$1"; fi
}
extra_certs=(/usr/local/share/ca-certificates/*.crt)
[[ -e ${extra_certs[0]} ]] || extra_certs=()

python_stand_in() {
    # Debian's python3 (3.11.2 in bookworm) stands in for the official image's Python; the official
    # image has `python`, C.UTF-8 and no EXTERNALLY-MANAGED marker, so the stand-in does too.
    local image=$1 recipe tarball started cert
    local debstrap=(
        --variant=minbase --mode=root --quiet --dpkgopt=force-unsafe-io
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*'
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED'
        --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" >"$1/etc/pip.conf"'
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
    )
    for cert in "${extra_certs[@]}"; do
        debstrap+=(--customize-hook="cp '$cert' \"\$1/usr/local/share/ca-certificates/\"")
    done
    (( ${#extra_certs[@]} == 0 )) || debstrap+=(--customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null 2>&1')
    recipe=$({ printf '%s\n' bookworm "${debstrap[@]}"; cat "${extra_certs[@]}" /dev/null; } | sha256sum | cut -c1-16)
    if [[ "$(current_recipe "$image")" == "$recipe" ]]; then
        echo "podman: $image is up to date (stand-in: Debian bookworm python3)"
        return
    fi
    echo "podman: bootstrapping $image from Debian bookworm (mmdebstrap: 1-4 minutes, once)"
    started=$SECONDS
    tarball=$conf_dir/tmp/python-rootfs.tar
    $SUDO mmdebstrap "${debstrap[@]}" bookworm "$tarball"
    podman import --quiet \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --change "LABEL $label=$recipe" \
        "$tarball" "$image" >/dev/null
    rm -f "$tarball"
    echo "podman: $image ready in $((SECONDS - started)) s"
}

uv_stand_in() {
    # uv's image holds the static binaries /uv and /uvx; the wheel on PyPI ships the same two.
    local image=$1 version=${1##*:} recipe work
    recipe="uv-wheel-$version-1"
    if [[ "$(current_recipe "$image")" == "$recipe" ]]; then
        echo "podman: $image is up to date (stand-in: uv's PyPI wheel)"
        return
    fi
    echo "podman: making $image from uv $version's PyPI wheel"
    work=$(mktemp -d "$conf_dir/tmp/uv.XXXXXX")
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
        --python-version 3.11 -d "$work/wheel" "uv==$version"
    python3 -m zipfile -e "$work"/wheel/uv-*.whl "$work/unpacked"
    mkdir -p "$work/rootfs"
    install -m 0755 "$work"/unpacked/uv-*.data/scripts/uv "$work"/unpacked/uv-*.data/scripts/uvx "$work/rootfs/"
    tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
    podman import --quiet --change "LABEL $label=$recipe" "$work/rootfs.tar" "$image" >/dev/null
    rm -rf "$work"
}

pulled=$(pulled_images "${dockerfiles[@]}")
for image in $pulled; do
    image=$(qualified "$image")
    case $image in
        docker.io/library/python:3.11*-bookworm) python_stand_in "$image" ;;
        ghcr.io/astral-sh/uv:[0-9]*) uv_stand_in "$image" ;;
        *)
            echo "podman: no local stand-in for $image (named in ${dockerfiles[*]}): no registry can be" \
                "reached here; use python:3.11*-bookworm or ghcr.io/astral-sh/uv:VERSION, or teach" \
                "scripts/setup-podman.sh to make it" >&2
            exit 1
            ;;
    esac
done
echo "podman: ready (scripts/podman build|run ..., storage in ${conf_dir#"$root"/})"
