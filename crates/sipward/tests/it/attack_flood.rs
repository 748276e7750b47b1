//! Floods aimed at the server transaction table, played on the wire against the real
//! binary: can forged or cheap INVITEs leave no room for the calls that matter?
//!
//! Every request sipward answers needs an entry in the server transaction table, and
//! INVITE entries have a capacity of their own that is never evicted (16,384). An entry
//! answered with a failure lingers for Timer H (32 s) unless an ACK comes; one that is
//! never answered lingers for fifteen minutes. Once the INVITE part is full, every
//! INVITE is dropped unanswered: calls between extensions, calls from the trunk, and
//! emergency calls. Each test fills it the way an attacker without any credentials
//! could, and then asks whether a plain INVITE still gets an answer; each carries its
//! control (the same probe is answered before the flood).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::harness::Env;
use crate::peers::Server;
use crate::user_agent::{Ua, header, status};

/// The INVITE part of the server transaction table (`INVITE_CAPACITY` in egress.rs),
/// with a margin.
const FLOOD: usize = 16_384 + 1_000;
/// More Via lines than sipward answers (`MAX_VIA_LINES` is 70).
const VIAS: usize = 71;

/// An INVITE from `from` (its own Via on top), `vias` Via lines in all.
fn invite(from: SocketAddr, pbx: SocketAddr, dialled: &str, n: usize, vias: usize) -> String {
    let mut t = format!(
        "INVITE sip:{dialled}@{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKfl{n}x{p};rport\r\n",
        p = from.port()
    );
    for i in 1..vias {
        t.push_str(&format!(
            "Via: SIP/2.0/UDP 192.0.2.{}:5060;branch=z9hG4bKhop{i}x{n}\r\n",
            1 + i % 200
        ));
    }
    t.push_str(&format!(
        "Max-Forwards: 70\r\nFrom: <sip:flood@{pbx}>;tag=ft{n}\r\nTo: <sip:{dialled}@{pbx}>\r\n\
         Call-ID: flood-{n}-{p}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        p = from.port()
    ));
    t
}

/// Whether a fresh INVITE from `ua` to `dialled` gets any answer (a 407 will do) within
/// `wait`.
async fn answered(ua: &Ua, dialled: &str, wait: Duration) -> bool {
    let call_id = ua.next("probe-");
    let text = format!(
        "INVITE sip:{dialled}@{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={b};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:2601@{pbx}>;tag={tag}\r\nTo: <sip:{dialled}@{pbx}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:2601@{me}>\r\nContent-Length: 0\r\n\r\n",
        pbx = ua.pbx,
        me = ua.addr,
        b = ua.next("z9hG4bKprobe"),
        tag = ua.next("pt"),
    );
    ua.send(&text).await;
    ua.try_wait(wait, |m| {
        header(m, "Call-ID") == Some(call_id.as_str()) && status(m) >= 100
    })
    .await
    .is_some()
}

/// MD5 for the test user agents; the guard as shipped.
fn config() -> String {
    "[sip]\ndigest_algorithms = [\"MD5\"]\n".to_owned()
}

fn start(env: &Env) -> Server {
    env.ok(&[
        "ext",
        "add",
        "2601",
        "--auth-id",
        "fl2601desk",
        "--password",
        "Vb7-qLx9-2601-Tz4Wm",
        "--class",
        "international",
    ]);
    env.serve()
}

