//! Attacks on the faster parser and the transaction key (#14), from the wire: hostile
//! heads over UDP, a forged retransmission from another address, and a stream message
//! whose framing and parse could read it two ways.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::attack_tls::connect_from;
use crate::harness::Env;
use crate::peers::UdpClient;

/// An OPTIONS from `via` (the top Via's sent-by), numbered `n`, with `extra` headers.
fn options(via: &str, n: u32, extra: &str) -> String {
    format!(
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKap{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=ap{n}\r\nTo: <sip:127.0.0.1>\r\n\
         Call-ID: ap{n}\r\nCSeq: {n} OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Hostile heads over UDP: multi-byte characters beside `:`, `;`, `,`, `/` and quotes,
/// CR without LF, bare LF line ends, a folded Via, NUL, empty values, a Via list of
/// 1 000 items with quoted commas, IPv6 sent-by. Promise: no panic, the server keeps
/// answering. Control: a plain OPTIONS from another address is answered 200 before
/// and after, and one with bare LF line ends (accepted leniently) is answered too.
#[test]
fn hostile_heads_neither_crash_nor_stop_the_server() {
    let env = Env::new();
    let server = env.serve();
    let control = UdpClient::from_address("127.0.0.63", server.sip, Duration::from_secs(3));
    let here = control.local.to_string();
    let first = control
        .request(&options(&here, 1, ""))
        .expect("control answered");
    assert_eq!(status(&first), 200, "control: {first}");

    let bad = UdpClient::from_address("127.0.0.61", server.sip, Duration::from_millis(200));
    let long_via: String = (0..1000)
        .map(|i| format!("SIP/2.0/UDP \"a,\\\"b\"{i}é;x=\"é,\","))
        .collect();
    let heads = [
        "OPTIONS sip:é@x SIP/2.0\r\nVia: SIP/2.0/UDP é:é;branch=z9hG4bKé;rport\r\né: é\r\nCSeq: 1 OPTIONS\r\n\r\n".to_owned(),
        "OPTIONS sip:a SIP/2.0\r\nVia:é SIP/é/UDP [::1]:5060;branch=z9hG4bK1;;=;é=\"é\\\"\r\nCSeq: 1 OPTIONS\r\n\r\n".to_owned(),
        "OPTIONS sip:a SIP/2.0\rVia: SIP/2.0/UDP h;branch=z9hG4bK2\rCSeq: 1 OPTIONS\r\r\n\r\n".to_owned(),
        "OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n ;branch=z9hG4bK3\r\n\t,SIP/2.0/UDP é\r\nCSeq: 1 OPTIONS\r\n\r\n".to_owned(),
        "OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK4\0\r\nCSeq: 1 OPTIONS\r\n\r\n".to_owned(),
        "OPTIONS sip:a SIP/2.0\r\nVia:\r\nCSeq:\r\n:\r\nCall-ID: \r\n\r\n".to_owned(),
        format!("OPTIONS sip:a SIP/2.0\r\nVia: {long_via}\r\nCSeq: 1 OPTIONS\r\n\r\n"),
        "OPTIONS sip:a SIP/2.0\r\nv: SIP/2.0/UDP [::1]:99999;branch=z9hG4bK5\r\ni: é\r\nCSeq: 1 OPTIONS\r\nl: 0\r\nl: é\r\n\r\n".to_owned(),
        "OPTIONS sip:a SIP/2.0\n\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK6\n\n".to_owned(),
    ];
    for head in &heads {
        bad.send(head);
    }
    // Drain whatever came back.
    while bad.receive().is_some() {}
    // The same heads on one stream each (framing runs there too).
    for (i, head) in heads.iter().enumerate() {
        let mut s = connect_from(&format!("127.0.0.{}", 70 + i), server.sip);
        let _ = s.write_all(head.as_bytes());
        let _ = read_for(&mut s, Duration::from_secs(1));
    }

    let lf = options(&here, 2, "").replace("\r\n", "\n");
    let answer = control.request(&lf).expect("bare LF answered");
    assert_eq!(status(&answer), 200, "bare LF: {answer}");
    let last = control
        .request(&options(&here, 3, ""))
        .expect("still answering");
    assert_eq!(status(&last), 200, "after the hostile heads: {last}");
    let log = server.log();
    assert!(!log.contains("panicked"), "a hostile head panicked: {log}");
    server.stop();
}

/// A forged retransmission: an attacker on another address sends the exact bytes of
/// a phone's OPTIONS (same branch, sent-by and method). Promise: the transaction is not
/// answered to the forger; the stored answer goes to the phone only. The sent-by's
/// host case and an explicit 5060 against an absent port are one key too (control that
/// the key matches at all), while another method on the same branch is a new one.
#[test]
fn a_forged_retransmission_is_answered_only_to_the_first_sender() {
    let env = Env::new();
    let server = env.serve();
    let phone = UdpClient::from_address("127.0.0.64", server.sip, Duration::from_secs(2));
    let forger = UdpClient::from_address("127.0.0.65", server.sip, Duration::from_secs(1));
    let text = options(&phone.local.to_string(), 7, "");
    let first = phone.request(&text).expect("answered");
    assert_eq!(status(&first), 200, "control: {first}");
    let replay = forger.request(&text);
    assert_eq!(
        replay, None,
        "the forger got the phone's answer: {replay:?}"
    );
    let resent = phone
        .receive()
        .expect("the stored answer, resent to the phone");
    assert_eq!(resent, first, "a resend is the same answer");

    // Same branch, method REGISTER→ a different transaction; it is not absorbed.
    let other = text
        .replace("CSeq: 7 OPTIONS", "CSeq: 7 INFO")
        .replace("OPTIONS sip:", "INFO sip:");
    let answer = phone
        .request(&other)
        .expect("another method is another transaction");
    assert!(answer.contains("CSeq: 7 INFO"), "{answer}");
    server.stop();
}

/// Reads from `s` until it is quiet for a moment or `deadline` passes.
fn read_for(s: &mut TcpStream, deadline: Duration) -> String {
    let _ = s.set_read_timeout(Some(Duration::from_millis(800)));
    let start = Instant::now();
    let mut got = Vec::new();
    let mut b = [0u8; 16 * 1024];
    while start.elapsed() < deadline {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// FINDING (request smuggling on a stream): a message with `Content-Length: 0` then
/// `Content-Length: N` is framed by the last (N bytes of body, which hold a whole second
/// OPTIONS) but parsed by the first (no body): sipward answers the first message as if
/// it had no body, and the second message it framed as a body is never read. Two
/// components read one message two ways; a front proxy that frames by the first
/// Content-Length sees two requests where sipward sees one. Promise: a head with
/// differing Content-Lengths is refused, not answered 200. Control: the same two
/// messages with one Content-Length each are both answered 200.
#[test]
fn a_head_with_two_content_lengths_is_not_read_two_ways() {
    let env = Env::new();
    let server = env.serve();
    let mut s = connect_from("127.0.0.66", server.sip);
    let here = s.local_addr().expect("addr").to_string();
    let tcp = |t: String| t.replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let control = tcp(options(&here, 11, "")) + &tcp(options(&here, 12, ""));
    s.write_all(control.as_bytes()).expect("write");
    let got = read_for(&mut s, Duration::from_secs(5));
    assert!(
        got.contains("CSeq: 11 OPTIONS") && got.contains("CSeq: 12 OPTIONS"),
        "control: both answered: {got}"
    );

    let second = tcp(options(&here, 14, ""));
    let first = tcp(options(
        &here,
        13,
        &format!("Content-Length: {}\r\n", second.len()),
    ));
    // `first` holds `Content-Length: N` then the usual `Content-Length: 0`: put the 0
    // first, as a front proxy reading the first header would see it.
    let first = first.replacen(
        &format!("Content-Length: {}\r\nContent-Length: 0\r\n", second.len()),
        &format!("Content-Length: 0\r\nContent-Length: {}\r\n", second.len()),
        1,
    );
    s.write_all((first + &second).as_bytes()).expect("write");
    let got = read_for(&mut s, Duration::from_secs(5));
    let answered_200 = got
        .split("SIP/2.0 ")
        .any(|a| a.starts_with("200") && a.contains("CSeq: 13 OPTIONS"));
    assert!(
        !answered_200,
        "a head with Content-Length 0 and {} was answered 200 as bodiless while its framed body (a second OPTIONS) was never read: {got}",
        second.len()
    );
    server.stop();
}
