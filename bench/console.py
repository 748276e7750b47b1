"""The console's extension list at 10,000 extensions: time of one page render.

Creates N extensions (default 10,000; one in ten weak: password = PIN = number) with
`sipward import`, starts `sipward serve`, logs in to the console with a session, then
times `GET /extensions?page=P` (first, middle and last page), a search
(`?q=...`), the weak-only filter and `GET /api/v1/extensions?page=P` REPEAT times each
(default 20). The first request after start runs the audit (it is cached per registry
version afterwards): it is reported apart. Goal: a page under 200 ms in release.

    cargo build --release -p sipward && python3 bench/console.py
    N=500 REPEAT=5 SIPWARD=target/debug/sipward python3 bench/console.py   # a quick check
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIPWARD = os.environ.get("SIPWARD", os.path.join(ROOT, "target", "release", "sipward"))
N = int(os.environ.get("N", "10000"))
REPEAT = int(os.environ.get("REPEAT", "20"))
PASSWORD = "Console-Bench-Secret-93"


def run(data, *args, stdin=None):
    return subprocess.run([SIPWARD, "--data", data, *args], check=True, capture_output=True,
                          text=True, input=stdin)


def csv_of(n):
    lines = ["number,name,email,password,pin"]
    for i in range(n):
        number = str(100000 + i)
        if i % 10 == 0:
            lines.append(f"{number},Weak {i},weak{i}@example.com,{number},{number}")
        else:
            lines.append(f"{number},Desk {i},desk{i}@example.com,,")
    return "\n".join(lines) + "\n"


def timed(opener, url):
    t0 = time.perf_counter()
    with opener.open(url, timeout=60) as r:
        body = r.read()
        status = r.status
    ms = (time.perf_counter() - t0) * 1000
    if status != 200:
        raise SystemExit(f"{url}: {status}")
    return ms, body


def main():
    with tempfile.TemporaryDirectory(prefix="sw-console-bench-") as tmp:
        data = os.path.join(tmp, "data")
        csv = os.path.join(tmp, "ext.csv")
        with open(csv, "w") as f:
            f.write(csv_of(N))
        run(data, "ext", "list")
        t0 = time.perf_counter()
        run(data, "import", csv)
        import_s = time.perf_counter() - t0
        run(data, "admin", "passwd", "--password", "-", stdin=PASSWORD + "\n")
        server = subprocess.Popen([SIPWARD, "--data", data, "serve", "--sip", "127.0.0.1:0",
                                   "--http", "127.0.0.1:0"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        try:
            ready = json.loads(server.stdout.readline())
            base = f"http://{ready['http']}"

            class NoRedirect(urllib.request.HTTPRedirectHandler):
                def redirect_request(self, *a, **k):
                    return None

            # The session cookie is `Secure`: a cookie jar would not send it over plain
            # HTTP on loopback, so it is carried by hand.
            login = urllib.request.build_opener(NoRedirect)
            form = urllib.parse.urlencode({"name": "admin", "password": PASSWORD}).encode()
            try:
                answer = login.open(base + "/login", data=form, timeout=30)
                headers = answer.headers
            except urllib.error.HTTPError as e:
                if e.code != 303:
                    raise
                headers = e.headers
            cookie = next(v.split(";")[0] for k, v in headers.items()
                          if k.lower() == "set-cookie" and v.startswith("sipward_session="))
            opener = urllib.request.build_opener(NoRedirect)
            opener.addheaders = [("Cookie", cookie)]
            per_page = 100
            pages = max(1, -(-(N + 1) // per_page))
            first_ms, _ = timed(opener, base + "/extensions")
            cases = {
                "page 1": "/extensions?page=1",
                "middle page": f"/extensions?page={max(1, pages // 2)}",
                "last page": f"/extensions?page={pages}",
                "search by name": "/extensions?q=desk%2012",
                "weak only": "/extensions?weak=1",
                "API page": f"/api/v1/extensions?page={max(1, pages // 2)}&per_page=100",
            }
            results = {}
            for label, path in cases.items():
                times = []
                for _ in range(REPEAT):
                    ms, body = timed(opener, base + path)
                    times.append(ms)
                if b"ext-" not in body and b'"number"' not in body:
                    raise SystemExit(f"{label}: no rows in the answer")
                results[label] = {
                    "median_ms": round(statistics.median(times), 1),
                    "max_ms": round(max(times), 1),
                }
            report = {
                "extensions": N + 1,
                "sipward": SIPWARD,
                "import_s": round(import_s, 2),
                "first_request_with_audit_ms": round(first_ms, 1),
                "repeat": REPEAT,
                "pages": results,
                "goal_ms": 200,
            }
            print(json.dumps(report, indent=2))
            worst = max(r["median_ms"] for r in results.values())
            print(f"worst median: {worst} ms ({'within' if worst < 200 else 'OVER'} the 200 ms goal)",
                  file=sys.stderr)
        finally:
            server.terminate()
            server.wait(timeout=20)


if __name__ == "__main__":
    main()
