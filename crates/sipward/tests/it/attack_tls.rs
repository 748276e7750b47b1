//! Attacks on SIP over TLS and the connection flows (issue #19), from outside: a `sips:`
//! call steered onto a clear-text binding; junk, and full handshakes carrying nothing,
//! sent to the TLS port over and over without the guard counting them; the per-source
//! connection cap split between the TCP and TLS listeners; double-CRLF floods (no
//! amplification, nothing kept open, but counted nowhere); a ban cutting a TLS source; a
//! binding taken from another connection or inherited by a new one from the same
//! address; the private CA (its key through provisioning, the log and file modes, and a
//! missing key replacing the CA phones trust).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::harness::Env;
use crate::peers::eventually;
use crate::user_agent::{Ua, digest, ext, header, request_method, request_uri, status};

fn config() -> String {
    "[sip]\ndigest_algorithms = [\"MD5\"]\n".to_owned()
}

/// A TCP connection to `to` from the loopback address `from`.
pub(crate) fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let at: SocketAddr = format!("{from}:0").parse().expect("addr");
    s.bind(&at.into()).expect("bind");
    s.connect(&to.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s
}

/// Sends `junk` on a new connection from `from` and reads until sipward closes it.
fn junk_connection(from: &str, to: SocketAddr, junk: &[u8]) {
    let mut s = connect_from(from, to);
    // The peer may already have closed: a reset here is an answer too.
    let _ = s.write_all(junk);
    let mut b = [0u8; 4096];
    while let Ok(n) = s.read(&mut b) {
        if n == 0 {
            break;
        }
    }
}

/// Whether `ip` is on the ban list.
pub(crate) fn banned(env: &Env, ip: &str) -> bool {
    env.json(&["ban", "list", "--json"])
        .as_array()
        .is_some_and(|l| l.iter().any(|b| b["source"] == ip))
}

/// A phone registered over UDP with a `sip:` Contact is called at `sips:NUMBER@pbx`. RFC
/// 3261 §26.2 / RFC 5630 §3.1.3: a request whose Request-URI is `sips:` travels over TLS
/// on every hop, so a proxy that can reach the target only in the clear must refuse the
/// request (sipward's own promise: "a `sips:` Request-URI is never sent over anything
/// but TLS"). The proxy rewrites the Request-URI to the `sip:` Contact and the egress
/// rule, which looks only at the outgoing URI, lets it go out over UDP: the caller asked
/// for an end-to-end secure call and gets one in the clear without being told.
/// Control: the same call to `sip:` reaches the phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sips_call_is_not_forwarded_to_a_phone_registered_in_the_clear() {
    let env = Env::with_config(&config());
    let a = ext(&env, "2901", "internal");
    let b = ext(&env, "2902", "internal");
    let server = env.serve();
    let caller = Ua::phone("127.0.0.101", server.sip, &a).await;
    let callee = Ua::phone("127.0.0.102", server.sip, &b).await;
    caller.register().await;
    callee.register().await;

    let ruri = format!("sips:2902@{}", server.sip);
    let extra = "Content-Type: application/sdp\r\n".to_owned();
    let sdp = caller.sdp("sendrecv");
    let (_, first) = caller
        .request_authenticated("INVITE", &ruri, &ruri, &extra, &sdp, false)
        .await;
    let leaked = callee
        .try_wait(Duration::from_secs(3), |m| {
            request_method(m) == Some("INVITE")
        })
        .await;

    // Control: the clear-text call reaches the phone.
    let plain = caller.invite("2902", "").await;
    let reached = callee
        .try_wait(Duration::from_secs(5), |m| {
            request_method(m) == Some("INVITE") && m.contains(&plain.call_id)
        })
        .await;
    server.stop();
    assert!(reached.is_some(), "control: the sip: call reaches 2902");
    assert!(
        leaked.is_none(),
        "a sips: INVITE (first answer {first:?}) went to 2902 over UDP as {:?}:\n{}",
        leaked.as_deref().and_then(request_uri),
        leaked.as_deref().unwrap_or_default()
    );
}

