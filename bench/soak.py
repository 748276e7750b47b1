"""Soak and crash suite (issue 18): sipward under mixed load, all at once, then kill -9.

    bench/soak.sh                          # 30 minutes (SOAK_SECONDS=1800), release build
    SOAK_SECONDS=60 python3 bench/soak.py  # the short form CI runs (crates/sipward/tests/it/soak.rs)

One data dir with 5,000 extensions plus callers, a PSTN gateway and churn numbers. Load,
all at the same time, for a warm-up (until the 4,500 SIPp phones have all registered
once) and then SOAK_SECONDS:

- SIPp (127.0.0.2, allow-listed like an SBC) registers and refreshes 4,500 extensions;
- 500 tracked phones (a Python user agent here, 16 addresses in 127.0.1.0/24 and
  127.0.2.0/24, not allow-listed) register, refresh and move between addresses; every
  200 is logged with its time, so the crash check knows exactly what was promised;
- SIPp calls extension to extension (a SIPp UAS registered as 6002) and out through a
  route to a SIPp PSTN gateway (challenging, verifying sipward's digest);
- svwar and svcrack (they send from 127.0.0.1 whatever -b says) and a flood from 16
  other loopback addresses;
- CLI changes: ext add, ext remove, ext regenerate, allow add, ban add;
- scheduled backups (`[backup] interval_secs`);
- console page loads (a logged-in administrator, 127.0.0.4).

At the start (after the warm-up) and at the end, and every SAMPLE_EVERY seconds in
between: RSS, open fds, threads, every table gauge of /metrics and the write-behind
backlog. Then the load runs on, the server is killed with SIGKILL mid-load and started
again on the same data dir, and the store is checked: bans, allow lists, extensions and
CLI changes all there; no new or moved registration that got its 200 lost; refreshes
lost only from the last second of write-behind (measured: the age of each lost one).

Writes bench/out/soak/report.json (and report.md); exits 1 when a check fails. The
checks and their tolerances are in `checks()` below, each with why.
"""

import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import http.client
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import register as R  # noqa: E402

OUT = os.environ.get("SOAK_OUT", os.path.join(R.ROOT, "bench", "out", "soak"))
R.OUT = OUT
SIPWARD = os.environ.get("SIPWARD", R.SIPWARD)
SIPP_DIR = os.path.join(R.ROOT, "tests", "sipp")


def env_num(name, default):
    return float(os.environ.get(name, default))


SOAK_SECONDS = env_num("SOAK_SECONDS", 1800)
SAMPLE_EVERY = env_num("SAMPLE_EVERY", 30 if SOAK_SECONDS >= 600 else 5)
REG_RATE = env_num("REG_RATE", 150)           # SIPp REGISTER calls/s (each two transactions)
TRACKED_OPS = env_num("TRACKED_OPS", 40)      # tracked phones' REGISTER calls/s, all together
TRACKED_EXPIRES = int(env_num("TRACKED_EXPIRES", 120))
MOVE_SHARE = env_num("MOVE_SHARE", 0.15)      # share of tracked operations that move the phone
CALL_RATE = env_num("CALL_RATE", 10)          # extension-to-extension calls/s
TRUNK_RATE = env_num("TRUNK_RATE", 1)         # calls/s out through the gateway
FLOOD_PPS = env_num("FLOOD_PPS", 3000)        # flood packets/s over 16 addresses
CHURN_EVERY = env_num("CHURN_EVERY", 10)      # seconds between CLI change rounds
BACKUP_EVERY = int(env_num("BACKUP_EVERY", 300 if SOAK_SECONDS >= 600 else 20))
CONSOLE_EVERY = env_num("CONSOLE_EVERY", 1)   # seconds between console page rounds
ATTACK_EVERY = env_num("ATTACK_EVERY", 30)    # seconds between SIPVicious rounds
KILL_AFTER = env_num("KILL_AFTER", 8)         # seconds of load after the soak before kill -9
# The nonce lifetime bounds the longest-lived table (the nc tracker keeps each nonce's
# count this long). The default config's 300 s in the full run; the short form sets the
# shortest allowed, 30 s, so that the tracker reaches its plateau within the warm-up.
NONCE_LIFETIME = int(env_num("NONCE_LIFETIME", 300 if SOAK_SECONDS >= 600 else 30))
# Warm-up: until the SIPp phones have all registered once and every table entry made
# at the start has lived out its longest lifetime (the nonce lifetime; transactions 32 s
# after their answer, Timer J/L/M): from then on the tables hold what the load keeps
# alive, and "flat" can be asked of them.
WARMUP = env_num("WARMUP", 0)

BULK, TRACKED = 4500, 500
BULK_BASE, TRACKED_BASE = 40000, 45000
CALLER, CALLEE = "6001", "6002"
TRUNK_CALLERS = [str(6100 + i) for i in range(50)]
NATIONAL = "0301234567"
GW_LOGIN = ("gw-pstn-7", "Gw7-pQ2v-Xk9m-Lr4t")
SBC = "127.0.0.2"            # SIPp: allow-listed
CALLEE_IP = "127.0.0.3"
CONSOLE_IP = "127.0.0.4"
METRICS_IP = "127.0.0.5"
GATEWAY_IP = "127.0.0.7"
FLOODERS = [f"127.0.0.{64 + i}" for i in range(16)]
TRACKED_IPS = [(f"127.0.1.{k + 1}", f"127.0.2.{k + 1}") for k in range(8)]
ADMIN_PASSWORD = "Soak-Admin-Vq7x-Lp3m-Zr8t"
CONFIG = """[sip]
digest_algorithms = ["MD5"]
nonce_lifetime = {nonce_lifetime}
[dialplan]
country_code = "49"
international_prefix = "00"
national_prefix = "0"
emergency_numbers = ["112", "110"]
[backup]
interval_secs = {backup_every}
keep = 3
recipient = "{recipient}"
"""


