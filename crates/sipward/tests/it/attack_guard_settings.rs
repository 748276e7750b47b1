//! Attacks on the guard's thresholds changed outside the config file (issue #22):
//! `PATCH /api/v1/guard`, the thresholds form on `/security`, `sipward guard set`, the
//! stored overrides a later config file makes invalid, the findings computed with the
//! policy in force, and the "accounts under attack" table. Every test talks to a real
//! `sipward serve` (or the CLI); a test named for a hole fails while the hole is there,
//! and each carries a control showing it can pass.

use std::time::Duration;

use serde_json::{Value, json};

use crate::console::{ADMIN_PASSWORD, curl, login};
use crate::harness::Env;
use crate::peers::{UdpClient, eventually};
use crate::registrar::{ALICE, Login, PASSWORD, register, register_text, status};

/// A data dir with `config`, extension 1001 (alice1001), the console administrator
/// `admin` on [`ADMIN_PASSWORD`]; returns it with an API token's `Authorization:` header.
fn office(config: &str) -> (Env, String) {
    let env = Env::with_config(config);
    env.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "alice1001",
        "--password",
        PASSWORD,
    ]);
    let r = env.run_with_stdin(
        &["admin", "passwd", "--password", "-"],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let token = env
        .ok(&["admin", "token", "create", "ops"])
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64, "{token}");
    (env, format!("Authorization: Bearer {token}"))
}

/// `PATCH /api/v1/guard` with `body` (given as a file: some bodies are large) and the
/// extra curl arguments.
fn patch(env: &Env, base: &str, extra: &[&str], body: &str) -> (u16, String) {
    let file = env.path("guard-patch.json");
    std::fs::write(&file, body).expect("body");
    let data = format!("@{}", file.display());
    let url = format!("{base}/api/v1/guard");
    let mut args = vec!["-X", "PATCH", "-H", "Content-Type: application/json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--data-binary", &data, &url]);
    curl(&args)
}

/// The settings stored over the file's `[guard]`, as the CLI shows them.
fn overrides(env: &Env) -> Value {
    env.json(&["guard", "show", "--json"])["overrides"].clone()
}

/// The audit log's `guard.changed` details, oldest first.
fn guard_changes(env: &Env) -> Vec<String> {
    let log = env.json(&["log", "--limit", "1000", "--json"]);
    let mut v: Vec<String> = log
        .as_array()
        .expect("log")
        .iter()
        .filter(|e| e["action"] == "guard.changed")
        .map(|e| e["detail"].as_str().unwrap_or("").to_owned())
        .collect();
    v.reverse();
    v
}