/// Junk on the TLS port (bytes that are no ClientHello) fails the handshake and closes
/// the connection, but nothing counts it against the source: the same junk on the TCP
/// port counts toward the flood limit (`unframed`) and bans the source. So a source may
/// fail handshakes without end (each one a connection, a task, and for a real
/// ClientHello the server's key exchange and signature) and is never banned, while the
/// guard is said to apply to TLS sources as to any. Control: the TCP flood from another
/// address is banned.
#[test]
fn junk_on_the_tls_port_counts_toward_the_ban_like_junk_on_the_tcp_port() {
    let env = Env::with_config(&config());
    let server = env.serve();
    let tls = server.sip_tls.expect("tls");
    let junk = b"GARBAGE / SIP/2.0\r\nNot-A-Header\r\n\r\n";
    for _ in 0..80 {
        junk_connection("127.0.0.104", server.sip, junk);
    }
    eventually(
        "control: the TCP junk source is banned",
        Duration::from_secs(5),
        || banned(&env, "127.0.0.104"),
    );
    for _ in 0..80 {
        junk_connection("127.0.0.103", tls, junk);
    }
    let failed = server.metric("sipward_tls_handshakes_failed_total");
    // Give the ban the same time it took on TCP.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !banned(&env, "127.0.0.103") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let tls_banned = banned(&env, "127.0.0.103");
    server.stop();
    // Control: the junk reached the handshake and failed it. Not all 80 do: once the
    // source is silenced, then banned, its connections are refused before any
    // handshake, as the TCP source's are.
    assert!(failed >= 1, "the junk failed its handshakes ({failed})");
    assert!(
        tls_banned,
        "80 failed TLS handshakes of junk from 127.0.0.103 left it unbanned"
    );
}

/// The generated CA, as a rustls client configuration.
pub(crate) fn client_config(env: &Env) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(env.data.join("tls/ca.pem")).expect("ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.expect("a certificate")).expect("a root");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// A verified TLS connection to sipward from `from`.
pub(crate) fn tls_connect(
    env: &Env,
    from: &str,
    to: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = ServerName::try_from(to.ip().to_string()).expect("name");
    let conn = rustls::ClientConnection::new(client_config(env), name.to_owned()).expect("client");
    let mut s = rustls::StreamOwned::new(conn, connect_from(from, to));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("handshake");
    }
    s
}

