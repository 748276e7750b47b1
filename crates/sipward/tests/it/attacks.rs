//! The guard against attacks that per-source bans alone do not stop: a botnet guessing
//! one password from many addresses, floods, decoys, enumeration with svwar, and all of
//! it at once while a real office keeps registering.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::guard::{crack, options, run_sipvicious, target_env};
use crate::harness::Env;
use crate::peers::{Server, UdpClient, eventually, eventually_or, free_port, require, sipp_from};
use crate::registrar::{
    Login, PASSWORD, authorization, header, import_users, nonce_of, register, register_text, status,
};

/// A botnet member: its own address in 127.1.0.0/16.
fn bot(i: u32, server: &Server) -> UdpClient {
    let ip = format!("127.1.{}.{}", i / 250, 1 + i % 250);
    UdpClient::from_address(&ip, server.sip, Duration::from_secs(2))
}

fn login<'a>(number: &'a str, auth_id: &'a str, password: &'a str) -> Login<'a> {
    Login {
        number,
        auth_id,
        realm: "sipward",
        password,
    }
}

/// Extension 1001 with a password equal to its number, 1002 with a strong one.
fn two_extensions(config: &str) -> (Env, Server) {
    let env = target_env(config, "1001");
    env.ok(&[
        "ext",
        "add",
        "1002",
        "--auth-id",
        "bob1002",
        "--password",
        PASSWORD,
    ]);
    let server = env.serve();
    (env, server)
}

