#!/usr/bin/env bash
# Measures `sipward import` and `sipward audit --json` over N extensions (default 100,000).
#
#   bench/audit.sh [N]
#
# Release build. One in ten extensions gets weak explicit credentials (password = number,
# trivial PIN, SIP ID = number); the rest get generated ones, like a real install.
# Prints wall time and peak RSS for each step; the data goes to bench/out/ (ignored by git).
set -euo pipefail
N=${1:-100000}
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || apt-get install -y -q time >/dev/null
cargo build --release -q -p sipward
BIN=target/release/sipward
OUT=bench/out/audit-$N
rm -rf "$OUT" && mkdir -p "$OUT"
CSV=$OUT/ext.csv
python3 - "$N" "$CSV" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write("number,name,email,password,pin,sip_id\n")
    for i in range(n):
        num = str(100000 + i)
        if i % 10 == 0:
            f.write(f"{num},User {i},u{i}@example.com,{num},{num},{num}\n")
        else:
            f.write(f"{num},User {i},u{i}@example.com,,,\n")
PY
measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$OUT/time" "$@" > "$OUT/$label.out" 2> "$OUT/$label.err"
  read -r secs kib < "$OUT/time"
  printf '%-22s %8.2f s   peak RSS %6d MiB\n' "$label" "$secs" $((kib / 1024))
}
$BIN --data "$OUT/data" ext list > /dev/null 2>&1   # create the data dir outside the timing
measure "import ($N rows)" $BIN --data "$OUT/data" import "$CSV" --json
for i in 1 2 3; do
  measure "audit --json (run $i)" $BIN --data "$OUT/data" audit --json
done
python3 - "$OUT/audit --json (run 3).out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("findings:", len(r["findings"]), "summary:", r["summary"])
PY
