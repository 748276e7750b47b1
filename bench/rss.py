"""RSS of `sipward serve` idle and with 10,000 bound contacts (the tail of
bench/register.py alone), per binary and environment, the binaries taking turns.

    python3 bench/rss.py before=/path/old/sipward after=target/release/sipward \
        after-arena1=target/release/sipward,MALLOC_ARENA_MAX=1

ROUNDS (default 2); WARM=1 starts each data dir once before the measured start (no
first-start work); LATE=SECONDS also reads the RSS that long after the registrations.
"""
import importlib.util, json, os, subprocess, sys, time, shutil
HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("reg", os.path.join(HERE, "register.py"))
reg = importlib.util.module_from_spec(spec); spec.loader.exec_module(reg)
reg.OUT = os.path.join(HERE, "out", "rss"); shutil.rmtree(reg.OUT, ignore_errors=True); os.makedirs(reg.OUT)
csv = os.path.join(reg.OUT, "10k.csv")
with open(csv, "w") as f:
    f.write("number,auth_id,password\n")
    for i in range(10000):
        f.write(f"{40000 + i},u{i}x10k,Pw{i}Zq8xLmTr4wPyK7\n")
inf = os.path.join(reg.OUT, "10k.inf")
with open(inf, "w") as f:
    f.write("SEQUENTIAL\n")
    for i in range(10000):
        f.write(f"{40000 + i};[authentication username=u{i}x10k password=Pw{i}Zq8xLmTr4wPyK7]\n")
runs = []
for arg in sys.argv[1:]:
    label, rest = arg.split("=", 1)
    parts = rest.split(",")
    runs.append((label, parts[0], dict(p.split("=", 1) for p in parts[1:])))
for rnd in range(int(os.environ.get("ROUNDS", "2"))):
    for label, binary, env in runs:
        reg.SIPWARD = binary
        big = os.path.join(reg.OUT, f"{label}-{rnd}")
        subprocess.run([binary, "--data", big, "import", csv], check=True, capture_output=True)
        reg.allow_load_generator(big)
        saved = dict(os.environ); os.environ.update(env)
        if os.environ.get("WARM"):
            p0, _r0, _ms0 = reg.start_sipward(big)
            time.sleep(1)
            p0.terminate(); p0.wait()
        p, r, ms = reg.start_sipward(big)
        os.environ.clear(); os.environ.update(saved)
        time.sleep(0.5)
        idle = reg.rss_kib(p.pid)
        proc, stat, _ = reg.sipp(r["sip_udp"], inf, 2000, 10000, f"bind-{label}-{rnd}")
        proc.wait()
        ok, failed = reg.sipp_result(stat)
        time.sleep(1.5)
        bound = reg.rss_kib(p.pid)
        late = None
        if os.environ.get("LATE"):
            time.sleep(int(os.environ["LATE"]))
            late = round(reg.rss_kib(p.pid) / 1024, 1)
        p.terminate(); p.wait()
        print(json.dumps({"label": label, "round": rnd, "ready_ms": round(ms), "ok": ok, "failed": failed,
                          "rss_idle_mib": round(idle / 1024, 1), "rss_10k_mib": round(bound / 1024, 1), "rss_late_mib": late}), flush=True)
