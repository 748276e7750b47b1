//! Calls to and from trunks with real peers: a SIPp UAS plays the PSTN gateway and the
//! VoIP provider (each challenges and verifies sipward's digest answer with SIPp's own
//! `verifyauth`), SIPp UACs play the phones and a trunk calling in.

use std::time::Duration;

use crate::harness::Env;
use crate::peers::{SippServer, UdpClient, eventually_or, free_port, sipp_from};

const GERMANY: &str = "[sip]\ndigest_algorithms = [\"MD5\"]\n\
    [dialplan]\ncountry_code = \"49\"\ninternational_prefix = \"00\"\nnational_prefix = \"0\"\n\
    emergency_numbers = [\"112\", \"110\"]\n";
const NATIONAL: &str = "0301234567";
const FOREIGN: &str = "00252612345678";
const TRUNK_PASSWORD: &str = "Gw7-pQ2v-Xk9m-Lr4t";

fn add(env: &Env, number: &str) -> (String, String) {
    let auth = format!("desk{number}");
    let pw = format!("Zq8xLmTr4wPy{number}Kb");
    env.ok(&["ext", "add", number, "--auth-id", &auth, "--password", &pw]);
    (auth, pw)
}

/// One call from a phone at 127.0.0.2 with `scenario`; SIPp's result.
fn dial(
    env: &Env,
    server: &crate::peers::Server,
    scenario: &str,
    number: &str,
    login: &(String, String),
    dialled: &str,
) -> crate::peers::SippRun {
    sipp_from(
        "127.0.0.2",
        env,
        scenario,
        &creds(number, login, dialled),
        server.sip,
        "u1",
        1,
        1,
    )
}

fn creds(number: &str, login: &(String, String), dialled: &str) -> String {
    format!(
        "SEQUENTIAL\n{number};{};{dialled}\n",
        crate::peers::sipp_auth(&login.0, &login.1)
    )
}

/// How the trunk challenges INVITEs.
enum Challenge {
    /// 401, verified by SIPp's verifyauth.
    Www,
    /// 407 with a fixed nonce; the Proxy-Authorization must carry the response computed
    /// here independently (RFC 2617 MD5, no qop).
    Proxy,
}

const PROXY_NONCE: &str = "provnonce1";

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(s.as_bytes()))
}

/// tests/sipp/trunk_uas.xml with the trunk's credentials, the expected number, how long
/// it rings, and how it challenges INVITEs; written into the test's dir.
fn trunk_scenario(
    env: &Env,
    login: (&str, &str),
    number: &str,
    ring_ms: u32,
    challenge: Challenge,
    domain: &str,
) -> String {
    let mut text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sipp/trunk_uas.xml"),
    )
    .expect("scenario")
    .replace("@AUTH_ID@", login.0)
    .replace("@PASSWORD@", login.1)
    // The number goes into a regular expression: a leading `+` is literal there.
    .replace("@NUMBER@", &number.replace('+', "\\+"))
    .replace(
        "<pause milliseconds=\"20\"/>",
        &format!("<pause milliseconds=\"{ring_ms}\"/>"),
    );
    if let Challenge::Proxy = challenge {
        let uri = format!("sip:{number}@{domain}");
        let ha1 = md5_hex(&format!("{}:trunk.test:{}", login.0, login.1));
        let ha2 = md5_hex(&format!("INVITE:{uri}"));
        let expected = md5_hex(&format!("{ha1}:{PROXY_NONCE}:{ha2}"));
        text = text
            .replacen(
                "SIP/2.0 401 Unauthorized",
                "SIP/2.0 407 Proxy Authentication Required",
                1,
            )
            .replacen(
                "WWW-Authenticate: Digest realm=\"trunk.test\", nonce=\"[pid]n[call_number]i\"",
                &format!("Proxy-Authenticate: Digest realm=\"trunk.test\", nonce=\"{PROXY_NONCE}\""),
                1,
            )
            .replacen(
                &format!("<verifyauth assign_to=\"authvalid\" username=\"{}\" password=\"{}\"/>", login.0, login.1),
                &format!(
                    "<ereg regexp=\"response=.{expected}.\" search_in=\"hdr\" header=\"Proxy-Authorization:\" check_it=\"true\" assign_to=\"authvalid\"/>"
                ),
                1,
            )
            .replacen(
                "<nop hide=\"true\" test=\"authvalid\" next=\"answer\"/>",
                "<Reference variables=\"authvalid\"/>\n  <nop hide=\"true\" next=\"answer\"/>",
                1,
            );
        assert!(
            text.contains("407 Proxy") && text.contains(&expected),
            "swapped"
        );
    }
    let path = env.path(&format!("trunk-{}.xml", crate::peers::free_port()));
    std::fs::write(&path, text).expect("write scenario");
    path.to_string_lossy().into_owned()
}

