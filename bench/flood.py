"""Throughput under a flood from a banned source.

sipward holds 1,000 extensions. SIPp (127.0.0.1, allow-listed like an SBC) runs the
REGISTER/401/REGISTER/200 scenario for 10 s per step at rising rates, first alone, then
while a flooder on 127.0.0.66 (banned with the CLI beforehand) sends REGISTERs as fast
as one process can. A rate is sustained when every call succeeded within 12 s. The
drop rate is the growth of sipward_dropped_banned_total over the flooded steps.
With PIN=1 the flooder runs on core 1 and sipward and SIPp on core 0, in both phases:
the flooder's core stands in for the network, and the ratio shows what the flood costs
the server's core. Without PIN all three share both cores (the flooder alone takes one).
"""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import register as R  # noqa: E402

PIN = os.environ.get("PIN") == "1"
OUT = os.path.join(R.ROOT, "bench", "out", "flood-pinned" if PIN else "flood")
R.OUT = OUT
DEFAULT_STEPS = "2000 3000 4000 5000 6000 7000 8000 9000" if PIN else "4000 6000 8000 10000 12000 14000 16000 18000"
STEPS = [int(x) for x in os.environ.get("STEPS", DEFAULT_STEPS).split()]


def pin(pid, core):
    if PIN:
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True, capture_output=True)


FLOOD_FROM = "127.0.0.66"


def flood(target, stop, sent):
    pin(os.getpid(), 1)
    host, port = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((FLOOD_FROM, 0))
    local = s.getsockname()
    msg = (
        f"REGISTER sip:{host} SIP/2.0\r\nVia: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bKflood;rport\r\n"
        f"From: <sip:3000@{host}>;tag=f\r\nTo: <sip:3000@{host}>\r\nCall-ID: flood\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:3000@{local[0]}:{local[1]}>\r\nUser-Agent: flooder\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    dest = (host, int(port))
    n = 0
    while not stop.is_set():
        for _ in range(1000):
            s.sendto(msg, dest)
        n += 1000
    sent.value = n


def metric(http, name):
    body = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise SystemExit(f"metric {name} missing")


def main():
    import shutil
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    data, inf = R.setup_sipward()
    subprocess.run([R.SIPWARD, "--data", data, "ban", "add", FLOOD_FROM, "--for", "1h", "--reason", "benchmark flooder"],
                   check=True, capture_output=True)
    sw, ready, _ = R.start_sipward(data)
    pin(sw.pid, 0)
    if PIN:
        original = R.sipp

        def pinned_sipp(*args):
            p, stat, start = original(*args)
            pin(p.pid, 0)
            return p, stat, start

        R.sipp = pinned_sipp
    target, http = ready["sip_udp"], ready["http"]
    results = {"alone": [], "flooded": []}
    best = {"alone": 0, "flooded": 0}
    drops = []
    for label in ["alone", "flooded"]:
        for rate in STEPS:
            stop, sent = multiprocessing.Event(), multiprocessing.Value("q", 0)
            flooder = None
            d0 = metric(http, "sipward_dropped_banned_total")
            t0 = time.time()
            if label == "flooded":
                flooder = multiprocessing.Process(target=flood, args=(target, stop, sent))
                flooder.start()
                time.sleep(0.5)  # the flood is at full rate before SIPp starts
            r = R.run_step(label, target, inf, rate, [sw.pid])
            if flooder:
                stop.set()
                flooder.join()
                secs = time.time() - t0
                dropped = metric(http, "sipward_dropped_banned_total") - d0
                r["flood_sent_per_s"] = round(sent.value / secs)
                r["dropped_per_s"] = round(dropped / secs)
                drops.append(r["dropped_per_s"])
            results[label].append(r)
            print(json.dumps(r), flush=True)
            if not r["sustained"]:
                break
            best[label] = rate
    sw.terminate()
    sw.wait()
    summary = {
        "pinned": PIN,
        "best_sustained_calls_per_s": best,
        "ratio_flooded_to_alone": round(best["flooded"] / best["alone"], 2) if best["alone"] else None,
        "dropped_per_s_max": max(drops) if drops else 0,
    }
    print(json.dumps(summary, indent=2))
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump({"steps": results, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
