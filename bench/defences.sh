#!/usr/bin/env bash
# What each defence costs on the REGISTER rate: the bench/register.sh ladder once per
# configuration (defaults, then each defence off), Kamailio as the reference.
#
#   bench/defences.sh                                  # full run (long: run on a quiet machine)
#   STEPS="200" SECONDS_PER_STEP=2 bench/defences.sh   # smoke run
#
# Installs its peers (SIPp, Kamailio with SQLite modules) when missing, builds sipward
# in release mode, and writes bench/out/defences/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for p in sip-tester kamailio kamailio-sqlite-modules time; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3 4 5; do apt-get update -q >/dev/null && break || sleep $((i * 2)); done
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
# Both servers ask for a 4 MiB UDP receive buffer; let the kernel grant it.
sysctl -q -w net.core.rmem_max=8388608 2>/dev/null || echo "note: could not raise net.core.rmem_max" >&2
cargo build --release -q -p sipward
exec python3 bench/defences.py "$@"