def pw(number):
    return f"Pw{number}Zq8xLmTr4wPyK7"


def auth_id(number):
    return f"u{number}x"


def cli(data, *args, stdin=None, check=True):
    r = subprocess.run([SIPWARD, "--data", data, *args], capture_output=True, text=True, input=stdin)
    if check and r.returncode != 0:
        raise RuntimeError(f"sipward {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def now():
    return time.time()


# ---------------------------------------------------------------------------------------
# The server


class Server:
    def __init__(self, data, sip_port, http_port):
        self.data, self.sip_port, self.http_port = data, sip_port, http_port
        self.proc = None
        self.log = open(os.path.join(OUT, "server.log"), "a")

    def start(self):
        t0 = now()
        self.proc = subprocess.Popen(
            [SIPWARD, "--data", self.data, "serve", "--sip", f"127.0.0.1:{self.sip_port}",
             "--http", f"127.0.0.1:{self.http_port}"],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("sipward serve exited before its ready line; see server.log")
        self.ready = json.loads(line)
        self.ready_ms = (now() - t0) * 1000
        # Keep reading stdout so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        return self

    @staticmethod
    def _drain(proc):
        for _ in proc.stdout:
            pass

    @property
    def target(self):
        return f"127.0.0.1:{self.sip_port}"

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10,
                                       source_address=(METRICS_IP, 0))
        c.request("GET", "/metrics")
        body = c.getresponse().read().decode()
        c.close()
        out = {}
        for line in body.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def gauges(self):
        """RSS, fds, threads from /proc; tables and backlog from /metrics."""
        pid = self.proc.pid
        g = {"t": round(now(), 1)}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    g["rss_kib"] = int(line.split()[1])
                elif line.startswith("Threads:"):
                    g["threads"] = int(line.split()[1])
        g["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        m = self.metrics()
        tables = {}
        for k, v in m.items():
            if k.startswith("sipward_table_entries{"):
                tables[re.search(r'table="([^"]+)"', k).group(1)] = int(v)
        for k in ["sipward_bindings", "sipward_directory_accounts", "sipward_bans",
                  "sipward_kernel_drop_sources", "sipward_allowed_networks"]:
            if k in m:
                tables[k.removeprefix("sipward_")] = int(m[k])
        g["tables"] = tables
        g["backlog"] = int(m.get("sipward_write_behind_backlog", -1))
        g["counters"] = {k: int(v) for k, v in m.items() if k.endswith("_total") or "_total{" in k}
        return g

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------
# Tracked phones: a small SIP user agent that logs every promise the registrar made


def md5(s):
    return hashlib.md5(s.encode()).hexdigest()


class Phone:
    def __init__(self, number):
        self.number = number
        self.call_id = f"soak-{number}-{random.getrandbits(48):x}@tracked"
        self.cseq = 0
        self.side = 0          # which of its worker's two sockets it registers from
        self.registered = False
        self.contact = f"<sip:{number}@phone-{number}.invalid;ob>"


class TrackedAgent:
    """Eight workers, each with two sockets (127.0.1.k, 127.0.2.k) and 1/8 of the phones.
    Each operation is a full REGISTER (401, then digest): the first is new, then
    refreshes from the same socket or, MOVE_SHARE of the time, a move to the other one.
    Every outcome is logged: (number, kind, source, t_sent, t_done, status)."""

    def __init__(self, server_target, ops_per_s):
        self.target = server_target
        host, port = server_target.rsplit(":", 1)
        self.dest = (host, int(port))
        self.phones = [Phone(str(TRACKED_BASE + i)) for i in range(TRACKED)]
        self.ops_per_s = ops_per_s
        self.log = []              # completed operations
        self.inflight = {}         # number -> (kind, source, t_sent)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.threads = []
        self.socks = []
        for a, b in TRACKED_IPS:
            pair = []
            for ip in (a, b):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((ip, 0))
                pair.append(s)
            self.socks.append(pair)

    def retarget(self, server_target):
        host, port = server_target.rsplit(":", 1)
        self.dest = (host, int(port))

    def start(self):
        for k in range(len(TRACKED_IPS)):
            t = threading.Thread(target=self._worker, args=(k,), daemon=True)
            t.start()
            self.threads.append(t)

    def _worker(self, k):
        mine = [p for i, p in enumerate(self.phones) if i % len(TRACKED_IPS) == k]
        per_worker = self.ops_per_s / len(TRACKED_IPS)
        rng = random.Random(k)
        i = 0
        nxt = now()
        while not self.stop.is_set():
            if self.paused.is_set():
                time.sleep(0.05)
                nxt = now()
                continue
            p = mine[i % len(mine)]
            i += 1
            kind = "refresh"
            if not p.registered:
                kind = "new"
            elif rng.random() < MOVE_SHARE:
                kind = "move"
                p.side ^= 1
            self.operate(k, p, kind)
            nxt += 1.0 / per_worker
            delay = nxt - now()
            if delay > 0:
                time.sleep(delay)
            elif delay < -5:
                nxt = now()

    def operate(self, k, p, kind, expires=None):
        s = self.socks[k][p.side]
        src = "%s:%d" % s.getsockname()
        t_sent = now()
        with self.lock:
            self.inflight[p.number] = (kind, src, t_sent)
        status, reason = self.register(s, p, expires if expires is not None else TRACKED_EXPIRES)
        t_done = now()
        with self.lock:
            self.inflight.pop(p.number, None)
            self.log.append((p.number, kind, src, t_sent, t_done, status, reason))
        if status == 200:
            p.registered = True
        return status

    def register(self, s, p, expires):
        """One REGISTER with digest; (final status, reason). 0 when nothing came back."""
        uri = f"sip:{self.dest[0]}:{self.dest[1]}"
        local = s.getsockname()
        auth = None
        for attempt in range(2):
            p.cseq += 1
            branch = f"z9hG4bK{random.getrandbits(64):x}"
            head = (
                f"REGISTER {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch};rport\r\n"
                f"Max-Forwards: 70\r\n"
                f"From: <sip:{p.number}@{self.dest[0]}>;tag={p.number}t\r\n"
                f"To: <sip:{p.number}@{self.dest[0]}>\r\n"
                f"Call-ID: {p.call_id}\r\nCSeq: {p.cseq} REGISTER\r\n"
                f"Contact: {p.contact}\r\nExpires: {expires}\r\n"
                f"User-Agent: soak-phone/1\r\n"
            )
            if auth:
                head += auth
            msg = (head + "Content-Length: 0\r\n\r\n").encode()
            answer = self.transact(s, msg, p.call_id, p.cseq)
            if answer is None:
                return 0, "timeout"
            status, headers = answer
            if status == 401 and attempt == 0:
                ch = headers.get("www-authenticate", "")
                params = dict(re.findall(r'(\w+)="?([^",]*)"?', ch))
                a, realm, nonce = auth_id(p.number), params.get("realm", ""), params.get("nonce", "")
                cnonce = f"{random.getrandbits(64):x}"
                ha1 = md5(f"{a}:{realm}:{pw(p.number)}")
                ha2 = md5(f"REGISTER:{uri}")
                resp = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
                auth = (f'Authorization: Digest username="{a}", realm="{realm}", nonce="{nonce}", '
                        f'uri="{uri}", response="{resp}", algorithm=MD5, qop=auth, nc=00000001, '
                        f'cnonce="{cnonce}"' + (f', opaque="{params["opaque"]}"' if "opaque" in params else "")
                        + "\r\n")
                continue
            return status, headers.get(":reason", "")
        return 401, "challenged twice"

    def transact(self, s, msg, call_id, cseq):
        """Sends with RFC 3261 timer A/B retransmissions (0.5 s doubling, 32 s at most,
        cut to 8 s here); the final answer's (status, headers)."""
        deadline = now() + 8
        interval = 0.5
        s.sendto(msg, self.dest)
        resend = now() + interval
        while now() < deadline:
            if self.stop.is_set() and self.paused.is_set():
                return None
            s.settimeout(max(0.01, min(resend, deadline) - now()))
            try:
                data, _ = s.recvfrom(65535)
            except socket.timeout:
                if now() >= resend:
                    s.sendto(msg, self.dest)
                    interval = min(interval * 2, 4)
                    resend = now() + interval
                continue
            except OSError:
                return None
            text = data.decode(errors="replace")
            first, _, rest = text.partition("\r\n")
            if not first.startswith("SIP/2.0 "):
                continue  # a request to the phone (OPTIONS, NOTIFY): not ours to wait for
            headers = {}
            for line in rest.split("\r\n"):
                if not line:
                    break
                name, _, value = line.partition(":")
                headers.setdefault(name.strip().lower(), value.strip())
            if headers.get("call-id") != call_id or headers.get("cseq", "").split(" ")[0] != str(cseq):
                continue  # a late answer to an earlier transaction
            status = int(first.split(" ")[1])
            if status < 200:
                continue
            headers[":reason"] = first.split(" ", 2)[2] if first.count(" ") >= 2 else ""
            return status, headers
        return None

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


# ---------------------------------------------------------------------------------------
# Load: SIPp, flood, SIPVicious, CLI, console


def sipp(args, label):
    stat = os.path.join(OUT, f"{label}.csv")
    if os.path.exists(stat):
        os.remove(stat)
    cmd = ["sipp", *args, "-nostdin", "-buff_size", "8388608", "-trace_stat", "-stf", stat,
           "-fd", "5", "-trace_err", "-error_file", os.path.join(OUT, f"{label}-errors.log")]
    return subprocess.Popen(cmd, cwd=OUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), stat


def sipp_counts(stat):
    """(successful, failed) from the last complete line of SIPp's statistics file (a line
    cut short, say by a full disk, is skipped)."""
    try:
        lines = [l for l in open(stat, errors="replace").read().splitlines() if l.strip()]
        head = lines[0].split(";")
        last = [l for l in lines[1:] if len(l.split(";")) == len(head)][-1].split(";")
        return int(last[head.index("SuccessfulCall(C)")]), int(last[head.index("FailedCall(C)")])
    except (OSError, IndexError, ValueError):
        return (0, 0)


def rate_args(rate):
    """SIPp's -r/-rp for a rate that may be below one a second."""
    if rate >= 1:
        return ["-r", str(int(rate))]
    return ["-r", "1", "-rp", str(int(1000 / rate))]


def flood(target, pps, stop):
    host, port = target.rsplit(":", 1)
    socks = []
    for ip in FLOODERS:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, 0))
        socks.append(s)
    n, t0 = 0, time.time()
    while not stop.is_set():
        s = socks[n % len(socks)]
        local = s.getsockname()
        msg = (f"REGISTER sip:{host} SIP/2.0\r\nVia: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bKfl{n}\r\n"
               f"From: <sip:{40000 + n % 4500}@{host}>;tag=f\r\nTo: <sip:{40000 + n % 4500}@{host}>\r\n"
               f"Call-ID: flood{n}\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n").encode()
        try:
            s.sendto(msg, (host, int(port)))
        except OSError:
            pass
        n += 1
        ahead = n / pps - (time.time() - t0)
        if ahead > 0:
            time.sleep(ahead)


