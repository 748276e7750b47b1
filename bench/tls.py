"""SIP over TLS: sipward vs Kamailio's tls module, same run, same certificate.

SIPp (no TLS of its own on Debian) goes through stunnel4 in client mode, which verifies
the server with sipward's generated CA. Both servers present the same certificate and key
(sipward's DATA/tls/server.pem, made at its first start). Measured:

1. REGISTER with digest per second over long-lived TLS connections (SIPp `-t t1`: one
   connection, one TLS session, for the whole run), stepping the rate up like
   bench/register.py: a rate is sustained when every call succeeds within 12 s of a 10 s run.
2. New TLS handshakes per second that each end in a registration (SIPp `-t tn`: a new
   TCP connection per call, so stunnel makes a new TLS handshake per call).
3. RSS (and PSS, since Kamailio's processes share memory) with IDLE idle TLS
   connections, each of which has sent one OPTIONS.
4. A certificate reload under REGISTER load: sipward by SIGHUP (the server logs how long
   reading, checking and swapping took), Kamailio by `kamcmd tls.reload`; the failed
   registrations of the run around it must be zero.

Environment: STEPS (long-lived rates), NEW_STEPS (handshake rates), IDLE (connections),
RELOAD_RATE (REGISTER/s during the reload), SECONDS (per step).
"""

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import register as R  # noqa: E402  (the REGISTER benchmark's helpers)

ROOT = R.ROOT
OUT = os.path.join(ROOT, "bench", "out", "tls")
R.OUT = OUT
SIPWARD = R.SIPWARD
SCENARIO = R.SCENARIO
SECONDS = int(os.environ.get("SECONDS_PER_STEP", "10"))
R.SECONDS = SECONDS
STEPS = [int(x) for x in os.environ.get("STEPS", "1000 2000 3000 4000 5000 6000 8000 10000").split()]
NEW_STEPS = [int(x) for x in os.environ.get("NEW_STEPS", "100 200 400 600 800 1000 1500").split()]
IDLE = int(os.environ.get("IDLE", "5000"))
# sipward's /metrics, once it runs: each step reports the answers it could not queue.
SIPWARD_METRICS = None