/// The provider account "carrier" (auth ID acct-77) whose registrar SIPp plays on
/// 127.0.0.8:`port`.
fn provider(env: &Env, port: u16, password: &str) {
    env.ok(&[
        "provider",
        "add",
        "carrier",
        "--registrar",
        &format!("127.0.0.8:{port}"),
        "--auth-id",
        "acct-77",
        "--password",
        password,
    ]);
}

fn gateway(env: &Env, ip: &str, port: u16) {
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
        TRUNK_PASSWORD,
        "--host",
        &format!("{ip}:{port}"),
    ]);
    env.ok(&[
        "route",
        "add",
        "national",
        "--pattern",
        "0ZX.",
        "--trunk",
        "pstn",
    ]);
    env.ok(&[
        "route",
        "add",
        "world",
        "--pattern",
        "00.",
        "--trunk",
        "gateway:pstn",
    ]);
}

#[test]
fn calls_to_the_pstn_reach_the_gateway_with_its_credentials() {
    let env = Env::with_config(GERMANY);
    let port = free_port();
    gateway(&env, "127.0.0.7", port);
    let user = add(&env, "5001");
    let server = env.serve();
    let scenario = trunk_scenario(
        &env,
        ("gw-pstn-7", TRUNK_PASSWORD),
        NATIONAL,
        20,
        Challenge::Www,
        "",
    );
    let gw = SippServer::start(&env, &scenario, "127.0.0.7", port, 1);

    // The fax extension dialling abroad: 403, nothing reaches the gateway.
    let fax = env.json(&["ext", "show", "888", "--reveal", "--json"]);
    let fax_login = (
        fax["auth_id"].as_str().expect("auth id").to_owned(),
        fax["password"].as_str().expect("password").to_owned(),
    );
    let forbidden = server.metric("sipward_calls_forbidden_total");
    let run = dial(&env, &server, "invite_auth.xml", "888", &fax_login, FOREIGN);
    assert_eq!((run.successful, run.failed), (1, 0), "{run:?}");
    assert_eq!(
        server.metric("sipward_calls_forbidden_total"),
        forbidden + 1
    );

    // A stranger's INVITE to a number abroad is challenged, never routed.
    let stranger = UdpClient::from_address("127.0.0.9", server.sip, Duration::from_secs(3));
    let answer = stranger
        .request(&format!(
            "INVITE sip:{FOREIGN}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKstranger1\r\n\
             From: <sip:x@127.0.0.9>;tag=s1\r\nTo: <sip:{FOREIGN}@127.0.0.1>\r\nCall-ID: stranger-1\r\n\
             CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            stranger.local
        ))
        .expect("an answer");
    assert!(answer.starts_with("SIP/2.0 407"), "{answer}");

    // The national call goes out through the gateway, which challenges; sipward
    // answers with the gateway's credentials; the whole call (ACK, BYE) works.
    let run = dial(&env, &server, "call_uac.xml", "5001", &user, NATIONAL);
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "phone: {run:?}\n{}",
        server.log()
    );
    assert_eq!(
        gw.finish(Duration::from_secs(10)),
        (1, 0),
        "gateway: exactly one call, verified"
    );
    assert_eq!(server.metric("sipward_calls_trunk_total"), 1);
    eventually_or(
        "the call is over in `sipward calls`",
        Duration::from_secs(20),
        || {
            let c = env.json(&["calls", "--json"]);
            c["written_at"].as_i64().unwrap_or(0) > 0
                && c["calls"].as_array().is_some_and(Vec::is_empty)
        },
        || server.log(),
    );
    // A trunk a route uses cannot be removed.
    let refused = env.fails(&["gateway", "remove", "pstn"], 2);
    assert!(refused.contains("route national"), "{refused}");
    server.stop();
}

