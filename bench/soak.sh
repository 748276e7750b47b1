#!/usr/bin/env bash
# Soak and crash suite (issue 18): sipward under mixed load for SOAK_SECONDS (default
# 1800, after a warm-up of the nonce lifetime plus 40 s), then kill -9 mid-load and a
# restart; see bench/soak.py for what runs and what is checked.
#
#   bench/soak.sh                     # the full run (~37 minutes)
#   SOAK_SECONDS=60 bench/soak.sh     # the short form (the suite runs it: tests/it/soak.rs)
#
# Installs its peers when missing, builds sipward in release mode (SIPWARD=/path/to/sipward
# soaks another build), and writes bench/out/soak/report.json. Exits 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for p in sip-tester sipvicious age; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3 4 5; do apt-get update -q >/dev/null && break || sleep $((i * 2)); done
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
# sipward and SIPp ask for a 4 MiB UDP receive buffer; let the kernel grant it.
sysctl -q -w net.core.rmem_max=8388608 2>/dev/null || echo "note: could not raise net.core.rmem_max" >&2
if [ -z "${SIPWARD:-}" ]; then
  cargo build --release -q -p sipward
fi
exec python3 bench/soak.py "$@"