/// A double-CRLF flood over TLS before any message: every four bytes of ping are
/// answered with at most two of pong (no amplification), and the pings do not keep an
/// unregistered connection open past the first-message deadline (5 s by default): bytes
/// alone keep nothing open. Control: the first ping is answered with a pong.
#[test]
fn a_double_crlf_flood_over_tls_never_amplifies_and_keeps_nothing_open() {
    let env = Env::with_config(&config());
    let server = env.serve();
    let tls = server.sip_tls.expect("tls");
    let mut s = tls_connect(&env, "127.0.0.105", tls);
    s.sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    s.write_all(b"\r\n\r\n").expect("ping");
    s.flush().expect("flush");
    let mut pong = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut b = [0u8; 16 * 1024];
    while pong.len() < 2 && Instant::now() < deadline {
        if let Ok(n) = s.read(&mut b) {
            pong.extend_from_slice(&b[..n]);
        }
    }
    assert_eq!(pong, b"\r\n", "control: one ping, one pong");

    let started = Instant::now();
    let (mut sent, mut got) = (4usize, 2usize);
    let ping = [b'\r', b'\n'].repeat(4096);
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(12) {
        if s.write_all(&ping).and_then(|()| s.flush()).is_err() {
            closed = true;
            break;
        }
        sent += ping.len();
        match s.read(&mut b) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let lasted = started.elapsed();
    server.stop();
    assert!(got * 2 <= sent, "{got} bytes of pong for {sent} of ping");
    assert!(
        closed && lasted < Duration::from_secs(10),
        "a connection sending only CRLFs stayed open {lasted:?}"
    );
}

/// The private CA's key stays in the data dir: 0600 in a 0700 directory, never in the
/// log, and not reachable through the provisioning server: not as the phone's CA file
/// (which carries the certificate only), not under another name, not by a path that
/// climbs out, and not with one phone's login for another phone's files.
/// Control: the phone's own CA file is served with its login.
#[test]
fn the_private_ca_key_never_leaves_the_data_dir() {
    let env = Env::with_config(
        "[sip]\ndomain = \"pbx.example.com\"\n[provisioning]\ntransport = \"tls\"\n\
         base_url = \"http://pbx.example.com:8080\"\n",
    );
    let macs = ["001565aabb71", "001565aabb72"];
    for (n, mac) in ["3701", "3702"].iter().zip(macs) {
        env.ok(&["ext", "add", n, "--mac", mac, "--model", "Yealink T46U"]);
    }
    let login = |n: &str| {
        let shown = env.json(&["ext", "show", n, "--reveal", "--json"]);
        let p = &shown["provisioning"];
        (
            format!(
                "{}:{}",
                p["user"].as_str().expect("user"),
                p["password"].as_str().expect("password")
            ),
            p["path"].as_str().expect("path").to_owned(),
        )
    };
    let (good, path) = login("3701");
    let (_, other_path) = login("3702");
    let server = env.serve();
    let get = |p: &str, f: &str| {
        crate::regenerate::curl(
            &["--digest", "-u", &good, "--path-as-is"],
            &format!("http://{}/prov/{p}/{f}", server.http),
        )
    };
    let (code, ca) = get(&path, &format!("{}-ca.pem", macs[0]));
    assert_eq!(code, 200, "control: the phone's CA file is served: {ca}");
    assert!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    let mut leaks = Vec::new();
    if ca.contains("PRIVATE KEY") {
        leaks.push(format!("{}-ca.pem carries a key", macs[0]));
    }
    for (p, f) in [
        (path.as_str(), format!("{}-ca.key", macs[0])),
        (path.as_str(), "ca.key".to_owned()),
        (path.as_str(), "ca.pem".to_owned()),
        (path.as_str(), "server.key".to_owned()),
        (path.as_str(), "../../tls/ca.key".to_owned()),
        (path.as_str(), "..%2f..%2ftls%2fca.key".to_owned()),
        (path.as_str(), format!("{}-ca.pem", macs[1])),
        (path.as_str(), format!("{}.cfg", macs[1])),
        (other_path.as_str(), format!("{}-ca.pem", macs[1])),
        (other_path.as_str(), format!("{}.cfg", macs[1])),
    ] {
        let (code, body) = get(p, &f);
        if code == 200 || body.contains("PRIVATE KEY") {
            leaks.push(format!("{p}/{f}: {code} {}", &body[..body.len().min(80)]));
        }
    }
    let log = server.log();
    server.stop();
    let mode = |f: &str| {
        std::fs::metadata(env.data.join(f))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("tls"), 0o700);
    assert_eq!(mode("tls/ca.key"), 0o600);
    assert_eq!(mode("tls/server.key"), 0o600);
    assert!(!log.contains("PRIVATE KEY"), "the key is in the log");
    assert!(leaks.is_empty(), "{leaks:#?}");
}

/// Phone 2911 registers over a TCP connection (the connection loop and the registry of
/// connections are TLS's too). From another connection, Mallory (a low-class account of
/// her own) sends a REGISTER of 2911's address of record naming her own connection, with
/// an RFC 5923 `alias` on her Via: first with no credentials, then with her own. Neither
/// moves the binding: the first is challenged, the second refused; a call to 2911 then
/// arrives on 2911's connection and nothing reaches Mallory. Control: the call reaches
/// 2911 on its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_from_another_connection_cannot_take_a_phones_binding() {
    let env = Env::with_config(&config());
    let a = ext(&env, "2911", "internal");
    let c = ext(&env, "2912", "internal");
    let m = ext(&env, "2913", "internal");
    let server = env.serve();
    let phone = Ua::phone("127.0.0.111", server.sip, &a).await;
    let contact = format!(
        "Contact: <sip:2911@{};transport=tcp>\r\nExpires: 3600\r\n",
        phone.addr
    );
    let (out, _) = phone
        .request_authenticated(
            "REGISTER",
            "sip:127.0.0.1",
            "sip:127.0.0.1",
            &contact,
            "",
            true,
        )
        .await;
    phone.wait_answer(&out, |c| c == 200).await;

    let mallory = Ua::phone("127.0.0.113", server.sip, &m).await;
    let text = |cseq: u32, auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/TCP {addr};branch=z9hG4bKhj{cseq};rport;alias;received=127.0.0.111\r\n\
             Max-Forwards: 70\r\nFrom: <sip:2911@127.0.0.1>;tag=mt1\r\nTo: <sip:2911@127.0.0.1>\r\n\
             Call-ID: hijack-1\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:2911@{addr};transport=tcp>\r\nExpires: 3600\r\n{auth}\
             Content-Length: 0\r\n\r\n",
            addr = mallory.addr
        )
    };
    let answer = |cseq: u32| {
        move |msg: &str| {
            header(msg, "Call-ID") == Some("hijack-1")
                && header(msg, "CSeq").is_some_and(|s| s.starts_with(&format!("{cseq} ")))
                && status(msg) >= 200
        }
    };
    mallory.send_tcp(&text(1, None)).await;
    let challenge = mallory.wait("the challenge", answer(1)).await;
    let with_own = match header(&challenge, "WWW-Authenticate") {
        Some(ch) => {
            let auth = digest(ch, "REGISTER", "sip:127.0.0.1", &m.auth_id, &m.password);
            mallory.send_tcp(&text(2, Some(&auth))).await;
            Some(
                mallory
                    .wait("the answer with Mallory's login", answer(2))
                    .await,
            )
        }
        None => None,
    };

    let caller = Ua::phone("127.0.0.112", server.sip, &c).await;
    caller.register().await;
    let call = caller.invite("2911", "").await;
    let at_phone = phone
        .try_wait(Duration::from_secs(5), |msg| {
            request_method(msg) == Some("INVITE") && msg.contains(&call.call_id)
        })
        .await;
    let at_mallory = mallory
        .try_wait(Duration::from_secs(1), |msg| {
            request_method(msg) == Some("INVITE")
        })
        .await;
    let on_tcp = phone
        .received()
        .into_iter()
        .any(|r| r.tcp && r.text.contains(&call.call_id));
    server.stop();
    assert_eq!(status(&challenge), 401, "{challenge}");
    let with_own = with_own.expect("a challenge");
    assert!(
        status(&with_own) >= 400,
        "Mallory's login moved 2911: {with_own}"
    );
    assert!(at_mallory.is_none(), "{at_mallory:?}");
    assert!(
        at_phone.is_some() && on_tcp,
        "control: 2911 is called on its connection"
    );
}