/// A UDP socket on `ip` that counts every datagram it receives.
async fn counting_socket(ip: &str) -> (Arc<UdpSocket>, Arc<AtomicUsize>) {
    let s = Arc::new(UdpSocket::bind((ip, 0)).await.expect("bind"));
    let n = Arc::new(AtomicUsize::new(0));
    let (rx, count) = (s.clone(), n.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while rx.recv_from(&mut buf).await.is_ok() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    (s, n)
}

/// A stranger forges the gateway's address (UDP proves no source) and sends INVITEs for
/// a number that is no DID. Each one read is answered 404 and holds an INVITE entry for
/// Timer H (32 s), since no ACK comes. 16,384 of them left no room: a registered phone's
/// emergency call was dropped unanswered, for as long as the attacker kept sending.
/// A gateway is held to its own limit now (`attack_gateway.rs`), so this test raises
/// it out of the way: the table must hold even where an operator let a trunk send that
/// much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_invite_flood_in_a_gateways_name_leaves_no_room_for_an_emergency_call() {
    let env = Env::with_config(&format!(
        "{}[guard]\ngateway_requests = 10000000\n",
        config()
    ));
    // The gateway's own address (nothing listens there: it stands for a host elsewhere).
    env.ok(&[
        "gateway",
        "add",
        "pstn",
        "--vendor",
        "generic",
        "--ext",
        "800",
        "--auth-id",
        "gw-flood-7",
        "--password",
        "Gw7-pQ2v-Xk9m-Lr4t",
        "--host",
        "127.0.0.47:5060",
    ]);
    let server = start(&env);
    let probe = Ua::bind("127.0.0.48", server.sip).await;

    // Control: before the flood, an emergency INVITE is answered (challenged).
    assert!(
        answered(&probe, "911", Duration::from_secs(5)).await,
        "control: an INVITE is answered before the flood\n{}",
        server.log()
    );

    // The forged source: the gateway's IP (binding it on loopback stands for forging
    // it; the answers it gets only pace the test, an attacker needs none of them).
    let (forged, answers) = counting_socket("127.0.0.47").await;
    let from = forged.local_addr().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut sent = 0;
    let mut progress = (0, Instant::now());
    while sent < FLOOD && Instant::now() < deadline {
        let read = answers.load(Ordering::Relaxed);
        if read != progress.0 {
            progress = (read, Instant::now());
        }
        // At most 200 outstanding, so that nothing is lost in a full socket buffer.
        if sent - read.min(sent) < 200 {
            let text = invite(from, server.sip, "5550100", sent, 1);
            let _ = forged.send_to(text.as_bytes(), server.sip).await;
            sent += 1;
        } else if progress.1.elapsed() > Duration::from_secs(3) {
            // Nothing is answered any more: the table is full.
            break;
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert!(
        sent >= 16_384,
        "the flood could not be sent in time ({sent})"
    );

    // The attacker keeps sending (a thousand a second, a slot that frees is taken
    // again at once).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keep_on = {
        let (stop, forged, pbx) = (stop.clone(), forged.clone(), server.sip);
        tokio::spawn(async move {
            let mut n = FLOOD;
            while !stop.load(Ordering::Relaxed) {
                let text = invite(from, pbx, "5550100", n, 1);
                let _ = forged.send_to(text.as_bytes(), pbx).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    // The hole: a registered office phone's emergency call gets no answer at all.
    let got = answered(&probe, "911", Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = keep_on.await;
    let read = answers.load(Ordering::Relaxed);
    server.stop();
    assert!(
        got,
        "after {sent} forged INVITEs in the gateway's name ({read} answered), an emergency \
         INVITE got no answer: the INVITE transaction table is full"
    );
}

/// Without any address forged: INVITEs with 71 Via lines are parsed and challenged, but
/// the 407 cannot be built (more Vias than an answer may carry), so no answer is ever
/// recorded and each entry waits fifteen minutes (`INVITE_PENDING_MAX`). 25 such
/// INVITEs from each of about 700 addresses (below every flood limit; no address
/// forged, a botnet will do) fill the table, and every INVITE is dropped long after
/// Timer H would have freed an answered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswerable_invites_hold_the_invite_table_for_fifteen_minutes() {
    let env = Env::with_config(&config());
    let server = start(&env);
    let probe = Ua::bind("127.0.0.49", server.sip).await;
    assert!(
        answered(&probe, "2601", Duration::from_secs(5)).await,
        "control: an INVITE is answered before the flood\n{}",
        server.log()
    );

    // 25 INVITEs from each new address (below every flood limit), paced a little,
    // until sipward has taken 16,384 of them in (some are lost in full socket buffers,
    // so the count sent is not fixed), or 40,000 were sent.
    let mut sent = 0;
    let mut full = false;
    let mut k = 0u32;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !full && sent < 40_000 && Instant::now() < deadline {
        let ip = format!("127.5.{}.{}", k / 250, 1 + k % 250);
        let s = UdpSocket::bind((ip.as_str(), 0)).await.expect("bind");
        let from = s.local_addr().expect("addr");
        for _ in 0..25 {
            let text = invite(from, server.sip, "2601", sent, VIAS);
            let _ = s.send_to(text.as_bytes(), server.sip).await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        k += 1;
        if sent >= 16_384 && k.is_multiple_of(40) {
            // Every INVITE challenged holds an entry: the control's (answered), and the
            // flood's (never answered).
            full = server.metric("sipward_invite_challenged_total") > 16_384;
        }
    }
    if !full {
        // The attack failed: nothing fills the table for long.
        server.stop();
        return;
    }
    // An answered INVITE's entry is gone after Timer H (32 s); an unanswerable one must
    // not outlive it. Probe until 40 s after the flood.
    let until = Instant::now() + Duration::from_secs(40);
    let mut got = false;
    while !got && Instant::now() < until {
        got = answered(&probe, "2601", Duration::from_secs(2)).await;
    }
    server.stop();
    assert!(
        got,
        "40 s after {sent} unanswerable INVITEs from {k} addresses, an INVITE still gets no \
         answer: they hold the INVITE transaction table for fifteen minutes"
    );
}