#[test]
fn a_third_concurrent_call_breaks_the_limit_and_calls_are_listed() {
    let env = Env::with_config(GERMANY);
    let port = free_port();
    gateway(&env, "127.0.0.7", port);
    let user = add(&env, "5101");
    let server = env.serve();
    let scenario = trunk_scenario(
        &env,
        ("gw-pstn-7", TRUNK_PASSWORD),
        NATIONAL,
        4000,
        Challenge::Www,
        "",
    );
    let gw = SippServer::start(&env, &scenario, "127.0.0.7", port, 2);
    let sip = server.sip;
    std::thread::scope(|scope| {
        let phone = scope.spawn(|| {
            sipp_from(
                "127.0.0.2",
                &env,
                "call_uac.xml",
                &creds("5101", &user, NATIONAL),
                sip,
                "u1",
                2,
                10,
            )
        });
        eventually_or(
            "two calls ringing in `sipward calls --json`",
            Duration::from_secs(5),
            || {
                let c = env.json(&["calls", "--json"]);
                c["calls"].as_array().is_some_and(|a| {
                    a.len() == 2
                        && a.iter().all(|c| {
                            c["caller"] == "5101"
                                && c["trunk"] == "gateway:pstn"
                                && c["state"] == "ringing"
                        })
                })
            },
            || server.log(),
        );
        // The third call while two are up: 403 and the extension is suspended.
        let run = dial(&env, &server, "invite_auth.xml", "5101", &user, NATIONAL);
        assert_eq!((run.successful, run.failed), (1, 0), "{run:?}");
        assert_eq!(server.metric("sipward_outbound_suspensions_total"), 1);
        let first_two = phone.join().expect("phone thread");
        assert_eq!(
            (first_two.successful, first_two.failed),
            (2, 0),
            "{first_two:?}"
        );
    });
    assert_eq!(gw.finish(Duration::from_secs(10)), (2, 0));
    eventually_or(
        "the suspension is stored with its reason",
        Duration::from_secs(20),
        || {
            env.json(&["ext", "show", "5101", "--json"])["outbound"]["suspend_reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("fraud.concurrent_external"))
        },
        || server.log(),
    );
    server.stop();
}

#[test]
fn sipward_registers_at_a_provider_and_calls_through_it() {
    let env = Env::with_config(GERMANY);
    let port = free_port();
    provider(&env, port, TRUNK_PASSWORD);
    // National numbers go out in international format: 030... -> +4930... (the number
    // that leaves is classified, so it must be one the dial plan reads as E.164).
    env.ok(&[
        "route",
        "add",
        "out",
        "--pattern",
        "0ZX.",
        "--trunk",
        "carrier",
        "--strip",
        "1",
        "--prepend",
        "+49",
    ]);
    let user = add(&env, "5201");
    let scenario = trunk_scenario(
        &env,
        ("acct-77", TRUNK_PASSWORD),
        "+49301234567",
        20,
        Challenge::Proxy,
        "127.0.0.8",
    );
    let provider = SippServer::start(&env, &scenario, "127.0.0.8", port, 2);
    let server = env.serve();
    eventually_or(
        "registered at the provider",
        Duration::from_secs(10),
        || {
            env.json(&["provider", "show", "carrier", "--json"])["registration"]["state"]
                == "registered"
        },
        || server.log(),
    );
    let shown = env.ok(&["provider", "show", "carrier"]);
    assert!(shown.contains("registered (200 OK)"), "{shown}");
    let run = dial(&env, &server, "call_uac.xml", "5201", &user, NATIONAL);
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "phone: {run:?}\n{}",
        server.log()
    );
    assert_eq!(
        provider.finish(Duration::from_secs(10)),
        (2, 0),
        "REGISTER and the call"
    );
    server.stop();
}

#[test]
fn a_wrong_provider_password_is_reported_not_retried_at_once() {
    let env = Env::with_config(GERMANY);
    let port = free_port();
    provider(&env, port, "Not-the-Right-One-42");
    let scenario = trunk_scenario(
        &env,
        ("acct-77", TRUNK_PASSWORD),
        "0",
        20,
        Challenge::Www,
        "",
    );
    let provider = SippServer::start(&env, &scenario, "127.0.0.8", port, 1);
    let server = env.serve();
    eventually_or(
        "the refusal is shown",
        Duration::from_secs(10),
        || {
            let r = &env.json(&["provider", "show", "carrier", "--json"])["registration"];
            r["state"] == "failed" && r["detail"].as_str().is_some_and(|d| d.starts_with("403"))
        },
        || server.log(),
    );
    assert_eq!(
        provider.finish(Duration::from_secs(5)),
        (0, 1),
        "one attempt, refused"
    );
    assert!(
        !server.log().contains("Not-the-Right-One-42"),
        "the password is never logged"
    );
    server.stop();
}

