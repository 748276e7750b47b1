//! `sipward serve` as a registrar, against real clients.

use std::time::Duration;

use sip::digest::{Algorithm, ResponseInput, expected_response, ha1};

use crate::harness::Env;
use crate::peers::{UdpClient, eventually, sipp_from};

pub(crate) const PASSWORD: &str = "Zq8xLmTr4wPyK7vB2";

pub(crate) fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.lines()
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        })
        .collect()
}

pub(crate) fn status(msg: &str) -> u16 {
    msg.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn nonce_of(challenge: &str) -> String {
    challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("nonce")
        .to_owned()
}

/// A REGISTER as a phone would send it; `auth` is an Authorization value or empty.
pub(crate) fn register_text(
    c: &UdpClient,
    number: &str,
    cseq: u32,
    call_id: &str,
    contact: Option<&str>,
    expires: Option<u32>,
    auth: &str,
) -> String {
    let mut t = format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}{cseq};rport\r\n\
         From: <sip:{number}@127.0.0.1>;tag=ft{cseq}\r\nTo: <sip:{number}@127.0.0.1>\r\nCall-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n",
        local = c.local
    );
    if let Some(ct) = contact {
        t.push_str(&format!("Contact: {ct}\r\n"));
    }
    if let Some(e) = expires {
        t.push_str(&format!("Expires: {e}\r\n"));
    }
    if !auth.is_empty() {
        t.push_str(&format!("Authorization: {auth}\r\n"));
    }
    t.push_str("Content-Length: 0\r\n\r\n");
    t
}

pub(crate) fn authorization(user: &str, realm: &str, password: &str, nonce: &str) -> String {
    let h = ha1(Algorithm::Md5, user, realm, password);
    let uri = "sip:127.0.0.1";
    let response = expected_response(
        Algorithm::Md5,
        &h,
        &ResponseInput {
            method: "REGISTER",
            uri,
            nonce,
            qop_auth: Some(("00000001", "c0ffee")),
        },
    );
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\""
    )
}

/// Who logs in: the extension, the auth ID, and the realm and password the client uses.
pub(crate) struct Login<'a> {
    pub number: &'a str,
    pub auth_id: &'a str,
    pub realm: &'a str,
    pub password: &'a str,
}

pub(crate) const ALICE: Login<'static> = Login {
    number: "1001",
    auth_id: "alice1001",
    realm: "sipward",
    password: PASSWORD,
};

/// Challenge, then answer it; returns the final response.
pub(crate) fn register(
    c: &UdpClient,
    who: &Login<'_>,
    call_id: &str,
    cseq: u32,
    contact: Option<&str>,
    expires: Option<u32>,
) -> String {
    let challenge = c
        .request(&register_text(
            c, who.number, cseq, call_id, contact, expires, "",
        ))
        .expect("401");
    assert_eq!(status(&challenge), 401, "{challenge}");
    let nonce = nonce_of(header(&challenge, "WWW-Authenticate")[0]);
    let auth = authorization(who.auth_id, who.realm, who.password, &nonce);
    c.request(&register_text(
        c,
        who.number,
        cseq + 1,
        call_id,
        contact,
        expires,
        &auth,
    ))
    .expect("answer")
}

pub(crate) fn import_users(env: &Env, n: u32) -> Vec<(String, String)> {
    let mut csv = String::from("number,auth_id,password,email\n");
    let mut users = Vec::new();
    for i in 0..n {
        let number = format!("{}", 2000 + i);
        let auth = format!("user{number}x");
        csv.push_str(&format!("{number},{auth},{PASSWORD}{i},u{i}@example.com\n"));
        users.push((number, auth));
    }
    let file = env.path("users.csv");
    std::fs::write(&file, csv).expect("csv");
    env.ok(&["import", file.to_str().expect("utf8")]);
    users
}