def dropped_answers():
    """sipward's count of stream messages it could not queue for writing (None when not
    known): an answer dropped is a REGISTER SIPp waits for until its timeout."""
    if SIPWARD_METRICS is None:
        return None
    import urllib.request
    text = urllib.request.urlopen(SIPWARD_METRICS, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith('sipward_background_errors_total{task="tcp_write"}'):
            return int(float(line.split()[-1]))
    return None
RELOAD_RATE = int(os.environ.get("RELOAD_RATE", "500"))


def sipp(target, inf, rate, calls, label, transport):
    stat = os.path.join(OUT, f"{label}-{rate}.csv")
    if os.path.exists(stat):
        os.remove(stat)
    cmd = [
        "sipp", "-sf", SCENARIO, "-inf", inf, "-i", "127.0.0.1",
        "-p", str(R.free_port()), "-cp", str(R.free_port()), "-t", transport,
        "-r", str(rate), "-m", str(calls), "-l", str(max(calls, 1)),
        "-timeout", "60s", "-recv_timeout", "5000", "-nostdin",
        # A connection per call needs sockets below the open-file limit.
        "-max_socket", "10000",
        "-trace_stat", "-stf", stat, "-fd", "1", target,
    ]
    start = time.time()
    p = subprocess.Popen(cmd, cwd=OUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, stat, start


def step(transport):
    def run(label, target, inf, rate, pids):
        calls = rate * SECONDS
        tick = os.sysconf("SC_CLK_TCK")
        s0 = R.cpu_ticks(pids)
        d0 = dropped_answers() if label == "sipward" else None
        p, stat, start = sipp(target, inf, rate, calls, f"{label}-{transport}", transport)
        _, _, usage = os.wait4(p.pid, 0)
        elapsed = time.time() - start
        ok, failed = R.sipp_result(stat)
        d1 = dropped_answers() if d0 is not None else None
        return {
            "answers_dropped": None if d1 is None else d1 - d0,
            "server": label, "transport": transport, "rate": rate, "calls": calls,
            "ok": ok, "failed": failed, "elapsed_s": round(elapsed, 2),
            "server_cpu_pct": round(100 * (R.cpu_ticks(pids) - s0) / tick / elapsed),
            "sipp_cpu_pct": round(100 * (usage.ru_utime + usage.ru_stime) / elapsed),
            "sustained": failed == 0 and ok == calls and elapsed <= SECONDS + 2,
        }
    return run


def stunnel(name, tls_target, ca):
    port = R.free_port()
    conf = os.path.join(OUT, f"stunnel-{name}.conf")
    with open(conf, "w") as f:
        f.write(
            f"foreground = yes\npid =\ndebug = 3\noutput = {OUT}/stunnel-{name}.log\n"
            f"[sip]\nclient = yes\naccept = 127.0.0.1:{port}\nconnect = {tls_target}\n"
            f"CAfile = {ca}\nverifyChain = yes\ncheckIP = 127.0.0.1\n"
        )
    p = subprocess.Popen(["stunnel4", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit(f"stunnel4 did not listen; see {OUT}/stunnel-{name}.log")


def start_sipward(data):
    sip, tls = R.free_port(), R.free_port()
    log = open(os.path.join(OUT, "sipward.log"), "a")
    p = subprocess.Popen(
        [SIPWARD, "--data", data, "serve", "--sip", f"127.0.0.1:{sip}", "--sips", f"127.0.0.1:{tls}",
         "--http", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=log, text=True)
    return p, json.loads(p.stdout.readline())


def setup_sipward():
    data, inf = R.setup_sipward()
    # Every loopback address is the load generator here: no per-source connection caps.
    subprocess.run([SIPWARD, "--data", data, "allow", "add", "127.0.0.0/8", "--note", "benchmark clients"],
                   check=True, capture_output=True)
    return data, inf


def setup_kamailio(cert, key):
    db = R.kamailio_db([(n, pw) for n, _a, pw in R.users()])
    port = R.free_port()
    tls_cfg = os.path.join(OUT, "kamailio-tls.cfg")
    with open(tls_cfg, "w") as f:
        f.write(f"[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
                f"certificate = {cert}\nprivate_key = {key}\n")
    ctl = os.path.join(OUT, "kamailio_ctl")
    cfg = os.path.join(OUT, "kamailio.cfg")
    head = R.kamailio_head(port, db, ["tls", "ctl", "db_sqlite", "sl", "pv", "maxfwd", "siputils",
                                      "textops", "usrloc", "registrar", "auth", "auth_db"])
    head = head.replace("disable_tcp=yes\n", "enable_tls=yes\ntcp_children=2\ntcp_max_connections=65536\n"
                        "tls_max_connections=65536\ntcp_connection_lifetime=3600\n")
    head = head.replace(f"listen=udp:127.0.0.1:{port}\n", f"listen=tls:127.0.0.1:{port}\n")
    with open(cfg, "w") as f:
        f.write(head)
        f.write(f'modparam("tls", "config", "{tls_cfg}")\nmodparam("ctl", "binrpc", "unix:{ctl}")\n')
        f.write("""request_route {
    if (!is_method("REGISTER")) { sl_send_reply("405", "Method Not Allowed"); exit; }
    if (!auth_check("$fd", "subscriber", "1")) { auth_challenge("$fd", "1"); exit; }
    consume_credentials();
    if (!save("location")) { sl_reply_error(); }
}
""")
    check = subprocess.run(["kamailio", "-c", "-f", cfg], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"kamailio.cfg does not parse:\n{check.stderr}")
    inf = os.path.join(OUT, "kamailio.inf")
    with open(inf, "w") as f:
        f.write("SEQUENTIAL\n")
        for n, _a, pw in R.users():
            f.write(f"{n};[authentication username={n} password={pw}]\n")
    p = subprocess.Popen(["kamailio", "-f", cfg, "-DD", "-E", "-m", "256", "-M", "32", "-P",
                          os.path.join(OUT, "kamailio.pid")],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(OUT, "kamailio.log"), "w"))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.3) as s:
                ctx.wrap_socket(s).close()
            return p, f"127.0.0.1:{port}", inf, ctl
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise SystemExit(f"kamailio did not take a TLS connection within 10 s; see {OUT}/kamailio.log")


def memory_kib(pids):
    rss = pss = 0
    for pid in pids:
        try:
            rss += R.rss_kib(pid)
        except OSError:
            continue  # a server that died (Kamailio's tls module, past 400 handshakes/s)
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def idle_connections(target, n, ca):
    """Opens `n` TLS connections (verified with `ca`), each sends one OPTIONS; returns
    them (kept open by the caller) and how many failed."""
    host, port = target.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    held, failed = [], 0
    for i in range(n):
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
            t = ctx.wrap_socket(s)
            local = t.getsockname()
            t.sendall(
                f"OPTIONS sip:{host}:{port} SIP/2.0\r\nVia: SIP/2.0/TLS {local[0]}:{local[1]};branch=z9hG4bKidle{i}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:idle@{host}>;tag=i{i}\r\nTo: <sip:{host}>\r\n"
                f"Call-ID: idle{i}@bench\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".encode())
            held.append(t)
        except OSError:
            failed += 1
    return held, failed


def sipward_reload(p, log_path):
    """SIGHUP, then the server's own figure for the reload (microseconds)."""
    before = open(log_path).read().count('"event":"tls_reloaded"')
    p.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while time.time() < deadline:
        text = open(log_path).read()
        if text.count('"event":"tls_reloaded"') > before:
            micros = re.findall(r'"event":"tls_reloaded".*?"micros":(\d+)', text)
            return int(micros[-1]) if micros else None
        time.sleep(0.02)
    return None


def kamailio_reload(ctl):
    t0 = time.time()
    r = subprocess.run(["kamcmd", "-s", f"unix:{ctl}", "tls.reload"], capture_output=True, text=True)
    return round((time.time() - t0) * 1e6) if r.returncode == 0 else None


def under_load(label, target, inf, reload):
    """REGISTER at RELOAD_RATE over one TLS connection for SECONDS, a reload in the middle."""
    p, stat, _ = sipp(target, inf, RELOAD_RATE, RELOAD_RATE * SECONDS, f"{label}-reload", "t1")
    time.sleep(SECONDS / 2)
    micros = reload()
    p.wait()
    ok, failed = R.sipp_result(stat)
    return {"server": label, "rate": RELOAD_RATE, "ok": ok, "failed": failed, "reload_us": micros}


def main():
    import resource
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    data, sw_inf = setup_sipward()
    sw, ready = start_sipward(data)
    global SIPWARD_METRICS
    SIPWARD_METRICS = f"http://{ready['http']}/metrics"
    ca = os.path.join(data, "tls", "ca.pem")
    cert, key = os.path.join(data, "tls", "server.pem"), os.path.join(data, "tls", "server.key")
    kam, kam_tls, kam_inf, ctl = setup_kamailio(cert, key)
    kam_pids = [kam.pid] + R.children_of(kam.pid)
    tunnels = {}
    for name, target in [("sipward", ready["sip_tls"]), ("kamailio", kam_tls)]:
        tunnels[name] = stunnel(name, target, ca)
    servers = [
        ("sipward", tunnels["sipward"][1], sw_inf, [sw.pid]),
        ("kamailio", tunnels["kamailio"][1], kam_inf, kam_pids),
    ]
    long_lived, best_long = R.ladder(STEPS, servers, step("t1"))
    handshakes, best_new = R.ladder(NEW_STEPS, servers, step("tn"))

    reload = [
        under_load("sipward", tunnels["sipward"][1], sw_inf,
                   lambda: sipward_reload(sw, os.path.join(OUT, "sipward.log"))),
        under_load("kamailio", tunnels["kamailio"][1], kam_inf, lambda: kamailio_reload(ctl)),
    ]
    for r in reload:
        print(json.dumps(r), flush=True)

    idle = {}
    for name, target, pids, proc in [("sipward", ready["sip_tls"], [sw.pid], sw),
                                     ("kamailio", kam_tls, kam_pids, kam)]:
        if proc.poll() is not None:
            idle[name] = {"exited": proc.returncode}
            print(json.dumps({name: idle[name]}), flush=True)
            continue
        before = memory_kib(pids)
        held, failed = idle_connections(target, IDLE, ca)
        time.sleep(2)
        after = memory_kib(pids)
        idle[name] = {
            "connections": len(held), "failed": failed,
            "rss_mib_before": round(before[0] / 1024, 1), "rss_mib": round(after[0] / 1024, 1),
            "pss_mib_before": round(before[1] / 1024, 1), "pss_mib": round(after[1] / 1024, 1),
        }
        print(json.dumps({name: idle[name]}), flush=True)
        for t in held:
            t.close()

    for p, _ in tunnels.values():
        p.terminate()
        p.wait()
    kam.terminate()
    kam.wait()
    sw.terminate()
    sw.wait()
    summary = {
        "long_lived_register_per_s": best_long,
        "long_lived_ratio": round(best_long["sipward"] / best_long["kamailio"], 2) if best_long["kamailio"] else None,
        "new_handshakes_per_s": best_new,
        "idle_connections": idle,
        "reload_under_load": reload,
    }
    print(json.dumps(summary, indent=2))
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump({"long_lived": long_lived, "handshakes": handshakes, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