#[test]
fn distributed_guessing_never_succeeds_and_the_office_keeps_working() {
    // Positive control: without the per-account rules, the first guess of the botnet
    // (the number itself) logs in.
    let (_control, open) =
        two_extensions("[guard]\nweak_credentials = \"allow\"\nextension_failures = \"off\"\n");
    let answer = register(
        &bot(0, &open),
        &login("1001", "1001", "1001"),
        "c",
        1,
        None,
        None,
    );
    assert_eq!(status(&answer), 200, "an undefended weak extension falls");

    let (env, server) = two_extensions("");
    let bob = login("1002", "bob1002", PASSWORD);
    let office = UdpClient::new(server.sip);
    let contact = Some("<sip:1002@127.0.0.1:5999>");
    assert_eq!(
        status(&register(&office, &bob, "office", 1, contact, Some(120))),
        200
    );

    // The weak extension: the right password first, then a dictionary; each guess from
    // a new address, each answering a nonce issued to that address.
    for i in 0..30 {
        let guess = if i == 0 {
            "1001".to_string()
        } else {
            format!("guess{i}")
        };
        let answer = register(
            &bot(i, &server),
            &login("1001", "1001", &guess),
            "w",
            1,
            None,
            None,
        );
        assert_eq!(status(&answer), 401, "guess {i} ({guess})");
    }
    // The strong one: 20 wrong guesses close it to strangers; then the right password
    // from a new address is answered like a wrong one.
    for i in 30..50 {
        let wrong = login("1002", "bob1002", "Summer2024!");
        assert_eq!(
            status(&register(&bot(i, &server), &wrong, "s", 1, None, None)),
            401
        );
    }
    let answer = register(&bot(50, &server), &bob, "s", 1, None, None);
    assert_eq!(status(&answer), 401, "the right password from a stranger");
    assert_eq!(
        status(&register(&office, &bob, "office", 3, contact, Some(120))),
        200,
        "the office still registers"
    );
    // An allow-listed network may use the weak extension (until it is regenerated).
    env.ok(&["allow", "add", "127.0.0.5/32", "--note", "front desk"]);
    let desk = UdpClient::from_address("127.0.0.5", server.sip, Duration::from_secs(2));
    let mut attempt = 0;
    eventually(
        "the allow list reaches the server",
        Duration::from_secs(20),
        || {
            attempt += 1;
            status(&register(
                &desk,
                &login("1001", "1001", "1001"),
                &format!("d{attempt}"),
                1,
                None,
                None,
            )) == 200
        },
    );

    assert_eq!(
        env.json(&["ban", "list", "--json"]),
        serde_json::json!([]),
        "no one banned"
    );
    assert!(server.metric("sipward_refused_credentials_total") >= 2);
    // Both accounts collected 20 failures from strangers.
    assert_eq!(server.metric("sipward_accounts_protected_total"), 2);
    // The event writer logs behind the answers: wait for both kinds of event.
    eventually_or(
        "protected-account and weak-refusal events logged",
        Duration::from_secs(30),
        || {
            let log = server.log();
            log.contains(r#""event":"account_protected""#)
                && log.contains("bob1002")
                && log.contains(r#""event":"weak_credentials_refused""#)
        },
        || server.log(),
    );
    let log = server.log();
    assert!(
        !log.contains(PASSWORD) && !log.contains("guess1"),
        "no secret or guess logged"
    );
}

#[test]
fn a_flood_is_silenced_then_banned_and_others_keep_being_answered() {
    let env = Env::new();
    let server = env.serve();
    let flooder = UdpClient::from_address("127.0.0.6", server.sip, Duration::from_millis(300));
    for i in 0..30 {
        assert!(options(&flooder, i).is_some(), "request {i} is answered");
    }
    assert!(options(&flooder, 30).is_none(), "over 30 in 10 s: silence");
    for i in 31..60 {
        flooder.send(&format!(
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKf{i}\r\n\r\n",
            flooder.local
        ));
    }
    eventually("the flood ban is recorded", Duration::from_secs(2), || {
        env.json(&["ban", "list", "--json"])[0]["reason"] == "flood.requests"
    });
    let ban = &env.json(&["ban", "list", "--json"])[0];
    assert_eq!(ban["source"], "127.0.0.6");
    let length =
        ban["expires_at"].as_i64().expect("expiry") - ban["last_seen"].as_i64().expect("seen");
    assert_eq!(length, 86_400, "banned for a day");
    assert!(
        options(&UdpClient::new(server.sip), 1).is_some(),
        "others are answered"
    );
    // A gateway's address is never limited: it carries a whole trunk's traffic.
    env.ok(&[
        "gateway",
        "add",
        "gw1",
        "--vendor",
        "patton",
        "--ext",
        "4001",
        "--auth-id",
        "gw1in",
        "--password",
        PASSWORD,
        "--host",
        "127.0.0.10",
    ]);
    let gateway = UdpClient::from_address("127.0.0.10", server.sip, Duration::from_secs(1));
    let mut n = 0;
    eventually(
        "100 requests in a row from the gateway are answered",
        Duration::from_secs(20),
        || {
            (0..100).all(|_| {
                n += 1;
                options(&gateway, 1000 + n).is_some()
            })
        },
    );
    assert_eq!(
        server.metric(r#"sipward_bans_total{reason="flood.requests"}"#),
        1
    );
    assert!(server.metric("sipward_dropped_silenced_total") >= 1);
    assert!(server.log().contains(r#""event":"silenced""#));
}

#[test]
fn a_decoy_login_bans_at_once_and_bare_ip_requests_can_be_refused() {
    let env = Env::with_config(
        "[sip]\ndomain = \"pbx.example.com\"\n[guard]\nrefuse_ip_request_uri = true\ndecoys = [\"100\", \"admin\"]\n",
    );
    let server = env.serve();
    let c = UdpClient::from_address("127.0.0.7", server.sip, Duration::from_millis(500));
    let to_ip = options(&c, 1);
    assert!(to_ip.is_none(), "addressed to the IP: dropped");
    let by_name = |n: u32| {
        c.request(&format!(
            "OPTIONS sip:pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKn{n};rport\r\nFrom: <sip:a@x>;tag={n}\r\n\
             To: <sip:pbx.example.com>\r\nCall-ID: n{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            c.local
        ))
    };
    assert!(by_name(2).is_some(), "addressed to the domain: answered");
    assert_eq!(server.metric("sipward_dropped_ip_uri_total"), 1);

    // A REGISTER gets the usual challenge; answering it as a decoy bans at once.
    let text = |cseq: u32, auth: &str| {
        register_text(&c, "100", cseq, "decoy", None, None, auth).replacen(
            "REGISTER sip:127.0.0.1",
            "REGISTER sip:pbx.example.com",
            1,
        )
    };
    let challenge = c.request(&text(1, "")).expect("challenged");
    assert_eq!(status(&challenge), 401);
    let nonce = nonce_of(header(&challenge, "WWW-Authenticate")[0]);
    let auth = authorization("100", "pbx.example.com", "100", &nonce);
    assert_eq!(c.request(&text(2, &auth)), None, "no answer");
    let ban = &env.json(&["ban", "list", "--json"])[0];
    assert_eq!(
        (ban["source"].as_str(), ban["reason"].as_str()),
        (Some("127.0.0.7"), Some("decoy.auth"))
    );
    assert!(by_name(3).is_none(), "banned");
    assert_eq!(
        server.metric(r#"sipward_bans_total{reason="decoy.auth"}"#),
        1
    );
}

/// The server with 100 extensions (2000-2099), five of them with passwords equal to
/// their numbers.
fn office_of_100(config: &str) -> (Env, Vec<(String, String)>, Server) {
    let env = Env::with_config(config);
    let users = import_users(&env, 100);
    for n in ["2000", "2001", "2002", "2003", "2004"] {
        env.ok(&["ext", "update", n, "--password", n]);
    }
    let server = env.serve();
    (env, users, server)
}

/// What svwar reports as found: the extensions in its result table.
fn enumerated(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            (cols.len() == 4 && cols[1].chars().all(|c| c.is_ascii_digit()) && !cols[1].is_empty())
                .then(|| cols[1].to_owned())
        })
        .collect()
}

/// Runs svwar over 995-1015 and 1995-2105 with `--force` (no sanity check first).
fn svwar(port: u16, method: &str, from: &str) -> String {
    run_sipvicious(
        "svwar",
        &[
            "-e",
            "995-1015,1995-2105",
            "-m",
            method,
            "--force",
            "-b",
            from,
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ],
    )
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn svwar_finds_no_extension() {
    // Positive control: a registrar that answers 401 for 1000-1009 and 404 otherwise.
    let port = free_port();
    let scenario = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sipp/leaky_registrar.xml");
    let scratch = Env::new();
    let dir = scratch.path("leaky");
    std::fs::create_dir_all(&dir).expect("dir");
    let _leaky = Killed(
        Command::new(require("sipp", "sip-tester"))
            .current_dir(&dir)
            .args([
                "-sf",
                scenario.to_str().expect("utf8"),
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .args(["-cp", &free_port().to_string(), "-nostdin"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp"),
    );
    let mut found = Vec::new();
    eventually(
        "svwar enumerates the leaky registrar",
        Duration::from_secs(60),
        || {
            found = enumerated(&svwar(port, "REGISTER", "127.0.0.8"));
            !found.is_empty()
        },
    );
    let expected: Vec<String> = (1000..1010).map(|n| n.to_string()).collect();
    assert_eq!(found, expected);

    // sipward with its scanner rule and flood limits off: enumeration resistance alone.
    let (env, _users, server) =
        office_of_100("[guard]\nban_scanners = false\nflood_requests = \"off\"\n");
    for method in ["REGISTER", "INVITE"] {
        let out = svwar(server.sip.port(), method, "127.0.0.8");
        assert_eq!(enumerated(&out), Vec::<String>::new(), "{method}:\n{out}");
    }
    assert_eq!(env.json(&["ban", "list", "--json"]), serde_json::json!([]));
    // sipward only answered: it never tried to send anything the egress rule refuses.
    assert_eq!(server.egress_denied("svwar, guard off"), 0);
    // With the default guard, svwar is banned at its first request.
    let (env, _users, server) = office_of_100("");
    let out = svwar(server.sip.port(), "REGISTER", "127.0.0.8");
    assert_eq!(enumerated(&out), Vec::<String>::new(), "{out}");
    assert_eq!(
        env.json(&["ban", "list", "--json"])[0]["reason"],
        "scanner.user_agent"
    );
    assert_eq!(server.egress_denied("svwar, default guard"), 0);
}

#[test]
fn sipp_keeps_registering_while_the_tools_attack() {
    let (env, users, server) = office_of_100("");
    // The office registers its 95 strong extensions (the five weak ones may log in only
    // from an allow-listed network or where they are registered already).
    let strong: String = std::iter::once("SEQUENTIAL\n".to_string())
        .chain(users.iter().enumerate().skip(5).map(|(i, (n, a))| {
            format!("{n};[authentication username={a} password={PASSWORD}{i}]\n")
        }))
        .collect();
    let flooder = UdpClient::from_address("127.0.0.9", server.sip, Duration::from_millis(10));
    let run = std::thread::scope(|s| {
        let office = s.spawn(|| {
            sipp_from(
                "127.0.0.3",
                &env,
                "register_auth.xml",
                &strong,
                server.sip,
                "u1",
                95,
                20,
            )
        });
        let war = s.spawn(|| svwar(server.sip.port(), "REGISTER", "127.0.0.8"));
        let cracked = s.spawn(|| crack(&server));
        for i in 0..2000 {
            flooder.send(&format!(
                "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKx{i}\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: x{i}\r\nCSeq: 1 OPTIONS\r\n\r\n",
                flooder.local
            ));
        }
        assert!(enumerated(&war.join().expect("svwar")).is_empty());
        let _ = cracked.join().expect("svcrack");
        office.join().expect("sipp")
    });
    assert_eq!((run.successful, run.failed), (95, 0), "{run:?}");
    let bans = env.json(&["ban", "list", "--json"]);
    let mut banned: Vec<&str> = bans
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|b| b["source"].as_str())
        .collect();
    banned.sort_unstable();
    // svwar and svcrack send from 127.0.0.1 whatever `-b` says (SIPVicious 0.3.x).
    assert_eq!(banned, ["127.0.0.1", "127.0.0.9"], "{bans}");
    assert_eq!(server.egress_denied("svwar + svcrack + flood + SIPp"), 0);
}