#[test]
fn sipp_registers_100_extensions_and_none_with_wrong_passwords() {
    let env = Env::new();
    let users = import_users(&env, 100);
    let server = env.serve();
    let good: String = std::iter::once("SEQUENTIAL\n".to_string())
        .chain(users.iter().enumerate().map(|(i, (n, a))| {
            format!("{n};[authentication username={a} password={PASSWORD}{i}]\n")
        }))
        .collect();
    let run = sipp_from(
        "127.0.0.1",
        &env,
        "register_auth.xml",
        &good,
        server.sip,
        "u1",
        100,
        50,
    );
    assert_eq!(
        (run.successful, run.failed, run.code),
        (100, 0, 0),
        "{run:?}"
    );

    let wrong: String = std::iter::once("SEQUENTIAL\n".to_string())
        .chain(
            users
                .iter()
                .map(|(n, a)| format!("{n};[authentication username={a} password=wrong-{a}]\n")),
        )
        .collect();
    let run = sipp_from(
        "127.0.0.1",
        &env,
        "register_auth.xml",
        &wrong,
        server.sip,
        "u1",
        100,
        50,
    );
    assert_eq!((run.successful, run.failed), (0, 100), "{run:?}");
    assert_ne!(run.code, 0);

    // The registrations are visible to the CLI once written behind.
    eventually(
        "registration of 2000 visible",
        Duration::from_secs(20),
        || {
            env.json(&["ext", "show", "2000", "--json"])["registrations"]
                .as_array()
                .is_some_and(|r| r.len() == 1)
        },
    );
    assert_eq!(server.metric("sipward_register_ok_total"), 100);
    server.stop();
}

#[test]
fn sipp_registers_over_tcp() {
    let env = Env::new();
    let users = import_users(&env, 10);
    let server = env.serve();
    let csv: String = std::iter::once("SEQUENTIAL\n".to_string())
        .chain(users.iter().enumerate().map(|(i, (n, a))| {
            format!("{n};[authentication username={a} password={PASSWORD}{i}]\n")
        }))
        .collect();
    let run = sipp_from(
        "127.0.0.1",
        &env,
        "register_auth.xml",
        &csv,
        server.sip,
        "t1",
        10,
        10,
    );
    assert_eq!(
        (run.successful, run.failed, run.code),
        (10, 0, 0),
        "{run:?}"
    );
    eventually("TCP registration visible", Duration::from_secs(20), || {
        env.json(&["ext", "show", "2000", "--json"])["registrations"][0]["transport"] == "tcp"
    });
}

/// Replaces values that are fresh per answer (nonce, To tag) or per probe (Call-ID,
/// branch) with placeholders.
fn shape(msg: &str) -> Vec<String> {
    msg.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut l = l.to_owned();
            if l.starts_with("Call-ID:") {
                return "Call-ID: C".to_owned();
            }
            if let Some(i) = l.find("branch=") {
                let end = l[i..].find(';').map_or(l.len(), |e| i + e);
                l.replace_range(i..end, "branch=B");
            }
            if let Some(i) = l.find("nonce=\"") {
                let end = l[i + 7..].find('"').map_or(l.len(), |e| i + 7 + e);
                let nonce = &l[i + 7..end];
                assert!(
                    nonce.len() == 64 && nonce.bytes().all(|b| b.is_ascii_hexdigit()),
                    "nonce shape: {nonce}"
                );
                l.replace_range(i + 7..end, "N");
            }
            if let Some(i) = l.find(";tag=").filter(|_| l.starts_with("To:")) {
                l.truncate(i);
            }
            l
        })
        .collect()
}