class Loops:
    """The background work that is not SIPp: SIPVicious, CLI churn, console page loads,
    each a thread that runs until `stop`, counting what it did and what failed."""

    def __init__(self, data, server):
        self.data, self.server = data, server
        self.stop = threading.Event()
        self.counts = {"cli_changes": 0, "cli_failed": 0, "console_pages": 0, "console_failed": 0,
                       "svwar_runs": 0, "svwar_found": 0, "svcrack_runs": 0}
        self.failures = []
        self.cli_log = []  # (start, seconds, what, exit code) of every CLI change
        self.added, self.removed, self.regenerated = [], [], {}
        self.allow_added, self.ban_added = [], []
        self.next_churn = 7000
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self.churn, self.console, self.attack)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)

    def note_failure(self, what):
        with self.lock:
            self.failures.append((round(now(), 1), what))

    def churn(self):
        rnd = 0
        while not self.stop.wait(CHURN_EVERY):
            rnd += 1
            n = str(self.next_churn)
            self.next_churn += 1
            steps = [("add", ["ext", "add", n, "--auth-id", f"churn{n}", "--password", pw(n)])]
            if len(self.added) >= 2:
                steps.append(("remove", ["ext", "remove", self.added[0]]))
            if self.added:
                steps.append(("regenerate", ["ext", "regenerate", self.added[-1], "--no-email", "--json"]))
            if rnd % 6 == 1:
                a = f"127.0.3.{len(self.allow_added) + 1}"
                steps.append(("allow", ["allow", "add", f"{a}/32", "--note", "soak"]))
            if rnd % 6 == 4:
                b = f"127.0.4.{len(self.ban_added) + 1}"
                steps.append(("ban", ["ban", "add", b, "--for", "1d", "--reason", "soak"]))
            for what, args in steps:
                if self.stop.is_set():
                    return
                t0 = now()
                r = cli(self.data, *args, check=False)
                with self.lock:
                    self.counts["cli_changes"] += 1
                    self.cli_log.append((round(t0, 2), round(now() - t0, 2), what, r.returncode))
                if r.returncode != 0:
                    with self.lock:
                        self.counts["cli_failed"] += 1
                    self.note_failure(f"cli {' '.join(args)}: {r.stderr.strip()[:200]}")
                    continue
                if what == "add":
                    self.added.append(n)
                elif what == "remove":
                    self.removed.append(self.added.pop(0))
                elif what == "regenerate":
                    num = args[2]
                    shown = cli(self.data, "ext", "show", num, "--reveal", "--json", check=False)
                    if shown.returncode == 0:
                        self.regenerated[num] = json.loads(shown.stdout)["password"]
                elif what == "allow":
                    self.allow_added.append(args[2])
                elif what == "ban":
                    self.ban_added.append(args[2])

    def console(self):
        cookie = None
        pages = ["/", "/extensions", "/security", "/calls", "/backups", "/log", "/trunks", "/advisor"]
        i = 0
        while not self.stop.wait(CONSOLE_EVERY):
            port = self.server.http_port
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=(CONSOLE_IP, 0))
                if cookie is None:
                    body = urllib.parse.urlencode({"name": "admin", "password": ADMIN_PASSWORD, "code": ""})
                    c.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
                    r = c.getresponse()
                    r.read()
                    m = re.search(r"sipward_session=([^;]+)", r.getheader("Set-Cookie") or "")
                    if not m:
                        raise RuntimeError(f"login answered {r.status} without a session")
                    cookie = m.group(1)
                path = pages[i % len(pages)]
                i += 1
                c.request("GET", path, headers={"Cookie": f"sipward_session={cookie}"})
                r = c.getresponse()
                r.read()
                c.close()
                with self.lock:
                    self.counts["console_pages"] += 1
                if r.status != 200:
                    if r.status in (302, 303, 401):
                        cookie = None  # the session ended (a restart): log in again
                    with self.lock:
                        self.counts["console_failed"] += 1
                    self.note_failure(f"console GET {path}: {r.status}")
            except (OSError, RuntimeError, http.client.HTTPException) as e:
                if self.server.proc.poll() is None:
                    with self.lock:
                        self.counts["console_failed"] += 1
                    self.note_failure(f"console: {e}")

    def tool(self, args):
        """Runs a SIPVicious tool for at most 90 s, and not past `stop`; its stdout."""
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        end = now() + 90
        while p.poll() is None and now() < end and not self.stop.is_set():
            time.sleep(0.2)
        if p.poll() is None:
            p.kill()
        out, _ = p.communicate()
        return out

    def attack(self):
        port = str(self.server.sip_port)
        n = 0
        while not self.stop.is_set():
            n += 1
            if n % 2:
                out = self.tool(["svwar", "-e", "40000-40060", "-m", "REGISTER", "--force", "-p", port,
                                 "127.0.0.1"])
                found = [l for l in out.splitlines() if re.match(r"^\|\s*4\d{4}\s*\|", l)]
                with self.lock:
                    self.counts["svwar_runs"] += 1
                    self.counts["svwar_found"] += len(found)
            else:
                self.tool(["svcrack", "-u", "40001", "-r", "1-300", "-p", port, "127.0.0.1"])
                with self.lock:
                    self.counts["svcrack_runs"] += 1
            self.stop.wait(ATTACK_EVERY)


