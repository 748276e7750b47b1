"""Call setup rate through the proxy: sipward against Kamailio, same run, same scenario.

A SIPp UAC on 127.0.0.1 places full calls (INVITE, 407, ACK, INVITE with
Proxy-Authorization, 100, 180, 200, ACK, 200 ms, BYE, 200) to a callee whose phone is a
SIPp UAS on 127.0.0.3, registered beforehand. Kamailio 5.6 does the same job with
proxy_authorize (auth_db, HA1 precomputed), record_route, lookup("location"),
loose_route and t_relay, 2 children. Each rate runs 10 s; a rate is sustained when every
call succeeded within 12 s. Callers and callee are allow-listed in sipward (a load
generator is not an office: the guard's flood limits would silence it).
"""

import json
import urllib.request
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import register as R  # noqa: E402

OUT = os.path.join(R.ROOT, "bench", "out", "calls")
R.OUT = OUT
SIPP_DIR = os.path.join(R.ROOT, "tests", "sipp")
STEPS = [int(x) for x in os.environ.get("STEPS", "100 200 400 600 800 1000 1200 1500").split()]
SECONDS = 10
CALLER, CALLEE = "6001", "6002"
PW_CALLER, PW_CALLEE = "Pw6001Zq8xLmTr4wPyK7", "Pw6002Zq8xLmTr4wPyK7"


SIPWARD_HTTP = None


def run(*args):
    return subprocess.run([R.SIPWARD, *args], check=True, capture_output=True, text=True)


def register_callee(target, user, password, port):
    """Registers the callee from 127.0.0.3:port with SIPp, then frees the port."""
    inf = os.path.join(OUT, f"reg-{port}.inf")
    with open(inf, "w") as f:
        f.write(f"SEQUENTIAL\n{CALLEE};[authentication username={user} password={password}]\n")
    r = subprocess.run(["sipp", "-sf", os.path.join(SIPP_DIR, "register_auth.xml"), "-inf", inf,
                        "-i", "127.0.0.3", "-p", str(port), "-m", "1", "-nostdin", "-timeout", "10s",
                        target], cwd=OUT, capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"the callee did not register with {target}")


