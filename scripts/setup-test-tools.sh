#!/usr/bin/env bash
# System tools the test suite drives for real: Chromium (browser test), Prometheus/promtool
# (rules and a real scrape), wrk (load test). Installs only what is missing.
set -euo pipefail
missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v promtool >/dev/null || missing+=(prometheus)
command -v wrk >/dev/null || missing+=(wrk)
if (( ${#missing[@]} == 0 )); then
    echo "test tools: chromium, prometheus, wrk present"
    exit 0
fi
SUDO=""
[[ $(id -u) == 0 ]] || SUDO=sudo
echo "test tools: installing ${missing[*]} with apt-get"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian prometheus package starts a daemon on 0.0.0.0:9090; the tests start their own on loopback.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus || true
fi
pkill -x prometheus 2>/dev/null || true
echo "test tools: installed ${missing[*]}"