# ---------------------------------------------------------------------------------------
# Setup


def setup():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    data = os.path.join(OUT, "data")
    cli(data, "ext", "list")
    key = os.path.join(OUT, "backup-key.txt")
    subprocess.run(["age-keygen", "-o", key], check=True, capture_output=True)
    recipient = next(l.split(": ", 1)[1].strip() for l in open(key) if l.startswith("# public key: "))
    with open(os.path.join(data, "sipward.toml"), "w") as f:
        f.write(CONFIG.format(backup_every=BACKUP_EVERY, recipient=recipient, nonce_lifetime=NONCE_LIFETIME))
    csv = os.path.join(OUT, "extensions.csv")
    numbers = ([str(BULK_BASE + i) for i in range(BULK)] + [str(TRACKED_BASE + i) for i in range(TRACKED)]
               + [CALLER, CALLEE] + TRUNK_CALLERS)
    with open(csv, "w") as f:
        f.write("number,auth_id,password\n")
        for n in numbers:
            f.write(f"{n},{auth_id(n)},{pw(n)}\n")
    t0 = now()
    cli(data, "import", csv)
    import_s = now() - t0
    cli(data, "allow", "add", f"{SBC}/32", "--note", "SIPp load generator (an SBC)")
    cli(data, "gateway", "add", "pstn", "--vendor", "generic", "--ext", "800", "--auth-id", GW_LOGIN[0],
        "--password", GW_LOGIN[1], "--host", f"{GATEWAY_IP}:{GATEWAY_PORT}")
    cli(data, "route", "add", "national", "--pattern", "0ZX.", "--trunk", "pstn")
    cli(data, "admin", "passwd", "--password", "-", stdin=ADMIN_PASSWORD + "\n")
    # SIPp injection files.
    with open(os.path.join(OUT, "bulk.inf"), "w") as f:
        f.write("SEQUENTIAL\n")
        for i in range(BULK):
            n = str(BULK_BASE + i)
            f.write(f"{n};[authentication username={auth_id(n)} password={pw(n)}]\n")
    with open(os.path.join(OUT, "callee.inf"), "w") as f:
        f.write(f"SEQUENTIAL\n{CALLEE};[authentication username={auth_id(CALLEE)} password={pw(CALLEE)}]\n")
    with open(os.path.join(OUT, "calls.inf"), "w") as f:
        f.write(f"SEQUENTIAL\n{CALLER};[authentication username={auth_id(CALLER)} password={pw(CALLER)}];{CALLEE}\n")
    with open(os.path.join(OUT, "trunk.inf"), "w") as f:
        f.write("SEQUENTIAL\n")
        for n in TRUNK_CALLERS:
            f.write(f"{n};[authentication username={auth_id(n)} password={pw(n)}];{NATIONAL}\n")
    scenario = open(os.path.join(SIPP_DIR, "trunk_uas.xml")).read()
    scenario = (scenario.replace("@AUTH_ID@", GW_LOGIN[0]).replace("@PASSWORD@", GW_LOGIN[1])
                .replace("@NUMBER@", NATIONAL))
    with open(os.path.join(OUT, "gateway.xml"), "w") as f:
        f.write(scenario)
    return data, import_s


