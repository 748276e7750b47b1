"""Timing of the answers that must not be told apart: REGISTER with credentials for an
unknown auth ID, a wrong password, and a wrong realm (each answering a fresh nonce).

    python3 bench/enumeration.py      # after `cargo build --release -p sipward`

The three kinds are interleaved (so drift hits all alike) and their round-trip times
compared: median and 90th percentile, in microseconds, over 3,000 requests each.
"""

import hashlib
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIPWARD = os.path.join(ROOT, "target", "release", "sipward")
N = 3000


def md5(s):
    return hashlib.md5(s.encode()).hexdigest()


def main():
    data = os.path.join(tempfile.mkdtemp(), "d")
    subprocess.run([SIPWARD, "--data", data, "ext", "add", "1001", "--auth-id", "alice1001", "--password", "Zq8xLmTr4wPyK7vB2"],
                   check=True, capture_output=True)
    p = subprocess.Popen([SIPWARD, "--data", data, "serve", "--sip", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    host, port = json.loads(p.stdout.readline())["sip_udp"].rsplit(":", 1)
    target = (host, int(port))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    local = s.getsockname()[1]
    seq = [0]

    def request(auth):
        seq[0] += 1
        n = seq[0]
        msg = (f"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{n};rport\r\n"
               f"From: <sip:1001@127.0.0.1>;tag=t{n}\r\nTo: <sip:1001@127.0.0.1>\r\nCall-ID: c{n}\r\nCSeq: 1 REGISTER\r\n"
               + (f"Authorization: {auth}\r\n" if auth else "") + "Content-Length: 0\r\n\r\n")
        t = time.perf_counter_ns()
        s.sendto(msg.encode(), target)
        answer = s.recv(65535).decode()
        return answer, (time.perf_counter_ns() - t) / 1000

    def attempt(user, realm, password):
        challenge, _ = request(None)
        nonce = challenge.split('nonce="')[1].split('"')[0]
        uri = "sip:127.0.0.1"
        ha1 = md5(f"{user}:{realm}:{password}")
        resp = md5(f"{ha1}:{nonce}:00000001:c0ffee:auth:{md5('REGISTER:' + uri)}")
        auth = (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{resp}", '
                f'algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"')
        answer, us = request(auth)
        assert answer.startswith("SIP/2.0 401"), answer
        return us

    kinds = {
        "unknown auth ID": ("mallory", "sipward", "Zq8xLmTr4wPyK7vB2"),
        "wrong password": ("alice1001", "sipward", "not-the-password"),
        "wrong realm": ("alice1001", "elsewhere", "Zq8xLmTr4wPyK7vB2"),
    }
    times = {k: [] for k in kinds}
    for _ in range(200):  # warm-up
        for k, v in kinds.items():
            attempt(*v)
    for _ in range(N):
        for k, v in kinds.items():
            times[k].append(attempt(*v))
    p.terminate()
    p.wait()
    print(f"{'answer to':<18} {'median µs':>10} {'p90 µs':>8}")
    for k, t in times.items():
        t.sort()
        print(f"{k:<18} {statistics.median(t):>10.1f} {t[int(0.9 * len(t))]:>8.1f}")


if __name__ == "__main__":
    main()
