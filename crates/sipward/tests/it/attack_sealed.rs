//! Attacks on the HA1s kept sealed and opened on first use (issue #16), on the wire: a
//! sealed pair copied from another row, or sealed with another install's key, never logs
//! in (REGISTER and INVITE, UDP and TCP), from the first request after ready to after
//! a reload made with the CLI while serving, and its account answers like a user that
//! does not exist.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sip::digest::{Algorithm, ResponseInput, expected_response, ha1};

use crate::attack_tls::connect_from;
use crate::harness::Env;
use crate::peers::{UdpClient, eventually, require};
use crate::registrar::{PASSWORD, header, nonce_of, status};

const NEW: &str = "Nw7pQz4xTr9mLk2Vb";

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new(require("sqlite3", "sqlite3"))
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    assert!(
        out.status.success(),
        "{sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One SIP connection, UDP or TCP, from 127.0.0.1.
enum Conn {
    Udp(UdpClient),
    Tcp(TcpStream, Vec<u8>),
}

impl Conn {
    /// From `ip` (a loopback address of its own per attempt, so that the guard's count
    /// of failures per source never bans the test's clients).
    fn new(tcp: bool, ip: &str, server: SocketAddr) -> Conn {
        if tcp {
            let s = connect_from(ip, server);
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            Conn::Tcp(s, Vec::new())
        } else {
            Conn::Udp(UdpClient::from_address(ip, server, Duration::from_secs(3)))
        }
    }

    fn local(&self) -> (String, &'static str) {
        match self {
            Conn::Udp(c) => (c.local.to_string(), "UDP"),
            Conn::Tcp(s, _) => (s.local_addr().expect("addr").to_string(), "TCP"),
        }
    }

    /// Sends `text` and returns the first final answer (provisional ones skipped).
    fn request(&mut self, text: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        match self {
            Conn::Udp(c) => {
                let mut answer = c.request(text);
                while let Some(a) = &answer {
                    if status(a) >= 200 || Instant::now() > deadline {
                        break;
                    }
                    answer = c.receive();
                }
                answer
            }
            Conn::Tcp(s, buf) => {
                s.write_all(text.as_bytes()).expect("write");
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                        let len: usize = header(&head, "Content-Length")
                            .first()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            buf.drain(..end + 4 + len);
                            if status(&head) >= 200 {
                                return Some(head);
                            }
                            continue;
                        }
                    }
                    if Instant::now() > deadline {
                        return None;
                    }
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk) {
                        Ok(0) => return None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(_) => {}
                    }
                }
            }
        }
    }
}

/// A request as a phone sends it; `auth` is `(header name, value)` or none.
fn request_text(
    c: &Conn,
    method: &str,
    uri: &str,
    number: &str,
    call: &str,
    cseq: u32,
    auth: Option<(&str, &str)>,
) -> String {
    let (local, transport) = c.local();
    let mut t = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{call}{cseq};rport\r\n\
         From: <sip:{number}@127.0.0.1>;tag=t{call}\r\nTo: <{to}>\r\nCall-ID: {call}\r\n\
         CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContact: <sip:{number}@{local}>\r\n",
        to = if method == "REGISTER" {
            format!("sip:{number}@127.0.0.1")
        } else {
            uri.to_owned()
        }
    );
    if method == "REGISTER" {
        t.push_str("Expires: 120\r\n");
    }
    if let Some((name, value)) = auth {
        t.push_str(&format!("{name}: {value}\r\n"));
    }
    t.push_str("Content-Length: 0\r\n\r\n");
    t
}

/// The challenge's shape with the values that differ per request taken out: the status
/// line, the header names in order, and each challenge's parameters (nonce length
/// included, value not).
fn shape(answer: &str) -> String {
    let mut out = vec![answer.lines().next().unwrap_or("").to_owned()];
    for line in answer.lines().skip(1).filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        if name.eq_ignore_ascii_case("WWW-Authenticate")
            || name.eq_ignore_ascii_case("Proxy-Authenticate")
        {
            let params: Vec<String> = value
                .trim()
                .trim_start_matches("Digest")
                .split(',')
                .map(|p| {
                    let (k, v) = p.trim().split_once('=').unwrap_or((p.trim(), ""));
                    match k {
                        "nonce" | "opaque" => format!("{k}=<{}>", v.len()),
                        _ => format!("{k}={v}"),
                    }
                })
                .collect();
            out.push(format!("{name}: {}", params.join(",")));
        } else {
            out.push(name.to_owned());
        }
    }
    out.join("\n")
}

/// Challenge, then answer it as `auth_id`/`password`: the final answer.
fn attempt(
    server: SocketAddr,
    tcp: bool,
    method: &str,
    number: &str,
    auth_id: &str,
    password: &str,
    call: &str,
) -> String {
    // Each attempt from a loopback address of its own: 127.0.x.y from 127.0.40.1 on.
    static NEXT: AtomicU32 = AtomicU32::new(40 * 250);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let ip = format!("127.0.{}.{}", n / 250, n % 250 + 1);
    let mut c = Conn::new(tcp, &ip, server);
    let uri = if method == "REGISTER" {
        "sip:127.0.0.1".to_owned()
    } else {
        "sip:1001@127.0.0.1".to_owned()
    };
    let challenge = c
        .request(&request_text(&c, method, &uri, number, call, 1, None))
        .unwrap_or_else(|| panic!("no challenge to {method} over tcp={tcp}"));
    let (ask, answer) = if status(&challenge) == 407 {
        ("Proxy-Authenticate", "Proxy-Authorization")
    } else {
        ("WWW-Authenticate", "Authorization")
    };
    let Some(asked) = header(&challenge, ask).first().copied() else {
        return challenge;
    };
    let nonce = nonce_of(asked);
    let response = expected_response(
        Algorithm::Md5,
        &ha1(Algorithm::Md5, auth_id, "sipward", password),
        &ResponseInput {
            method,
            uri: &uri,
            nonce: &nonce,
            qop_auth: Some(("00000001", "c0ffee")),
        },
    );
    let value = format!(
        "Digest username=\"{auth_id}\", realm=\"sipward\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\""
    );
    // An INVITE's challenge is acknowledged (a new transaction follows either way).
    c.request(&request_text(
        &c,
        method,
        &uri,
        number,
        call,
        2,
        Some((answer, &value)),
    ))
    .unwrap_or_else(|| "silence".into())
}

