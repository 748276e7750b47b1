//! Flows (crates/pbx/src/flow.rs) on the wire: a response must come from where its
//! request went, and a phone is reached only on the flow it registered from.

use std::time::Duration;

use tokio::net::UdpSocket;

use crate::harness::Env;
use crate::peers::Server;
use crate::user_agent::{Ua, ext, header, param, response, status};

fn config() -> String {
    "[sip]\ndigest_algorithms = [\"MD5\"]\n".to_owned()
}

/// sipward's INVITE reached the callee at A:P. A final answer carrying that INVITE's
/// branch is sent from A:Q (another program on the callee's host, or another phone
/// behind the same NAT) and is taken as the callee's: the check compares the IP only.
/// Control: the same answer from another IP is dropped, and the callee's own answer goes
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_from_another_port_of_the_callees_host_is_not_the_callees() {
    let env = Env::with_config(&config());
    let a = ext(&env, "2801", "internal");
    let b = ext(&env, "2802", "internal");
    let server: Server = env.serve();
    let caller = Ua::phone("127.0.0.81", server.sip, &a).await;
    let callee = Ua::phone("127.0.0.82", server.sip, &b).await;
    caller.register().await;
    callee.register().await;
    let out = caller.invite(callee.number(), "").await;
    let invite = callee.wait_request("INVITE", &out.call_id).await;
    let busy = response(&invite, 486, "Busy Here", "forged486", "", "");

    // Control: from another IP, nothing reaches the caller.
    let elsewhere = UdpSocket::bind("127.0.0.83:0").await.expect("bind");
    elsewhere
        .send_to(busy.as_bytes(), server.sip)
        .await
        .expect("send");
    let leaked_other_ip = caller
        .try_wait(Duration::from_millis(1500), |m| status(m) == 486)
        .await
        .is_some();
    assert!(!leaked_other_ip, "control: another IP's 486 was dropped");

    // The attack: the callee's IP, another port.
    let same_host = UdpSocket::bind("127.0.0.82:0").await.expect("bind");
    same_host
        .send_to(busy.as_bytes(), server.sip)
        .await
        .expect("send");
    let leaked = caller
        .try_wait(Duration::from_millis(1500), |m| status(m) == 486)
        .await;

    // Control: the callee's own answer goes through (if the call is still up).
    if leaked.is_none() {
        callee
            .reply(&invite, 486, "Busy Here", "real486", "", "")
            .await;
        caller.wait_answer(&out, |c| c == 486).await;
    }
    server.stop();
    assert!(
        leaked.is_none(),
        "a 486 with sipward's branch from {} (the callee is at {}) ended the call",
        same_host.local_addr().expect("addr"),
        callee.addr
    );
}

/// A phone registers over TCP and closes the connection. A call to it gets an answer
/// (no branch can be sent), and nothing goes to its address over UDP (the port its
/// connection came from) or anywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_tcp_registration_whose_connection_closed_goes_nowhere() {
    let env = Env::with_config(&config());
    let a = ext(&env, "2811", "internal");
    let b = ext(&env, "2812", "internal");
    let server: Server = env.serve();
    let caller = Ua::phone("127.0.0.84", server.sip, &a).await;
    caller.register().await;
    let rport = {
        let phone = Ua::phone("127.0.0.85", server.sip, &b).await;
        let contact = format!(
            "Contact: <sip:2812@{};transport=tcp>\r\nExpires: 3600\r\n",
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
        let ok = phone.wait_answer(&out, |c| c == 200).await;
        let via = header(&ok, "Via").expect("Via").to_owned();
        param(&via, "rport")
            .and_then(|p| p.parse::<u16>().ok())
            .expect("rport of the TCP connection")
        // The phone (and its connection) goes here.
    };
    // Something else now sits at the address the connection came from, over UDP.
    let squatter = Ua::bind("127.0.0.85", server.sip).await;
    let udp_at_port = UdpSocket::bind(("127.0.0.85", rport)).await.ok();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let out = caller.invite("2812", "").await;
    let answer = caller.wait_answer(&out, |c| c >= 300).await;
    let mut buf = [0u8; 2048];
    let reached = match &udp_at_port {
        Some(s) => tokio::time::timeout(Duration::from_millis(1500), s.recv_from(&mut buf))
            .await
            .is_ok(),
        None => false,
    };
    let squatted = squatter
        .try_wait(Duration::from_millis(200), |_| true)
        .await;
    server.stop();
    assert!(status(&answer) >= 400, "{answer}");
    assert!(!reached, "the INVITE went over UDP to 127.0.0.85:{rport}");
    assert!(squatted.is_none(), "{squatted:?}");
}