#[test]
fn unknown_users_wrong_passwords_and_wrong_realms_get_identical_answers() {
    let env = Env::new();
    env.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "alice1001",
        "--password",
        PASSWORD,
    ]);
    let server = env.serve();
    let c = UdpClient::new(server.sip);
    // Positive control: the client's digest is right.
    let ok = register(
        &c,
        &ALICE,
        "ok1",
        1,
        Some("<sip:1001@127.0.0.1:5999>"),
        Some(120),
    );
    assert_eq!(status(&ok), 200, "{ok}");

    // Distinct Call-IDs (so no answer is a retransmission replay), same CSeq.
    let unknown = register(
        &c,
        &Login {
            number: "1001",
            auth_id: "mallory",
            realm: "sipward",
            password: PASSWORD,
        },
        "probe-a",
        1,
        None,
        None,
    );
    let wrong_pw = register(
        &c,
        &Login {
            number: "1001",
            auth_id: "alice1001",
            realm: "sipward",
            password: "not-the-password",
        },
        "probe-b",
        1,
        None,
        None,
    );
    let wrong_realm = register(
        &c,
        &Login {
            number: "1001",
            auth_id: "alice1001",
            realm: "elsewhere",
            password: PASSWORD,
        },
        "probe-c",
        1,
        None,
        None,
    );
    for (what, answer) in [
        ("unknown user", &unknown),
        ("wrong password", &wrong_pw),
        ("wrong realm", &wrong_realm),
    ] {
        assert_eq!(status(answer), 401, "{what}: {answer}");
    }
    assert_eq!(
        shape(&unknown),
        shape(&wrong_pw),
        "unknown user vs wrong password"
    );
    assert_eq!(
        shape(&unknown),
        shape(&wrong_realm),
        "unknown user vs wrong realm"
    );
    // Each answer carries a fresh nonce.
    let nonces: Vec<String> = [&unknown, &wrong_pw, &wrong_realm]
        .iter()
        .map(|a| nonce_of(header(a, "WWW-Authenticate")[0]))
        .collect();
    assert!(nonces[0] != nonces[1] && nonces[1] != nonces[2]);
}

#[test]
fn options_unknown_methods_and_malformed_requests() {
    let env = Env::new();
    let server = env.serve();
    assert_eq!(server.http_get("/healthz"), (200, "ok\n".to_string()));
    let c = UdpClient::new(server.sip);
    let base = |method: &str, cseq: &str| {
        format!(
            "{method} sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{method}{cseq}\r\nFrom: <sip:a@x>;tag=1\r\n\
             To: <sip:b@x>\r\nCall-ID: m-{method}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n",
            c.local
        )
    };
    let options = c.request(&base("OPTIONS", "1 OPTIONS")).expect("answer");
    assert_eq!(status(&options), 200);
    assert_eq!(header(&options, "Allow"), vec!["REGISTER, OPTIONS"]);
    assert!(header(&options, "To")[0].contains(";tag="), "{options}");
    assert_eq!(
        status(&c.request(&base("INVITE", "1 INVITE")).expect("answer")),
        407,
        "every caller authenticates first"
    );
    assert_eq!(
        status(&c.request(&base("BYE", "1 BYE")).expect("answer")),
        405
    );
    assert_eq!(
        status(&c.request(&base("FROB", "1 FROB")).expect("answer")),
        501
    );
    assert_eq!(
        status(&c.request(&base("OPTIONS", "x OPTIONS")).expect("answer")),
        400,
        "bad CSeq"
    );
    assert_eq!(
        status(&c.request(&base("OPTIONS", "1 REGISTER")).expect("answer")),
        400,
        "CSeq method mismatch"
    );
    // Unroutable garbage gets no answer, and the server keeps serving.
    assert_eq!(c.request("\x00\x01 not sip at all\r\n\r\n"), None);
    assert_eq!(
        c.request("OPTIONS sip:x SIP/2.0\r\nVia: nonsense\r\nCSeq: 1 OPTIONS\r\n\r\n"),
        None
    );
    // A retransmission (same branch) gets the same answer again.
    let again = c.request(&base("OPTIONS", "1 OPTIONS")).expect("answer");
    assert_eq!(
        again, options,
        "retransmission answered from the transaction"
    );
    assert!(server.metric("sipward_sip_parse_errors_total") >= 1);
    assert_eq!(server.metric("sipward_sip_retransmissions_total"), 1);
}

