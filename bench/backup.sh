#!/usr/bin/env bash
# Backup, verify and restore of a data dir with 10,000 extensions (and 10,000 phone
# provisioning files), beside the same content packed by hand with sqlite3, tar, zstd
# and age (the floor: what the archive format itself costs).
#
#   bench/backup.sh                # ~2 minutes
#   N=20000 REPEAT=5 bench/backup.sh
#
# Installs age, sqlite3 and zstd when missing, builds sipward in release mode, writes
# bench/out/backup/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for p in age sqlite3 zstd tar; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3 4 5; do apt-get update -q >/dev/null && break || sleep $((i * 2)); done
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release -q -p sipward
exec python3 bench/backup.py "$@"