GATEWAY_PORT = R.free_port()


def wait_udp(ip, port, deadline=10):
    want = "%08X:%04X" % (int.from_bytes(socket.inet_aton(ip), "little"), port)
    end = now() + deadline
    while now() < end:
        with open("/proc/net/udp") as f:
            if any(l.split()[1] == want for l in f.read().splitlines()[1:]):
                return True
        time.sleep(0.05)
    return False


def start_peers(server):
    """The callee (registered SIPp UAS) and the PSTN gateway (SIPp UAS)."""
    callee_port = R.free_port()
    r = subprocess.run(["sipp", "-sf", os.path.join(SIPP_DIR, "register_auth.xml"), "-inf",
                        os.path.join(OUT, "callee.inf"), "-i", CALLEE_IP, "-p", str(callee_port),
                        "-cp", str(R.free_port()), "-m", "1", "-nostdin", "-timeout", "20s", server.target],
                       cwd=OUT, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError("the callee did not register")
    uas = subprocess.Popen(["sipp", "-sf", os.path.join(SIPP_DIR, "call_uas.xml"), "-i", CALLEE_IP,
                            "-p", str(callee_port), "-mp", str(R.free_port()), "-cp", str(R.free_port()),
                            "-nostdin", "-buff_size", "8388608"],
                           cwd=OUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = subprocess.Popen(["sipp", "-sf", os.path.join(OUT, "gateway.xml"), "-i", GATEWAY_IP,
                           "-p", str(GATEWAY_PORT), "-mp", str(R.free_port()), "-cp", str(R.free_port()),
                           "-t", "u1", "-nostdin", "-buff_size", "8388608"],
                          cwd=OUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not (wait_udp(CALLEE_IP, callee_port) and wait_udp(GATEWAY_IP, GATEWAY_PORT)):
        raise RuntimeError("the SIPp callee or gateway did not listen")
    return [uas, gw]


def start_sipp_load(server, seconds, tag, bulk_port):
    """Bulk registrations, internal calls and trunk calls for `seconds`."""
    procs = {}
    procs["register"] = sipp(["-sf", os.path.join(SIPP_DIR, "register_auth.xml"), "-inf",
                              os.path.join(OUT, "bulk.inf"), "-i", SBC, "-p", str(bulk_port),
                              "-cp", str(R.free_port()), "-t", "u1", *rate_args(REG_RATE),
                              "-m", str(int(REG_RATE * seconds)), "-l", str(max(100, int(REG_RATE * 4))),
                              "-timeout", f"{int(seconds) + 60}s", "-recv_timeout", "8000", server.target],
                             f"register-{tag}")
    procs["calls"] = sipp(["-sf", os.path.join(SIPP_DIR, "call_uac.xml"), "-inf", os.path.join(OUT, "calls.inf"),
                           "-i", SBC, "-p", str(R.free_port()), "-mp", str(R.free_port()),
                           "-cp", str(R.free_port()), *rate_args(CALL_RATE),
                           "-m", str(max(1, int(CALL_RATE * seconds))), "-auth_uri", f"{CALLEE}@{server.target}",
                           "-timeout", f"{int(seconds) + 60}s", "-recv_timeout", "8000", server.target],
                          f"calls-{tag}")
    procs["trunk"] = sipp(["-sf", os.path.join(SIPP_DIR, "call_uac.xml"), "-inf", os.path.join(OUT, "trunk.inf"),
                           "-i", SBC, "-p", str(R.free_port()), "-mp", str(R.free_port()),
                           "-cp", str(R.free_port()), *rate_args(TRUNK_RATE),
                           "-m", str(max(1, int(TRUNK_RATE * seconds))), "-auth_uri", f"{NATIONAL}@{server.target}",
                           "-timeout", f"{int(seconds) + 60}s", "-recv_timeout", "8000", server.target],
                          f"trunk-{tag}")
    return procs


# ---------------------------------------------------------------------------------------
# The crash check


def store_rows(data):
    con = sqlite3.connect(f"file:{os.path.join(data, 'sipward.db')}?mode=ro", uri=True, timeout=30)
    rows = con.execute("SELECT number, contact, source, expires_at FROM bindings").fetchall()
    con.close()
    return rows


def crash_check(agent, t_kill, inflight, rows):
    """What the kill lost among the tracked phones: new/moved registrations (must be
    none) and refreshes (with their age at the kill)."""
    stored = {}
    for number, _contact, source, expires_at in rows:
        stored.setdefault(number, []).append((source, expires_at))
    by_phone = {}
    for number, kind, src, t_sent, t_done, status, _ in agent.log:
        if status == 200 and t_done <= t_kill:
            by_phone.setdefault(number, []).append((kind, src, t_sent, t_done))
    lost_durable, lost_refresh, expired_at_restart = [], [], []
    for number, ops in by_phone.items():
        last_kind, last_src, _, _ = ops[-1]
        rows_here = stored.get(number, [])
        pending = inflight.get(number)
        ok_sources = {last_src} | ({pending[1]} if pending else set())
        match = [r for r in rows_here if r[0] in ok_sources]
        if not match:
            # The last 200 (a new or moved binding, or a refresh of one) is not in the
            # store from that source: a durable change lost.
            lost_durable.append({"number": number, "last": last_kind, "source": last_src,
                                 "stored": rows_here})
            continue
        s = max(e for _, e in match)
        if s <= t_kill:
            expired_at_restart.append(number)
        # A refresh had to be written when the stored expiry had used up half its time:
        # 2 (S - t) < granted. Two seconds of slack for the store's whole seconds.
        e = TRACKED_EXPIRES
        due = [t_done for kind, src, _, t_done in ops if src in ok_sources and 2 * (s - t_done) < e - 2]
        if due:
            lost_refresh.append({"number": number, "age_s": round(t_kill - min(due), 3)})
    return {
        "tracked_phones_with_a_200": len(by_phone),
        "lost_new_or_moved": lost_durable,
        "lost_refreshes": len(lost_refresh),
        "lost_refresh_max_age_s": max((x["age_s"] for x in lost_refresh), default=0),
        "lost_refresh_ages_s": sorted(x["age_s"] for x in lost_refresh),
        "expired_at_restart": expired_at_restart,
    }


def json_cli(data, *args):
    return json.loads(cli(data, *args).stdout)


def state_of(data):
    bans = json_cli(data, "ban", "list", "--json")
    allows = json_cli(data, "allow", "list", "--json")
    exts = json_cli(data, "ext", "list", "--json")
    return {
        "bans": sorted(b["source"] for b in bans),
        "allow": sorted(a.get("network") or a.get("source") or json.dumps(a, sort_keys=True) for a in allows),
        "extensions": sorted(e["number"] for e in exts),
    }


# ---------------------------------------------------------------------------------------


def summarize_tracked(agent, t_from, t_to):
    ok = failed = 0
    reasons, times = {}, []
    for _n, _kind, _src, t_sent, _t_done, status, reason in agent.log:
        if not (t_from <= t_sent < t_to):
            continue
        if status == 200:
            ok += 1
        else:
            failed += 1
            key = f"{status} {reason}"
            reasons[key] = reasons.get(key, 0) + 1
            times.append(round(t_sent, 1))
    return {"ok": ok, "failed": failed, "failures": reasons, "failed_at": times[:20]}


def flatness(start, end):
    """Each gauge at start and end, and whether it is flat (see checks())."""
    out = {}
    for k in ["rss_kib", "fds", "threads", "backlog"]:
        out[k] = [start[k], end[k]]
    for k in sorted(set(start["tables"]) | set(end["tables"])):
        out["table:" + k] = [start["tables"].get(k), end["tables"].get(k)]
    return out


def checks(report):
    """The properties the soak asserts, with the tolerance each allows and why."""
    c = []

    def check(name, ok, detail):
        c.append({"check": name, "ok": bool(ok), "detail": detail})

    fl = report["flatness"]
    rss0, rss1 = fl["rss_kib"]
    # RSS: allocator arenas and table capacities settle after the warm-up; a leak of
    # one allocation per request would add MiBs per minute at these rates. 25 % over
    # the start plus 8 MiB (one more arena per worker thread) is the allowance.
    check("rss flat", rss1 <= rss0 * 1.25 + 8192, f"{rss0} -> {rss1} KiB")
    # fds: sockets, the database and its WAL; the console's keep-alive connections come
    # and go. 16 more than at the start is the allowance.
    fd0, fd1 = fl["fds"]
    check("fds flat", fd1 <= fd0 + 16, f"{fd0} -> {fd1}")
    # Write-behind: drained every second; a backlog that grows means the writer falls
    # behind. At most the extensions refreshed in two seconds may wait.
    b0, b1 = fl["backlog"]
    check("write-behind backlog flat", 0 <= b1 <= max(200, 2 * REG_RATE + 2 * TRACKED_OPS), f"{b0} -> {b1}")
    # Tables: each one's size at the end within 50 % (plus 512 entries for those that
    # hover near zero) of the start, under the same load. The ban table grows by the
    # sources banned during the soak (16 flooders, 127.0.0.1, the CLI's bans): allowed.
    for k, (v0, v1) in fl.items():
        if not k.startswith("table:") or v0 is None or v1 is None:
            continue
        name = k.removeprefix("table:")
        if name in ("bans", "kernel_drop_sources", "allowed_networks", "directory_accounts"):
            continue
        check(f"table {name} flat", v1 <= v0 * 1.5 + 512, f"{v0} -> {v1}")
    load = report["load"]
    for k in ["sipp_register", "sipp_calls", "sipp_trunk"]:
        ok, failed = load[k]
        check(f"{k}: no failures", failed == 0 and ok > 0, f"{ok} ok, {failed} failed")
    t = load["tracked"]
    check("tracked registrations: no failures", t["failed"] == 0 and t["ok"] > 0, t)
    check("CLI changes all succeeded", load["loops"]["cli_failed"] == 0 and load["loops"]["cli_changes"] > 0,
          load["loops"])
    check("console pages all answered 200",
          load["loops"]["console_failed"] == 0 and load["loops"]["console_pages"] > 0, load["loops"])
    check("svwar found no extension", load["loops"]["svwar_found"] == 0, load["loops"])
    # Every interval of the run (warm-up included) made its backup; one may still be in
    # progress at the end.
    due = int((report["soak_seconds"] + report["warmup_seconds"]) // BACKUP_EVERY)
    check("scheduled backups made", report["backups"] >= max(1, due - 1) and report["backups_failed"] == 0,
          f"{report['backups']} made, {report['backups_failed']} failed in {report['soak_seconds']:.0f} s "
          f"+ warm-up (every {BACKUP_EVERY} s)")
    k = report["kill"]
    check("kill -9: no new or moved registration lost", not k["lost_new_or_moved"], k["lost_new_or_moved"][:5])
    # A refresh may be lost only if it was still waiting for the write-behind: written
    # every second (FLUSH_EVERY), plus the commit itself. 2 s allows one commit of a
    # loaded SQLite after a full second of gathering.
    check("kill -9: refreshes lost only from the last second of write-behind",
          k["lost_refresh_max_age_s"] <= 2.0, f"{k['lost_refreshes']} lost, oldest {k['lost_refresh_max_age_s']} s")
    check("kill -9: every binding alive at restart", not k["expired_at_restart"], k["expired_at_restart"][:5])
    for what in ["bans", "allow", "extensions"]:
        missing = sorted(set(k["before"][what]) - set(k["after"][what]))
        check(f"kill -9: {what} all there", not missing, missing[:10])
    st = k["after"]
    check("kill -9: CLI changes all there",
          all(n in st["extensions"] for n in k["churn"]["present"])
          and not any(n in st["extensions"] for n in k["churn"]["removed"])
          and all(a in st["allow"] for a in k["churn"]["allow_added"])
          and all(b in st["bans"] for b in k["churn"]["ban_added"])
          and k["churn"]["regenerated_mismatch"] == [],
          k["churn"])
    check("after restart: every tracked phone registers", k["after_restart"]["failed"] == 0,
          k["after_restart"])
    return c


def main():
    data, import_s = setup()
    sip_port, http_port = R.free_port(), R.free_port()
    server = Server(data, sip_port, http_port).start()
    peers = start_peers(server)
    stop_flood = multiprocessing.Event()
    flooder = multiprocessing.Process(target=flood, args=(server.target, FLOOD_PPS, stop_flood), daemon=True)
    agent = TrackedAgent(server.target, TRACKED_OPS)
    loops = Loops(data, server)
    bulk_port = R.free_port()
    warmup = WARMUP or max(BULK / REG_RATE + 5, NONCE_LIFETIME + 40)
    samples = []
    print(f"soak: warm-up {warmup:.0f} s, then {SOAK_SECONDS:.0f} s of mixed load", flush=True)

    t_load = now()
    sipp_procs = start_sipp_load(server, warmup + SOAK_SECONDS, "soak", bulk_port)
    agent.start()
    flooder.start()
    loops.start()
    time.sleep(warmup)
    t_start = now()
    start = server.gauges()
    samples.append(start)
    while now() < t_start + SOAK_SECONDS:
        time.sleep(min(SAMPLE_EVERY, max(0.1, t_start + SOAK_SECONDS - now())))
        samples.append(server.gauges())
        g = samples[-1]
        print(f"  t+{g['t'] - t_start:5.0f}s rss {g['rss_kib'] / 1024:.1f} MiB fds {g['fds']} "
              f"backlog {g['backlog']} bindings {g['tables'].get('bindings')}", flush=True)
    end = samples[-1]
    t_end = now()
    # The SIPp runs were sized to end with the soak; give them their last answers.
    results = {}
    for k, (p, stat) in sipp_procs.items():
        try:
            p.wait(timeout=90)
        except subprocess.TimeoutExpired:
            p.terminate()
            p.wait()
        results[k] = sipp_counts(stat)
    tracked = summarize_tracked(agent, t_load, t_end)
    # Scheduled backups made (the directory keeps only the last 3): the server's events.
    with open(os.path.join(OUT, "server.log"), errors="replace") as f:
        events = f.read()
    backups = events.count('"event":"backup_created"')
    backups_failed = events.count('"event":"backup_failed"')
    backups_made = server.gauges()["counters"]

    # Crash: the load goes on (SIPp again, the tracked phones, flood, tools, CLI), then
    # kill -9 mid-load.
    # No CLI change is half-done at the kill (its record would be unknowable): the CLI,
    # console and attack loops stop first; the SIPp load, the flood and the phones go on.
    loops.stop.set()
    for t in loops.threads:
        t.join(timeout=120)
    t_kill_load = now()
    kill_procs = start_sipp_load(server, KILL_AFTER + 30, "kill", bulk_port)
    time.sleep(KILL_AFTER)
    before = state_of(data)
    before_metrics = server.gauges()
    agent.paused.set()  # the phones' operations in flight finish or time out
    with agent.lock:
        inflight = dict(agent.inflight)
    t_kill = now()
    server.kill9()
    agent.stop.set()
    for p, _stat in kill_procs.values():
        p.terminate()
        p.wait()
    agent.finish()
    with agent.lock:
        inflight.update(agent.inflight)
    rows = store_rows(data)
    server.start()
    restarted = state_of(data)
    crash = crash_check(agent, t_kill, inflight, rows)
    crash["restart_ready_ms"] = round(server.ready_ms)
    crash["kill_after_sipp_load_start_s"] = round(t_kill - t_kill_load, 1)
    crash["before"], crash["after"] = before, restarted
    crash["bans_in_memory_before"] = before_metrics["tables"].get("bans")
    crash["bans_in_memory_after"] = server.gauges()["tables"].get("bans")
    # The CLI's changes, each checked against the restarted store.
    mismatch = []
    for n, password in loops.regenerated.items():
        if n in loops.added:
            shown = json_cli(data, "ext", "show", n, "--reveal", "--json")
            if shown.get("password") != password:
                mismatch.append(n)
    crash["churn"] = {"present": list(loops.added), "removed": list(loops.removed),
                      "allow_added": list(loops.allow_added), "ban_added": list(loops.ban_added),
                      "regenerated": len(loops.regenerated), "regenerated_mismatch": mismatch}
    # The restarted server serves: every tracked phone registers again.
    agent.stop.clear()
    agent.paused.clear()
    t_after = now()
    for k in range(len(TRACKED_IPS)):
        for i, p in enumerate(agent.phones):
            if i % len(TRACKED_IPS) == k:
                agent.operate(k, p, "refresh")
    crash["after_restart"] = summarize_tracked(agent, t_after, now())
    server.stop()
    stop_flood.set()
    flooder.join(timeout=10)
    for p in peers:
        p.terminate()
        p.wait()

    report = {
        "soak_seconds": t_end - t_start,
        "warmup_seconds": round(t_start - t_load, 1),
        "import_5000_s": round(import_s, 1),
        "nonce_lifetime_s": NONCE_LIFETIME,
        "rates": {"sipp_register_per_s": REG_RATE, "tracked_ops_per_s": TRACKED_OPS, "calls_per_s": CALL_RATE,
                  "trunk_calls_per_s": TRUNK_RATE, "flood_pps": FLOOD_PPS, "cli_round_every_s": CHURN_EVERY,
                  "backup_every_s": BACKUP_EVERY, "console_page_every_s": CONSOLE_EVERY},
        "start": start, "end": end,
        "flatness": flatness(start, end),
        "load": {"sipp_register": results["register"], "sipp_calls": results["calls"],
                 "sipp_trunk": results["trunk"], "tracked": tracked, "loops": loops.counts,
                 "loop_failures": loops.failures[:50]},
        "cli_seconds": {w: max((d for _, d, x, _ in loops.cli_log if x == w), default=0)
                        for w in ("add", "remove", "regenerate", "allow", "ban")},
        "cli_log": loops.cli_log,
        "counters_at_end": {k: v for k, v in backups_made.items() if v},
        "backups": backups,
        "backups_failed": backups_failed,
        "kill": crash,
        "samples": [{k: v for k, v in s.items() if k != "counters"} for s in samples],
    }
    report["checks"] = checks(report)
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    failed = [c for c in report["checks"] if not c["ok"]]
    for c in report["checks"]:
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {json.dumps(c['detail'])[:300]}")
    print(json.dumps({"flatness": report["flatness"], "load": report["load"],
                      "kill": {k: v for k, v in crash.items() if k not in ("before", "after")}}, indent=1)[:6000])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
