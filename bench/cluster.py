"""sipward on PostgreSQL (issue 21): REGISTER rate against SQLite on one node, ban
propagation between nodes, and the time a restarted node takes to be ready with many
extensions and bindings, each from 1 to 3 nodes.

Starts its own PostgreSQL cluster (initdb in bench/out/cluster/pg; fsync stays on
unless PG_FSYNC=off) and its own nodes on loopback ports. Knobs (environment):
  SIPWARD   the binary (default target/release/sipward)
  STEPS     REGISTER rates tried, calls/s (default "1000 2000 4000 6000 8000 10000")
  USERS     SIPp users (default 1000)      SECONDS  per step (default 10)
  BANS      bans timed (default 100)      EXTENSIONS  for the ready test (default 10000)
Writes bench/out/cluster/report.json and prints it.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import register as reg  # noqa: E402  (SIPp helpers: one scenario, one way to run it)

ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "bench", "out", "cluster")
SIPWARD = os.environ.get("SIPWARD", os.path.join(ROOT, "target", "release", "sipward"))
STEPS = [int(x) for x in os.environ.get("STEPS", "1000 2000 4000 6000 8000 10000").split()]
USERS = int(os.environ.get("USERS", "1000"))
SECONDS = int(os.environ.get("SECONDS", "10"))
BANS = int(os.environ.get("BANS", "100"))
EXTENSIONS = int(os.environ.get("EXTENSIONS", "10000"))
reg.OUT, reg.SIPWARD, reg.USERS, reg.SECONDS = OUT, SIPWARD, USERS, SECONDS


def pg_bin():
    for d in sorted(os.listdir("/usr/lib/postgresql"), reverse=True):
        b = os.path.join("/usr/lib/postgresql", d, "bin")
        if os.path.exists(os.path.join(b, "initdb")):
            return b
    sys.exit("PostgreSQL is not installed (apt-get install postgresql)")


class Postgres:
    """One throwaway cluster; `as_owner` because initdb and pg_ctl refuse root."""

    def __init__(self):
        self.bin = pg_bin()
        self.dir = os.path.join(OUT, "pg")
        self.port = reg.free_port()
        root = os.geteuid() == 0
        self.owner = ["runuser", "-u", "postgres", "--"] if root else []
        os.makedirs(self.dir)
        if root:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(OUT, "postgres", "postgres")
        data = os.path.join(self.dir, "data")
        subprocess.run(self.owner + [f"{self.bin}/initdb", "-A", "trust", "-U", "postgres", "-D", data],
                       check=True, capture_output=True)
        fsync = os.environ.get("PG_FSYNC", "on")
        opts = f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync={fsync} -c max_connections=200"
        subprocess.run(self.owner + [f"{self.bin}/pg_ctl", "-D", data, "-o", opts, "-l",
                                     os.path.join(self.dir, "log"), "-w", "start"],
                       check=True, capture_output=True)
        self.data = data
        self.n = 0

    def psql(self, db, sql):
        return subprocess.run([f"{self.bin}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                               "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db, "-c", sql],
                              check=True, capture_output=True, text=True).stdout.strip()

    def database(self):
        self.n += 1
        name = f"bench{self.n}"
        self.psql("postgres", f"CREATE DATABASE {name}")
        return name, f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self):
        subprocess.run(self.owner + [f"{self.bin}/pg_ctl", "-D", self.data, "-m", "fast", "stop"],
                       capture_output=True)


def sipward(data, url, *args, check=True):
    env = dict(os.environ)
    env.pop("SIPWARD_DATABASE_URL", None)
    if url:
        env["SIPWARD_DATABASE_URL"] = url
    return subprocess.run([SIPWARD, "--data", data, *args], env=env, check=check, capture_output=True, text=True)


RUNNING = []


class Node:
    """A running `sipward serve`; its stderr lines are timestamped as they arrive."""

    def __init__(self, data, url, name="bench"):
        env = dict(os.environ)
        env.pop("SIPWARD_DATABASE_URL", None)
        if url:
            env["SIPWARD_DATABASE_URL"] = url
        self.port = reg.free_port()
        t0 = time.time()
        self.p = subprocess.Popen([SIPWARD, "--data", data, "serve", "--sip", f"127.0.0.1:{self.port}",
                                   "--http", "127.0.0.1:0", "--node-name", name], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        RUNNING.append(self)
        json.loads(self.p.stdout.readline())
        self.ready_ms = (time.time() - t0) * 1000
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stderr:
            self.lines.append((time.time(), line))

    def stop(self):
        # A clean stop gives the node's name up at once; a killed node's name is held
        # until its heartbeat is stale (15 s), and the next start under it is refused.
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def node_dir(name, url, key_from=None):
    data = os.path.join(OUT, name)
    if key_from:
        os.makedirs(data, mode=0o700)
        shutil.copy(os.path.join(key_from, "secrets.key"), os.path.join(data, "secrets.key"))
        os.chmod(os.path.join(data, "secrets.key"), 0o600)
    sipward(data, url, "ext", "list")
    return data


def allow_load_generator(data, url):
    """SIPp's address allow-listed in the database the node reads (register.py's helper
    knows no URL: on PostgreSQL its rule landed in a SQLite file no node reads, and the
    guard's flood limit for a trusted source, 300 requests/s, throttled SIPp)."""
    sipward(data, url, "allow", "add", "127.0.0.1/32", "--note", "SIPp load generator")


