//! The answers RFC 3261 asks for (issue #18): `416 Unsupported URI Scheme` for a
//! Request-URI that is not sip: or sips: (§8.2.2.1), and `513 Message Too Large` for a
//! message over the transport's limit (§21.5.14; 16 KB over UDP, 64 KB over TCP by
//! default), or a drop with a counter when no answer can be formed. Raw sockets, so the
//! exact status is seen; each refusal has a control that is answered 200.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::Env;
use crate::peers::UdpClient;

fn options(uri: &str, local: std::net::SocketAddr, n: u32, transport: &str, body: usize) -> String {
    format!(
        "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bKconf{n}x{}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=c{n}\r\nTo: <sip:pbx@127.0.0.1>\r\n\
         Call-ID: conf-{n}-{}@test\r\nCSeq: 1 OPTIONS\r\nContent-Type: text/plain\r\n\
         Content-Length: {body}\r\n\r\n{}",
        local.port(),
        local.port(),
        "x".repeat(body)
    )
}

fn status(answer: Option<String>) -> u16 {
    answer
        .as_deref()
        .and_then(|a| a.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_request_uri_that_is_not_sip_or_sips_gets_416() {
    let env = Env::new();
    let server = env.serve();
    let c = UdpClient::new(server.sip);
    let ask = |uri: &str, n| status(c.request(&options(uri, c.local, n, "UDP", 0)));
    assert_eq!(ask("foo:bar@127.0.0.1", 1), 416, "an unknown scheme");
    assert_eq!(ask("tel:+4930555123", 2), 416, "tel: is not routed here");
    assert_eq!(ask("http://127.0.0.1/", 3), 416);
    // Controls: SIP URIs, whatever the scheme's case.
    assert_eq!(ask("sip:127.0.0.1", 4), 200);
    assert_eq!(ask("SIP:pbx@127.0.0.1", 5), 200);
    assert_eq!(ask("sips:pbx@127.0.0.1", 6), 200);
    // An INVITE to a tel: URI is refused the same way, before authentication.
    let invite = options("tel:+4930555123", c.local, 7, "UDP", 0)
        .replace("OPTIONS tel", "INVITE tel")
        .replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE");
    assert_eq!(status(c.request(&invite)), 416);
    assert_eq!(server.metric("sipward_unsupported_scheme_total"), 4);
    server.stop();
}

#[test]
fn a_datagram_over_the_limit_gets_513_or_is_dropped_and_counted() {
    let env = Env::new();
    let server = env.serve();
    let c = UdpClient::from_address("127.0.0.1", server.sip, Duration::from_secs(2));
    // 60 KB: the datagram, accepted whole before.
    let big = options("sip:127.0.0.1", c.local, 1, "UDP", 60_000);
    assert!(big.len() > 60_000);
    assert_eq!(status(c.request(&big)), 513);
    // Just over the default 16 KB, and a retransmission of it: answered again from
    // the transaction, the message is not read twice.
    let over = options("sip:127.0.0.1", c.local, 2, "UDP", 16 * 1024);
    assert_eq!(status(c.request(&over)), 513);
    assert_eq!(status(c.request(&over)), 513);
    // Control: under the limit is served.
    assert_eq!(
        status(c.request(&options("sip:127.0.0.1", c.local, 3, "UDP", 15_000))),
        200
    );
    // No answer can be formed for a datagram with no head: dropped, counted.
    c.send(&"a".repeat(40_000));
    assert_eq!(
        status(c.request(&options("sip:127.0.0.1", c.local, 4, "UDP", 0))),
        200
    );
    assert_eq!(server.metric("sipward_too_large_answered_total"), 3);
    assert_eq!(server.metric("sipward_too_large_dropped_total"), 1);
    server.stop();
}

#[test]
fn the_limits_are_configurable_and_tcp_answers_513_then_closes() {
    let env = Env::with_config("[sip]\nmax_message_udp = 4000\nmax_message_tcp = 8000\n");
    let server = env.serve();
    let c = UdpClient::new(server.sip);
    assert_eq!(
        status(c.request(&options("sip:127.0.0.1", c.local, 1, "UDP", 5_000))),
        513,
        "max_message_udp"
    );
    assert_eq!(
        status(c.request(&options("sip:127.0.0.1", c.local, 2, "UDP", 3_000))),
        200
    );
    let exchange = |body: usize, n: u32| {
        let mut s = TcpStream::connect(server.sip).expect("tcp");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let local = s.local_addr().expect("local");
        let _ = s.write_all(options("sip:127.0.0.1", local, n, "TCP", body).as_bytes());
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read until the server closes or falls silent.
        let closed = loop {
            match s.read(&mut chunk) {
                Ok(0) => break true,
                Ok(k) => got.extend_from_slice(&chunk[..k]),
                Err(_) => break false,
            }
        };
        (
            status(Some(String::from_utf8_lossy(&got).into_owned())),
            closed,
        )
    };
    assert_eq!(exchange(9_000, 3), (513, true), "answered, then closed");
    // Control: a message under max_message_tcp is served and the connection stays.
    assert_eq!(exchange(7_000, 4), (200, false));
    assert_eq!(server.metric("sipward_too_large_answered_total"), 2);
    server.stop();
}

/// tests/sipp/options_expect.xml with a body of `body` bytes, expecting `status`.
fn sipp_options(env: &Env, name: &str, body: usize, status: u16) -> std::path::PathBuf {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/sipp/options_expect.xml"),
    )
    .expect("scenario")
    .replace("@BODY@", &"x".repeat(body))
    .replace("@STATUS@", &status.to_string());
    let path = env.path(name);
    std::fs::write(&path, text).expect("write scenario");
    path
}

#[test]
fn sipp_sees_416_for_a_tel_uri_and_513_for_a_20_kb_datagram() {
    let env = Env::new();
    let server = env.serve();
    let run = |scenario: &std::path::Path, uri: &str| {
        crate::peers::sipp_from(
            "127.0.0.1",
            &env,
            scenario.to_str().expect("utf8"),
            &format!("SEQUENTIAL\n{uri};\n"),
            server.sip,
            "u1",
            1,
            1,
        )
    };
    let tel = run(&sipp_options(&env, "416.xml", 0, 416), "tel:+4930555123");
    assert_eq!((tel.successful, tel.failed), (1, 0), "416: {tel:?}");
    let big = run(&sipp_options(&env, "513.xml", 20_000, 513), "sip:127.0.0.1");
    assert_eq!((big.successful, big.failed), (1, 0), "513: {big:?}");
    // Control: the same scenario expecting 416 for a sip: URI fails.
    let control = run(&sipp_options(&env, "control.xml", 0, 416), "sip:127.0.0.1");
    assert_eq!((control.successful, control.failed), (0, 1), "{control:?}");
    server.stop();
}
