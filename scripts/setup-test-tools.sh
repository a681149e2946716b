#!/usr/bin/env bash
# System tools the test suite drives for real: Chromium (browser test), Prometheus/promtool
# (rules and a real scrape), Alertmanager/amtool (the drift alert's route to Airflow), wrk and hey
# (load tests). Installs only what is missing.
set -euo pipefail
missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v promtool >/dev/null || missing+=(prometheus)
command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
command -v wrk >/dev/null || missing+=(wrk)
command -v hey >/dev/null || missing+=(hey)
if (( ${#missing[@]} == 0 )); then
    echo "test tools: chromium, prometheus, alertmanager, wrk, hey present"
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
# Likewise prometheus-alertmanager's daemon (0.0.0.0:9093 and 9094); the tests start theirs on loopback.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus-alertmanager 2>/dev/null; then
    $SUDO systemctl stop prometheus-alertmanager || true
fi
echo "test tools: installed ${missing[*]}"
