#!/usr/bin/env bash
# Legitimate REGISTER-with-digest throughput while a banned source floods the server,
# against the same throughput without the flood; and the packets per second the ban
# path drops.
#
#   bench/flood.sh                      # ~4 minutes
#   STEPS="4000 8000" bench/flood.sh
#
# Installs SIPp when missing, builds sipward in release mode, writes
# bench/out/flood/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg-query -W -f='${Status}' sip-tester 2>/dev/null | grep -q "install ok installed"; then
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3 4 5; do apt-get update -q >/dev/null && break || sleep $((i * 2)); done
  apt-get install -y -q --no-install-recommends sip-tester >/dev/null
fi
sysctl -q -w net.core.rmem_max=8388608 2>/dev/null || echo "note: could not raise net.core.rmem_max" >&2
cargo build --release -q -p sipward
exec python3 bench/flood.py "$@"
