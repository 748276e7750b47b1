//! Attacks on SIP over TLS and the connection flows (issue #19), from outside: a `sips:`
//! call steered onto a clear-text binding, junk sent to the TLS port over and over
//! without the guard counting it, a double-CRLF flood (no amplification, no keeping a
//! connection open), and the private CA's key through the provisioning server, the log
//! and the file modes.

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
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
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
fn banned(env: &Env, ip: &str) -> bool {
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
    assert!(failed >= 80, "the junk failed its handshakes ({failed})");
    assert!(
        tls_banned,
        "80 failed TLS handshakes of junk from 127.0.0.103 left it unbanned"
    );
}

