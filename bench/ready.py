"""Start-to-ready time of `sipward serve` on a data dir with 10,000 extensions.

    python3 bench/ready.py [BINARY ...]      # default: target/release/sipward

For each binary: imports 10,000 extensions into a fresh data dir (with that binary),
then starts `serve` RUNS times (default 5) and measures the time from exec to the JSON
ready line; ROUNDS rounds (default 2), the binaries taking turns within each round, so
that a shared machine's load falls on all of them alike. With two binaries, the first is
the baseline and the second also opens a copy of the baseline's data dir once (the
one-time upgrade step), timed, before its own runs. Also the CPU time of each start
(user + system, exec to ready line and SIGKILL: no shutdown work), and per binary the
median of both and its ratio to the baseline's.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out", "ready")
N = int(os.environ.get("N", "10000"))
RUNS = int(os.environ.get("RUNS", "5"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def data_dir(binary, name):
    data = os.path.join(OUT, name)
    csv = os.path.join(OUT, "10k.csv")
    with open(csv, "w") as f:
        f.write("number,auth_id,password\n")
        for i in range(N):
            f.write(f"{40000 + i},u{i}x10k,Pw{i}Zq8xLmTr4wPyK7\n")
    t0 = time.time()
    subprocess.run([binary, "--data", data, "import", csv], check=True, capture_output=True)
    return data, (time.time() - t0) * 1000


def ready_ms(binary, data, cpu=None):
    t0 = time.time()
    p = subprocess.Popen(
        [binary, "--data", data, "serve", "--sip", f"127.0.0.1:{free_port()}", "--http", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    json.loads(p.stdout.readline())
    ms = (time.time() - t0) * 1000
    p.kill()
    _, _, usage = os.wait4(p.pid, 0)
    p.returncode = -9
    if cpu is not None:
        cpu.append(round((usage.ru_utime + usage.ru_stime) * 1000, 1))
    return ms


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
    binaries = sys.argv[1:] or [os.path.join(ROOT, "target", "release", "sipward")]
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    report = []
    baseline_data = None
    datas = []
    for n, binary in enumerate(binaries):
        data, import_ms = data_dir(binary, f"data-{n}")
        datas.append(data)
        entry = {"binary": binary, "import_ms": round(import_ms), "ready_ms": [], "cpu_ms": []}
        if n == 0:
            baseline_data = data
        else:
            upgraded = os.path.join(OUT, f"upgraded-{n}")
            shutil.copytree(baseline_data, upgraded)
            t0 = time.time()
            subprocess.run([binary, "--data", upgraded, "ext", "list", "--json"], check=True,
                           capture_output=True)
            entry["first_open_of_baseline_data_dir_ms"] = round((time.time() - t0) * 1000)
            entry["upgraded_ready_ms"] = [round(ready_ms(binary, upgraded)) for _ in range(RUNS)]
        report.append(entry)
    for _ in range(ROUNDS):
        for binary, data, entry in zip(binaries, datas, report):
            cpu = []
            entry["ready_ms"].append([round(ready_ms(binary, data, cpu)) for _ in range(RUNS)])
            entry["cpu_ms"].append(cpu)
    for entry in report:
        entry["median_ready_ms"] = median([x for r in entry["ready_ms"] for x in r])
        entry["median_cpu_ms"] = median([x for r in entry["cpu_ms"] for x in r])
        entry["ready_ratio_to_first"] = round(entry["median_ready_ms"] / report[0]["median_ready_ms"], 2)
        entry["cpu_ratio_to_first"] = round(entry["median_cpu_ms"] / report[0]["median_cpu_ms"], 2)
    print(json.dumps(report))
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