/// The ban applies to TLS sources: a verified TLS connection from an address is cut
/// within a few seconds of `sipward ban add` for it, and a new connection from it gets
/// no handshake. Control: before the ban the connection is answered (a ping gets its
/// pong), and another address still completes a handshake after it.
#[test]
fn a_ban_cuts_a_tls_sources_open_connection_and_refuses_its_next_handshake() {
    let env = Env::with_config(&config());
    let server = env.serve();
    let tls = server.sip_tls.expect("tls");
    let mut s = tls_connect(&env, "127.0.0.106", tls);
    s.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s.write_all(b"\r\n\r\n").expect("ping");
    s.flush().expect("flush");
    let mut b = [0u8; 64];
    let mut pong = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while pong < 2 && Instant::now() < deadline {
        if let Ok(n) = s.read(&mut b) {
            pong += n;
        }
    }
    assert_eq!(
        pong, 2,
        "control: the connection is answered before the ban"
    );
    env.ok(&["ban", "add", "127.0.0.106", "--reason", "attack test"]);
    // The open connection is cut (ban_check is a second; the server learns of a CLI ban
    // from the store within a few).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut cut = false;
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    // A new connection from the banned source gets no handshake.
    let name = ServerName::try_from(tls.ip().to_string()).expect("name");
    let conn = rustls::ClientConnection::new(client_config(&env), name.to_owned()).expect("client");
    let mut again = rustls::StreamOwned::new(conn, connect_from("127.0.0.106", tls));
    let mut refused = false;
    while again.conn.is_handshaking() {
        if again.conn.complete_io(&mut again.sock).is_err() {
            refused = true;
            break;
        }
    }
    // Control: another address still gets its handshake.
    let other = tls_connect(&env, "127.0.0.107", tls);
    server.stop();
    assert!(!other.conn.is_handshaking());
    assert!(cut, "the banned source's TLS connection stayed open");
    assert!(refused, "the banned source completed a new handshake");
}