#[test]
fn a_trunk_calls_an_extension_through_its_did_and_nothing_else() {
    let env = Env::with_config(GERMANY);
    let port = free_port();
    gateway(&env, "127.0.0.7", port);
    let callee = add(&env, "5301");
    env.ok(&["did", "add", "+4930555123", "--ext", "5301"]);
    let server = env.serve();
    let phone_port = crate::calls::register_phone(&server, "127.0.0.3", "5301", &callee);
    let phone = SippServer::start(&env, "call_uas.xml", "127.0.0.3", phone_port, 1);
    // The gateway (from its configured address) calls the DID: no challenge.
    let run = sipp_from(
        "127.0.0.7",
        &env,
        "trunk_uac.xml",
        "SEQUENTIAL\n4930555123;\n",
        server.sip,
        "u1",
        1,
        1,
    );
    assert_eq!(
        (run.successful, run.failed),
        (1, 0),
        "trunk: {run:?}\n{}",
        server.log()
    );
    assert_eq!(phone.finish(Duration::from_secs(10)), (1, 0), "extension");
    assert_eq!(server.metric("sipward_calls_inbound_total"), 1);
    // A trunk dialling anything but a DID (an extension, a number abroad) gets 404:
    // no trunk-to-trunk relaying, no reaching extensions directly.
    let gw = UdpClient::from_address("127.0.0.7", server.sip, Duration::from_secs(3));
    for dialled in ["5301", FOREIGN] {
        let answer = gw
            .request(&format!(
                "INVITE sip:{dialled}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKgw{dialled}\r\n\
                 From: <sip:x@127.0.0.7>;tag=g1\r\nTo: <sip:{dialled}@127.0.0.1>\r\nCall-ID: gw-{dialled}\r\n\
                 CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                gw.local
            ))
            .expect("an answer");
        assert!(answer.starts_with("SIP/2.0 404"), "{dialled}: {answer}");
    }
    server.stop();
}

#[test]
fn routes_and_dids_refuse_bad_input_with_one_clear_sentence() {
    let env = Env::new();
    gateway(&env, "127.0.0.7", 5060);
    add(&env, "5401");
    for (args, says) in [
        (
            vec!["route", "add", "r1", "--pattern", "0a.", "--trunk", "pstn"],
            "dial pattern",
        ),
        (
            vec![
                "route",
                "add",
                "r1",
                "--pattern",
                "0.",
                "--trunk",
                "nowhere",
            ],
            "nowhere",
        ),
        (
            vec![
                "route",
                "add",
                "r1",
                "--pattern",
                "0.",
                "--trunk",
                "pstn",
                "--prepend",
                "+4+9",
            ],
            "prepend",
        ),
        (
            vec![
                "route",
                "add",
                "national",
                "--pattern",
                "0.",
                "--trunk",
                "pstn",
            ],
            "already used",
        ),
        (vec!["route", "remove", "r9"], "does not exist"),
        (vec!["did", "add", "49-30", "--ext", "5401"], "DID"),
        (
            vec!["did", "add", "4930555", "--ext", "5999"],
            "extension 5999",
        ),
    ] {
        let err = env.fails(&args, 2);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    env.ok(&["did", "add", "+4930555", "--ext", "5401"]);
    let err = env.fails(&["did", "add", "4930555", "--ext", "5401"], 2);
    assert!(
        err.contains("already used"),
        "+ and no + are the same DID: {err}"
    );
    let routes = env.json(&["route", "list", "--json"]);
    let names: Vec<&str> = routes
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["national", "world"], "in priority order");
    // Removing the extension removes its DID with it.
    env.ok(&["ext", "remove", "5401"]);
    assert_eq!(env.json(&["did", "list", "--json"]), serde_json::json!([]));
}

#[test]
fn a_trunk_whose_host_does_not_resolve_answers_503_and_sends_nothing() {
    let env = Env::with_config(GERMANY);
    env.ok(&[
        "gateway",
        "add",
        "lost",
        "--vendor",
        "generic",
        "--ext",
        "801",
        "--auth-id",
        "gw-lost-3",
        "--password",
        TRUNK_PASSWORD,
        "--host",
        "pstn.sipward-test.invalid",
    ]);
    env.ok(&[
        "route",
        "add",
        "national",
        "--pattern",
        "0ZX.",
        "--trunk",
        "lost",
    ]);
    let user = add(&env, "5501");
    let server = env.serve();
    let run = dial(&env, &server, "invite_auth.xml", "5501", &user, NATIONAL);
    assert_eq!((run.successful, run.failed), (1, 0), "{run:?}");
    assert_eq!(server.metric("sipward_calls_unrouted_total"), 1);
    assert_eq!(server.metric("sipward_calls_trunk_total"), 0);
    server.stop();
}

/// Issue 21: the concurrent limit is taken in the store, in one transaction per call,
/// so INVITEs that race for it cannot pass it. Twenty at once against a limit of two:
/// exactly two reach the gateway, the rest are refused (and the extension suspended).
/// The control, a limit of twenty, lets all twenty through the same way.
#[test]
fn twenty_racing_invites_against_a_limit_of_two_give_exactly_two_calls() {
    assert_eq!(racing_calls(2), 2);
    assert_eq!(
        racing_calls(20),
        20,
        "control: the race itself passes twenty"
    );
}

