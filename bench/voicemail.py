"""Concurrent voicemail deposits against sipward, with and without an RTP flood.

Each call is tests/sipp/vm_deposit_uac.xml: INVITE with PCMA, 407, INVITE with
credentials, 200 from the voicemail, the 2.75 s greeting and tone, then SIPp plays
g711a.pcap (236 packets, 7.08 s, 56,640 samples) and hangs up. SIPp instances of at most
32 calls each run from their own loopback address (the RTP guard allows each source a
bounded number of ports) and call their own box (a box holds 100 messages). Per step:
calls that succeeded, messages filed, samples per message against those sent (a lost
packet is missing samples), sipward's CPU seconds per call and its RSS growth per
concurrent call. The flood step sends RTP as fast as one Python socket can from
127.0.0.99 to the ports the calls hold while the same deposits run.

Jitter added: tcpdump captures what sipward sends from its RTP ports (the greeting and
tone, on every call) and the RFC 3550 interarrival jitter of each stream is computed
from the capture times against the RTP timestamps; the report gives the largest final
jitter over the streams and the largest single deviation of a packet from its slot.
"""

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out", "voicemail")
SIPWARD = os.path.abspath(os.environ.get("SIPWARD", os.path.join(ROOT, "target", "release", "sipward")))
SCENARIO = os.path.join(ROOT, "tests", "sipp", "vm_deposit_uac.xml")
CALLS = [int(x) for x in os.environ.get("CALLS", "32 64").split()]
PER_SIPP = 32
RTP_LO, RTP_HI = 24000, 25999
SENT_SAMPLES = 56640
CALLER, PW = "7001", "Pw7001Zq8xLmTr4wPyK7"


