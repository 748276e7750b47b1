//! Bans and the allow list: records managed with the CLI, enforced by the running
//! server before it parses anything, kept across restarts.

use std::time::Duration;

use crate::harness::Env;
use crate::peers::{UdpClient, eventually};

pub(crate) fn options(c: &UdpClient, n: u32) -> Option<String> {
    c.request(&format!(
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKg{n};rport\r\nFrom: <sip:a@x>;tag={n}\r\n\
         To: <sip:b@x>\r\nCall-ID: g{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        c.local
    ))
}

#[test]
fn a_ban_from_the_cli_silences_a_source_within_a_second_and_survives_a_restart() {
    let env = Env::new();
    let server = env.serve();
    let attacker = UdpClient::from_address("127.0.0.2", server.sip, Duration::from_millis(300));
    let office = UdpClient::from_address("127.0.0.1", server.sip, Duration::from_secs(2));
    let mut n = 0;
    let mut probe = |c: &UdpClient| {
        n += 1;
        options(c, n)
    };
    assert!(probe(&attacker).is_some(), "answered before the ban");

    let ban = env.json(&[
        "ban",
        "add",
        "127.0.0.2",
        "--reason",
        "scanning from a botnet",
        "--for",
        "1h",
        "--json",
    ]);
    assert_eq!(ban["reason"], "manual");
    assert_eq!(ban["detail"], "scanning from a botnet");
    eventually(
        "the running server drops the banned source",
        Duration::from_secs(20),
        || probe(&attacker).is_none(),
    );
    assert!(probe(&office).is_some(), "others are still answered");
    assert!(
        server.log().contains(r#""event":"ban""#) && server.log().contains(r#""origin":"store""#),
        "the CLI's ban is a security event of the server"
    );
    // Within a reload tick the kernel's socket filter drops the source: sipward no
    // longer even receives its packets (the user-space counter stands still).
    eventually(
        "the ban reaches the kernel's socket filter",
        Duration::from_secs(20),
        || server.metric("sipward_kernel_drop_sources") == 1,
    );
    let dropped = server.metric("sipward_dropped_banned_total");
    for _ in 0..20 {
        attacker.send("OPTIONS sip:127.0.0.1 SIP/2.0\r\n\r\n");
    }
    assert!(
        probe(&office).is_some(),
        "answered after the attacker's packets"
    );
    assert_eq!(
        server.metric("sipward_dropped_banned_total"),
        dropped,
        "dropped in the kernel"
    );
    let listed = env.json(&["ban", "list", "--json"]);
    assert_eq!(listed[0]["source"], "127.0.0.2");
    assert!(listed[0]["expires_at"].as_i64().expect("expiry") > 0);
    server.stop();

    let server = env.serve();
    let attacker = UdpClient::from_address("127.0.0.2", server.sip, Duration::from_millis(300));
    assert!(
        options(&attacker, 1000).is_none(),
        "the ban survived the restart"
    );
    env.ok(&["ban", "remove", "127.0.0.2"]);
    let mut m = 2000;
    eventually(
        "the lifted ban lets the source in again",
        Duration::from_secs(20),
        || {
            m += 1;
            options(&attacker, m).is_some()
        },
    );
    assert!(
        server
            .log()
            .contains(r#""event":"unban","source":"127.0.0.2""#),
        "{}",
        server.log()
    );
    let err = env.fails(&["ban", "remove", "127.0.0.2"], 2);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn allow_listed_networks_are_never_banned() {
    let env = Env::new();
    let added = env.json(&[
        "allow",
        "add",
        "127.0.0.9/8",
        "--note",
        "the office",
        "--json",
    ]);
    assert_eq!(added["network"], "127.0.0.0/8", "normalised");
    let err = env.fails(&["ban", "add", "127.0.0.2"], 2);
    assert!(err.contains("allow list (127.0.0.0/8)"), "{err}");
    assert_eq!(env.json(&["ban", "list", "--json"]), serde_json::json!([]));
    env.fails(&["allow", "add", "127.0.0.0/8"], 2);
    for (args, expect) in [
        (&["ban", "add", "not-an-ip"][..], "not an IP address"),
        (&["ban", "add", "192.0.2.1", "--for", "soon"], "--for"),
        (&["allow", "add", "10.0.0.0/40"], "CIDR"),
        (&["allow", "remove", "192.0.2.0/24"], "does not exist"),
    ] {
        let err = env.fails(args, 2);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    env.ok(&["allow", "remove", "127.0.0.0/8"]);
    env.ok(&["ban", "add", "127.0.0.2", "--for", "30m"]);
}

#[test]
fn repeated_wrong_passwords_ban_the_source_but_spoofed_failures_do_not() {
    use crate::registrar::{
        ALICE, Login, PASSWORD, authorization, header, register, register_text, status,
    };
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
    let guesser = UdpClient::from_address("127.0.0.2", server.sip, Duration::from_millis(500));
    let wrong = Login {
        password: "guess",
        ..ALICE
    };
    for i in 0..10 {
        let answer = register(&guesser, &wrong, &format!("guess{i}"), 1, None, None);
        assert_eq!(status(&answer), 401, "guess {i} is answered like any other");
    }
    // The tenth guess banned it: the next request gets no answer at all.
    let challenge = guesser.request(&register_text(&guesser, "1001", 1, "after", None, None, ""));
    assert_eq!(challenge, None, "banned after 10 failed guesses");
    let office = UdpClient::new(server.sip);
    let ok = register(
        &office,
        &ALICE,
        "office",
        1,
        Some("<sip:1001@127.0.0.1:5999>"),
        Some(120),
    );
    assert_eq!(status(&ok), 200, "the office keeps registering");

    // Failures that answer a nonce we never gave this source do not count: a spoofer
    // cannot get someone else banned.
    let spoofed = UdpClient::from_address("127.0.0.3", server.sip, Duration::from_millis(500));
    let stolen_nonce = "0".repeat(64);
    for i in 0..20 {
        let auth = authorization("alice1001", "sipward", "guess", &stolen_nonce);
        let answer = spoofed
            .request(&register_text(
                &spoofed,
                "1001",
                2,
                &format!("s{i}"),
                None,
                None,
                &auth,
            ))
            .expect("answered");
        assert_eq!(status(&answer), 401);
    }
    assert_eq!(
        status(&register(&spoofed, &ALICE, "still-in", 1, None, None)),
        200,
        "never banned"
    );

    let bans = env.json(&["ban", "list", "--json"]);
    let bans = bans.as_array().expect("array");
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["source"], "127.0.0.2");
    assert_eq!(bans[0]["reason"], "auth.failures");
    assert!(
        bans[0]["detail"]
            .as_str()
            .expect("detail")
            .starts_with("10 failed authentications within 10 minutes")
    );
    assert!(
        server.log().contains(r#""event":"ban""#) && server.log().contains("127.0.0.2"),
        "security event logged"
    );
    assert!(
        !server.log().contains("guess"),
        "no secret or guess in the log"
    );
    let _ = header;
}

/// A SIPVicious tool (Debian 12 names them `svmap`, newer packages `sipvicious_svmap`).
fn sipvicious(tool: &str) -> std::path::PathBuf {
    let names = [tool.to_string(), format!("sipvicious_{tool}")];
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .flat_map(|d| names.iter().map(move |n| std::path::Path::new(d).join(n)))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| crate::peers::require(&format!("sipvicious_{tool}"), "sipvicious"))
}

/// Runs a SIPVicious tool to its end and returns everything it printed.
pub(crate) fn run_sipvicious(tool: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(sipvicious(tool))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs svmap from 127.0.0.4 against the server.
fn scan(server: &crate::peers::Server) -> String {
    run_sipvicious(
        "svmap",
        &[
            "-b",
            "127.0.0.4",
            "-p",
            &server.sip.port().to_string(),
            "127.0.0.1",
        ],
    )
}

#[test]
fn svmap_finds_nothing_and_its_source_is_banned() {
    // Positive control: the same scan finds the server when scanner bans are off.
    let control = Env::new();
    control.ok(&["ext", "list"]);
    std::fs::write(
        control.data.join("sipward.toml"),
        "[guard]\nban_scanners = false\n",
    )
    .expect("config");
    let open = control.serve();
    let seen = scan(&open);
    let address = format!("127.0.0.1:{}", open.sip.port());
    assert!(
        seen.contains(&address),
        "svmap must find an undefended server:\n{seen}"
    );

    let env = Env::new();
    let server = env.serve();
    let seen = scan(&server);
    let address = format!("127.0.0.1:{}", server.sip.port());
    assert!(!seen.contains(&address), "svmap found the server:\n{seen}");
    let bans = env.json(&["ban", "list", "--json"]);
    assert_eq!(bans[0]["source"], "127.0.0.4", "{bans}");
    assert_eq!(bans[0]["reason"], "scanner.user_agent");
    assert!(
        bans[0]["detail"]
            .as_str()
            .expect("detail")
            .contains("SIPVicious")
    );
    let office = UdpClient::new(server.sip);
    assert!(
        options(&office, 1).is_some(),
        "everyone else is still answered"
    );
    assert_eq!(open.egress_denied("svmap, scanner bans off"), 0);
    assert_eq!(server.egress_denied("svmap, default guard"), 0);
}

/// Runs svcrack against extension 1001 (auth ID 1001), guessing 1000..1030: its range
/// starts with the user name itself, so a password equal to the number is its first guess.
pub(crate) fn crack(server: &crate::peers::Server) -> String {
    run_sipvicious(
        "svcrack",
        &[
            "-u",
            "1001",
            "-r",
            "1000-1030",
            "-p",
            &server.sip.port().to_string(),
            "127.0.0.1",
        ],
    )
}

fn cracked(output: &str) -> bool {
    output
        .lines()
        .any(|l| l.split('|').map(str::trim).collect::<Vec<_>>() == ["", "1001", "1001", ""])
}

/// A server with extension 1001 (auth ID 1001) and the given password and config.
fn target(config: &str, password: &str) -> (Env, crate::peers::Server) {
    let env = target_env(config, password);
    let server = env.serve();
    (env, server)
}

/// The data dir of [`target`], not yet served.
pub(crate) fn target_env(config: &str, password: &str) -> Env {
    let env = Env::with_config(config);
    env.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "1001",
        "--password",
        password,
    ]);
    env
}

#[test]
fn svcrack_finds_no_password_and_is_banned_within_10_guesses() {
    // Positive control: with the guard out of the way, svcrack finds a password that
    // equals the extension number.
    let (_control, open) = target(
        "[guard]\nban_scanners = false\nauth_failures = 100\nflood_requests = \"off\"\nweak_credentials = \"allow\"\n",
        "1001",
    );
    let seen = crack(&open);
    assert!(
        cracked(&seen),
        "svcrack must crack an undefended weak extension:\n{seen}"
    );
    assert_eq!(open.egress_denied("svcrack, guard off"), 0);

    // Default guard, same weak extension: its first request bans it (scanner User-Agent).
    let (env, server) = target("", "1001");
    let seen = crack(&server);
    assert!(!cracked(&seen), "{seen}");
    assert_eq!(
        env.json(&["ban", "list", "--json"])[0]["reason"],
        "scanner.user_agent"
    );

    // Without the scanner rule, failed authentications alone stop it within 10 guesses.
    let (env, server) = target("[guard]\nban_scanners = false\n", "Zq8xLmTr4wPyK7vB2");
    let seen = crack(&server);
    assert!(!cracked(&seen), "{seen}");
    let ban = &env.json(&["ban", "list", "--json"])[0];
    assert_eq!(ban["reason"], "auth.failures", "{ban}");
    // Guesses, not challenges: a slow answer makes svcrack send its unauthenticated
    // request again, and each of those is challenged without being a guess.
    let guesses = server.metric("sipward_auth_failures_total");
    assert!(
        (1..=10).contains(&guesses),
        "banned within 10 guesses: {guesses} wrong passwords checked"
    );
    // What it sends after the ban is dropped unread: in user space until the ban
    // reaches the kernel's socket filter (within 250 ms), in the kernel after that. A
    // slow svcrack may send nothing more before the filter is in place.
    assert!(
        server.metric("sipward_dropped_banned_total") > 0
            || server.metric("sipward_kernel_drop_sources") >= 1,
        "what it sent after the ban was dropped unread"
    );
    assert_eq!(server.egress_denied("svcrack, failures ban"), 0);
}

/// A threshold changed without touching the config file (CLI, API) is in force on the
/// running server within its store poll, checked by the file's own rules, logged, and
/// put back to the file's value by a reset.
#[test]
fn a_threshold_changed_from_the_cli_or_api_is_in_force_on_the_running_server() {
    use crate::registrar::{ALICE, Login, PASSWORD, register, register_text, status};
    let env = Env::with_config("[guard]\nauth_failures = 100\nflood_requests = \"off\"\n");
    env.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "alice1001",
        "--password",
        PASSWORD,
    ]);
    let token = env
        .ok(&["admin", "token", "create", "ops"])
        .trim()
        .to_owned();
    let r = env.run_with_stdin(
        &["admin", "passwd", "--password", "-"],
        &format!("{}\n", crate::console::ADMIN_PASSWORD),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let (_, cookie) = crate::console::login(&base, "127.0.0.1", crate::console::ADMIN_PASSWORD);
    let cookie = format!("Cookie: sipward_session={}", cookie.expect("session"));
    // The security page's accounts under attack, as one line of its table.
    let under_attack = || {
        let (code, page) = crate::console::curl(&["-H", &cookie, &format!("{base}/security")]);
        assert_eq!(code, 200, "{page}");
        let start = page.find(r#"<table id="targeted""#).expect("the table");
        let end = start + page[start..].find("</table>").expect("its end");
        page[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        under_attack().contains("No account had a failed login"),
        "control"
    );
    let guesser = UdpClient::from_address("127.0.0.2", server.sip, Duration::from_millis(400));
    let wrong = Login {
        password: "guess",
        ..ALICE
    };
    let mut guesses = 0;
    let mut guess = || {
        guesses += 1;
        register(&guesser, &wrong, &format!("t{guesses}"), 1, None, None)
    };
    for _ in 0..3 {
        assert_eq!(status(&guess()), 401, "the file's threshold (100) holds");
    }
    let table = under_attack();
    assert!(
        table.contains(r#"<a href="/extensions/1001">1001</a>"#)
            && table.contains("<td>alice1001</td><td>3</td><td>open</td>"),
        "the guessed account is under attack, 3 failures: {table}"
    );

    // The API refuses what the file would refuse, with the file's sentence, and changes
    // nothing (all or none).
    let api = format!("http://{}/api/v1/guard", server.http);
    let bearer = format!("Authorization: Bearer {token}");
    let patch = |body: &str| {
        crate::console::curl(&[
            "-X",
            "PATCH",
            "-H",
            &bearer,
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
            &api,
        ])
    };
    let (code, body) = patch(r#"{"ban_secs": 60, "auth_failures": 1000}"#);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("guard.auth_failures must be between 1 and 100"),
        "{body}"
    );
    let (code, body) = patch(r#"{"decoys": []}"#);
    assert_eq!(code, 400, "{body}");
    let shown = env.json(&["guard", "show", "--json"]);
    assert_eq!(shown["overrides"], serde_json::json!({}), "{shown}");

    // The CLI lowers it: the running server bans at the next failure, without a restart.
    env.ok(&["guard", "set", "auth_failures", "3"]);
    let (code, body) = patch(r#"{"ban_secs": 120}"#);
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(view["auth_failures"], 3);
    assert_eq!(view["ban_secs"], 120);
    let mut rounds = 0;
    eventually(
        "the guesser banned under the new threshold",
        Duration::from_secs(10),
        || {
            rounds += 1;
            assert_eq!(status(&guess()), 401);
            let probe = register_text(&guesser, "1001", 1, &format!("p{rounds}"), None, None, "");
            guesser.request(&probe).is_none()
        },
    );
    assert!(
        rounds < 30,
        "banned by the new threshold, not the old one ({rounds})"
    );

    let log = env.json(&["log", "--json"]);
    let changes: Vec<&str> = log
        .as_array()
        .expect("log")
        .iter()
        .filter(|e| e["action"] == "guard.changed")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert_eq!(changes, ["auth_failures = 3", "ban_secs = 120"]);

    // A weakening made outside the file is reported like one made in it.
    let weak_login_finding = |env: &Env| {
        env.json(&["audit", "--json"])["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["field"] == "guard.weak_credentials")
    };
    assert!(
        !weak_login_finding(&env),
        "control: the file's setting is no finding"
    );
    env.ok(&["guard", "set", "weak_credentials", "allow"]);
    assert!(weak_login_finding(&env), "the setting changed here is");
    env.ok(&["guard", "reset", "weak_credentials"]);

    env.ok(&["guard", "reset", "auth_failures"]);
    let shown = env.json(&["guard", "show", "--json"]);
    assert_eq!(shown["auth_failures"], 100, "{shown}");
    assert_eq!(shown["overrides"], serde_json::json!({"ban_secs": 120}));
    server.stop();
}