def start_uas(port):
    return subprocess.Popen(["sipp", "-sf", os.path.join(SIPP_DIR, "call_uas.xml"), "-i", "127.0.0.3",
                             "-p", str(port), "-mp", str(R.free_port()), "-nostdin", "-buff_size", "8388608"],
                            cwd=OUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_step(label, target, inf, rate, pids):
    calls = rate * SECONDS
    stat = os.path.join(OUT, f"{label}-{rate}.csv")
    tick = os.sysconf("SC_CLK_TCK")
    s0 = R.cpu_ticks(pids)
    start = time.time()
    p = subprocess.Popen(["sipp", "-sf", os.path.join(SIPP_DIR, "call_uac.xml"), "-inf", inf,
                          "-i", "127.0.0.1", "-p", str(R.free_port()), "-mp", str(R.free_port()),
                          "-r", str(rate), "-m", str(calls), "-l", str(max(calls, 1)),
                          # SIPp signs sip:HOST:PORT unless told; sipward holds uri= to the
                          # Request-URI (Kamailio does not check it): same work for both.
                          "-auth_uri", f"{CALLEE}@{target}",
                          "-timeout", "60s", "-recv_timeout", "5000", "-nostdin", "-buff_size", "8388608",
                          "-trace_err", "-trace_stat", "-stf", stat, "-fd", "1", target],
                         cwd=OUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.wait()
    elapsed = time.time() - start
    server_cpu = (R.cpu_ticks(pids) - s0) / tick
    ok, failed = R.sipp_result(stat)
    if label == "sipward" and SIPWARD_HTTP:
        # What the server counted at this rate (drops, refusals, tables), for diagnosis.
        try:
            with urllib.request.urlopen(f"http://{SIPWARD_HTTP}/metrics", timeout=5) as r:
                with open(os.path.join(OUT, f"sipward-{rate}.metrics"), "wb") as f:
                    f.write(r.read())
        except OSError as e:
            print(f"metrics not read: {e}", file=sys.stderr)
    sustained = failed == 0 and ok == calls and elapsed <= SECONDS + 2
    return {"server": label, "rate": rate, "calls": calls, "ok": ok, "failed": failed,
            "elapsed_s": round(elapsed, 2), "server_cpu_pct": round(100 * server_cpu / elapsed),
            "sustained": sustained}


def setup_sipward():
    data = os.path.join(OUT, "sipward-data")
    run("--data", data, "ext", "list")
    with open(os.path.join(data, "sipward.toml"), "w") as f:
        f.write('[sip]\ndigest_algorithms = ["MD5"]\n')
    run("--data", data, "ext", "add", CALLER, "--auth-id", "c" + CALLER, "--password", PW_CALLER)
    run("--data", data, "ext", "add", CALLEE, "--auth-id", "c" + CALLEE, "--password", PW_CALLEE)
    run("--data", data, "allow", "add", "127.0.0.0/8", "--note", "SIPp load generators")
    p, ready, _ = R.start_sipward(data)
    global SIPWARD_HTTP
    SIPWARD_HTTP = ready["http"]
    target = ready["sip_udp"]
    port = R.free_port()
    register_callee(target, "c" + CALLEE, PW_CALLEE, port)
    inf = os.path.join(OUT, "sipward.inf")
    with open(inf, "w") as f:
        f.write(f"SEQUENTIAL\n{CALLER};[authentication username=c{CALLER} password={PW_CALLER}];{CALLEE}\n")
    return p, target, inf, port


def setup_kamailio():
    db = R.kamailio_db([(CALLER, PW_CALLER), (CALLEE, PW_CALLEE)])
    port = R.free_port()
    cfg = os.path.join(OUT, "kamailio.cfg")
    with open(cfg, "w") as f:
        f.write(R.kamailio_head(port, db, ["db_sqlite", "tm", "sl", "rr", "pv", "maxfwd", "siputils",
                                           "textops", "usrloc", "registrar", "auth", "auth_db"]))
        f.write(f"""request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here"); exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    t_check_trans();
    if (is_method("REGISTER")) {{
        if (!auth_check("$fd", "subscriber", "1")) {{ auth_challenge("$fd", "1"); exit; }}
        consume_credentials();
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (is_method("INVITE")) {{
        if (!proxy_authorize("$fd", "subscriber")) {{ proxy_challenge("$fd", "1"); exit; }}
        consume_credentials();
        record_route();
        if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
        t_relay();
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}
""")
    check = subprocess.run(["kamailio", "-c", "-f", cfg], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"kamailio.cfg does not parse:\n{check.stderr}")
    pidfile = os.path.join(OUT, "kamailio.pid")
    p = subprocess.Popen(["kamailio", "-f", cfg, "-DD", "-E", "-m", "256", "-M", "32", "-P", pidfile],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(OUT, "kamailio.log"), "w"))
    time.sleep(1.5)
    target = f"127.0.0.1:{port}"
    uas_port = R.free_port()
    register_callee(target, CALLEE, PW_CALLEE, uas_port)
    inf = os.path.join(OUT, "kamailio.inf")
    with open(inf, "w") as f:
        f.write(f"SEQUENTIAL\n{CALLER};[authentication username={CALLER} password={PW_CALLER}];{CALLEE}\n")
    return p, target, inf, uas_port


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    sw, sw_target, sw_inf, sw_uas_port = setup_sipward()
    kam, kam_target, kam_inf, kam_uas_port = setup_kamailio()
    sw_uas, kam_uas = start_uas(sw_uas_port), start_uas(kam_uas_port)
    time.sleep(0.5)
    kam_pids = [kam.pid] + R.children_of(kam.pid)
    try:
        results, best = R.ladder(STEPS, [("sipward", sw_target, sw_inf, [sw.pid]),
                                         ("kamailio", kam_target, kam_inf, kam_pids)], run_step)
    finally:
        for p in (sw_uas, kam_uas, kam, sw):
            p.terminate()
            p.wait()
    summary = {"best_sustained_calls_per_s": best,
               "ratio": round(best["sipward"] / best["kamailio"], 2) if best["kamailio"] else None}
    print(json.dumps(summary, indent=2))
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump({"steps": results, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
