//! Real peers for the server tests: the server itself (spawned on ephemeral ports),
//! SIPp, and a raw UDP client for answers that must be compared byte by byte.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::Env;

/// Finds a peer program or fails with a message that says how to get it. Never skips:
/// a test that needs a peer proves nothing without it (CI installs them via scripts/test).
pub fn require(program: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "the test peer `{program}` is not installed (Debian package {package}); run scripts/test, which installs it"
    );
}

/// A port free on 127.0.0.1 for both UDP and TCP at the time of asking.
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it returns true or the deadline passes.
pub fn eventually(what: &str, deadline: Duration, check: impl FnMut() -> bool) {
    eventually_or(what, deadline, check, String::new);
}

/// [`eventually`], with `context` (a peer's log, say) in the failure message.
pub fn eventually_or(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {deadline:?}\n{}", context());
}

/// A running `sipward serve`.
pub struct Server {
    child: Child,
    log: PathBuf,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    /// SIP over TLS (absent when `[tls] enabled = false`).
    pub sip_tls: Option<SocketAddr>,
}

impl Env {
    pub fn serve(&self) -> Server {
        self.serve_with(&[])
    }

    pub fn serve_with(&self, extra: &[&str]) -> Server {
        self.serve_via(&[], "127.0.0.1:0", extra)
    }

    /// `serve` with SIP on `sip`, started through `wrapper` (such as `ip netns exec NS`)
    /// when one is given.
    pub fn serve_via(&self, wrapper: &[&str], sip: &str, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--sip", sip, "--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let log = self.path("serve.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("serve log");
        let (program, before): (&str, &[&str]) = match wrapper.split_first() {
            Some((p, rest)) => (p, rest),
            None => (env!("CARGO_BIN_EXE_sipward"), &[]),
        };
        let mut command = Command::new(program);
        self.database_env(&mut command);
        command.args(before);
        if !wrapper.is_empty() {
            command.arg(env!("CARGO_BIN_EXE_sipward"));
        }
        let mut child = command
            .arg("--data")
            .arg(&self.data)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file.try_clone().expect("log")))
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("serve printed no ready line within 20 s")
            });
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        assert_eq!(ready["event"], "ready");
        assert_eq!(
            ready["sip_udp"], ready["sip_tcp"],
            "UDP and TCP share the port"
        );
        let addr = |k: &str| ready[k].as_str().expect(k).parse().expect("addr");
        Server {
            sip: addr("sip_udp"),
            http: addr("http"),
            sip_tls: ready["sip_tls"]
                .as_str()
                .map(|a| a.parse().expect("sip_tls")),
            child,
            log,
        }
    }
}

impl Server {
    /// What the server wrote to stderr (security events, errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`HUP`, ...) to the server.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal}");
    }

    /// Waits up to `deadline` for the server to exit by itself: its status, or None
    /// while it still runs.
    pub fn exited_within(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops with SIGTERM (the server writes its bindings on the way out).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "serve exited with {status}:\n{}",
                    self.log()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("serve did not stop within 10 s of SIGTERM");
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.http).expect("connect http");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http
        )
        .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }

    /// The server's process id (to read its CPU time from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }
}

