#!/usr/bin/env bash
# Re-Generate of 1,000 extensions with registered phones (files, NOTIFYs, queued mails)
# and welcome-mail throughput to a local aiosmtpd with STARTTLS and AUTH.
#
#   bench/regenerate.sh            # ~1 minute
#   N=2000 REPEAT=5 bench/regenerate.sh
#
# Installs SIPp and aiosmtpd when missing, builds sipward in release mode, writes
# bench/out/regenerate/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for p in sip-tester python3-aiosmtpd openssl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3 4 5; do apt-get update -q >/dev/null && break || sleep $((i * 2)); done
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release -q -p sipward
exec python3 bench/regenerate.py "$@"
