#!/usr/bin/env bash
# REGISTER latency with and without the console listing every extension in a loop.
#
#   bench/console_load.sh                                  # 10,000 extensions, 500/s, 20 s phases
#   EXTENSIONS=1000 RATE=100 SECONDS=5 bench/console_load.sh   # a quick check
#   SIPWARD=/path/to/other/sipward bench/console_load.sh    # another build, same script
#
# Installs SIPp when missing, builds sipward in release mode (unless SIPWARD is given)
# and writes bench/out/console_load/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg-query -W -f='${Status}' sip-tester 2>/dev/null | grep -q "install ok installed"; then
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3 4 5; do apt-get update -q >/dev/null && break || sleep $((i * 2)); done
  apt-get install -y -q --no-install-recommends sip-tester >/dev/null
fi
sysctl -q -w net.core.rmem_max=8388608 2>/dev/null || echo "note: could not raise net.core.rmem_max" >&2
if [ -z "${SIPWARD:-}" ]; then
  cargo build --release -q -p sipward
fi
exec python3 bench/console_load.py "$@"