def free_port(ip="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run(data, *args):
    return subprocess.run([SIPWARD, "--data", data, *args], check=True, capture_output=True, text=True)


def cpu_secs(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def metric(http, name):
    """An unlabelled metric's value."""
    return metric_labelled(http, name + " ")


def metric_labelled(http, line_prefix):
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return int(float(line.split()[-1]))
    return 0


def wav_samples(path):
    b = open(path, "rb").read()
    return max(0, (len(b) - 44) // 2)


def flood(stop, counter, pairs):
    """RTP from a wrong address to the ports the calls hold (the pool hands out the
    lowest free pairs first)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.99", 0))
    pkt = bytes([0x80, 0x08]) + bytes(10) + bytes(160)
    while not stop.is_set():
        for port in range(RTP_LO, RTP_LO + 2 * pairs, 2):
            try:
                s.sendto(pkt, ("127.0.0.1", port))
                counter[0] += 1
            except OSError:
                pass


def capture(path):
    """tcpdump of sipward's outgoing RTP (source ports in the media range)."""
    return subprocess.Popen(
        ["tcpdump", "-i", "lo", "-U", "-n", "-w", path, f"src host 127.0.0.1 and udp src portrange {RTP_LO}-{RTP_HI}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def jitter(path):
    """Per RTP stream (SSRC) in the capture: RFC 3550 interarrival jitter J (final value)
    and the largest |D| of one packet against the one before, both in ms; the worst over
    all streams, and how many streams and packets."""
    b = open(path, "rb").read()
    if len(b) < 24:
        return {"streams": 0}
    magic = struct.unpack("<I", b[:4])[0]
    end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    link = struct.unpack(end + "I", b[20:24])[0]
    skip = 14 if link == 1 else 16 if link == 113 else 4 if link == 0 else 0
    at, streams, packets = 24, {}, 0
    while at + 16 <= len(b):
        sec, frac, incl, _ = struct.unpack(end + "IIII", b[at:at + 16])
        pkt = b[at + 16:at + 16 + incl]
        at += 16 + incl
        t = sec + frac / (1e9 if nano else 1e6)
        ip = pkt[skip:]
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        rtp = ip[(ip[0] & 15) * 4 + 8:]
        if len(rtp) < 12 or rtp[0] >> 6 != 2 or rtp[1] & 0x7F >= 72:
            continue  # not RTP (RTCP's packet types are 200-204)
        ts, ssrc = struct.unpack(">II", rtp[4:12])
        packets += 1
        s = streams.setdefault(ssrc, {"prev": None, "j": 0.0, "worst": 0.0})
        if s["prev"] is not None:
            pt, pts = s["prev"]
            d = abs((t - pt) * 8000 - ((ts - pts) & 0xFFFFFFFF))
            s["j"] += (d - s["j"]) / 16
            s["worst"] = max(s["worst"], d)
        s["prev"] = (t, ts)
    if not streams:
        return {"streams": 0, "packets": 0}
    return {"streams": len(streams), "packets": packets,
            "jitter_ms_max": round(max(s["j"] for s in streams.values()) / 8, 3),
            "jitter_ms_median": round(sorted(s["j"] for s in streams.values())[len(streams) // 2] / 8, 3),
            "deviation_ms_max": round(max(s["worst"] for s in streams.values()) / 8, 3)}


def step(label, data, sip, http, pid, calls, with_flood, boxes):
    sipps = []
    pcap = os.path.join(OUT, f"{label}.pcap")
    dump = capture(pcap)
    deadline = time.time() + 10
    while (not os.path.exists(pcap) or os.path.getsize(pcap) < 24) and time.time() < deadline:
        time.sleep(0.05)  # tcpdump has the interface open once it wrote the file header
    instances = (calls + PER_SIPP - 1) // PER_SIPP
    before_msgs = metric(http, "sipward_voicemail_messages_total")
    before_drop = metric_labelled(http, 'sipward_rtp_dropped_total{reason="wrong_source"}')
    cpu0, rss0 = cpu_secs(pid), rss_kib(pid)
    stop, sent = threading.Event(), [0]
    flooder = threading.Thread(target=flood, args=(stop, sent, calls), daemon=True) if with_flood else None
    if flooder:
        flooder.start()
    t0 = time.time()
    for k in range(instances):
        n = min(PER_SIPP, calls - k * PER_SIPP)
        box = boxes[k]
        ip = f"127.0.1.{k + 1}"
        d = os.path.join(OUT, f"{label}-{k}")
        os.makedirs(d, exist_ok=True)
        inf = os.path.join(d, "users.csv")
        with open(inf, "w") as f:
            f.write(f"SEQUENTIAL\n{CALLER};[authentication username=\"vm{CALLER}\" password=\"{PW}\"];{box}\n")
        sipps.append((d, subprocess.Popen(
            ["sipp", "-sf", SCENARIO, "-inf", inf, "-auth_uri", f"{box}@{sip}", "-i", ip, "-p", str(free_port(ip)),
             "-mp", str(free_port(ip)), "-cp", str(free_port()), "-m", str(n), "-l", str(n), "-r", str(n),
             "-timeout", "90s", "-recv_timeout", "10000", "-nostdin", "-trace_stat", "-stf", os.path.join(d, "stat.csv"),
             sip], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    peak = rss0
    while any(p.poll() is None for _, p in sipps):
        peak = max(peak, rss_kib(pid))
        time.sleep(0.2)
    wall = time.time() - t0
    stop.set()
    dump.terminate()
    dump.wait()
    deadline = time.time() + 20
    while metric(http, "sipward_voicemail_messages_total") < before_msgs + calls and time.time() < deadline:
        time.sleep(0.2)
    cpu = cpu_secs(pid) - cpu0
    ok = failed = 0
    for d, _ in sipps:
        lines = [l for l in open(os.path.join(d, "stat.csv")).read().splitlines() if l.strip()]
        head, last = lines[0].split(";"), lines[-1].split(";")
        ok += int(last[head.index("SuccessfulCall(C)")])
        failed += int(last[head.index("FailedCall(C)")])
    filed = metric(http, "sipward_voicemail_messages_total") - before_msgs
    samples = []
    for box in boxes[:instances]:
        bdir = os.path.join(data, "voicemail", box)
        if os.path.isdir(bdir):
            for name in sorted(os.listdir(bdir)):
                if name.startswith("msg-"):
                    samples.append(wav_samples(os.path.join(bdir, name)))
    short = [s for s in samples if s < SENT_SAMPLES - 160]
    r = {
        "step": label, "concurrent_calls": calls, "flood": with_flood, "wall_s": round(wall, 1),
        "calls_ok": ok, "calls_failed": failed, "messages_filed": filed,
        "messages_missing_samples": len(short), "fewest_samples": min(samples) if samples else 0,
        "sent_samples": SENT_SAMPLES,
        "cpu_s": round(cpu, 2), "cpu_ms_per_call": round(1000 * cpu / max(calls, 1), 1),
        "rss_start_mib": rss0 // 1024, "rss_peak_mib": peak // 1024,
        "rss_kib_per_call": (peak - rss0) // max(calls, 1),
        "sent_rtp": jitter(pcap),
        "flood_packets_sent": sent[0],
        "flood_packets_dropped": metric_labelled(http, 'sipward_rtp_dropped_total{reason="wrong_source"}') - before_drop,
    }
    print(json.dumps(r))
    return r


def main():
    subprocess.run(["rm", "-rf", OUT])
    os.makedirs(OUT)
    data = os.path.join(OUT, "data")
    run(data, "ext", "list")
    with open(os.path.join(data, "sipward.toml"), "w") as f:
        f.write(f'[sip]\ndigest_algorithms = ["MD5"]\n[media]\nrtp_ports = "{RTP_LO}-{RTP_HI}"\n'
                f'rtp_ports_per_source = {PER_SIPP}\n')
    run(data, "ext", "add", CALLER, "--auth-id", f"vm{CALLER}", "--password", PW)
    steps = [(c, fl) for c in CALLS for fl in (False, True)]
    need = max((c + PER_SIPP - 1) // PER_SIPP for c in CALLS) * len(steps)
    boxes = [str(7100 + i) for i in range(need)]
    for b in boxes:
        run(data, "ext", "add", b)
    run(data, "allow", "add", "127.0.0.0/8", "--note", "SIPp load generators")
    p = subprocess.Popen([SIPWARD, "--data", data, "serve", "--sip", f"127.0.0.1:{free_port()}", "--http", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=open(os.path.join(OUT, "serve.log"), "w"), text=True)
    ready = json.loads(p.stdout.readline())
    results = []
    try:
        used = 0
        for calls, fl in steps:
            n = (calls + PER_SIPP - 1) // PER_SIPP
            results.append(step(f"{calls}{'-flood' if fl else ''}", data, ready["sip_udp"], ready["http"], p.pid,
                                calls, fl, boxes[used:used + n]))
            used += n
    finally:
        p.terminate()
        p.wait()
    json.dump({"profile": os.path.basename(os.path.dirname(SIPWARD)), "results": results},
              open(os.path.join(OUT, "report.json"), "w"), indent=2)


if __name__ == "__main__":
    main()
