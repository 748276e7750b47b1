//! Attacks on the faster parser and the transaction key (#14), from the wire: hostile
//! heads over UDP, a forged retransmission from another address, and a stream message
//! whose framing and parse could read it two ways.

use std::time::Duration;

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
    // Drain whatever came back; a panic would have taken the server down.
    while bad.receive().is_some() {}

    let lf = options(&here, 2, "").replace("\r\n", "\n");
    let answer = control.request(&lf).expect("bare LF answered");
    assert_eq!(status(&answer), 200, "bare LF: {answer}");
    let last = control
        .request(&options(&here, 3, ""))
        .expect("still answering");
    assert_eq!(status(&last), 200, "after the hostile heads: {last}");
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