/// The `config.*` findings' fields `sipward audit` reports.
fn config_fields(env: &Env) -> Vec<String> {
    env.json(&["audit", "--json"])["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["subject"] == "config")
        .map(|f| f["field"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Sends SIGHUP and waits for the server's line `mark` to appear once more.
fn hangup(server: &crate::peers::Server, mark: &str) {
    let before = server.log().matches(mark).count();
    server.signal("HUP");
    eventually(mark, Duration::from_secs(10), || {
        server.log().matches(mark).count() > before
    });
}

#[test]
fn the_api_refuses_every_key_and_value_outside_the_editable_ones_all_or_none() {
    let (env, bearer) = office("");
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let auth = ["-H", bearer.as_str()];
    let many_keys = {
        let keys: Vec<String> = (0..50_000).map(|i| format!("\"k{i}\": {i}")).collect();
        format!("{{\"auth_failures\": 3, {}}}", keys.join(", "))
    };
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let deep_value = format!(
        "{{\"auth_failures\": {}3{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let huge = format!("{{\"auth_failures\": \"{}\"}}", "9".repeat(3 << 20));
    let bodies: Vec<String> = [
        // What stays in the file.
        r#"{"decoys": []}"#,
        r#"{"decoys": ["x"]}"#,
        r#"{"ipv4_prefix": 8}"#,
        r#"{"ipv6_prefix": 0}"#,
        r#"{"prefix_factor": 1}"#,
        r#"{"trusted_per_account": 1}"#,
        r#"{"refuse_ip_request_uri": true}"#,
        r#"{"gateway_limits": {"192.0.2.1": 50000}}"#,
        r#"{"gateway_limits": "192.0.2.1"}"#,
        r#"{"ipv4_prefix": null}"#,
        // Keys that only look like an editable one.
        r#"{"AUTH_FAILURES": 3}"#,
        r#"{"Auth_Failures": 3}"#,
        r#"{"auth-failures": 3}"#,
        r#"{"guard.auth_failures": 3}"#,
        r#"{"auth_failures\u0000": 3}"#,
        r#"{"auth\u200bfailures": 3}"#,
        "{\"\u{ff41}uth_failures\": 3}",
        r#"{"": 3}"#,
        // Values out of range or of the wrong type.
        r#"{"auth_failures": 1000}"#,
        r#"{"auth_failures": 0}"#,
        r#"{"auth_failures": -3}"#,
        r#"{"auth_failures": 3.0}"#,
        r#"{"auth_failures": 1e1}"#,
        r#"{"auth_failures": 18446744073709551616}"#,
        r#"{"auth_failures": "3; DROP TABLE meta"}"#,
        r#"{"auth_failures": [3]}"#,
        r#"{"auth_failures": {"n": 3}}"#,
        r#"{"auth_failures": "off"}"#,
        "{\"auth_failures\": \"\u{ff13}\"}",
        r#"{"auth_failures": true}"#,
        r#"{"flood_requests": 0}"#,
        r#"{"flood_requests": "OFF"}"#,
        r#"{"flood_requests": "Off"}"#,
        r#"{"extension_failures": "0"}"#,
        r#"{"extension_failures": "disabled"}"#,
        r#"{"ban_scanners": "off"}"#,
        r#"{"ban_scanners": 0}"#,
        r#"{"weak_credentials": "Allow"}"#,
        r#"{"weak_credentials": "ALLOW"}"#,
        r#"{"weak_credentials": "everyone"}"#,
        r#"{"ban_secs": 59}"#,
        r#"{"ban_secs": 9223372036854775807}"#,
        r#"{"silence_requests": 51}"#,
        r#"{"gateway_requests": 9}"#,
        r#"{"trusted_factor": 1001}"#,
        r#"{"extension_window_secs": 86401}"#,
        // One good key beside a bad one: all or none.
        r#"{"auth_failures": 3, "decoys": []}"#,
        r#"{"auth_failures": 3, "ban_secs": 1}"#,
        r#"{"ban_secs": 120, "zzz": 1}"#,
        r#"{"auth_failures": 3, "ipv4_prefix": null}"#,
        r#"{"weak_credentials": "allow", "flood_requests": "off", "trusted_factor": 0}"#,
        // Not an object of settings.
        "{}",
        "[]",
        "null",
        "3",
        r#""auth_failures""#,
        r#"{"auth_failures": 3"#,
        "",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([many_keys, deep, deep_value, huge])
    .collect();
    for body in &bodies {
        let (code, answer) = patch(&env, &base, &auth, body);
        let shown: String = body.chars().take(80).collect();
        assert!(
            (400..=413).contains(&code),
            "{shown}: refused, not {code}: {answer}"
        );
        assert!(answer.len() < 4096, "{shown}: a short answer");
    }
    assert_eq!(
        overrides(&env),
        json!({}),
        "a refused change changes nothing"
    );
    assert!(guard_changes(&env).is_empty(), "{:?}", guard_changes(&env));
    // The server is still answering and its guard holds the file's rules.
    let (code, view) = curl(&["-H", &bearer, &format!("{base}/api/v1/guard")]);
    assert_eq!(code, 200, "{view}");
    let view: Value = serde_json::from_str(&view).expect("json");
    assert_eq!(view["auth_failures"], 10);
    assert!(
        view["decoys"].as_array().is_some_and(|d| !d.is_empty()),
        "{view}"
    );

    // A duplicated key: whatever is taken, the log names the value in force.
    let (code, answer) = patch(
        &env,
        &base,
        &auth,
        r#"{"auth_failures": 1000, "auth_failures": 5}"#,
    );
    if code == 200 {
        let now = overrides(&env);
        assert_eq!(now, json!({"auth_failures": 5}), "{answer}");
        assert_eq!(guard_changes(&env), ["auth_failures = 5"]);
        env.ok(&["guard", "reset", "auth_failures"]);
    } else {
        assert_eq!(code, 400, "{answer}");
        assert_eq!(overrides(&env), json!({}));
    }

    // Control: the documented keys, a word and a switch, are taken and logged.
    let (code, answer) = patch(
        &env,
        &base,
        &auth,
        r#"{"auth_failures": 4, "flood_requests": "off", "ban_scanners": true}"#,
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        overrides(&env),
        json!({"auth_failures": 4, "flood_requests": "off", "ban_scanners": true})
    );
    let changes = guard_changes(&env);
    for d in [
        "auth_failures = 4",
        "flood_requests = \"off\"",
        "ban_scanners = true",
    ] {
        assert!(changes.iter().any(|c| c == d), "{d} logged: {changes:?}");
    }
    server.stop();
}

#[test]
fn a_guard_key_padded_with_whitespace_is_not_a_guard_key() {
    // The API documents `additionalProperties: false` over the editable keys, and the
    // brief's promise is that nothing outside them is taken. The registry trims each
    // key first: " auth_failures" (or with a newline, an ideographic space, a line
    // separator) is taken as `auth_failures`, and one body can then change one setting
    // twice under two spellings, each logged as its own change.
    let (env, bearer) = office("");
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let auth = ["-H", bearer.as_str()];
    let mut taken = Vec::new();
    for body in [
        r#"{" auth_failures": 3}"#,
        r#"{"auth_failures\n": 3}"#,
        r#"{"\u3000auth_failures": 3}"#,
        r#"{"auth_failures\u2028": 3}"#,
        r#"{"auth_failures": 3, "auth_failures ": 50}"#,
    ] {
        let (code, answer) = patch(&env, &base, &auth, body);
        if code != 400 {
            let shown = answer.get(..answer.len().min(60)).unwrap_or_default();
            taken.push(format!(
                "{body} -> {code} {shown}..., stored: {}",
                overrides(&env)
            ));
        }
        env.ok(&["guard", "reset", "auth_failures"]);
    }
    // Control: the key as documented is taken.
    let (code, answer) = patch(&env, &base, &auth, r#"{"auth_failures": 3}"#);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(overrides(&env), json!({"auth_failures": 3}));
    server.stop();
    assert!(
        taken.is_empty(),
        "keys outside the editable ones were taken: {taken:#?}"
    );
}

#[test]
fn only_an_authenticated_administrator_changes_a_threshold() {
    let (env, bearer) = office("");
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let (code, cookie) = login(&base, "127.0.0.1", ADMIN_PASSWORD);
    assert_eq!(code, 303);
    let cookie = format!("Cookie: sipward_session={}", cookie.expect("session"));
    let (code, page) = curl(&["-H", &cookie, &format!("{base}/security")]);
    assert_eq!(code, 200, "{page}");
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the page's CSRF token")
        .to_owned();
    assert!(page.contains(r#"name="g.auth_failures""#), "the form");
    let csrf_header = format!("X-CSRF-Token: {csrf}");
    let body = r#"{"auth_failures": 3}"#;
    let wrong_token = format!("Authorization: Bearer {}", "ab".repeat(32));
    for (what, extra) in [
        ("no credentials", vec![]),
        ("a made-up token", vec!["-H", wrong_token.as_str()]),
        ("a malformed token", vec!["-H", "Authorization: Bearer x"]),
        (
            "a session without X-CSRF-Token",
            vec!["-H", cookie.as_str()],
        ),
        (
            "a session with a wrong X-CSRF-Token",
            vec!["-H", cookie.as_str(), "-H", "X-CSRF-Token: 00"],
        ),
        (
            "a session from another origin",
            vec![
                "-H",
                cookie.as_str(),
                "-H",
                csrf_header.as_str(),
                "-H",
                "Origin: http://evil.example",
            ],
        ),
        (
            "a session, cross-site fetch",
            vec![
                "-H",
                cookie.as_str(),
                "-H",
                csrf_header.as_str(),
                "-H",
                "Sec-Fetch-Site: cross-site",
            ],
        ),
    ] {
        let (code, answer) = patch(&env, &base, &extra, body);
        assert!(
            code == 401 || code == 403,
            "{what}: refused, not {code}: {answer}"
        );
    }
    // The form: without its csrf field, with another's, from another origin.
    let form = format!("{base}/security/guard");
    let csrf_field = format!("csrf={csrf}");
    for (what, extra) in [
        ("no session", vec!["--data-urlencode", csrf_field.as_str()]),
        ("no csrf field", vec!["-H", cookie.as_str()]),
        (
            "a wrong csrf field",
            vec!["-H", cookie.as_str(), "--data-urlencode", "csrf=00"],
        ),
        (
            "another origin",
            vec![
                "-H",
                cookie.as_str(),
                "-H",
                "Origin: http://evil.example",
                "--data-urlencode",
                csrf_field.as_str(),
            ],
        ),
        (
            "a bearer token on the form",
            vec![
                "-H",
                bearer.as_str(),
                "--data-urlencode",
                csrf_field.as_str(),
            ],
        ),
    ] {
        let mut args = extra.clone();
        args.extend_from_slice(&["--data-urlencode", "g.auth_failures=3", &form]);
        // A refusal may be a 403 or a redirect to the login page: what counts is that
        // nothing changed.
        let (code, answer) = curl(&args);
        assert_eq!(overrides(&env), json!({}), "{what}: {code} {answer}");
    }
    assert_eq!(overrides(&env), json!({}), "nothing changed");
    assert!(guard_changes(&env).is_empty());

    // Control: the form with the session's csrf field from the console's own page.
    let (code, answer) = curl(&[
        "-H",
        &cookie,
        "--data-urlencode",
        &csrf_field,
        "--data-urlencode",
        "g.auth_failures=3",
        "--data-urlencode",
        "g.decoys=nobody",
        &form,
    ]);
    assert_eq!(code, 303, "{answer}");
    assert_eq!(overrides(&env), json!({"auth_failures": 3}));
    let log = env.json(&["log", "--json"]);
    let entry = log
        .as_array()
        .expect("log")
        .iter()
        .find(|e| e["action"] == "guard.changed")
        .expect("logged")
        .clone();
    assert_eq!(entry["detail"], "auth_failures = 3", "{entry}");
    assert!(
        entry["actor"].as_str().unwrap_or("").contains("admin"),
        "names the administrator: {entry}"
    );
    // And a value the file would refuse, through the form: refused, nothing changed.
    let (code, answer) = curl(&[
        "-H",
        &cookie,
        "--data-urlencode",
        &csrf_field,
        "--data-urlencode",
        "g.ban_secs=120",
        "--data-urlencode",
        "g.auth_failures=1000",
        &form,
    ]);
    assert_eq!(code, 400, "{answer}");
    assert_eq!(overrides(&env), json!({"auth_failures": 3}));
    server.stop();
}

#[test]
fn overrides_a_new_config_file_makes_invalid_leave_the_file_rules_and_say_so() {
    // Stored from the CLI over a file with flood limits of 100: a stricter login limit
    // and a silence threshold of 80. The file then lowers flood_requests to 60, below
    // the stored silence threshold: the override set no longer fits it.
    let (env, _) =
        office("[guard]\nauth_failures = 50\nflood_requests = 100\nsilence_requests = 60\n");
    env.ok(&["guard", "set", "auth_failures", "3"]);
    env.ok(&["guard", "set", "silence_requests", "80"]);
    let server = env.serve();
    std::fs::write(
        env.data.join("sipward.toml"),
        "[guard]\nauth_failures = 4\nflood_requests = 60\nsilence_requests = 30\n",
    )
    .expect("config");
    hangup(&server, "config reloaded");
    // The server runs on, with the file's rules (not none): the fourth wrong guess bans.
    let shown = env.json(&["guard", "show", "--json"]);
    assert!(shown["refused"].is_string(), "{shown}");
    assert_eq!(shown["auth_failures"], 4, "{shown}");
    let guesser = UdpClient::from_address("127.0.0.2", server.sip, Duration::from_millis(500));
    let wrong = Login {
        password: "guess",
        ..ALICE
    };
    for i in 0..4 {
        let answer = register(&guesser, &wrong, &format!("g{i}"), 1, None, None);
        assert_eq!(status(&answer), 401, "guess {i}");
    }
    let after = guesser.request(&register_text(&guesser, "1001", 1, "after", None, None, ""));
    assert_eq!(after, None, "banned by the file's threshold");

    // The hole: the administrator's stricter auth_failures = 3 was dropped with every
    // other override, and the server never says so. `guard_settings_refused` is only
    // emitted when the policy in force changes, but the reload (and the start) put the
    // file's policy in force *before* comparing, so it never differs.
    let mut log = server.log();
    server.stop();
    // A start on the same store and file: it starts, with the file's rules.
    let server = env.serve();
    let (code, _) = server.http_get("/login");
    assert_eq!(code, 200, "the restarted server answers");
    let fresh = UdpClient::from_address("127.0.0.4", server.sip, Duration::from_millis(500));
    for i in 0..4 {
        let answer = register(&fresh, &wrong, &format!("r{i}"), 1, None, None);
        assert_eq!(status(&answer), 401, "guess {i} after the restart");
    }
    let after = fresh.request(&register_text(&fresh, "1001", 1, "after", None, None, ""));
    assert_eq!(
        after, None,
        "banned by the file's threshold after the restart"
    );
    log.push_str(&server.log());
    server.stop();
    assert!(
        log.contains("guard_settings_refused"),
        "the dropped overrides are announced as a security event: {log}"
    );
}

#[test]
fn a_reload_announces_the_weakenings_in_force_not_the_file_alone() {
    // `serve` announces each weakened setting (`config_weakened`) with the guard policy
    // in force at start; at SIGHUP it announces `config.findings()`, the file's
    // `[guard]` alone, so a weakening stored from the console or CLI disappears from
    // the event stream at the first reload.
    let env = Env::with_config("[guard]\nban_scanners = false\n");
    env.ok(&["ext", "list"]);
    env.ok(&["guard", "set", "weak_credentials", "allow"]);
    let server = env.serve();
    let announced = |field: &str| {
        server
            .log()
            .lines()
            .filter(|l| l.contains(r#""event":"config_weakened""#) && l.contains(field))
            .count()
    };
    eventually("the start's announcements", Duration::from_secs(5), || {
        announced("guard.ban_scanners") == 1
    });
    assert_eq!(
        announced("guard.weak_credentials"),
        1,
        "control: at start the stored weakening is announced"
    );
    hangup(&server, "config reloaded");
    eventually("the reload's announcements", Duration::from_secs(5), || {
        announced("guard.ban_scanners") == 2
    });
    let weak = announced("guard.weak_credentials");
    server.stop();
    assert_eq!(
        weak, 2,
        "the reload announces the stored weak_credentials = allow too"
    );
}

#[test]
fn escalation_turned_off_outside_the_file_is_a_finding() {
    // A source banned `repeat_bans` times within `repeat_window_secs` is banned for a
    // week. Both are editable from the console: 100 bans (an hour each: at most 24 a
    // day) or a one-minute window mean no source is ever escalated, and the audit says
    // nothing, where every shortened ban is reported.
    let env = Env::new();
    env.ok(&["ext", "list"]);
    env.ok(&["guard", "set", "repeat_ban_secs", "60"]);
    assert!(
        config_fields(&env)
            .iter()
            .any(|f| f == "guard.repeat_ban_secs"),
        "control: a shortened escalated ban is a finding"
    );
    env.ok(&["guard", "reset", "repeat_ban_secs"]);
    assert!(
        config_fields(&env)
            .iter()
            .all(|f| !f.starts_with("guard.repeat"))
    );
    let mut missing = Vec::new();
    for (key, value) in [("repeat_bans", "100"), ("repeat_window_secs", "60")] {
        env.ok(&["guard", "set", key, value]);
        let fields = config_fields(&env);
        if !fields.iter().any(|f| f.starts_with("guard.repeat")) {
            missing.push(format!("{key} = {value} ({fields:?})"));
        }
        env.ok(&["guard", "reset", key]);
    }
    assert!(
        missing.is_empty(),
        "escalation turned off without a finding: {missing:?}"
    );
}

#[test]
fn made_up_user_names_never_reach_the_accounts_under_attack() {
    let (env, _) = office("[guard]\nauth_failures = 100\nflood_requests = \"off\"\n");
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let (code, cookie) = login(&base, "127.0.0.1", ADMIN_PASSWORD);
    assert_eq!(code, 303);
    let cookie = format!("Cookie: sipward_session={}", cookie.expect("session"));
    let table = || {
        let (code, page) = curl(&["-H", &cookie, &format!("{base}/security")]);
        assert_eq!(code, 200, "{page}");
        let start = page.find(r#"<table id="targeted""#).expect("the table");
        let end = start + page[start..].find("</table>").expect("its end");
        page[start..end].to_owned()
    };
    // Twenty made-up auth IDs, some hostile, each failing from a real source that
    // answers its own nonce (more than the table's ten rows).
    let stranger = UdpClient::from_address("127.0.0.3", server.sip, Duration::from_millis(500));
    let mut names: Vec<String> = (0..16).map(|i| format!("made-up-{i}")).collect();
    names.extend([
        "<script>alert(1)</script>".to_owned(),
        "ALICE1001".to_owned(),
        "alice1001 ".to_owned(),
        "1001".to_owned(),
    ]);
    for (i, name) in names.iter().enumerate() {
        let who = Login {
            auth_id: name,
            password: "guess",
            ..ALICE
        };
        let answer = register(&stranger, &who, &format!("m{i}"), 1, None, None);
        assert_eq!(status(&answer), 401, "{name}");
    }
    let t = table();
    assert!(t.contains("No account had a failed login"), "{t}");
    // Control: one wrong password for the real account shows, and only it.
    let answer = register(
        &stranger,
        &Login {
            password: "guess",
            ..ALICE
        },
        "real",
        1,
        None,
        None,
    );
    assert_eq!(status(&answer), 401);
    let t = table();
    assert!(t.contains("<td>alice1001</td><td>1</td>"), "{t}");
    assert_eq!(t.matches("<tr>").count(), 2, "the head and one row: {t}");
    assert!(!t.contains("<script"), "{t}");
    assert!(!t.contains("made-up"), "{t}");
    server.stop();
}
