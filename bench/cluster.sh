#!/usr/bin/env bash
# sipward on PostgreSQL (issue 21): REGISTER rate against SQLite (one node, then the same
# load split over 3 nodes), ban propagation p50/p99 between nodes, and start-to-ready
# of 1 and 3 nodes on 10,000 extensions and 10,000 bindings.
#
#   bench/cluster.sh                                  # release, full size
#   SIPWARD=target/debug/sipward STEPS="200 400" USERS=100 SECONDS=3 BANS=20 \
#     EXTENSIONS=500 bench/cluster.sh                 # a small proof that it works
#
# Installs SIPp and PostgreSQL when missing, builds sipward in release mode unless
# SIPWARD names a binary, and writes bench/out/cluster/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for p in sip-tester time; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3 4 5; do apt-get update -q >/dev/null && break || sleep $((i * 2)); done
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
sysctl -q -w net.core.rmem_max=8388608 2>/dev/null || echo "note: could not raise net.core.rmem_max" >&2
if [ -z "${SIPWARD:-}" ]; then
  cargo build --release -q -p sipward
fi
exec python3 bench/cluster.py "$@"
