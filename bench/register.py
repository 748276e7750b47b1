"""REGISTER-with-digest load: sipward vs Kamailio, stepping the rate up.

For each server and each rate, SIPp runs the scenario tests/sipp/register_auth.xml
(REGISTER, 401, REGISTER with digest, 200) for 10 seconds over 1,000 users. A rate is
sustained when every call succeeded and the run took at most 12 s. CPU of SIPp and of
the server is recorded beside each figure (all three share the same two cores).
Also measured: sipward's RSS with 10,000 bound contacts, and start-to-ready time.
"""

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out", "register")
# SIPWARD=/path/to/sipward measures another build (say, the previous commit's) with the
# same script.
SIPWARD = os.environ.get("SIPWARD", os.path.join(ROOT, "target", "release", "sipward"))
SCENARIO = os.path.join(ROOT, "tests", "sipp", "register_auth.xml")
USERS = 1000
SECONDS = 10
STEPS = [int(x) for x in os.environ.get("STEPS", "2000 4000 6000 8000 10000 12000 14000 16000 18000 20000").split()]
KAM_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
# ONE_CORE=1 gives each server the same CPU budget: the server under test (sipward, or every
# Kamailio process) on CPU 1, SIPp on CPU 0. Without it all three share both cores and
# SIPp's own ceiling (~16,000 REGISTER calls/s here) caps both servers alike.
ONE_CORE = os.environ.get("ONE_CORE") == "1"


def pinned(cmd, cpu):
    return ["taskset", "-c", str(cpu)] + cmd if ONE_CORE else cmd


def free_port():
    while True:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total