def users_csv():
    csv = os.path.join(OUT, "users.csv")
    with open(csv, "w") as f:
        f.write("number,auth_id,password\n")
        for n, a, pw in reg.users():
            f.write(f"{n},{a},{pw}\n")
    return csv


def inf_files(parts):
    """The SIPp injection file split in `parts` (one per node)."""
    files = []
    for k in range(parts):
        path = os.path.join(OUT, f"users-{k}.inf")
        with open(path, "w") as f:
            f.write("SEQUENTIAL\n")
            for i, (n, a, pw) in enumerate(reg.users()):
                if i % parts == k:
                    f.write(f"{n};[authentication username={a} password={pw}]\n")
        files.append(path)
    return files


def register_ladder(label, nodes):
    """The highest rate (split evenly over `nodes`) every SIPp run sustained."""
    infs = inf_files(len(nodes))
    best, steps = 0, []
    for rate in STEPS:
        share = max(1, rate // len(nodes))
        runs = [reg.sipp(f"127.0.0.1:{n.port}", inf, share, share * SECONDS, f"{label}-n{i}")
                for i, (n, inf) in enumerate(zip(nodes, infs))]
        ok_all, per_node = True, []
        for p, stat, start in runs:
            p.wait()
            elapsed = time.time() - start
            ok, failed = reg.sipp_result(stat)
            ok_all &= failed == 0 and ok == share * SECONDS and elapsed <= SECONDS + 2
            per_node.append({"ok": ok, "failed": failed, "elapsed_s": round(elapsed, 1)})
        steps.append({"rate": rate, "sustained": ok_all, "nodes": per_node})
        if not ok_all:
            break
        best = rate
    return {"setup": label, "nodes": len(nodes), "sustained_per_s": best, "steps": steps}


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ban_propagation(pg, url, observers, first):
    """Bans committed straight into the database (sources numbered from `first`),
    timed until each observing node logs it as enforced (its guard reloaded it)."""
    name = url.rsplit("/", 1)[1]
    times = []
    for i in range(first, first + BANS):
        source = f"198.{18 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"
        t0 = time.time()
        pg.psql(name, "INSERT INTO bans (source, reason, detail, first_seen, last_seen, expires_at, times) "
                      f"VALUES ('{source}', 'manual', 'bench', 1, 1, 9999999999, 1)")
        needle = f'"source":"{source}"'
        for node in observers:
            deadline = t0 + 10
            while time.time() < deadline:
                seen = [t for t, line in node.lines if needle in line and '"event":"ban"' in line]
                if seen:
                    times.append((seen[0] - t0) * 1000)
                    break
                time.sleep(0.001)
            else:
                times.append(10_000.0)
    return {"observers": len(observers), "bans": BANS, "p50_ms": round(percentile(times, 50), 1),
            "p99_ms": round(percentile(times, 99), 1), "max_ms": round(max(times), 1)}


def fill_for_ready(pg, data, url):
    """EXTENSIONS extensions and as many live bindings in the database."""
    name = url.rsplit("/", 1)[1]
    csv = os.path.join(OUT, "ready.csv")
    with open(csv, "w") as f:
        f.write("number,auth_id,password\n")
        for i in range(EXTENSIONS):
            f.write(f"{50000 + i},r{i}x10k,Pw{i}Zq8xLmTr4wPyK7\n")
    sipward(data, url, "import", csv)
    pg.psql(name, "INSERT INTO bindings (number, contact, call_id, cseq, expires_at, source, transport, generation) "
                  "SELECT number, '<sip:' || number || '@127.0.0.1:5999>', 'c' || number, 1, 9999999999, "
                  "'127.0.0.1:5999', 'udp', credential_generation FROM extensions WHERE number LIKE '5____'")
    return int(pg.psql(name, "SELECT COUNT(*) FROM bindings"))


def ready(data, url, nodes, bindings):
    """Start-to-ready (the ready line) of `nodes` nodes started at once."""
    dirs = [data] + [node_dir(f"ready-{nodes}-{k}", url, key_from=data) for k in range(1, nodes)]
    started = []
    threads = [threading.Thread(target=lambda d=d, k=k: started.append(Node(d, url, f"node-{k}")))
               for k, d in enumerate(dirs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = sorted(round(n.ready_ms) for n in started)
    for n in started:
        n.stop()
    return {"nodes": nodes, "extensions": EXTENSIONS, "bindings": bindings, "ready_ms": ms}


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    pg = Postgres()
    report = {"binary": SIPWARD, "register": [], "ban_propagation": [], "ready": []}
    try:
        csv = users_csv()
        # REGISTER: SQLite, then PostgreSQL with 1 and 3 nodes.
        sqlite_dir = os.path.join(OUT, "sqlite")
        sipward(sqlite_dir, None, "import", csv)
        allow_load_generator(sqlite_dir, None)
        node = Node(sqlite_dir, None)
        report["register"].append(register_ladder("sqlite", [node]))
        node.stop()
        _, url = pg.database()
        a = node_dir("pg-a", url)
        sipward(a, url, "import", csv)
        allow_load_generator(a, url)
        dirs = [a, node_dir("pg-b", url, key_from=a), node_dir("pg-c", url, key_from=a)]
        for count in (1, 3):
            # Each node its own name, as on separate machines (the host name names them
            # all alike here, and bindings belong to the node that holds their flow).
            nodes = [Node(d, url, f"node-{k}") for k, d in enumerate(dirs[:count])]
            report["register"].append(register_ladder(f"postgres-{count}", nodes))
            if count == 3:
                report["ban_propagation"].append(ban_propagation(pg, url, nodes[:1], 0))
                report["ban_propagation"].append(ban_propagation(pg, url, nodes, BANS))
            for n in nodes:
                n.stop()
        # A restarted node, then three at once, on 10,000 extensions and bindings.
        _, url = pg.database()
        data = node_dir("ready-0", url)
        bindings = fill_for_ready(pg, data, url)
        for count in (1, 3):
            report["ready"].append(ready(data, url, count, bindings))
    finally:
        for n in RUNNING:
            n.stop()
        pg.stop()
    sqlite_best = report["register"][0]["sustained_per_s"] or 1
    report["postgres_to_sqlite_register"] = round(report["register"][1]["sustained_per_s"] / sqlite_best, 2)
    print(json.dumps(report))
    with open(os.path.join(OUT, "report.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
