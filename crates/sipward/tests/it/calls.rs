//! The toll-fraud guard on INVITE: every caller authenticates (407) before the dialled
//! number is looked at; classes of service (403), fraud limits that suspend an
//! extension and mail the administrator, emergency numbers always. SIPp is the phone;
//! aiosmtpd receives the alerts. Admitted external calls here have no route (404); the
//! trunk calls are in `trunk_calls.rs`.

use std::time::Duration;

use serde_json::Value;

use crate::harness::Env;
use crate::peers::{Server, SippServer, Smtp, UdpClient, eventually, eventually_or, sipp_from};
use crate::registrar::{Login, header, register, status};

pub(crate) const GERMANY: &str = "[sip]\ndigest_algorithms = [\"MD5\"]\n\
    [dialplan]\ncountry_code = \"49\"\ninternational_prefix = \"00\"\nnational_prefix = \"0\"\n\
    emergency_numbers = [\"112\", \"110\"]\n";
const FOREIGN: &str = "00252612345678";
const NATIONAL: &str = "0301234567";

/// An extension with known credentials.
pub(crate) fn add(env: &Env, number: &str, extra: &[&str]) -> (String, String) {
    let auth = format!("desk{number}");
    let pw = format!("Zq8xLmTr4wPy{number}Kb");
    let mut args = vec!["ext", "add", number, "--auth-id", &auth, "--password", &pw];
    args.extend_from_slice(extra);
    env.ok(&args);
    (auth, pw)
}

/// SIPp places `calls` calls from `number` to `dialled` (each: INVITE, 407, INVITE with
/// credentials, a final 403 or 480); returns how many were admitted (480).
fn call(
    env: &Env,
    server: &Server,
    login: &(String, String),
    number: &str,
    dialled: &str,
    calls: u32,
) -> u64 {
    let before = server.metric("sipward_calls_unrouted_total");
    let csv = format!(
        "SEQUENTIAL\n{number};{};{dialled}\n",
        crate::peers::sipp_auth(&login.0, &login.1)
    );
    let run = sipp_from(
        "127.0.0.1",
        env,
        "invite_auth.xml",
        &csv,
        server.sip,
        "u1",
        calls,
        10,
    );
    assert_eq!(
        (run.successful, run.failed),
        (u64::from(calls), 0),
        "{run:?}"
    );
    server.metric("sipward_calls_unrouted_total") - before
}

fn outbound(env: &Env, number: &str) -> Value {
    env.json(&["ext", "show", number, "--json"])["outbound"].clone()
}

#[test]
fn strangers_get_the_same_407_whatever_they_dial() {
    let env = Env::with_config(GERMANY);
    add(&env, "1001", &[]);
    let server = env.serve();
    let c = UdpClient::from_address("127.0.0.9", server.sip, Duration::from_secs(3));
    let invite = |to: &str, n: u32| {
        format!(
            "INVITE sip:{to}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKinv{n};rport\r\n\
             From: <sip:x@example.com>;tag=t{n}\r\nTo: <sip:{to}@127.0.0.1>\r\nCall-ID: inv{n}\r\n\
             CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            local = c.local
        )
    };
    let mut shapes = Vec::new();
    for (n, to) in ["1001", "9999", FOREIGN, "112"].iter().enumerate() {
        let answer = c.request(&invite(to, n as u32)).expect("answer");
        assert_eq!(status(&answer), 407, "{answer}");
        assert_eq!(header(&answer, "Proxy-Authenticate").len(), 1);
        // Everything but the tags and the nonce is the same.
        let shape: Vec<String> = answer
            .lines()
            .filter(|l| {
                !l.starts_with("To:")
                    && !l.starts_with("Proxy-Authenticate")
                    && !l.starts_with("Via:")
                    && !l.starts_with("Call-ID")
                    && !l.starts_with("From:")
            })
            .map(str::to_owned)
            .collect();
        shapes.push(shape);
    }
    assert!(shapes.windows(2).all(|w| w[0] == w[1]), "{shapes:?}");
    assert_eq!(server.metric("sipward_calls_forbidden_total"), 0);
    assert_eq!(
        server.metric("sipward_calls_unrouted_total"),
        0,
        "no stranger's call is admitted"
    );
    server.stop();
}

