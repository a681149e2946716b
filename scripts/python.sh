# Which Pythons the project supports and how to find one. Sourced by scripts/setup.sh,
# deploy/airflow/setup.sh and .ci/run (bash), so the list and the search live in one place.

# Newest first: the order in which an interpreter is picked when PYTHON is not set.
# CI checks all three (README, "Supported platforms"). pyproject.toml allows newer ones too.
GREENR_PYTHONS=(3.13 3.12 3.11)
GREENR_PYTHON_MIN=3.11

# python_probe EXE: print "VERSION ABSOLUTE_EXECUTABLE" (e.g. "3.12.1 /usr/bin/python3.12") when EXE
# runs; nothing and status 1 when it does not. Running it, not `command -v`, is the test: a pyenv
# shim for a version that is installed but not selected exists on PATH and fails when run.
python_probe() {
    local out
    out=$("$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3], sys.executable)' 2>/dev/null) || return 1
    [[ -n $out ]] || return 1
    echo "$out"
}

# python_minor 3.12.1 -> 3.12
python_minor() { local v=$1; echo "${v%.*}"; }

# python_supported VERSION: 0 when VERSION is one CI checks (3.11-3.13).
python_supported() {
    local minor s
    minor=$(python_minor "$1")
    for s in "${GREENR_PYTHONS[@]}"; do [[ $minor == "$s" ]] && return 0; done
    return 1
}

# python_too_old VERSION: 0 when VERSION is below requires-python.
python_too_old() {
    local minor
    minor=$(python_minor "$1")
    [[ $(printf '%s\n%s\n' "$minor" "$GREENR_PYTHON_MIN" | sort -V | head -1) != "$GREENR_PYTHON_MIN" ]]
}

# python_from_pyenv NAME: for NAME like python3.12 whose pyenv shim refuses to run (the version is
# installed but not selected), the newest installed 3.12.x under pyenv's root. An explicit request
# names a version; pyenv having it is enough.
python_from_pyenv() {
    local name=$1 minor root candidate
    [[ $name =~ ^python(3\.[0-9]+)$ ]] || return 1
    minor=${BASH_REMATCH[1]}
    command -v pyenv >/dev/null 2>&1 || return 1
    root=$(pyenv root 2>/dev/null) || return 1
    candidate=$(ls -d "$root"/versions/"$minor".*/bin/"$name" 2>/dev/null | sort -V | tail -1)
    [[ -n $candidate ]] || return 1
    python_probe "$candidate"
}

# python_resolve NAME_OR_PATH: "VERSION EXECUTABLE" for an explicit request (PYTHON=...).
python_resolve() {
    python_probe "$1" || python_from_pyenv "$1"
}

# python_find_newest: "VERSION EXECUTABLE" of the newest supported interpreter on PATH
# (python3.13, python3.12, python3.11, then python3 if it is one of them; see python_names).
python_find_newest() {
    local v found
    for v in "${GREENR_PYTHONS[@]}"; do
        if found=$(python_probe "python$v"); then echo "$found"; return 0; fi
    done
    if found=$(python_probe python3) && python_supported "${found%% *}"; then echo "$found"; return 0; fi
    return 1
}

# python_help: which versions work and how to point at one (after the caller's own reason).
python_help() {
    local newest=${GREENR_PYTHONS[0]} oldest=${GREENR_PYTHONS[-1]} i text=""
    for (( i = ${#GREENR_PYTHONS[@]} - 1; i > 0; i-- )); do text+="${GREENR_PYTHONS[i]}, "; done
    text="${text%, } or $newest"
    cat >&2 <<EOF
greenr needs Python $text (CI checks each; newer ones may work but are unchecked).
  - point at one:  PYTHON=/path/to/python$oldest make run   (or a name on PATH: PYTHON=python$oldest;
    with pyenv, PYTHON=python$oldest also finds an installed $oldest that pyenv has not selected), or
  - install one:   python.org, your package manager, pyenv, or \`uv python install $newest\`.
EOF
}

# python_names: the names python_find_newest tries, for messages.
python_names() {
    local v
    for v in "${GREENR_PYTHONS[@]}"; do printf 'python%s, ' "$v"; done
    echo python3
}