/// A double-CRLF flood is cheap but must be counted: RFC 5626 pings from a source that
/// registered nothing, tens of thousands of them, should show somewhere (a metric of
/// keep-alives, or the source's flood count). Now each is answered and forgotten: no
/// metric names them and the guard never hears of them. Control: the pings are answered.
#[test]
fn a_double_crlf_flood_is_counted() {
    let env = Env::with_config(&config());
    let server = env.serve();
    let tls = server.sip_tls.expect("tls");
    let before = server.http_get("/metrics").1;
    let mut s = tls_connect(&env, "127.0.0.108", tls);
    s.sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let ping = [b'\r', b'\n'].repeat(8192);
    let mut got = 0usize;
    let mut b = [0u8; 16 * 1024];
    for _ in 0..4 {
        if s.write_all(&ping).and_then(|()| s.flush()).is_err() {
            break;
        }
        while let Ok(n) = s.read(&mut b) {
            if n == 0 {
                break;
            }
            got += n;
        }
    }
    let after = server.http_get("/metrics").1;
    let is_banned = banned(&env, "127.0.0.108");
    server.stop();
    assert!(got > 0, "control: the pings are answered");
    // A metric about keep-alives that moved.
    let moved = after.lines().any(|l| {
        let lower = l.to_ascii_lowercase();
        !l.starts_with('#')
            && (lower.contains("keepalive")
                || lower.contains("keep_alive")
                || lower.contains("ping"))
            && !before.lines().any(|o| o == l)
    });
    assert!(
        moved || is_banned,
        "16384 pings from 127.0.0.108 left no trace on /metrics nor in the guard"
    );
}

pub(crate) type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The next whole SIP message on `s` (framed by Content-Length), within `wait`.
pub(crate) fn read_message(s: &mut TlsStream, buf: &mut Vec<u8>, wait: Duration) -> Option<String> {
    s.sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = Instant::now() + wait;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Pongs and keep-alives between messages.
        while buf.first().is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            buf.remove(0);
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len = header(&head, "Content-Length")
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let m: Vec<u8> = buf.drain(..end + 4 + len).collect();
                return Some(String::from_utf8_lossy(&m).into_owned());
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
}

/// Registers `account` over the TLS connection `s` (answering the 401); the final answer.
pub(crate) fn register_over_tls(s: &mut TlsStream, account: &crate::user_agent::Account) -> String {
    let local = s.sock.local_addr().expect("addr");
    let n = &account.number;
    let text = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtr{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{n}@127.0.0.1>;tag=tr1\r\nTo: <sip:{n}@127.0.0.1>\r\n\
             Call-ID: tls-reg-{n}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{n}@{local};transport=tls>\r\nExpires: 3600\r\n{auth}\
             Content-Length: 0\r\n\r\n"
        )
    };
    let mut buf = Vec::new();
    s.write_all(text(1, "").as_bytes()).expect("write");
    s.flush().expect("flush");
    let challenge = read_message(s, &mut buf, Duration::from_secs(5)).expect("a 401");
    let auth = digest(
        header(&challenge, "WWW-Authenticate").expect("challenge"),
        "REGISTER",
        "sip:127.0.0.1",
        &account.auth_id,
        &account.password,
    );
    s.write_all(text(2, &format!("Authorization: {auth}\r\n")).as_bytes())
        .expect("write");
    s.flush().expect("flush");
    read_message(s, &mut buf, Duration::from_secs(5)).expect("an answer")
}

