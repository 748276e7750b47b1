//! A gateway's address is no pass (issue #14): a UDP source can be forged, so INVITEs
//! sent "as" the trunk must not each cost a lookup and a 404. The gateway is never
//! banned, but held to its own limit (`guard.gateway_requests`); SIPp plays the real
//! gateway calling a DID under normal load, a raw socket on its address the forger.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::Env;
use crate::peers::{Server, SippServer, free_port, sipp_from};

const GATEWAY_IP: &str = "127.0.0.57";
const FORGED: u32 = 600;

fn setup(limit: u32) -> (Env, Server, SippServer) {
    let env = Env::with_config(&format!(
        "[sip]\ndigest_algorithms = [\"MD5\"]\n\
         [dialplan]\ncountry_code = \"49\"\ninternational_prefix = \"00\"\nnational_prefix = \"0\"\n\
         [guard]\ngateway_requests = {limit}\n"
    ));
    env.ok(&[
        "gateway",
        "add",
        "pstn",
        "--vendor",
        "generic",
        "--ext",
        "800",
        "--auth-id",
        "gw-pstn-7",
        "--password",
        "Gw7-pQ2v-Xk9m-Lr4t",
        "--host",
        &format!("{GATEWAY_IP}:{}", free_port()),
    ]);
    let login = ("desk5301".to_owned(), "Zq8xLmTr4wPy5301Kb".to_owned());
    env.ok(&[
        "ext",
        "add",
        "5301",
        "--auth-id",
        &login.0,
        "--password",
        &login.1,
    ]);
    env.ok(&["did", "add", "+4930555123", "--ext", "5301"]);
    let server = env.serve();
    let phone_port = crate::calls::register_phone(&server, "127.0.0.58", "5301", &login);
    let phone = SippServer::start(&env, "call_uas.xml", "127.0.0.58", phone_port, 100);
    (env, server, phone)
}

/// `calls` trunk calls from SIPp on the gateway's address, 5 a second: all must work.
fn trunk_calls(env: &Env, server: &Server, calls: u32) {
    let run = sipp_from(
        GATEWAY_IP,
        env,
        "trunk_uac.xml",
        "SEQUENTIAL\n4930555123;\n",
        server.sip,
        "u1",
        calls,
        5,
    );
    assert_eq!(
        (run.successful, run.failed),
        (u64::from(calls), 0),
        "the real trunk's calls: {run:?}\n{}",
        server.log()
    );
}

/// Sends `FORGED` INVITEs to a number that is no DID from the gateway's address, as
/// fast as the socket takes them; how many were answered 404 (until a second passes
/// without an answer).
fn forged_flood(server: &Server) -> u64 {
    let socket = UdpSocket::bind((GATEWAY_IP, 0)).expect("bind");
    let local = socket.local_addr().expect("local");
    let reader = socket.try_clone().expect("clone");
    reader
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let answered = Arc::new(AtomicU64::new(0));
    let counter = answered.clone();
    let receiving = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_535];
        let started = Instant::now();
        while let Ok((n, _)) = reader.recv_from(&mut buf) {
            if buf[..n].starts_with(b"SIP/2.0 404") {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            if started.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
    });
    for i in 0..FORGED {
        socket
            .send_to(invite(local, i).as_bytes(), server.sip)
            .expect("send");
    }
    receiving.join().expect("receiver");
    answered.load(Ordering::Relaxed)
}

fn invite(local: SocketAddr, i: u32) -> String {
    format!(
        "INVITE sip:00252612345678@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKforged{i}\r\n\
         From: <sip:4930555000@{GATEWAY_IP}>;tag=f{i}\r\nTo: <sip:00252612345678@127.0.0.1>\r\n\
         Call-ID: forged-{i}@{GATEWAY_IP}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_forged_flood_in_a_gateways_name_is_held_to_its_limit_and_the_trunk_keeps_calling() {
    let limit = 100;
    let (env, server, _phone) = setup(limit);
    // Normal load: 10 calls, two seconds of them (each INVITE, ACK, BYE).
    trunk_calls(&env, &server, 10);
    let answered = forged_flood(&server);
    let dropped = server.metric("sipward_dropped_gateway_limit_total");
    eprintln!("forged INVITEs: {FORGED}, answered 404: {answered}, dropped: {dropped}");
    // The window's limit less what the calls used, plus each second's share (10/s) for
    // the seconds the flood and its answers take.
    assert!(
        answered <= u64::from(limit) + 40,
        "{answered} of {FORGED} forged INVITEs answered, the limit is {limit} a window"
    );
    assert!(
        dropped >= u64::from(FORGED) - u64::from(limit) - 40,
        "dropped {dropped}"
    );
    // Never banned: the real trunk calls again at once, and no ban is recorded.
    trunk_calls(&env, &server, 2);
    assert_eq!(
        env.json(&["ban", "list", "--json"])
            .as_array()
            .map_or(0, Vec::len),
        0
    );
    assert!(
        server.log().contains("\"event\":\"gateway_limited\""),
        "{}",
        server.log()
    );
    server.stop();
}

#[test]
fn control_with_a_limit_above_the_flood_every_forged_invite_costs_a_404() {
    let (env, server, _phone) = setup(100_000);
    trunk_calls(&env, &server, 2);
    let answered = forged_flood(&server);
    assert_eq!(
        answered,
        u64::from(FORGED),
        "the test counts every answer when nothing limits the gateway"
    );
    assert_eq!(server.metric("sipward_dropped_gateway_limit_total"), 0);
    server.stop();
}
