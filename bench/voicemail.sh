#!/usr/bin/env bash
# Voicemail deposits under load: concurrent calls that each leave a 7 s message
# (SIPp plays Debian's g711a.pcap after the greeting), sipward's CPU and memory per
# call, whether every message holds every sample sent, and the same again while RTP
# floods every open port from a wrong address.
#
#   bench/voicemail.sh                    # release, 32 and 64 concurrent deposits
#   CALLS="8" PROFILE=debug bench/voicemail.sh   # a small run that shows it works
#
# Writes bench/out/voicemail/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for p in sip-tester sox tcpdump; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3 4 5; do apt-get update -q >/dev/null && break || sleep $((i * 2)); done
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo build --release -q -p sipward
  export SIPWARD=${SIPWARD:-target/release/sipward}
else
  cargo build -q -p sipward
  export SIPWARD=${SIPWARD:-target/debug/sipward}
fi
exec python3 bench/voicemail.py "$@"