impl Server {
    /// `sipward_egress_denied_total` summed over its reasons, after printing every
    /// non-zero reason with `what` (run with `--nocapture` to read the counts).
    pub fn egress_denied(&self, what: &str) -> u64 {
        let (_, body) = self.http_get("/metrics");
        let mut total = 0;
        for l in body.lines() {
            let family = [
                "sipward_egress_denied_total{",
                "sipward_responses_dropped_total{",
            ];
            if family.iter().any(|f| l.starts_with(f)) {
                let n: u64 = l
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                eprintln!("{what}: {l}");
                if l.starts_with(family[0]) {
                    total += n;
                }
            }
        }
        total
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcome of one SIPp run.
#[derive(Debug)]
pub struct SippRun {
    pub code: i32,
    pub successful: u64,
    pub failed: u64,
    /// The start of SIPp's error log (why calls failed), empty when none did.
    pub errors: String,
}

/// The `[authentication ...]` keyword for a SIPp injection file, values quoted.
///
/// SIPp reads an unquoted keyword value that begins with `0x` as hex and sends the
/// decoded bytes (`SendingMessage::getKeywordParam`): a generated password such as
/// `0xA7...` (one in 62² of them) became other bytes, and that phone's REGISTER got a
/// 401 for a wrong digest. A quoted value is taken as written, `\` escaping `"` and `\`
/// (`]` would still end the keyword and `;` the field: generated passwords hold neither).
pub fn sipp_auth(auth_id: &str, password: &str) -> String {
    let quote = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "[authentication username=\"{}\" password=\"{}\"]",
        quote(auth_id),
        quote(password)
    )
}

/// Runs a SIPp client scenario from `local_ip` (a loopback address) against `target`
/// and reads its final statistics.
#[allow(clippy::too_many_arguments)]
pub fn sipp_from(
    local_ip: &str,
    env: &Env,
    scenario: &str,
    csv: &str,
    target: SocketAddr,
    transport: &str,
    calls: u32,
    rate: u32,
) -> SippRun {
    let sipp = require("sipp", "sip-tester");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sipp")
        .join(scenario);
    let dir = env.path(&format!("sipp-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("sipp dir");
    let inf = dir.join("users.csv");
    std::fs::write(&inf, csv).expect("csv");
    let stat = dir.join("stat.csv");
    // SIPp 3.6 computes every digest over `sip:REMOTE_IP:PORT` unless told otherwise;
    // sipward holds a digest's uri= to the Request-URI (RFC 3261 §22.4), so a scenario
    // that calls `[field2]` signs that Request-URI (one dialled number per run).
    let calls_field2 = std::fs::read_to_string(&scenario)
        .is_ok_and(|t| t.contains("INVITE sip:[field2]@[remote_ip]:[remote_port] SIP/2.0"));
    let dialled: std::collections::BTreeSet<&str> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(';').nth(2))
        .collect();
    let auth_uri = match (calls_field2, dialled.len()) {
        (true, 1) => dialled
            .first()
            .map(|d| vec!["-auth_uri".to_owned(), format!("{d}@{target}")]),
        (true, _) => panic!("one SIPp run signs one Request-URI: give it one dialled number"),
        _ => None,
    }
    .unwrap_or_default();
    let out = Command::new(sipp)
        .current_dir(&dir)
        .args([
            "-sf",
            scenario.to_str().expect("utf8"),
            "-inf",
            inf.to_str().expect("utf8"),
        ])
        .args(&auth_uri)
        .args([
            "-i",
            local_ip,
            "-p",
            &free_port().to_string(),
            "-cp",
            &free_port().to_string(),
        ])
        .args([
            "-t",
            transport,
            "-m",
            &calls.to_string(),
            "-r",
            &rate.to_string(),
            "-l",
            &calls.to_string(),
        ])
        .args(["-timeout", "60s", "-recv_timeout", "5000", "-nostdin"])
        .args([
            "-trace_stat",
            "-stf",
            stat.to_str().expect("utf8"),
            "-trace_err",
            "-fd",
            "1",
        ])
        .arg(target.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run sipp");
    let (successful, failed) = sipp_stats(&stat);
    SippRun {
        code: out.status.code().unwrap_or(-1),
        successful,
        failed,
        errors: sipp_errors(&dir),
    }
}

/// The first 4,000 characters of the `*_errors.log` SIPp wrote into `dir`.
fn sipp_errors(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return String::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("_errors.log"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<String>()
        .chars()
        .take(4000)
        .collect()
}

/// Successful and failed calls from the last line of a SIPp statistics file.
fn sipp_stats(stat: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let header: Vec<&str> = lines.first().copied().unwrap_or("").split(';').collect();
    let last: Vec<&str> = lines
        .get(1..)
        .and_then(<[&str]>::last)
        .copied()
        .unwrap_or("")
        .split(';')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| last.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (col("SuccessfulCall(C)"), col("FailedCall(C)"))
}

/// A bare SIP client over UDP, for exact answers.
pub struct UdpClient {
    socket: UdpSocket,
    pub local: SocketAddr,
    target: SocketAddr,
}

impl UdpClient {
    pub fn new(target: SocketAddr) -> Self {
        Self::from_address("127.0.0.1", target, Duration::from_secs(3))
    }

    /// A client on another loopback address (127.0.0.0/8), waiting `timeout` for answers.
    pub fn from_address(ip: &str, target: SocketAddr, timeout: Duration) -> Self {
        let socket = UdpSocket::bind((ip, 0)).expect("bind");
        socket.set_read_timeout(Some(timeout)).expect("timeout");
        let local = socket.local_addr().expect("local");
        Self {
            socket,
            local,
            target,
        }
    }

    pub fn send(&self, text: &str) {
        self.socket
            .send_to(text.as_bytes(), self.target)
            .expect("send");
    }

    /// Sends and waits for one answer (None on timeout).
    pub fn request(&self, text: &str) -> Option<String> {
        self.send(text);
        let mut buf = vec![0u8; 65_535];
        let (n, _) = self.socket.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for the next datagram sent to this client (a request the server forwards
    /// to the contact it bound); None on timeout.
    pub fn receive(&self) -> Option<String> {
        let mut buf = vec![0u8; 65_535];
        let (n, _) = self.socket.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

pub const SMTP_USER: &str = "pbx";
pub const SMTP_PASSWORD: &str = "Smtp-Test-Secret-42";

/// A Python interpreter with aiosmtpd (Debian's python3-aiosmtpd lives in /usr/bin).
fn python_with_aiosmtpd() -> PathBuf {
    for py in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(py)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return PathBuf::from(py);
        }
    }
    panic!(
        "the test peer aiosmtpd is not installed (Debian package python3-aiosmtpd); run scripts/test, which installs it"
    );
}

/// A real SMTP server requiring STARTTLS and AUTH; messages land in `maildir`.
pub struct Smtp {
    child: Child,
    port: u16,
    /// The CA that signed the server's certificate (sipward's `mail.ca_file`).
    cert: PathBuf,
    maildir: PathBuf,
}

impl Smtp {
    pub fn start(env: &Env) -> Smtp {
        let python = python_with_aiosmtpd();
        let openssl = require("openssl", "openssl");
        let dir = env.path(&format!("smtp-{}", free_port()));
        std::fs::create_dir_all(&dir).expect("smtp dir");
        // A test CA and a server certificate it signed (rustls refuses a CA certificate
        // used as the server's own).
        let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        let (cert, key, csr) = (
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("cert.csr"),
        );
        let ext = dir.join("ext.cnf");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let steps: [Vec<&std::ffi::OsStr>; 3] = [
            ["req", "-x509"]
                .iter()
                .chain(&ec)
                .chain(&["-days", "2", "-subj", "/CN=sipward test CA", "-keyout"])
                .map(std::ffi::OsStr::new)
                .chain([ca_key.as_os_str(), "-out".as_ref(), ca.as_os_str()])
                .collect(),
            ["req"]
                .iter()
                .chain(&ec)
                .chain(&["-subj", "/CN=127.0.0.1", "-keyout"])
                .map(std::ffi::OsStr::new)
                .chain([key.as_os_str(), "-out".as_ref(), csr.as_os_str()])
                .collect(),
            ["x509", "-req", "-days", "2", "-in"]
                .iter()
                .map(std::ffi::OsStr::new)
                .chain([
                    csr.as_os_str(),
                    "-CA".as_ref(),
                    ca.as_os_str(),
                    "-CAkey".as_ref(),
                    ca_key.as_os_str(),
                    "-CAcreateserial".as_ref(),
                    "-extfile".as_ref(),
                    ext.as_os_str(),
                    "-out".as_ref(),
                    cert.as_os_str(),
                ])
                .collect(),
        ];
        for args in steps {
            let made = Command::new(&openssl)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(made.success(), "openssl {args:?} failed");
        }
        let maildir = dir.join("mail");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/smtp/server.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["127.0.0.1", "0"])
            .arg(&cert)
            .arg(&key)
            .args([SMTP_USER, SMTP_PASSWORD])
            .arg(&maildir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("aiosmtpd did not start: {line:?}"));
        Smtp {
            child,
            port,
            cert: ca,
            maildir,
        }
    }

    /// The `[mail]` section pointing at this server (with a wrong password if asked).
    /// The password lives in a file of its own (0600), so the config file holding this
    /// section may stay readable.
    pub fn config(&self, password: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let file = self
            .maildir
            .with_file_name(format!("smtp-password-{}", free_port()));
        std::fs::write(&file, format!("{password}\n")).expect("password file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        format!(
            "[mail]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsecurity = \"starttls\"\n\
             username = \"{SMTP_USER}\"\npassword_file = \"{}\"\nfrom = \"pbx@example.com\"\n\
             ca_file = \"{}\"\ntimeout_secs = 10\n",
            self.port,
            file.display(),
            self.cert.display()
        )
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<String> {
        let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&self.maildir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .map(|p| {
                        let text = std::fs::read_to_string(&p).expect("read mail");
                        (p, text)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out.into_iter().map(|(_, t)| t).collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A SIPp server scenario (a called phone) on `ip:port`, running in the background
/// until it has handled `calls` calls.
pub struct SippServer {
    child: Child,
    stat: PathBuf,
}

/// Whether a UDP socket is bound to `ip:port`, from `/proc/net/udp` (binding the port
/// to find out would race with the peer that is about to).
fn udp_bound(ip: std::net::Ipv4Addr, port: u16) -> bool {
    // The kernel prints the address as the u32 in host byte order, in hex.
    let want = format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip.octets()));
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
}

impl SippServer {
    /// `scenario` is a file in tests/sipp (or an absolute path).
    pub fn start(env: &Env, scenario: &str, ip: &str, port: u16, calls: u32) -> SippServer {
        let sipp = require("sipp", "sip-tester");
        let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/sipp")
            .join(scenario);
        let dir = env.path(&format!("sipp-uas-{}", free_port()));
        std::fs::create_dir_all(&dir).expect("sipp dir");
        let stat = dir.join("stat.csv");
        let child = Command::new(sipp)
            .current_dir(&dir)
            .args(["-sf", scenario.to_str().expect("utf8")])
            .args([
                "-i",
                ip,
                "-p",
                &port.to_string(),
                "-mp",
                &free_port().to_string(),
            ])
            .args(["-t", "u1", "-m", &calls.to_string(), "-nostdin"])
            .args(["-timeout", "60s", "-trace_stat", "-fd", "1", "-stf"])
            .arg(&stat)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run sipp");
        let mut server = SippServer { child, stat };
        let addr: std::net::Ipv4Addr = ip.parse().expect("IPv4 loopback address");
        eventually("SIPp listens", Duration::from_secs(10), || {
            assert!(
                !matches!(server.child.try_wait(), Ok(Some(_))),
                "SIPp exited before it listened on {ip}:{port}"
            );
            udp_bound(addr, port)
        });
        server
    }

    /// Waits (at most `deadline`) for SIPp to finish; its successful and failed calls.
    pub fn finish(mut self, deadline: Duration) -> (u64, u64) {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        sipp_stats(&self.stat)
    }
}

impl Drop for SippServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
