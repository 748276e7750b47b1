//! The file-descriptor limit reached (issue #17): `sipward serve` started with a low
//! `RLIMIT_NOFILE` (through `prlimit`, soft and hard alike, so the raise at start cannot
//! lift it), TCP connections opened until accept fails. The server must keep serving
//! UDP, must not spin (its CPU time is read from /proc while it sits at the limit), and
//! must accept again once connections close.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::Env;
use crate::peers::{UdpClient, eventually_or, require};

/// The server's CPU time (user + system) so far, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').expect("comm").1;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the comm.
    let ticks = fields[11] + fields[12];
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn options(local: std::net::SocketAddr, n: u32, transport: &str) -> String {
    format!(
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bKfd{n}x{}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=f{n}\r\nTo: <sip:pbx@127.0.0.1>\r\n\
         Call-ID: fd-{n}-{}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        local.port(),
        local.port()
    )
}

/// Whether a new TCP connection is served (an OPTIONS on it answered 200) within `wait`.
fn tcp_served(server: &std::net::SocketAddr, n: u32, wait: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(server, wait) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(wait));
    let local = s.local_addr().expect("local");
    if s.write_all(options(local, n, "TCP").as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 2048];
    matches!(s.read(&mut buf), Ok(k) if k > 0 && buf.starts_with(b"SIP/2.0 200"))
}

#[test]
fn at_the_fd_limit_udp_is_served_accept_backs_off_without_spinning_and_resumes() {
    require("prlimit", "util-linux");
    let env = Env::with_config(
        "[sip]\ntcp_connections_per_source = 4096\ntcp_unfinished_per_source = 8\n\
         tcp_first_message_secs = 60\ntcp_idle_secs = 120\n",
    );
    let server = env.serve_via(&["prlimit", "--nofile=96:96", "--"], "127.0.0.1:0", &[]);
    let udp = UdpClient::new(server.sip);
    // Connections until the server can take no more: the kernel still completes the
    // handshake (the listen backlog), but accept fails and the server says so.
    let mut held = Vec::new();
    let started = Instant::now();
    while !server.log().contains("\"event\":\"accept_backoff\"") {
        assert!(
            held.len() < 400 && started.elapsed() < Duration::from_secs(60),
            "no accept back-off after {} connections:\n{}",
            held.len(),
            server.log()
        );
        for _ in 0..8 {
            if let Ok(s) = TcpStream::connect(server.sip) {
                held.push(s);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("accept failed after {} connections", held.len());
    // At the limit: UDP is served...
    assert!(
        udp.request(&options(udp.local, 1, "UDP"))
            .is_some_and(|a| a.starts_with("SIP/2.0 200")),
        "UDP stopped at the fd limit"
    );
    // ...a new TCP connection is not (nothing to accept it with)...
    assert!(!tcp_served(&server.sip, 2, Duration::from_secs(1)));
    // ...and the accept loop waits instead of spinning: over 3 s at the limit the
    // server uses well under a tenth of a core (it spun at ~120 % before the back-off).
    let (cpu0, t0) = (cpu_time(server.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (cpu, wall) = (cpu_time(server.pid()) - cpu0, t0.elapsed());
    eprintln!("CPU at the fd limit: {cpu:?} in {wall:?}");
    assert!(
        cpu < wall / 10,
        "{cpu:?} of CPU in {wall:?} at the fd limit: the accept loop spins"
    );
    assert!(
        udp.request(&options(udp.local, 3, "UDP"))
            .is_some_and(|a| a.starts_with("SIP/2.0 200")),
        "UDP still served"
    );
    // Control: the meter reads this server's work. 5,000 OPTIONS from 200 addresses
    // (25 each, under the flood limits) cost it measurable CPU.
    let before = cpu_time(server.pid());
    let clients: Vec<UdpClient> = (0..200u32)
        .map(|i| {
            UdpClient::from_address(
                &format!("127.0.{}.{}", 10 + i / 100, 1 + i % 100),
                server.sip,
                Duration::from_millis(200),
            )
        })
        .collect();
    for round in 0..25u32 {
        for (i, c) in clients.iter().enumerate() {
            c.send(&options(
                c.local,
                1000 * round + u32::try_from(i).expect("small"),
                "UDP",
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let loaded = cpu_time(server.pid()) - before;
    eprintln!("CPU for 5,000 OPTIONS: {loaded:?}");
    assert!(
        loaded >= Duration::from_millis(20),
        "the meter sees nothing"
    );
    // Connections close: accepting resumes within the back-off's longest wait.
    held.clear();
    let mut n = 10;
    eventually_or(
        "TCP is served again once connections closed",
        Duration::from_secs(10),
        || {
            n += 1;
            tcp_served(&server.sip, n, Duration::from_millis(500))
        },
        || server.log(),
    );
    assert!(server.metric("sipward_accept_backoff_total") >= 1);
    server.stop();
}