#[test]
fn the_fax_extension_cannot_call_abroad_and_classes_are_enforced() {
    let env = Env::with_config(GERMANY);
    let fax = add(&env, "2888", &["--fax"]);
    let user = add(&env, "2001", &[]);
    let inside = add(&env, "2002", &["--class", "internal"]);
    assert_eq!(outbound(&env, "2888")["class_of_service"], "national");
    assert_eq!(outbound(&env, "2002")["class_of_service"], "internal");
    let server = env.serve();

    assert_eq!(
        call(&env, &server, &fax, "2888", FOREIGN, 1),
        0,
        "fax abroad: 403"
    );
    assert_eq!(
        call(&env, &server, &fax, "2888", NATIONAL, 1),
        1,
        "fax national: admitted"
    );
    assert_eq!(
        call(&env, &server, &user, "2001", FOREIGN, 1),
        0,
        "national class: no abroad"
    );
    assert_eq!(
        call(&env, &server, &inside, "2002", NATIONAL, 1),
        0,
        "internal class"
    );
    assert_eq!(
        call(&env, &server, &inside, "2002", "2001", 1),
        1,
        "internal call"
    );
    assert_eq!(
        call(&env, &server, &user, "2001", "12ab", 1),
        0,
        "not a number"
    );
    assert_eq!(server.metric("sipward_calls_forbidden_total"), 4);

    // An administrator allows international calls for one extension. (FOREIGN, Somalia,
    // is a high-cost destination: only `unrestricted` reaches it.)
    env.ok(&["ext", "update", "2001", "--class", "international"]);
    eventually(
        "the server sees the new class",
        Duration::from_secs(20),
        || call(&env, &server, &user, "2001", "00442079460000", 1) == 1,
    );
    env.fails(&["ext", "update", "2001", "--class", "world"], 2);
    server.stop();
}

#[test]
fn six_attempts_in_a_minute_suspend_and_mail_the_administrator() {
    let env = Env::new();
    let smtp = Smtp::start(&env);
    env.ok(&["ext", "list"]);
    std::fs::write(
        env.data.join("sipward.toml"),
        format!(
            "{GERMANY}{}admin = \"admin@example.com\"\n",
            smtp.config(crate::peers::SMTP_PASSWORD)
        ),
    )
    .expect("config");
    let user = add(&env, "3001", &[]);
    let other = add(&env, "3002", &[]);
    let server = env.serve();

    assert_eq!(
        call(&env, &server, &user, "3001", NATIONAL, 5),
        5,
        "five admitted"
    );
    assert_eq!(
        call(&env, &server, &user, "3001", NATIONAL, 1),
        0,
        "the sixth breaks the limit"
    );
    assert_eq!(server.metric("sipward_outbound_suspensions_total"), 1);
    eventually_or(
        "the suspension is stored",
        Duration::from_secs(20),
        || outbound(&env, "3001")["suspended"] == true,
        || server.log(),
    );
    let o = outbound(&env, "3001");
    assert!(
        o["suspend_reason"]
            .as_str()
            .expect("reason")
            .starts_with("fraud.attempts_per_minute")
    );
    assert!(
        server.log().contains("\"event\":\"outbound_suspended\""),
        "{}",
        server.log()
    );
    // Suspended: no external call, but internal and emergency calls go on; others are
    // not affected.
    assert_eq!(call(&env, &server, &user, "3001", NATIONAL, 1), 0);
    assert_eq!(call(&env, &server, &user, "3001", "3002", 1), 1);
    assert_eq!(call(&env, &server, &user, "3001", "112", 1), 1);
    assert_eq!(call(&env, &server, &other, "3002", NATIONAL, 1), 1);

    // The administrator hears about the suspension and the emergency call.
    eventually_or(
        "alerts delivered",
        Duration::from_secs(30),
        || smtp.messages().len() >= 2,
        || server.log(),
    );
    let mails = smtp.messages();
    assert!(
        mails
            .iter()
            .all(|m| m.starts_with("X-Test-Envelope-To: admin@example.com"))
    );
    assert!(
        mails
            .iter()
            .any(|m| m.contains("Outbound calling of extension 3001 suspended"))
    );
    assert!(
        mails
            .iter()
            .any(|m| m.contains("Emergency call from extension 3001"))
    );

    // `ext resume` re-enables it (a minute later the attempt window is clear).
    env.ok(&["ext", "resume", "3001"]);
    assert_eq!(outbound(&env, "3001")["suspended"], false);
    server.stop();
}