/// For every transport and method: the answer's shape for `who` equals the answer's
/// shape for a user that does not exist, and is no success.
fn like_nobody(server: SocketAddr, who: (&str, &str, &str), tag: &str) {
    for tcp in [false, true] {
        for method in ["REGISTER", "INVITE"] {
            let call = format!("{tag}{}{method}", u8::from(tcp));
            let got = attempt(server, tcp, method, who.0, who.1, who.2, &call);
            let nobody = attempt(
                server,
                tcp,
                method,
                "1999",
                "nobody1999",
                PASSWORD,
                &format!("{call}n"),
            );
            assert!(
                status(&got) == 401 || status(&got) == 407,
                "{tag}: {} logged in over tcp={tcp} with {method}: {got}",
                who.1
            );
            assert_eq!(
                shape(&got),
                shape(&nobody),
                "{tag}: {} answered unlike nobody over tcp={tcp} with {method}",
                who.1
            );
        }
    }
}

#[test]
fn a_pair_from_another_row_or_another_install_never_logs_in_and_answers_like_nobody() {
    let env = Env::new();
    let other = Env::new();
    for (n, auth) in [
        ("1001", "alice1001"),
        ("1002", "bob1002"),
        ("1003", "carol1003"),
    ] {
        env.ok(&["ext", "add", n, "--auth-id", auth, "--password", PASSWORD]);
    }
    // The same extension on another install: the same AAD, another key.
    other.ok(&[
        "ext",
        "add",
        "1003",
        "--auth-id",
        "carol1003",
        "--password",
        PASSWORD,
    ]);
    let db = env.data.join("sipward.db");
    let theirs = sqlite(
        &other.data.join("sipward.db"),
        "SELECT ha1_md5_enc || '|' || ha1_sha256_enc FROM extensions WHERE number = '1003';",
    );
    let (md5, sha) = theirs.split_once('|').expect("two values");
    sqlite(
        &db,
        &format!(
            "UPDATE extensions SET ha1_md5_enc = '{md5}', ha1_sha256_enc = '{sha}' WHERE number = '1003';"
        ),
    );
    // Both of alice's sealed values in bob's row.
    sqlite(
        &db,
        "UPDATE extensions SET \
         ha1_md5_enc = (SELECT ha1_md5_enc FROM extensions WHERE number = '1001'), \
         ha1_sha256_enc = (SELECT ha1_sha256_enc FROM extensions WHERE number = '1001') \
         WHERE number = '1002';",
    );
    let server = env.serve();
    let sip = server.sip;
    // From the first requests after ready (the pass may still be running).
    like_nobody(sip, ("1002", "bob1002", PASSWORD), "copied-early");
    like_nobody(sip, ("1003", "carol1003", PASSWORD), "foreign-early");
    eventually("both reported unreadable", Duration::from_secs(20), || {
        let log = server.log();
        log.contains("\"ext/1002/ha1_md5\"") && log.contains("\"ext/1003/ha1_md5\"")
    });
    like_nobody(sip, ("1002", "bob1002", PASSWORD), "copied-after");
    like_nobody(sip, ("1003", "carol1003", PASSWORD), "foreign-after");
    // Control: alice, untouched, logs in both ways.
    for tcp in [false, true] {
        let ok = attempt(
            sip,
            tcp,
            "REGISTER",
            "1001",
            "alice1001",
            PASSWORD,
            &format!("a{tcp}"),
        );
        assert_eq!(status(&ok), 200, "control over tcp={tcp}: {ok}");
    }

    // A reload while serving: carol gets a new password (control: it logs in), bob's
    // row is untouched and stays nobody; alice's untouched row keeps logging in.
    env.ok(&["ext", "update", "1003", "--password", NEW]);
    eventually(
        "carol's new password in force",
        Duration::from_secs(20),
        || {
            status(&attempt(
                sip,
                false,
                "REGISTER",
                "1003",
                "carol1003",
                NEW,
                "c-new",
            )) == 200
        },
    );
    like_nobody(
        sip,
        ("1003", "carol1003", PASSWORD),
        "foreign-old-after-reload",
    );
    like_nobody(sip, ("1002", "bob1002", PASSWORD), "copied-after-reload");
    let ok = attempt(
        sip,
        true,
        "INVITE",
        "1001",
        "alice1001",
        PASSWORD,
        "a-invite",
    );
    assert_ne!(
        status(&ok),
        401,
        "control: alice's INVITE is past the door: {ok}"
    );
    assert_ne!(
        status(&ok),
        407,
        "control: alice's INVITE is past the door: {ok}"
    );
    server.stop();
}
