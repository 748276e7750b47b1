"""Backup, verify and restore of a data dir with N (10,000) extensions.

Each extension has a phone (MAC, Yealink model), so the data dir also holds N
provisioning files. Timed, REPEAT times (medians reported), wall clock of the whole
command: `backup create` with an age recipient and with a passphrase (age's scrypt,
tuned by age to about a second), `backup verify`, and `backup restore` into a new data
dir. The floor beside it: the same files packed by hand (`sqlite3 VACUUM INTO`, then
`tar | zstd -3 | age -r`), and unpacked by hand.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIPWARD = os.path.join(ROOT, "target", "release", "sipward")
OUT = os.path.join(ROOT, "bench", "out", "backup")
N = int(os.environ.get("N", "10000"))
REPEAT = int(os.environ.get("REPEAT", "3"))
PASSPHRASE = "bench passphrase, long enough"


def sw(data, *args, env=None):
    return subprocess.run([SIPWARD, "--data", data, *args], check=True, capture_output=True,
                          text=True, env=env)


def timed(fn):
    t = time.monotonic()
    out = fn()
    return time.monotonic() - t, out


def sh(script):
    subprocess.run(["sh", "-c", script], check=True, capture_output=True)


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    return total


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    data = os.path.join(OUT, "data")
    sw(data, "ext", "list")
    with open(os.path.join(data, "sipward.toml"), "w") as f:
        f.write('[sip]\ndomain = "pbx.example.com"\n[provisioning]\nbase_url = "http://pbx.example.com:8080"\n')
    csv = os.path.join(OUT, "phones.csv")
    with open(csv, "w") as f:
        f.write("number,name,email,mac,model\n")
        for i in range(N):
            f.write(f"{100000 + i},Desk {i},u{i}@example.com,02{i:010x},Yealink T46U\n")
    t, _ = timed(lambda: sw(data, "import", csv))
    print(f"imported {N} extensions with phones in {t:.1f} s", file=sys.stderr)
    key = os.path.join(OUT, "key.txt")
    subprocess.run(["age-keygen", "-o", key], check=True, capture_output=True)
    public = [l.split(": ")[1].strip() for l in open(key) if l.startswith("# public key")][0]
    env = dict(os.environ, SIPWARD_BACKUP_PASSPHRASE=PASSPHRASE)

    runs = {k: [] for k in ("create_recipient", "create_passphrase", "verify", "restore",
                            "by_hand_pack", "by_hand_unpack")}
    sizes = {}
    for r in range(REPEAT):
        rb = os.path.join(OUT, f"r{r}.swbak")
        t, out = timed(lambda: sw(data, "backup", "create", "--recipient", public, "--out", rb, "--json"))
        runs["create_recipient"].append(t)
        sizes["recipient"] = json.loads(out.stdout)["bytes"]
        pb = os.path.join(OUT, f"p{r}.swbak")
        t, out = timed(lambda: sw(data, "backup", "create", "--out", pb, "--json", env=env))
        runs["create_passphrase"].append(t)
        sizes["passphrase"] = json.loads(out.stdout)["bytes"]
        t, _ = timed(lambda: sw(data, "backup", "verify", rb, "--identity", key))
        runs["verify"].append(t)
        target = os.path.join(OUT, f"restored{r}")
        t, _ = timed(lambda: sw(target, "backup", "restore", rb, "--identity", key))
        runs["restore"].append(t)
        # The floor: the same content by hand.
        hand = os.path.join(OUT, f"hand{r}")
        os.makedirs(hand)
        hb = os.path.join(OUT, f"hand{r}.tar.zst.age")

        def pack():
            sh(f"sqlite3 '{data}/sipward.db' \"VACUUM INTO '{hand}/sipward.db'\" && "
               f"cp '{data}/secrets.key' '{data}/sipward.toml' '{hand}/' && "
               f"cp -r '{data}/provisioning' '{hand}/' && "
               f"tar -cf - -C '{hand}' . | zstd -q -3 -c | age -r {public} -o '{hb}'")
        t, _ = timed(pack)
        runs["by_hand_pack"].append(t)
        sizes["by_hand"] = os.path.getsize(hb)
        unpacked = os.path.join(OUT, f"unpacked{r}")
        os.makedirs(unpacked)
        t, _ = timed(lambda: sh(f"age -d -i '{key}' '{hb}' | zstd -dc | tar -xf - -C '{unpacked}'"))
        runs["by_hand_unpack"].append(t)
        for p in (target, hand, unpacked):
            shutil.rmtree(p)
        for p in (rb, pb, hb):
            os.remove(p)

    med = {k: round(statistics.median(v), 3) for k, v in runs.items()}
    report = {
        "extensions": N,
        "data_dir_bytes": du(data),
        "provisioning_files": len(os.listdir(os.path.join(data, "provisioning"))),
        "archive_bytes": sizes,
        "median_seconds": med,
        "runs_seconds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
    }
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