/// Twenty INVITEs of one extension at once, against a concurrent limit of `limit`;
/// how many calls reached the gateway.
fn racing_calls(limit: u32) -> u64 {
    let env = Env::with_config(&format!(
        "{GERMANY}[dialplan.limits]\nconcurrent_external = {limit}\nattempts_per_minute = 100\n"
    ));
    let port = free_port();
    gateway(&env, "127.0.0.7", port);
    let user = add(&env, "5201");
    let server = env.serve();
    let scenario = trunk_scenario(
        &env,
        ("gw-pstn-7", TRUNK_PASSWORD),
        NATIONAL,
        3000,
        Challenge::Www,
        "",
    );
    // The gateway would take all twenty.
    let gw = SippServer::start(&env, &scenario, "127.0.0.7", port, 20);
    let run = sipp_from(
        "127.0.0.2",
        &env,
        "race_uac.xml",
        &creds("5201", &user, NATIONAL),
        server.sip,
        "u1",
        20,
        200,
    );
    assert_eq!(
        (run.successful, run.failed),
        (20, 0),
        "every call answered 200 or 403: {run:?}\n{}",
        server.log()
    );
    let (reached, failed) = gw.finish(Duration::from_secs(3));
    assert_eq!(failed, 0);
    assert_eq!(server.metric("sipward_calls_trunk_total"), reached);
    if reached < 20 {
        assert!(server.metric("sipward_outbound_suspensions_total") >= 1);
    }
    server.stop();
    reached
}

/// The same race over two nodes on one PostgreSQL database (issue 21): ten INVITEs at
/// each node at once, one extension, a concurrent limit of two. Exactly two calls reach
/// the gateway; the control, a limit of twenty, passes all twenty.
#[test]
fn twenty_racing_invites_over_two_nodes_against_a_limit_of_two_give_exactly_two_calls() {
    let Some(cluster) = crate::pg::cluster() else {
        return;
    };
    assert_eq!(racing_calls_on_two_nodes(cluster, 2), 2);
    assert_eq!(
        racing_calls_on_two_nodes(cluster, 20),
        20,
        "control: the race itself passes twenty"
    );
}

fn racing_calls_on_two_nodes(cluster: &crate::pg::Cluster, limit: u32) -> u64 {
    let config = format!(
        "{GERMANY}[dialplan.limits]\nconcurrent_external = {limit}\nattempts_per_minute = 100\n"
    );
    let (a, b, _) = crate::install::two_nodes(cluster, &config);
    let port = free_port();
    gateway(&a, "127.0.0.7", port);
    let user = add(&a, "5301");
    let node_a = a.serve_with(&["--node-name", "a"]);
    let node_b = b.serve_with(&["--node-name", "b"]);
    let scenario = trunk_scenario(
        &a,
        ("gw-pstn-7", TRUNK_PASSWORD),
        NATIONAL,
        3000,
        Challenge::Www,
        "",
    );
    let gw = SippServer::start(&a, &scenario, "127.0.0.7", port, 20);
    let csv = creds("5301", &user, NATIONAL);
    let (run_a, run_b) = std::thread::scope(|scope| {
        let at_a = scope.spawn(|| {
            sipp_from(
                "127.0.0.2",
                &a,
                "race_uac.xml",
                &csv,
                node_a.sip,
                "u1",
                10,
                200,
            )
        });
        let at_b = scope.spawn(|| {
            sipp_from(
                "127.0.0.3",
                &b,
                "race_uac.xml",
                &csv,
                node_b.sip,
                "u1",
                10,
                200,
            )
        });
        (
            at_a.join().expect("phone at A"),
            at_b.join().expect("phone at B"),
        )
    });
    for (run, node) in [(&run_a, &node_a), (&run_b, &node_b)] {
        assert_eq!(
            (run.successful, run.failed),
            (10, 0),
            "every call answered 200 or 403: {run:?}\n{}",
            node.log()
        );
    }
    let (reached, failed) = gw.finish(Duration::from_secs(3));
    assert_eq!(failed, 0);
    let placed_a = node_a.metric("sipward_calls_trunk_total");
    let placed_b = node_b.metric("sipward_calls_trunk_total");
    assert_eq!(placed_a + placed_b, reached);
    eprintln!("limit {limit}: {placed_a} calls through A, {placed_b} through B");
    node_a.stop();
    node_b.stop();
    reached
}
