"""Re-Generate of 1,000 extensions with phones, and welcome-mail throughput.

sipward holds 1,000 extensions, each with a phone (MAC, Yealink model) and an email
address; SIPp has registered all of them (so every one gets a grace window and a
check-sync NOTIFY). `sipward ext regenerate --all` is timed (new credentials, 1,000
provisioning files written atomically, 1,000 mails queued in the outbox, re-fetch
requests stored), and the running server's NOTIFYs are timed until the
1,000th is sent. Then `sipward mail send` delivers the 1,000 queued mails to a local
aiosmtpd with STARTTLS and AUTH (the test suite's server) and is timed.
Runs REPEAT times (default 3); medians are reported.
"""

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import register as R  # noqa: E402

OUT = os.path.join(R.ROOT, "bench", "out", "regenerate")
R.OUT = OUT
N = int(os.environ.get("N", "1000"))
REPEAT = int(os.environ.get("REPEAT", "3"))
SMTP_USER, SMTP_PASSWORD = "pbx", "Smtp-Bench-Secret-42"
PYTHON = "/usr/bin/python3"


def metric(http, name):
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(line.split()[1])
    raise KeyError(name)


def run(*args, **kw):
    return subprocess.run([R.SIPWARD, *args], check=True, capture_output=True, text=True, **kw)


def smtp_server():
    d = os.path.join(OUT, "smtp")
    os.makedirs(d, exist_ok=True)
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    p = lambda n: os.path.join(d, n)
    for cmd in (
        ["req", "-x509", *ec, "-days", "2", "-subj", "/CN=bench CA", "-keyout", p("ca.key"), "-out", p("ca.pem")],
        ["req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", p("key.pem"), "-out", p("cert.csr")],
        ["x509", "-req", "-days", "2", "-in", p("cert.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
         "-CAcreateserial", "-extfile", ext, "-out", p("cert.pem")],
    ):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    script = os.path.join(R.ROOT, "tests", "smtp", "server.py")
    proc = subprocess.Popen([PYTHON, script, "127.0.0.1", "0", p("cert.pem"), p("key.pem"), SMTP_USER,
                             SMTP_PASSWORD, p("mail")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(proc.stdout.readline().split()[1])
    return proc, port, p("ca.pem"), p("mail")


def main():
    os.makedirs(OUT, exist_ok=True)
    data = os.path.join(OUT, f"data-{int(time.time())}")
    base = ('[sip]\ndomain = "pbx.example.com"\ndigest_algorithms = ["MD5"]\n'
            '[provisioning]\nbase_url = "http://pbx.example.com:8080"\n')
    users = [(str(4000 + i), f"desk{i}k", f"Pw{i}Zq8xLmTr4wPyK7", f"02000{i:07x}") for i in range(N)]
    csv = os.path.join(OUT, "phones.csv")
    with open(csv, "w") as f:
        f.write("number,auth_id,password,email,mac,model\n")
        for n, a, pw, mac in users:
            f.write(f"{n},{a},{pw},u{n}@example.com,{mac},Yealink T46U\n")
    run("--data", data, "ext", "list")
    with open(os.path.join(data, "sipward.toml"), "w") as f:
        f.write(base)
    run("--data", data, "import", csv)
    R.allow_load_generator(data)
    server, ready, _ = R.start_sipward(data)
    http, sip = ready["http"], ready["sip_udp"]
    inf = os.path.join(OUT, "phones.inf")
    with open(inf, "w") as f:
        f.write("SEQUENTIAL\n")
        for n, a, pw, _ in users:
            f.write(f"{n};[authentication username={a} password={pw}]\n")
    p, stat, _ = R.sipp(sip, inf, 500, N, "register")
    p.wait()
    ok, failed = R.sipp_result(stat)
    assert (ok, failed) == (N, 0), (ok, failed)
    deadline = time.time() + 10
    while time.time() < deadline:
        rows = json.loads(run("--data", data, "ext", "show", users[-1][0], "--json").stdout)
        if rows["registrations"]:
            break
        time.sleep(0.1)
    time.sleep(1.5)  # every binding written behind (once a second)

    smtp, port, ca, maildir = smtp_server()
    runs = []
    try:
        for r in range(REPEAT):
            sent0 = metric(http, "sipward_notify_sent_total")
            t0 = time.time()
            out = run("--data", data, "ext", "regenerate", "--all", "--json")
            t_cli = time.time() - t0
            items = json.loads(out.stdout)["regenerated"]
            phones = [i for i in items if i["files"]["status"] == "written"]
            queued = [i for i in items if i["mail"]["status"] == "queued"]
            resync = [i for i in items if i["resync"]]
            while metric(http, "sipward_notify_sent_total") - sent0 < len(resync) and time.time() - t0 < 30:
                time.sleep(0.01)
            t_notify = time.time() - t0
            notified = metric(http, "sipward_notify_sent_total") - sent0
            # Mail throughput: only this run's mails are due (earlier ones were superseded or sent).
            with open(os.path.join(data, "sipward.toml"), "w") as f:
                f.write(base + f'[mail]\nsmtp_host = "127.0.0.1"\nsmtp_port = {port}\nusername = "{SMTP_USER}"\n'
                        f'password = "{SMTP_PASSWORD}"\nfrom = "pbx@example.com"\nca_file = "{ca}"\n')
            t1 = time.time()
            mailed = json.loads(run("--data", data, "mail", "send", "--json").stdout)
            t_mail = time.time() - t1
            with open(os.path.join(data, "sipward.toml"), "w") as f:
                f.write(base)
            sent = sum(1 for m in mailed if m["status"] == "sent")
            row = {"run": r + 1, "extensions": len(items), "files_written": len(phones), "mails_queued": len(queued),
                   "notify_sent": notified, "regenerate_s": round(t_cli, 3), "until_last_notify_s": round(t_notify, 3),
                   "mails_sent": sent, "mail_send_s": round(t_mail, 3),
                   "mails_per_s": round(sent / t_mail, 1) if t_mail else None}
            print(json.dumps(row), flush=True)
            runs.append(row)
    finally:
        smtp.terminate()
        server.terminate()
        server.wait()
    med = lambda k: statistics.median(x[k] for x in runs)
    report = {"n": N, "runs": runs, "median_regenerate_s": med("regenerate_s"),
              "median_until_last_notify_s": med("until_last_notify_s"), "median_mails_per_s": med("mails_per_s")}
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
