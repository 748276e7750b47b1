#!/usr/bin/env bash
# Call setup rate through the proxy (SIPp UAC -> proxy -> SIPp UAS, full call with BYE):
# sipward and Kamailio 5.6 (proxy_authorize + record_route + t_relay) in the same run.
#
#   bench/calls.sh                     # a few minutes
#   STEPS="200 400 800" bench/calls.sh
#
# Installs SIPp and Kamailio when missing, builds sipward in release mode, writes
# bench/out/calls/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for p in sip-tester kamailio kamailio-sqlite-modules; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3 4 5; do apt-get update -q >/dev/null && break || sleep $((i * 2)); done
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
sysctl -q -w net.core.rmem_max=8388608 2>/dev/null || echo "note: could not raise net.core.rmem_max" >&2
cargo build --release -q -p sipward
exec python3 bench/calls.py "$@"
