//! Telling registered phones to re-fetch their provisioning files: an out-of-dialog
//! `NOTIFY` with `Event: check-sync` (or the vendor's variant), sent to each contact's
//! source address over UDP as a non-INVITE client transaction (RFC 3261 §17.1.2:
//! retransmitted from T1 = 500 ms doubling up to T2 = 4 s, given up after 64·T1 = 32 s).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sip::header::via::Via;
use sip::msg::{Message, Name, StartLine};

use crate::metrics::Metrics;

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const TIMER_F: Duration = Duration::from_secs(32);
/// Our client transactions' branches start with this (after the RFC 3261 magic cookie).
const BRANCH_PREFIX: &str = "z9hG4bKswn";
/// At most this many NOTIFYs wait for an answer at once (bounded like every table).
const MAX_PENDING: usize = 65_536;

/// Unguessable tokens (branches, tags, Call-IDs, cnonces) from a key drawn from the OS
/// CSPRNG and a counter.
#[derive(Debug)]
pub(crate) struct Tokens {
    key: [u8; 32],
    counter: AtomicU64,
}

impl Tokens {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        Self {
            key,
            counter: AtomicU64::new(0),
        }
    }

    pub(crate) fn next(&self, label: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(label.as_bytes());
        m.update(&n.to_be_bytes());
        hex::encode(&m.finalize().into_bytes()[..12])
    }
}

/// The NOTIFY client side: builds requests with unguessable branches and matches the
/// answers to them.
#[derive(Debug)]
pub struct Notifier {
    key: [u8; 32],
    tokens: Tokens,
    /// Branch -> answered (final status code, 0 until then).
    pending: Mutex<HashMap<String, u16>>,
}

/// One NOTIFY to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub branch: String,
    pub bytes: Vec<u8>,
    pub target: SocketAddr,
}

