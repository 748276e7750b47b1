//! Attacks on the dialog table (crates/pbx/src/dialog.rs), played on the wire against
//! the real binary.
//!
//! Every tagged provisional answer a callee sends makes an early dialog (RFC 3261
//! §12.1), and the table holds 65,536 dialogs; when it is full, new dialogs are not made,
//! and a call without a dialog cannot be acknowledged or hung up (in-dialog requests are
//! carried only within a dialog the table knows). A callee is whoever answers: any
//! extension, of any class, suspended or not (calls between extensions have no limits),
//! or the phone of anybody who calls their own DID from outside.

use std::time::Duration;

use crate::harness::Env;
use crate::peers::Server;
use crate::user_agent::{Dialog, Ua, answers, ext, header, response, status};

/// Tags per call, and calls: more early dialogs than the table holds.
const TAGS: usize = 4_000;
const CALLS: usize = 17;

/// A call from `caller` to `callee`, answered 200 by the callee, then hung up by the
/// caller: how far it got ("completed" when the ACK and the BYE reached the callee).
async fn call_completes(caller: &Ua, callee: &Ua) -> String {
    let wait = Duration::from_secs(20);
    let out = caller.invite(callee.number(), "").await;
    let call_id = out.call_id.clone();
    let Some(invite) = callee
        .try_wait(wait, |m| {
            m.starts_with("INVITE ") && header(m, "Call-ID") == Some(call_id.as_str())
        })
        .await
    else {
        let answers: Vec<String> = caller
            .received()
            .iter()
            .filter(|r| header(&r.text, "Call-ID") == Some(out.call_id.as_str()))
            .map(|r| r.text.lines().next().unwrap_or_default().to_owned())
            .collect();
        return format!("the INVITE never reached the callee (the caller got {answers:?})");
    };
    let tag = callee.next("ok");
    let contact = format!("Contact: {}\r\n", callee.contact());
    let sdp = callee.sdp("sendrecv");
    callee
        .reply(
            &invite,
            200,
            "OK",
            &tag,
            &format!("{contact}Content-Type: application/sdp\r\n"),
            &sdp,
        )
        .await;
    let Some(ok) = caller
        .try_wait(wait, |m| answers(m, &out) && status(m) == 200)
        .await
    else {
        return "the 200 never reached the caller".to_owned();
    };
    let mut d = Dialog::uac(&out, &ok);
    caller.ack_2xx(&d, out.cseq).await;
    let acked = callee
        .try_wait(Duration::from_secs(3), |m| {
            m.starts_with("ACK ") && header(m, "Call-ID") == Some(call_id.as_str())
        })
        .await
        .is_some();
    caller.send_in_dialog(&mut d, "BYE", "", "").await;
    let bye = callee
        .try_wait(Duration::from_secs(3), |m| {
            m.starts_with("BYE ") && header(m, "Call-ID") == Some(call_id.as_str())
        })
        .await;
    if let Some(bye) = &bye {
        callee.reply(bye, 200, "OK", "", "", "").await;
    }
    match (acked, bye.is_some()) {
        (true, true) => "completed",
        (false, true) => "the ACK never reached the callee",
        (true, false) => "the BYE never reached the callee",
        (false, false) => "neither ACK nor BYE reached the callee",
    }
    .to_owned()
}

/// One internal-class extension calls another its owner holds, registered from four
/// devices (or its own phone is called from outside), and each device answers its
/// branch with 1,000 180s, each with a new To tag, at 250 a second (below the flood
/// limits of a registered source). Seventeen such calls, all still ringing (the ring
/// time is three minutes), fill the dialog table: a call between two other extensions
/// is answered, but its ACK and BYE reach nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_provisionals_from_one_callee_cannot_fill_the_dialog_table() {
    let env = Env::with_config("[sip]\ndigest_algorithms = [\"MD5\"]\n");
    let a = ext(&env, "2701", "internal");
    let b = ext(&env, "2702", "internal");
    let c = ext(&env, "2703", "international");
    let d = ext(&env, "2704", "national");
    let server: Server = env.serve();
    let mut devices = Vec::new();
    for ip in ["127.0.0.72", "127.0.0.75", "127.0.0.76", "127.0.0.77"] {
        let device = Ua::phone(ip, server.sip, &b).await;
        device.register().await;
        devices.push(device);
    }
    let office = Ua::phone("127.0.0.73", server.sip, &c).await;
    let colleague = Ua::phone("127.0.0.74", server.sip, &d).await;
    for p in [&office, &colleague] {
        p.register().await;
    }
    // Control: a call between the two office phones completes.
    assert_eq!(
        call_completes(&office, &colleague).await,
        "completed",
        "control: ACK and BYE of an answered call reach the callee\n{}",
        server.log()
    );

    let started = std::time::Instant::now();
    let mut callers = Vec::new();
    for call in 0..CALLS {
        // A fresh user agent per call (the same account): its inbox stays small.
        let attacker = Ua::phone("127.0.0.71", server.sip, &a).await;
        let out = attacker.invite("2702", "").await;
        let mut invites = Vec::new();
        for device in &devices {
            invites.push(device.wait_request("INVITE", &out.call_id).await);
        }
        for n in 0..TAGS / devices.len() {
            for (i, (device, invite)) in devices.iter().zip(&invites).enumerate() {
                let text = response(invite, 180, "Ringing", &format!("c{call}d{i}t{n}"), "", "");
                device.send_to(&text, server.sip).await;
            }
            if n % 25 == 24 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        callers.push(attacker);
    }
    let took = started.elapsed();

    // Each tagged 180 beyond a full table costs a scan of the whole table under the
    // proxy's lock: sipward may answer nothing for a while. Wait (up to two minutes)
    // until it answers an OPTIONS again, and say how long that took.
    let stalled = std::time::Instant::now();
    let mut alive = false;
    while !alive && stalled.elapsed() < Duration::from_secs(120) {
        let call_id = office.next("alive-");
        office
            .send(&format!(
                "OPTIONS sip:{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={b};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:2703@{pbx}>;tag=al\r\nTo: <sip:{pbx}>\r\n\
                 Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                pbx = server.sip,
                me = office.addr,
                b = office.next("z9hG4bKalive"),
            ))
            .await;
        alive = office
            .try_wait(Duration::from_secs(2), |m| {
                header(m, "Call-ID") == Some(call_id.as_str())
            })
            .await
            .is_some();
    }
    let stall = stalled.elapsed();

    let after = call_completes(&office, &colleague).await;
    let metrics = server.http_get("/metrics").1;
    let log = server.log();
    server.stop();
    assert_eq!(
        after,
        "completed",
        "after {CALLS} calls ({took:?}) with {TAGS} tagged 180s each from one internal-class \
         callee (sipward answered again after {stall:?}, alive: {alive}), a call between two \
         other extensions does not complete: the dialog table is full\n{}\n{}",
        metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n"),
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}