/// A phone registers over TLS and is called on its connection (the control). It then
/// closes that connection, and a new TLS connection from the same address, which
/// registers nothing, is opened: a second call to the phone must not arrive on it (it
/// does not inherit the binding), and the caller gets a final failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tls_connection_from_a_phones_address_does_not_inherit_its_binding() {
    let env = Env::with_config(&config());
    let a = ext(&env, "2921", "internal");
    let c = ext(&env, "2922", "internal");
    let server = env.serve();
    let tls = server.sip_tls.expect("tls");
    let (phone, ok) = {
        let (env, a) = (&env, a.clone());
        let mut s = tokio::task::block_in_place(|| tls_connect(env, "127.0.0.121", tls));
        let ok = tokio::task::block_in_place(|| register_over_tls(&mut s, &a));
        (s, ok)
    };
    assert_eq!(status(&ok), 200, "{ok}");
    let caller = Ua::phone("127.0.0.122", server.sip, &c).await;
    caller.register().await;

    // Control: the call arrives on the phone's TLS connection; the phone is busy.
    let first = caller.invite("2921", "").await;
    let mut phone = phone;
    let invite = tokio::task::block_in_place(|| {
        let mut buf = Vec::new();
        read_message(&mut phone, &mut buf, Duration::from_secs(5))
    });
    let invite = invite.expect("control: the INVITE on the TLS connection");
    assert!(invite.contains(&first.call_id), "{invite}");
    let busy = crate::user_agent::response(&invite, 486, "Busy Here", "busy1", "", "");
    tokio::task::block_in_place(|| {
        phone.write_all(busy.as_bytes()).expect("busy");
        phone.flush().expect("flush");
    });
    caller.wait_answer(&first, |c| c == 486).await;

    // The phone goes; a connection from its address that registered nothing comes.
    tokio::task::block_in_place(|| {
        phone.conn.send_close_notify();
        let _ = phone.flush();
        let _ = phone.sock.shutdown(std::net::Shutdown::Both);
    });
    drop(phone);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut squatter = tokio::task::block_in_place(|| tls_connect(&env, "127.0.0.121", tls));
    let second = caller.invite("2921", "").await;
    let answer = caller.wait_answer(&second, |c| c >= 300).await;
    let reached = tokio::task::block_in_place(|| {
        let mut buf = Vec::new();
        read_message(&mut squatter, &mut buf, Duration::from_secs(2))
    });
    server.stop();
    assert!(status(&answer) >= 400, "{answer}");
    assert!(reached.is_none(), "the squatter got {reached:?}");
}

/// The private CA is what every provisioned phone trusts; its key is best kept off the
/// machine once the server certificate is made (as with any CA). But every command that
/// opens the data dir (`ext list` here) makes a new CA when `ca.key` is missing, and
/// writes it over `ca.pem`: the trust anchor changes silently, the server certificate is
/// reissued under it at the next start, and every TLS phone stops verifying sipward.
/// A missing key should be refused (or the old CA kept), never replaced. Control: with
/// the key in place, commands leave the CA alone.
#[test]
fn a_missing_ca_key_does_not_silently_replace_the_ca_phones_trust() {
    let env = Env::with_config(&config());
    env.ok(&["ext", "list"]);
    let ca = env.data.join("tls/ca.pem");
    let first = std::fs::read_to_string(&ca).expect("ca.pem after the first command");
    env.ok(&["ext", "list"]);
    let control = std::fs::read_to_string(&ca).expect("ca.pem");
    std::fs::remove_file(env.data.join("tls/ca.key")).expect("take the key offline");
    // The command may refuse; it must not mint a new CA.
    let _ = env.run(&["ext", "list"]);
    let after = std::fs::read_to_string(&ca).unwrap_or_default();
    assert_eq!(
        control, first,
        "control: the CA is kept while its key is there"
    );
    assert_eq!(
        after, first,
        "the CA phones were given was replaced because its key was missing"
    );
}