def children_of(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def sipp(target, csv_path, rate, calls, label):
    stat = os.path.join(OUT, f"{label}-{rate}.csv")
    if os.path.exists(stat):
        os.remove(stat)
    cmd = [
        "sipp", "-sf", SCENARIO, "-inf", csv_path, "-i", "127.0.0.1",
        "-p", str(free_port()), "-cp", str(free_port()), "-t", "u1",
        "-r", str(rate), "-m", str(calls), "-l", str(max(calls, 1)),
        "-timeout", "60s", "-recv_timeout", "5000", "-nostdin", "-buff_size", "8388608",
        "-trace_stat", "-stf", stat, "-fd", "1", target,
    ]
    start = time.time()
    p = subprocess.Popen(pinned(cmd, 0), cwd=OUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, stat, start


def sipp_result(stat):
    with open(stat) as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    head, last = lines[0].split(";"), lines[-1].split(";")
    col = lambda n: int(last[head.index(n)])
    return col("SuccessfulCall(C)"), col("FailedCall(C)")


def run_step(label, target, csv_path, rate, server_pids):
    calls = rate * SECONDS
    tick = os.sysconf("SC_CLK_TCK")
    s0 = cpu_ticks(server_pids)
    p, stat, start = sipp(target, csv_path, rate, calls, label)
    _, _, usage = os.wait4(p.pid, 0)
    p.returncode = 0
    elapsed = time.time() - start
    server_cpu = (cpu_ticks(server_pids) - s0) / tick
    sipp_cpu = usage.ru_utime + usage.ru_stime
    ok, failed = sipp_result(stat)
    sustained = failed == 0 and ok == calls and elapsed <= SECONDS + 2
    return {
        "server": label, "rate": rate, "calls": calls, "ok": ok, "failed": failed,
        "elapsed_s": round(elapsed, 2), "server_cpu_pct": round(100 * server_cpu / elapsed),
        "sipp_cpu_pct": round(100 * sipp_cpu / elapsed), "sustained": sustained,
    }


def users():
    return [(str(3000 + i), f"user{i}x", f"Pw{i}Zq8xLmTr4wPyK7") for i in range(USERS)]


def start_sipward(data):
    port = free_port()
    t0 = time.time()
    p = subprocess.Popen(pinned([SIPWARD, "--data", data, "serve", "--sip", f"127.0.0.1:{port}", "--http", "127.0.0.1:0"], 1),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready = json.loads(p.stdout.readline())
    return p, ready, (time.time() - t0) * 1000


def setup_sipward():
    data = os.path.join(OUT, "sipward-data")
    csv = os.path.join(OUT, "sipward-users.csv")
    with open(csv, "w") as f:
        f.write("number,auth_id,password\n")
        for n, a, pw in users():
            f.write(f"{n},{a},{pw}\n")
    subprocess.run([SIPWARD, "--data", data, "import", csv], check=True, capture_output=True)
    allow_load_generator(data)
    inf = os.path.join(OUT, "sipward.inf")
    with open(inf, "w") as f:
        f.write("SEQUENTIAL\n")
        for n, a, pw in users():
            f.write(f"{n};[authentication username={a} password={pw}]\n")
    return data, inf


def allow_load_generator(data):
    """SIPp registers thousands of phones a second from one address: no office does
    that, an SBC in front of many does, and such an address is allow-listed (else the
    guard's flood limits, 300 requests/s for a trusted source, would silence it)."""
    subprocess.run([SIPWARD, "--data", data, "allow", "add", "127.0.0.1/32", "--note", "SIPp load generator"],
                   check=True, capture_output=True)


def kamailio_db(subscribers):
    """Kamailio's SQLite database with (number, password) subscribers, HA1 precomputed
    for the realm 127.0.0.1."""
    db = os.path.join(OUT, "kamailio.db")
    con = sqlite3.connect(db)
    for script in ["standard-create.sql", "auth_db-create.sql"]:
        con.executescript(open(f"/usr/share/kamailio/db_sqlite/{script}").read())
    for n, pw in subscribers:
        ha1 = hashlib.md5(f"{n}:127.0.0.1:{pw}".encode()).hexdigest()
        con.execute("INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES (?, '127.0.0.1', ?, ?, '')", (n, pw, ha1))
    con.commit()
    return db


def kamailio_head(port, db, modules):
    """The common head of the benchmarks' kamailio.cfg: one UDP listener, 2 children,
    auth_db on SQLite with precomputed HA1s, usrloc in memory."""
    loads = "".join(f'loadmodule "{m}.so"\n' for m in modules)
    return f"""#!KAMAILIO
debug=0
log_stderror=yes
children=2
disable_tcp=yes
listen=udp:127.0.0.1:{port}
maxbuffer=4194304
mpath="{KAM_MODULES}/"
{loads}modparam("usrloc", "db_mode", 0)
modparam("auth_db", "db_url", "sqlite://{db}")
modparam("auth_db", "calculate_ha1", 0)
modparam("auth_db", "password_column", "ha1")
modparam("auth_db", "load_credentials", "")
"""


def setup_kamailio():
    db = kamailio_db([(n, pw) for n, _a, pw in users()])
    port = free_port()
    cfg = os.path.join(OUT, "kamailio.cfg")
    with open(cfg, "w") as f:
        f.write(kamailio_head(port, db, ["db_sqlite", "sl", "pv", "maxfwd", "siputils", "textops",
                                         "usrloc", "registrar", "auth", "auth_db"]))
        f.write(f"""request_route {{
    if (!is_method("REGISTER")) {{ sl_send_reply("405", "Method Not Allowed"); exit; }}
    if (!auth_check("$fd", "subscriber", "1")) {{ auth_challenge("$fd", "1"); exit; }}
    consume_credentials();
    if (!save("location")) {{ sl_reply_error(); }}
}}
""")
    inf = os.path.join(OUT, "kamailio.inf")
    with open(inf, "w") as f:
        f.write("SEQUENTIAL\n")
        for n, _a, pw in users():
            f.write(f"{n};[authentication username={n} password={pw}]\n")
    pidfile = os.path.join(OUT, "kamailio.pid")
    p = subprocess.Popen(pinned(["kamailio", "-f", cfg, "-DD", "-E", "-m", "128", "-M", "16", "-P", pidfile], 1),
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(OUT, "kamailio.log"), "w"))
    # -DD keeps the main process in the foreground with its children.
    check = subprocess.run(["kamailio", "-c", "-f", cfg], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"kamailio.cfg does not parse:\n{check.stderr}")
    deadline = time.time() + 10
    answered = False
    while time.time() < deadline and not answered:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        via = f"Via: SIP/2.0/UDP 127.0.0.1:{s.getsockname()[1]};branch=z9hG4bKx"
        s.sendto(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n" + via.encode() + b"\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", ("127.0.0.1", port))
        try:
            answered = b"SIP/2.0 405" in s.recv(2000)
        except OSError:
            time.sleep(0.1)
    if not answered:
        p.kill()
        raise SystemExit("kamailio did not answer a probe within 10 s; see bench/out/register/kamailio.log")
    return p, f"127.0.0.1:{port}", inf


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ladder(steps, servers, step):
    """Runs `step(label, target, inf, rate, pids)` for each server at each rate, rising,
    until a server fails a rate (then it is left out). Returns every step's result and
    each server's highest sustained rate."""
    results, best = [], {s[0]: 0 for s in servers}
    failed = {s[0]: False for s in servers}
    for rate in steps:
        for label, target, inf, pids in servers:
            if failed[label]:
                continue
            r = step(label, target, inf, rate, pids)
            results.append(r)
            print(json.dumps(r), flush=True)
            if r["sustained"]:
                best[label] = rate
            else:
                failed[label] = True
        if all(failed.values()):
            break
    return results, best


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    data, sw_inf = setup_sipward()
    sw, ready, _ = start_sipward(data)
    kam, kam_target, kam_inf = setup_kamailio()
    kam_pids = [kam.pid] + children_of(kam.pid)
    results, best = ladder(STEPS, [
        ("sipward", ready["sip_udp"], sw_inf, [sw.pid]),
        ("kamailio", kam_target, kam_inf, kam_pids),
    ], run_step)
    kam.terminate()
    kam.wait()
    sw.terminate()
    sw.wait()

    # RSS with 10,000 bound contacts, and start-to-ready times.
    big = os.path.join(OUT, "sipward-10k")
    csv = os.path.join(OUT, "10k.csv")
    with open(csv, "w") as f:
        f.write("number,auth_id,password\n")
        for i in range(10000):
            f.write(f"{40000 + i},u{i}x10k,Pw{i}Zq8xLmTr4wPyK7\n")
    subprocess.run([SIPWARD, "--data", big, "import", csv], check=True, capture_output=True)
    allow_load_generator(big)
    inf = os.path.join(OUT, "10k.inf")
    with open(inf, "w") as f:
        f.write("SEQUENTIAL\n")
        for i in range(10000):
            f.write(f"{40000 + i};[authentication username=u{i}x10k password=Pw{i}Zq8xLmTr4wPyK7]\n")
    readies = []
    for _ in range(5):
        p, _r, ms = start_sipward(big)
        readies.append(ms)
        p.terminate()
        p.wait()
    p, r, _ = start_sipward(big)
    rss_idle = rss_kib(p.pid)
    proc, stat, _ = sipp(r["sip_udp"], inf, 2000, 10000, "bind10k")
    proc.wait()  # 10,000 registrations at 2,000/s
    ok, failed = sipp_result(stat)
    time.sleep(1.5)
    rss_bound = rss_kib(p.pid)
    p.terminate()
    p.wait()
    summary = {
        "best_sustained_calls_per_s": best,
        "ratio": round(best["sipward"] / best["kamailio"], 2) if best["kamailio"] else None,
        "bind_10k": {"ok": ok, "failed": failed, "rss_idle_mib": round(rss_idle / 1024, 1), "rss_10k_contacts_mib": round(rss_bound / 1024, 1)},
        "start_to_ready_ms": [round(x) for x in readies],
    }
    print(json.dumps(summary, indent=2))
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump({"steps": results, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