impl Notifier {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key,
            tokens: Tokens::new(key),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// A key for another use, derived from this one (so no component ever runs on a
    /// default key).
    pub(crate) fn derived_key(&self, label: &str) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(b"derive:");
        m.update(label.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// A NOTIFY for one registered contact. `local` is the address the phone sees us at.
    pub fn build(
        &self,
        contact: &str,
        number: &str,
        realm: &str,
        event: &str,
        local: SocketAddr,
        target: SocketAddr,
    ) -> Option<Outgoing> {
        // The contact came from a REGISTER we parsed; still, never echo line breaks.
        if contact.chars().any(char::is_control) || event.chars().any(char::is_control) {
            return None;
        }
        let branch = format!("{BRANCH_PREFIX}{}", self.tokens.next("branch"));
        let tag = self.tokens.next("tag");
        let call_id = self.tokens.next("call-id");
        let host = match local.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        let port = local.port();
        let bytes = format!(
            "NOTIFY {contact} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {host}:{port};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:sipward@{realm}>;tag={tag}\r\n\
             To: <sip:{number}@{realm}>\r\n\
             Call-ID: {call_id}@sipward\r\n\
             CSeq: 1 NOTIFY\r\n\
             Contact: <sip:sipward@{host}:{port}>\r\n\
             Event: {event}\r\n\
             Subscription-State: terminated;reason=timeout\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() >= MAX_PENDING {
            return None;
        }
        p.insert(branch.clone(), 0);
        Some(Outgoing {
            branch,
            bytes,
            target,
        })
    }

    /// A response arrived: if it answers one of our NOTIFYs, record its final status.
    /// Returns whether it was ours.
    pub fn response(&self, m: &Message<'_>) -> bool {
        let StartLine::Response { code, .. } = m.start else {
            return false;
        };
        let Some(branch) = m
            .header(Name::Via)
            .and_then(Via::parse_top)
            .and_then(|v| v.branch)
        else {
            return false;
        };
        if !branch.starts_with(BRANCH_PREFIX) || code < 200 {
            return false;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match p.get_mut(branch) {
            Some(status) => {
                *status = code;
                true
            }
            None => false,
        }
    }

    fn answer(&self, branch: &str) -> u16 {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.get(branch).copied().unwrap_or(0)
    }

    fn forget(&self, branch: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(branch);
    }

    /// Sends one NOTIFY and retransmits it until a final answer or Timer F; returns the
    /// final status code (0: no answer).
    pub async fn run(
        &self,
        socket: &tokio::net::UdpSocket,
        out: Outgoing,
        metrics: &Metrics,
    ) -> u16 {
        let start = tokio::time::Instant::now();
        let mut interval = T1;
        Metrics::inc(&metrics.notify_sent);
        loop {
            let _ = socket.send_to(&out.bytes, out.target).await;
            let deadline = (tokio::time::Instant::now() + interval).min(start + TIMER_F);
            // Poll for the answer every 50 ms until the retransmission is due.
            while tokio::time::Instant::now() < deadline {
                let code = self.answer(&out.branch);
                if code != 0 {
                    self.forget(&out.branch);
                    Metrics::inc(&metrics.notify_answered);
                    return code;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if start.elapsed() >= TIMER_F {
                self.forget(&out.branch);
                Metrics::inc(&metrics.notify_unanswered);
                return 0;
            }
            interval = (interval * 2).min(T2);
        }
    }
}

/// The local address a phone at `target` sees this host at, for a socket bound to
/// `bound` (an unspecified bound address is resolved through the routing table).
pub fn local_for(bound: SocketAddr, target: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let probe = std::net::UdpSocket::bind(match target {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    })
    .and_then(|s| {
        s.connect(target)?;
        s.local_addr()
    });
    match probe {
        Ok(a) => SocketAddr::new(a.ip(), bound.port()),
        Err(_) => bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notify_is_well_formed_and_its_answer_is_matched() {
        let n = Notifier::new([7; 32]);
        let local: SocketAddr = "127.0.0.1:5060".parse().expect("addr");
        let target: SocketAddr = "127.0.0.2:5062".parse().expect("addr");
        let build = || {
            n.build(
                "sip:1001@127.0.0.2:5062",
                "1001",
                "sipward",
                "check-sync",
                local,
                target,
            )
            .expect("built")
        };
        let out = build();
        let text = String::from_utf8(out.bytes.clone()).expect("utf8");
        let m = sip::msg::parse(&out.bytes).expect("parses");
        assert_eq!(m.method(), Some("NOTIFY"));
        assert!(text.contains("\r\nEvent: check-sync\r\n"));
        let other = build();
        assert_ne!(out.branch, other.branch, "branches are unique");

        let reply = |branch: &str, code: u16| {
            format!(
                "SIP/2.0 {code} OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch};rport=5060\r\n\
                 From: <sip:sipward@sipward>;tag=a\r\nTo: <sip:1001@sipward>;tag=b\r\nCall-ID: x\r\n\
                 CSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let provisional = reply(&out.branch, 100);
        assert!(!n.response(&sip::msg::parse(provisional.as_bytes()).expect("parse")));
        assert_eq!(n.answer(&out.branch), 0);
        let stranger = reply("z9hG4bKswnforged", 200);
        assert!(!n.response(&sip::msg::parse(stranger.as_bytes()).expect("parse")));
        let ok = reply(&out.branch, 200);
        assert!(n.response(&sip::msg::parse(ok.as_bytes()).expect("parse")));
        assert_eq!(n.answer(&out.branch), 200);
        assert_eq!(n.answer(&other.branch), 0);
    }

    #[test]
    fn control_characters_never_reach_the_wire() {
        let n = Notifier::new([1; 32]);
        let a: SocketAddr = "127.0.0.1:5060".parse().expect("addr");
        assert!(
            n.build("sip:x@y\r\nBye: 1", "1001", "r", "check-sync", a, a)
                .is_none()
        );
    }
}
