"""REGISTER latency while the console lists every extension with its findings.

A data dir with EXTENSIONS extensions, every one with findings (password = number,
PIN = number), so `GET /api/v1/extensions` runs the whole audit each time. SIPp
registers USERS of them at a steady RATE for SECONDS (bench/register_timed.xml times
each registration from its first REGISTER to the final 200). Phases, in this order:
warm-up (not counted), quiet, console, quiet, console. In a "console" phase FETCHERS
clients fetch the extension list back to back for the whole phase. The report gives
the registration latency percentiles of each phase, failed registrations, and how
many lists were fetched and how long each took.
"""

import glob
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import register as R  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out", "console_load")
SIPWARD = os.environ.get("SIPWARD", os.path.join(ROOT, "target", "release", "sipward"))
SCENARIO = os.path.join(ROOT, "bench", "register_timed.xml")
EXTENSIONS = int(os.environ.get("EXTENSIONS", "10000"))
USERS = min(int(os.environ.get("USERS", "1000")), EXTENSIONS)
RATE = int(os.environ.get("RATE", "500"))
SECONDS = int(os.environ.get("SECONDS", "20"))
FETCHERS = int(os.environ.get("FETCHERS", "2"))


def number(i):
    return str(20000 + i)


def sw(data, *args, stdin=None):
    r = subprocess.run([SIPWARD, "--data", data, *args], capture_output=True, text=True, input=stdin)
    if r.returncode != 0:
        raise SystemExit(f"sipward {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def setup():
    data = os.path.join(OUT, "data")
    csv = os.path.join(OUT, "extensions.csv")
    with open(csv, "w") as f:
        f.write("number,auth_id,password,pin\n")
        for i in range(EXTENSIONS):
            n = number(i)
            # Weak on purpose: every row has findings (password and PIN equal the number).
            f.write(f"{n},a{n}x,{n},{n}\n")
    sw(data, "import", csv)
    # SIPp registers USERS phones from one address: allow-listed like an SBC (else the
    # flood limits and the weak-account rule would refuse it).
    sw(data, "allow", "add", "127.0.0.1/32", "--note", "SIPp load generator")
    token = sw(data, "admin", "token", "create", "bench").strip()
    inf = os.path.join(OUT, "users.inf")
    with open(inf, "w") as f:
        f.write("SEQUENTIAL\n")
        for i in range(USERS):
            n = number(i)
            f.write(f'{n};[authentication username=a{n}x password="{n}"]\n')
    return data, inf, token


def start(data):
    p = subprocess.Popen(
        [SIPWARD, "--data", data, "serve", "--sip", f"127.0.0.1:{R.free_port()}", "--http", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=open(os.path.join(OUT, "serve.log"), "w"), text=True)
    return p, json.loads(p.stdout.readline())


def fetch_list(addr, token):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    c.request("GET", "/api/v1/extensions", headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"GET /api/v1/extensions: {r.status} {body[:200]!r}")
    return len(json.loads(body))


class Console:
    """FETCHERS threads fetching the extension list back to back until stopped."""

    def __init__(self, http, token):
        self.http, self.token = http, token
        self.stop = threading.Event()
        self.times, self.errors, self.rows = [], [], None
        self.threads = [threading.Thread(target=self.loop) for _ in range(FETCHERS)]

    def loop(self):
        while not self.stop.is_set():
            t0 = time.time()
            try:
                self.rows = fetch_list(self.http, self.token)
                self.times.append(time.time() - t0)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                self.errors.append(str(e))
                time.sleep(0.1)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def register_phase(label, target, inf, seconds):
    cwd = os.path.join(OUT, label)
    os.makedirs(cwd)
    calls = RATE * seconds
    stat = os.path.join(cwd, "stat.csv")
    cmd = [
        "sipp", "-sf", SCENARIO, "-inf", inf, "-i", "127.0.0.1",
        "-p", str(R.free_port()), "-cp", str(R.free_port()), "-t", "u1",
        "-r", str(RATE), "-m", str(calls), "-l", str(calls),
        "-timeout", str(seconds * 3 + 30) + "s", "-recv_timeout", "5000", "-nostdin",
        "-buff_size", "8388608", "-trace_stat", "-stf", stat, "-fd", "1",
        "-trace_rtt", "-rtt_freq", "1", target,
    ]
    t0 = time.time()
    subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.time() - t0
    with open(stat) as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    head, last = lines[0].split(";"), lines[-1].split(";")
    ok, failed = int(last[head.index("SuccessfulCall(C)")]), int(last[head.index("FailedCall(C)")])
    ms = []
    for rtt in glob.glob(os.path.join(cwd, "*_rtt.csv")):
        with open(rtt) as f:
            for line in f.read().splitlines()[1:]:
                parts = line.split(";")
                if len(parts) >= 2:
                    try:
                        ms.append(float(parts[1]))
                    except ValueError:
                        pass
    ms.sort()
    return {
        "phase": label, "rate": RATE, "calls": calls, "ok": ok, "failed": failed,
        "elapsed_s": round(elapsed, 2), "timed": len(ms),
        "latency_ms": {p: percentile(ms, float(p[1:])) for p in ["p50", "p90", "p99", "p99.9"]}
        | {"max": ms[-1] if ms else None},
    }


def main():
    if not os.access(SIPWARD, os.X_OK):
        raise SystemExit(f"{SIPWARD} is not an executable (build it, or set SIPWARD)")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    data, inf, token = setup()
    p, ready = start(data)
    try:
        t0 = time.time()
        rows = fetch_list(ready["http"], token)
        one_list_s = time.time() - t0
        results = [register_phase("warmup", ready["sip_udp"], inf, max(2, USERS // RATE + 1))]
        for label in ["quiet-1", "console-1", "quiet-2", "console-2"]:
            if label.startswith("console"):
                with Console(ready["http"], token) as c:
                    r = register_phase(label, ready["sip_udp"], inf, SECONDS)
                times = sorted(c.times)
                r["console"] = {
                    "lists_fetched": len(times), "rows_per_list": c.rows, "errors": c.errors[:3],
                    "list_s": {"p50": percentile(times, 50), "max": times[-1] if times else None},
                }
            else:
                r = register_phase(label, ready["sip_udp"], inf, SECONDS)
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        p.terminate()
        p.wait()
    report = {
        "sipward": SIPWARD, "extensions": EXTENSIONS, "rows_listed": rows,
        "one_list_alone_s": round(one_list_s, 3), "users": USERS, "rate": RATE,
        "seconds": SECONDS, "fetchers": FETCHERS, "phases": results,
    }
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "phases"}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
