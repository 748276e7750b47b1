"""What each defence of the door costs on the REGISTER rate (issue #17).

The REGISTER-with-digest ladder of bench/register.py (same SIPp scenario, same 1,000
users, same "sustained" rule), run once per configuration: the defaults, then each
defence the config can turn off or loosen, one at a time, each on a fresh copy of the
same data dir (so every variant makes new bindings, none only refreshes them). Kamailio
runs the same ladder once in the same session as the reference (KAMAILIO=0 skips it).

    bench/defences.sh                                  # full ladder (minutes per variant)
    STEPS="200" SECONDS_PER_STEP=2 bench/defences.sh   # a smoke run: shows it works

Writes bench/out/defences/report.json and prints one JSON line per step.
"""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import register as reg  # noqa: E402  (the ladder, SIPp and Kamailio set-up)

OUT = os.path.join(reg.ROOT, "bench", "out", "defences")
STEPS = [int(x) for x in os.environ.get("STEPS", "2000 4000 6000 8000 10000 12000 14000 16000").split()]

# (name, what it changes, the [guard]/[sip] lines that do it). SIPp registers from one
# address, allow-listed as in bench/register.py; the flood limits still count every
# packet of it (the class lookup is what an allow-listed source skips), so turning them
# "off" shows what counting costs.
VARIANTS = [
    ("defaults", "every defence on", ""),
    ("flood_off", "flood limits (per-source and per-prefix counting)",
     '[guard]\nflood_requests = "off"\n'),
    ("prefix_counting_24", "IPv4 counted per /24 as well (a second key per packet)",
     "[guard]\nipv4_prefix = 24\n"),
    ("distributed_guessing_off", "the per-account failure count (extension_failures)",
     '[guard]\nextension_failures = "off"\n'),
    ("weak_accounts_allowed", "the trusted-only rule for weak accounts",
     '[guard]\nweak_credentials = "allow"\n'),
    ("md5_only", "the second (SHA-256) challenge in every 401",
     '[sip]\ndigest_algorithms = ["MD5"]\n'),
]


def main():
    reg.OUT = OUT
    reg.SECONDS = int(os.environ.get("SECONDS_PER_STEP", "10"))
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    pristine, inf = reg.setup_sipward()
    only = set(os.environ.get("VARIANTS", "").split())
    results, best = [], {}
    for name, what, config in VARIANTS:
        if only and name not in only:
            continue
        data = os.path.join(OUT, f"data-{name}")
        shutil.copytree(pristine, data)
        with open(os.path.join(data, "sipward.toml"), "w") as f:
            f.write(config)
        sw, ready, _ = reg.start_sipward(data)
        try:
            steps, b = reg.ladder(STEPS, [(name, ready["sip_udp"], inf, [sw.pid])], reg.run_step)
        finally:
            sw.terminate()
            sw.wait()
        results += steps
        best[name] = {"change": what, "best_sustained_calls_per_s": b[name],
                      "cpu_pct_at_each_rate": {s["rate"]: s["server_cpu_pct"] for s in steps}}
    if os.environ.get("KAMAILIO", "1") != "0":
        kam, target, kam_inf = reg.setup_kamailio()
        try:
            steps, b = reg.ladder(STEPS, [("kamailio", target, kam_inf, [kam.pid] + reg.children_of(kam.pid))],
                                  reg.run_step)
        finally:
            kam.terminate()
            kam.wait()
        results += steps
        best["kamailio"] = {"change": "(reference)", "best_sustained_calls_per_s": b["kamailio"],
                            "cpu_pct_at_each_rate": {s["rate"]: s["server_cpu_pct"] for s in steps}}
    summary = {"steps": STEPS, "seconds_per_step": reg.SECONDS, "variants": best}
    print(json.dumps(summary, indent=2))
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump({"steps": results, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