/// Handshakes in flight per source are capped, but handshakes per second are not: one
/// address completes full TLS handshakes (the server's key exchange and signature each
/// time) and closes each at once, sending nothing, as fast as it can. Nothing counts
/// them: the guard never hears of a connection that carried no message, so the source
/// is neither slowed, refused nor banned. Measured here (`--nocapture` prints the rate);
/// the test asks that 300 such handshakes in a row from one address end in a refusal or
/// a ban. Control: the first handshake completes.
#[test]
fn a_source_completing_handshakes_and_sending_nothing_is_not_served_for_ever() {
    let env = Env::with_config(&config());
    let server = env.serve();
    let tls = server.sip_tls.expect("tls");
    let config = client_config(&env);
    let name = ServerName::try_from(tls.ip().to_string()).expect("name");
    let started = Instant::now();
    let mut completed = 0u32;
    for _ in 0..300 {
        let conn = rustls::ClientConnection::new(config.clone(), name.to_owned()).expect("client");
        let Ok(sock) = std::panic::catch_unwind(|| connect_from("127.0.0.109", tls)) else {
            break;
        };
        let mut s = rustls::StreamOwned::new(conn, sock);
        let mut ok = true;
        while s.conn.is_handshaking() {
            if s.conn.complete_io(&mut s.sock).is_err() {
                ok = false;
                break;
            }
        }
        if ok {
            completed += 1;
        }
        let _ = s.sock.shutdown(std::net::Shutdown::Both);
    }
    let took = started.elapsed();
    let is_banned = banned(&env, "127.0.0.109");
    server.stop();
    println!(
        "{completed} full handshakes from one address in {took:?} ({:.0}/s), banned: {is_banned}",
        f64::from(completed) / took.as_secs_f64()
    );
    assert!(completed >= 1, "control: a handshake completes");
    assert!(
        completed < 300 || is_banned,
        "300 full handshakes from one address, none carrying a message: all served, no ban"
    );
}

/// The per-source cap on connections (`[sip] tcp_connections_per_source`, 32 by
/// default) is kept per listener: the TCP and the TLS accept loops each hold their own
/// places, so one address holds the cap on the TCP port and the cap again on the TLS
/// port (and the total bound, 4096, is per listener too). Here one address holds 32
/// idle TCP connections, then opens TLS connections: they should be refused, the
/// source being at its cap. Control: the 33rd TCP connection is refused.
#[test]
fn the_per_source_connection_cap_covers_tcp_and_tls_together() {
    let env = Env::with_config(&config());
    let server = env.serve();
    let tls = server.sip_tls.expect("tls");
    let held: Vec<TcpStream> = (0..32)
        .map(|_| connect_from("127.0.0.110", server.sip))
        .collect();
    let refused_before = server.metric("sipward_tcp_connections_refused_total");
    // Control: one more on TCP is over the cap.
    let mut extra = connect_from("127.0.0.110", server.sip);
    let mut b = [0u8; 16];
    let control_closed = matches!(extra.read(&mut b), Ok(0) | Err(_));
    let refused_tcp = server.metric("sipward_tcp_connections_refused_total") - refused_before;
    // Then TLS, from the same address, while the 32 are still held (the first-message
    // deadline is 5 s).
    let name = ServerName::try_from(tls.ip().to_string()).expect("name");
    let mut completed = 0;
    for _ in 0..8 {
        let conn =
            rustls::ClientConnection::new(client_config(&env), name.to_owned()).expect("client");
        let mut s = rustls::StreamOwned::new(conn, connect_from("127.0.0.110", tls));
        let mut ok = true;
        while s.conn.is_handshaking() {
            if s.conn.complete_io(&mut s.sock).is_err() {
                ok = false;
                break;
            }
        }
        if ok {
            completed += 1;
        }
    }
    drop(held);
    server.stop();
    assert!(
        control_closed && refused_tcp >= 1,
        "control: the 33rd TCP connection is refused"
    );
    assert_eq!(
        completed, 0,
        "with 32 TCP connections held, the same address completed {completed} TLS handshakes"
    );
}