#[test]
fn a_password_change_takes_effect_without_restart() {
    // No grace window: it would keep the old password working from the phone's address
    // (the one this test registers from) after the change; `revoke` tests that window.
    let env = Env::with_config("[provisioning]\ngrace_secs = 0\n");
    env.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "alice1001",
        "--password",
        PASSWORD,
    ]);
    let server = env.serve();
    let c = UdpClient::new(server.sip);
    let first = register(
        &c,
        &ALICE,
        "pc1",
        1,
        Some("<sip:1001@127.0.0.1:5999>"),
        Some(120),
    );
    assert_eq!(status(&first), 200, "{first}");
    env.ok(&["ext", "update", "1001", "--password", "Nw7pQz4xTr9mLk2Vb"]);
    let mut cseq = 10;
    eventually("old password refused", Duration::from_secs(20), || {
        cseq += 2;
        status(&register(
            &c,
            &ALICE,
            "pc1",
            cseq,
            Some("<sip:1001@127.0.0.1:5999>"),
            Some(120),
        )) == 401
    });
    cseq += 2;
    let new = register(
        &c,
        &Login {
            number: "1001",
            auth_id: "alice1001",
            realm: "sipward",
            password: "Nw7pQz4xTr9mLk2Vb",
        },
        "pc1",
        cseq,
        Some("<sip:1001@127.0.0.1:5999>"),
        Some(120),
    );
    assert_eq!(status(&new), 200, "{new}");
}

#[test]
fn registrar_rules_and_bindings_survive_a_restart() {
    let env = Env::new();
    env.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "alice1001",
        "--password",
        PASSWORD,
    ]);
    let server = env.serve();
    let c = UdpClient::new(server.sip);
    let contact = Some("<sip:1001@127.0.0.1:5999>");
    let brief = register(&c, &ALICE, "r1", 1, contact, Some(30));
    assert_eq!(status(&brief), 423, "{brief}");
    assert_eq!(header(&brief, "Min-Expires"), vec!["60"]);
    let ok = register(&c, &ALICE, "r1", 3, contact, Some(300));
    assert_eq!(status(&ok), 200, "{ok}");
    assert_eq!(
        header(&ok, "Contact"),
        vec!["<sip:1001@127.0.0.1:5999>;expires=300"]
    );
    // Another phone on the same extension.
    let two = register(
        &c,
        &ALICE,
        "r2",
        1,
        Some("<sip:1001@127.0.0.1:6001>"),
        Some(600),
    );
    assert_eq!(header(&two, "Contact").len(), 2, "{two}");
    server.stop();

    let server = env.serve();
    let c = UdpClient::new(server.sip);
    let query = register(&c, &ALICE, "r3", 1, None, None);
    assert_eq!(status(&query), 200, "{query}");
    assert_eq!(
        header(&query, "Contact").len(),
        2,
        "both bindings survived the restart: {query}"
    );
    // Contact: * with Expires: 0 removes them all.
    let gone = register(&c, &ALICE, "r4", 1, Some("*"), Some(0));
    assert_eq!(status(&gone), 200, "{gone}");
    assert!(header(&gone, "Contact").is_empty(), "{gone}");
    let bad_star = register(&c, &ALICE, "r5", 1, Some("*"), Some(60));
    assert_eq!(status(&bad_star), 400);
    // Authenticated, but for someone else's extension.
    env.ok(&["ext", "add", "1002"]);
    eventually("1002 known to the server", Duration::from_secs(20), || {
        server.metric("sipward_directory_accounts") == 3
    });
    let other = register(
        &c,
        &Login {
            number: "1002",
            auth_id: "alice1001",
            realm: "sipward",
            password: PASSWORD,
        },
        "r6",
        1,
        contact,
        Some(300),
    );
    assert_eq!(status(&other), 403, "{other}");
}

#[test]
fn ports_already_in_use_are_refused_with_one_sentence() {
    let env = Env::new();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let taken = udp.local_addr().expect("addr").to_string();
    let err = env.fails(&["serve", "--sip", &taken, "--http", "127.0.0.1:0"], 2);
    assert!(
        err.contains(&format!("cannot listen for SIP on {taken}")) && err.contains("in use"),
        "{err}"
    );
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let taken = tcp.local_addr().expect("addr").to_string();
    let err = env.fails(&["serve", "--sip", "127.0.0.1:0", "--http", &taken], 2);
    assert!(
        err.contains(&format!("cannot serve HTTP on {taken}")),
        "{err}"
    );
    let err = env.fails(&["serve", "--sip", "not-an-address"], 2);
    assert!(err.contains("invalid value"), "{err}");
}