/// Registers `number` from `ip` with a raw client, then frees its port for SIPp: the
/// binding (and so the proxy's INVITE) points at that address.
pub fn register_phone(server: &Server, ip: &str, number: &str, login: &(String, String)) -> u16 {
    let c = UdpClient::from_address(ip, server.sip, Duration::from_secs(3));
    let who = Login {
        number,
        auth_id: &login.0,
        realm: "sipward",
        password: &login.1,
    };
    let contact = format!("<sip:{number}@{}>", c.local);
    let answer = register(
        &c,
        &who,
        &format!("reg-{number}"),
        1,
        Some(&contact),
        Some(3600),
    );
    assert_eq!(status(&answer), 200, "{answer}");
    c.local.port()
}

#[test]
fn a_call_between_two_extensions_goes_through_the_proxy() {
    let env = Env::with_config(GERMANY);
    let caller = add(&env, "4001", &[]);
    let callee = add(&env, "4002", &[]);
    let server = env.serve();
    let port = register_phone(&server, "127.0.0.3", "4002", &callee);
    let phone = SippServer::start(&env, "call_uas.xml", "127.0.0.3", port, 1);
    let csv = format!(
        "SEQUENTIAL\n4001;{};4002\n",
        crate::peers::sipp_auth(&caller.0, &caller.1)
    );
    let run = sipp_from(
        "127.0.0.2",
        &env,
        "call_uac.xml",
        &csv,
        server.sip,
        "u1",
        1,
        1,
    );
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "caller: {run:?}\n{}",
        server.log()
    );
    assert_eq!(phone.finish(Duration::from_secs(10)), (1, 0), "callee");
    assert_eq!(server.metric("sipward_calls_proxied_total"), 1);
    assert!(
        server.metric("sipward_relayed_total") >= 2,
        "ACK and BYE followed the route"
    );
    server.stop();
}

#[test]
fn in_dialog_requests_of_no_dialog_get_481_and_are_not_relayed() {
    let env = Env::with_config(GERMANY);
    add(&env, "4101", &[]);
    let server = env.serve();
    let c = UdpClient::from_address("127.0.0.9", server.sip, Duration::from_secs(3));
    // A BYE "in a dialog" routed through us towards an arbitrary address: with no
    // Route, with our Route, and with our Route and a made-up dialog token. No dialog
    // has these tags, so each is answered 481 (RFC 3261 §12.2.2) and goes nowhere: a
    // Record-Route parameter is no credential, and the Route never decides.
    let bye = |route: &str, n: u32| {
        format!(
            "BYE sip:4101@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKbye{n};rport\r\n\
             From: <sip:x@example.com>;tag=a{n}\r\nTo: <sip:4101@127.0.0.1>;tag=b{n}\r\nCall-ID: bye{n}\r\n\
             CSeq: 1 BYE\r\n{route}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            local = c.local
        )
    };
    let ours = server.sip;
    assert_eq!(status(&c.request(&bye("", 1)).expect("answer")), 481);
    let no_token = format!("Route: <sip:{ours};lr>\r\n");
    assert_eq!(status(&c.request(&bye(&no_token, 2)).expect("answer")), 481);
    let forged = format!("Route: <sip:{ours};lr;sw=0123456789abcdef01234567>\r\n");
    assert_eq!(status(&c.request(&bye(&forged, 3)).expect("answer")), 481);
    assert_eq!(server.metric("sipward_relayed_total"), 0);
    // An in-dialog OPTIONS without a Route is a keepalive: answered, not relayed.
    let keepalive = bye("", 4).replace("BYE", "OPTIONS");
    assert_eq!(status(&c.request(&keepalive).expect("answer")), 200);
    server.stop();
}

#[test]
fn a_ringing_call_can_be_cancelled() {
    let env = Env::with_config(GERMANY);
    let caller = add(&env, "4201", &[]);
    let callee = add(&env, "4202", &[]);
    let server = env.serve();
    let port = register_phone(&server, "127.0.0.3", "4202", &callee);
    let phone = SippServer::start(&env, "cancel_uas.xml", "127.0.0.3", port, 1);
    let csv = format!(
        "SEQUENTIAL\n4201;{};4202\n",
        crate::peers::sipp_auth(&caller.0, &caller.1)
    );
    let run = sipp_from(
        "127.0.0.2",
        &env,
        "cancel_uac.xml",
        &csv,
        server.sip,
        "u1",
        1,
        1,
    );
    assert_eq!((run.successful, run.failed), (1, 0), "caller: {run:?}");
    assert_eq!(
        phone.finish(Duration::from_secs(10)),
        (1, 0),
        "callee got CANCEL and ACK"
    );
    server.stop();
}
