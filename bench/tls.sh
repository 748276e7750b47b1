#!/usr/bin/env bash
# SIP over TLS: sipward against Kamailio 5.6's tls module, same run, same certificate,
# SIPp through stunnel4 (Debian's SIPp has no TLS of its own).
#
#   bench/tls.sh                                  # full run (the integrator's, on a quiet machine)
#   STEPS="200" NEW_STEPS="20" IDLE=200 bench/tls.sh   # a tiny run that shows it works
#
# Measures: REGISTER with digest per second over long-lived TLS connections; new TLS
# handshakes per second that each end in a registration; RSS with IDLE idle TLS
# connections; the time of a certificate reload under REGISTER load, with the failed
# registrations during it. Writes bench/out/tls/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for p in sip-tester kamailio kamailio-sqlite-modules kamailio-tls-modules stunnel4 openssl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3 4 5; do apt-get update -q >/dev/null && break || sleep $((i * 2)); done
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
# Thousands of idle connections need as many file descriptors (here and in the servers).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p sipward
exec python3 bench/tls.py "$@"
