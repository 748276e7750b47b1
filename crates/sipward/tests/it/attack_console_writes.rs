//! Attacks on the console's and the API's writes (issue #22) from outside: the login
//! door, sessions, CSRF and origin checks, the validation the console shares with the
//! CLI, the audit log both write, and the cached audit. Every test talks to a real
//! `sipward serve` with curl; a test named for a hole fails while the hole is there,
//! and each carries a control showing it can pass.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::console::{ADMIN_PASSWORD, curl, login};
use crate::harness::Env;
use crate::peers::require;

/// A data dir with the console administrator `admin` on [`ADMIN_PASSWORD`].
fn with_admin() -> Env {
    let env = Env::new();
    env.ok(&["ext", "list"]);
    let r = env.run_with_stdin(
        &["admin", "passwd", "--password", "-"],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    env
}

/// A new API token named `name`.
fn token(env: &Env, name: &str) -> String {
    let t = env
        .ok(&["admin", "token", "create", name])
        .trim()
        .to_owned();
    assert_eq!(t.len(), 64, "{t}");
    format!("Authorization: Bearer {t}")
}

/// A logged-in browser: its `Cookie:` header and the session's CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

fn browser(base: &str, ip: &str) -> Browser {
    let (code, cookie) = login(base, ip, ADMIN_PASSWORD);
    assert_eq!(code, 303, "login from {ip}");
    let cookie = format!(
        "Cookie: sipward_session={}",
        cookie.expect("session cookie")
    );
    let (code, page) = curl(&["-H", &cookie, &format!("{base}/security")]);
    assert_eq!(code, 200, "{page}");
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the page's CSRF token")
        .to_owned();
    Browser { cookie, csrf }
}

/// The audit log as the CLI prints it.
fn log_entries(env: &Env) -> Vec<Value> {
    env.json(&["log", "--limit", "1000", "--json"])
        .as_array()
        .expect("log")
        .clone()
}

fn actions(log: &[Value]) -> Vec<(String, String)> {
    log.iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_owned(),
                e["subject"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// `{"error": ...}` of an API answer.
fn api_error(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("not an error: {body}"))
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// A login POSTed from `ip` with `body` (already form-encoded) as a file: the status.
fn post_login_file(base: &str, ip: &str, body: &std::path::Path) -> u16 {
    let out = Command::new(require("curl", "curl"))
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            ip,
        ])
        .args([
            "-H",
            "Content-Type: application/x-www-form-urlencoded",
            "--data-binary",
        ])
        .arg(format!("@{}", body.display()))
        .arg(format!("{base}/login"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// 20 wrong logins from 4 sources (5 each: under the per-source lockout), two at a
/// time (the argon2 slots), each carrying 1.9 MB in the field `big` (`name` or
/// `password`) with a new value every time.
fn big_logins(env: &Env, base: &str, big: &str, first_ip: usize) {
    let filler = "A".repeat(1_900_000);
    let run = |part: usize| {
        let body = env.path(&format!("{big}{part}.form"));
        for s in 0..2 {
            let ip = format!("127.0.0.{}", first_ip + part * 2 + s);
            for i in 0..5 {
                let mut f = std::fs::File::create(&body).expect("body");
                let value = format!("v{part}x{s}x{i}{filler}");
                let form = if big == "name" {
                    format!("name={value}&password=wrong&code=")
                } else {
                    format!("name=admin{part}{s}{i}&password={value}&code=")
                };
                f.write_all(form.as_bytes()).expect("write");
                drop(f);
                let code = post_login_file(base, &ip, &body);
                assert!(code == 401 || code == 429, "login answered {code}");
            }
        }
    };
    std::thread::scope(|scope| {
        scope.spawn(|| run(0));
        scope.spawn(|| run(1));
    });
}

/// The login lockout keeps a failure tally per account name, keyed by the name exactly
/// as typed, with no bound on its length: every wrong login with a new name of up to
/// the 2 MB form limit leaves that name in memory for the lockout window. Anyone who
/// can reach the login page from many addresses (IPv6 sources are counted per /64)
/// makes the server hold megabytes per request, unauthenticated.
#[test]
fn login_names_cannot_make_the_lockout_hold_megabytes() {
    let env = with_admin();
    let server = env.serve();
    let base = format!("http://{}", server.http);
    // Control: the same logins with the 1.9 MB in the password, which nothing keeps;
    // the memory the bodies, the argon2 checks and the answers need is reached here.
    // Run twice: the allocator settles its thresholds for large bodies on the first
    // (glibc raises its mmap threshold as such blocks are freed, so later ones come
    // from arenas it keeps), and the second is the level the attack is held to.
    big_logins(&env, &base, "password", 10);
    big_logins(&env, &base, "password", 70);
    let before = rss_kib(server.pid());
    // The attack: the 1.9 MB in the name.
    big_logins(&env, &base, "name", 40);
    let after = rss_kib(server.pid());
    // The server still answers the real administrator.
    let (code, _) = login(&base, "127.0.0.90", ADMIN_PASSWORD);
    server.stop();
    assert_eq!(code, 303, "the administrator logs in");
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 16,
        "20 wrong logins with 1.9 MB names grew the server by {grown_mib} MiB more than \
         the same logins with 1.9 MB passwords ({before} KiB -> {after} KiB): the lockout \
         keeps every name as typed"
    );
}

/// `sipward admin totp NAME` turns a second factor on, the step an administrator takes
/// when a password may have leaked; a new password ends every session of the account
/// (control), but turning TOTP on does not: a session opened with the password alone
/// keeps working.
#[test]
fn turning_totp_on_ends_the_sessions_the_password_alone_opened() {
    let env = with_admin();
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let api = format!("{base}/api/v1/extensions");
    // Control: a session works, and a new password ends it.
    let first = browser(&base, "127.0.0.61");
    assert_eq!(curl(&["-H", &first.cookie, &api]).0, 200);
    let renewed = "Console-Renewed-Secret-93";
    let r = env.run_with_stdin(
        &["admin", "passwd", "--password", "-"],
        &format!("{renewed}\n"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        curl(&["-H", &first.cookie, &api]).0,
        401,
        "control: a new password ends the session"
    );
    // The attack: a session from the password alone, then TOTP turned on.
    let (code, cookie) = login(&base, "127.0.0.62", renewed);
    assert_eq!(code, 303);
    let cookie = format!("Cookie: sipward_session={}", cookie.expect("cookie"));
    assert_eq!(curl(&["-H", &cookie, &api]).0, 200);
    env.ok(&["admin", "totp", "admin"]);
    // A new login needs the code now (the factor is in force)...
    assert_eq!(login(&base, "127.0.0.63", renewed).0, 401);
    // ...but the old session is still let in.
    let (code, _) = curl(&["-H", &cookie, &api]);
    server.stop();
    assert_eq!(
        code, 401,
        "a session opened with the password alone still works after `sipward admin totp admin`"
    );
}

/// The CLI writes the audit log for the changes it makes (`ext add` logs `ext.added`:
/// the control), but Re-Generate and import change credentials and accounts without a
/// line in it, while the console and the API log `ext.regenerated` for the same change.
#[test]
fn cli_regenerate_and_import_are_in_the_audit_log() {
    let env = Env::new();
    env.ok(&["ext", "add", "4001", "--password", "4001", "--pin", "4001"]);
    let log = actions(&log_entries(&env));
    assert!(
        log.contains(&("ext.added".into(), "ext:4001".into())),
        "control: {log:?}"
    );
    env.ok(&["ext", "regenerate", "4001", "--no-email"]);
    let csv = env.path("staff.csv");
    std::fs::write(
        &csv,
        "number,name,email,kind,password,pin,sip_id,auth_id,mac,model\n\
         4101,Ann Smith,ann@example.com,user,,,,,,\n",
    )
    .expect("csv");
    env.ok(&["import", csv.to_str().expect("utf8")]);
    assert_eq!(
        env.json(&["ext", "show", "4101", "--json"])["number"],
        "4101"
    );
    let log = actions(&log_entries(&env));
    let mut missing = Vec::new();
    for want in [("ext.regenerated", "ext:4001"), ("ext.added", "ext:4101")] {
        if !log.contains(&(want.0.into(), want.1.into())) {
            missing.push(want);
        }
    }
    assert!(
        missing.is_empty(),
        "not in the audit log: {missing:?}\nlog: {log:?}"
    );
}

/// An allow-list entry is a network that is never banned, and from which a weak
/// account may still log in (`weak_credentials = "trusted-only"`) and distributed
/// guessing is not held against. `0.0.0.0/0` or `::/0` turns all of that off for the
/// whole internet, yet the CLI, the API and the console take it as readily as an
/// office network (the control), and no audit or advice finding says so.
#[test]
fn an_allow_list_entry_cannot_cover_every_address() {
    let env = with_admin();
    let bearer = token(&env, "ops");
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let b = browser(&base, "127.0.0.1");
    let api_allow = |network: &str| {
        let body = serde_json::json!({ "network": network, "note": "test" }).to_string();
        curl(&[
            "-X",
            "POST",
            "-H",
            &bearer,
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
            &format!("{base}/api/v1/allow"),
        ])
    };
    let page_allow = |network: &str| {
        curl(&[
            "-X",
            "POST",
            "-H",
            &b.cookie,
            "--data-urlencode",
            &format!("csrf={}", b.csrf),
            "--data-urlencode",
            &format!("network={network}"),
            "--data-urlencode",
            "note=test",
            &format!("{base}/security/allow"),
        ])
    };
    // Controls: an office network each way.
    env.ok(&["allow", "add", "192.0.2.0/24"]);
    assert_eq!(api_allow("198.51.100.0/24").0, 201);
    assert_eq!(page_allow("203.0.113.0/24").0, 303);
    let mut taken = Vec::new();
    for net in ["0.0.0.0/0", "::/0"] {
        let cli = env.run(&["allow", "add", net]);
        if cli.code != 2 {
            taken.push(format!("CLI `allow add {net}` exit {}", cli.code));
            env.ok(&["allow", "remove", net]);
        }
        let (code, body) = api_allow(net);
        if code != 400 {
            taken.push(format!("API {net} -> {code}"));
            env.ok(&["allow", "remove", net]);
        } else if !cli.stderr.contains(&api_error(&body)) {
            taken.push(format!(
                "API {net}: {body} is not the CLI's sentence {}",
                cli.stderr
            ));
        }
        let (code, _) = page_allow(net);
        if code != 400 {
            taken.push(format!("console {net} -> {code}"));
            env.ok(&["allow", "remove", net]);
        }
    }
    server.stop();
    assert!(
        taken.is_empty(),
        "an allow-list entry covering every address was taken: {taken:#?}"
    );
}

/// Every field of every audit-log entry is one line of text, and an allow or ban entry
/// names the network as stored (what the CLI's `allow add` writes: the control). The
/// API writes the value as sent: `192.0.2.77/24` for the stored `192.0.2.0/24`, and a
/// trailing line break or tab, which the parsers trim, goes into the log as is; the
/// CLI's actor takes `$USER` with its control characters.
#[test]
fn audit_log_entries_are_one_line_and_name_what_was_stored() {
    let env = with_admin();
    let bearer = token(&env, "ops");
    let server = env.serve();
    let api = |method: &str, path: &str, body: &str| {
        let url = format!("http://{}/api/v1{path}", server.http);
        let mut args = vec!["-X", method, "-H", &bearer];
        if !body.is_empty() {
            args.extend(["-H", "Content-Type: application/json", "--data", body]);
        }
        args.push(&url);
        curl(&args)
    };
    // Control: the CLI logs the stored network.
    env.ok(&["allow", "add", "198.51.100.9/24"]);
    // The API, with values its parsers accept after trimming or truncating.
    assert_eq!(
        api("POST", "/allow", r#"{"network": "192.0.2.77/24"}"#).0,
        201
    );
    assert_eq!(
        api("POST", "/allow", r#"{"network": "203.0.113.0/24\n"}"#).0,
        201
    );
    assert_eq!(
        api(
            "POST",
            "/bans",
            r#"{"source": "198.18.0.7", "reason": "seen scanning\n\t"}"#
        )
        .0,
        201
    );
    assert_eq!(api("DELETE", "/bans/198.18.0.7%0A", "").0, 204);
    // The CLI run by a login whose name carries a line break.
    let out = Command::new(env!("CARGO_BIN_EXE_sipward"))
        .arg("--data")
        .arg(&env.data)
        .args(["ban", "add", "198.18.0.8"])
        .env_remove("SIPWARD_DATA")
        .env_remove("SIPWARD_CONFIG")
        .env_remove("SUDO_USER")
        .env("USER", "eve\n2026-11-30 admin root (console) ext.removed")
        .output()
        .expect("sipward");
    assert!(out.status.success(), "{out:?}");
    server.stop();
    let log = log_entries(&env);
    let mut bad = Vec::new();
    for e in &log {
        for k in ["actor", "action", "subject", "detail"] {
            let v = e[k].as_str().unwrap_or("");
            if v.chars().any(char::is_control) {
                bad.push(format!("{k} {v:?} of {}", e["action"]));
            }
        }
    }
    let pairs = actions(&log);
    assert!(
        pairs.contains(&("allow.added".into(), "198.51.100.0/24".into())),
        "control: the CLI logs the stored network: {pairs:?}"
    );
    for want in ["192.0.2.0/24", "203.0.113.0/24"] {
        if !pairs.contains(&("allow.added".into(), want.into())) {
            bad.push(format!("no allow.added {want} (stored as such): {pairs:?}"));
        }
    }
    assert!(bad.is_empty(), "audit log entries: {bad:#?}");
}

/// Cross-site, malformed and disguised writes against the console's forms and the
/// API, with a live session in the cookie jar: none changes anything. The control at
/// the end makes the same changes the console's own way.
#[test]
fn cross_site_and_disguised_writes_change_nothing() {
    let env = with_admin();
    let bearer = token(&env, "ops");
    env.ok(&["ban", "add", "198.51.100.5", "--reason", "victim"]);
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let b = browser(&base, "127.0.0.1");
    let csrf_field = format!("csrf={}", b.csrf);
    let csrf_header = format!("X-CSRF-Token: {}", b.csrf);
    let ban_form = format!("{base}/security/ban");
    let lift_url = format!("{base}/api/v1/bans/198.51.100.5");
    let mut changed = Vec::new();
    let mut attempt = |what: &str, args: &[&str]| {
        let (code, body) = curl(args);
        // Done (2xx) or redirected back as a form that was taken (303).
        if (200..400).contains(&code) {
            changed.push(format!(
                "{what}: {code} {}",
                body.chars().take(80).collect::<String>()
            ));
        }
    };
    // The console's form: no token, a token with another site's origin, a cross-site
    // fetch, a sibling site, an opaque origin, text/plain and multipart bodies.
    attempt(
        "form without token",
        &["-H", &b.cookie, "--data", "source=198.51.100.66", &ban_form],
    );
    for headers in [
        ["Origin: http://evil.example", "X-Dummy: 1"],
        ["Sec-Fetch-Site: cross-site", "X-Dummy: 1"],
        ["Sec-Fetch-Site: same-site", "X-Dummy: 1"],
        ["Origin: null", "X-Dummy: 1"],
        ["Origin: http://evil.example", "Sec-Fetch-Site: same-origin"],
    ] {
        attempt(
            &format!("form with {headers:?}"),
            &[
                "-H",
                &b.cookie,
                "-H",
                headers[0],
                "-H",
                headers[1],
                "--data-urlencode",
                &csrf_field,
                "--data",
                "source=198.51.100.66",
                &ban_form,
            ],
        );
    }
    let plain = format!("{csrf_field}&source=198.51.100.66");
    attempt(
        "form as text/plain",
        &[
            "-H",
            &b.cookie,
            "-H",
            "Content-Type: text/plain",
            "--data",
            &plain,
            &ban_form,
        ],
    );
    attempt(
        "form as multipart",
        &[
            "-H",
            &b.cookie,
            "-F",
            &csrf_field,
            "-F",
            "source=198.51.100.66",
            &ban_form,
        ],
    );
    // The API with the session: no header token, another origin, a text/plain body.
    let ban_json = r#"{"source": "198.51.100.67"}"#;
    let api_bans = format!("{base}/api/v1/bans");
    attempt(
        "API without X-CSRF-Token",
        &[
            "-H",
            &b.cookie,
            "-H",
            "Content-Type: application/json",
            "--data",
            ban_json,
            &api_bans,
        ],
    );
    attempt(
        "API with a form's csrf field",
        &[
            "-H",
            &b.cookie,
            "--data-urlencode",
            &csrf_field,
            &format!("{base}/api/v1/extensions/regenerate"),
        ],
    );
    attempt(
        "API from another origin",
        &[
            "-H",
            &b.cookie,
            "-H",
            &csrf_header,
            "-H",
            "Origin: http://evil.example",
            "-H",
            "Content-Type: application/json",
            "--data",
            ban_json,
            &api_bans,
        ],
    );
    attempt(
        "API text/plain",
        &[
            "-H",
            &b.cookie,
            "-H",
            "Content-Type: text/plain",
            "--data",
            ban_json,
            &api_bans,
        ],
    );
    // Method overrides and other methods on the lift.
    for (method, extra) in [
        ("POST", "X-HTTP-Method-Override: DELETE"),
        ("POST", "X-Method-Override: DELETE"),
        ("GET", "X-HTTP-Method: DELETE"),
        ("HEAD", "X-Dummy: 1"),
        ("OPTIONS", "X-Dummy: 1"),
        ("PUT", "X-Dummy: 1"),
        ("PATCH", "X-Dummy: 1"),
    ] {
        let mut args = vec!["-X", method, "-H", &b.cookie, "-H", extra];
        if method == "HEAD" {
            args = vec!["-I", "-H", &b.cookie];
        }
        args.push(&lift_url);
        attempt(&format!("{method} with {extra}"), &args);
    }
    // Path tricks on the lift, without any credential and with the session alone.
    let http = server.http.to_string();
    for path in [
        "//api/v1/bans/198.51.100.5",
        "/api/v1/bans/198.51.100.5/",
        "/api/v1//bans/198.51.100.5",
        "/api/v1/%62ans/198.51.100.5",
        "/api/v1/x/%2e%2e/bans/198.51.100.5",
        "/api/v1/x/../bans/198.51.100.5",
        "/API/v1/bans/198.51.100.5",
        "/api/v1/bans/198.51.100.5%00",
        "/api/v1/bans/198.51.100.5;x",
    ] {
        let url = format!("http://{http}{path}");
        attempt(
            &format!("DELETE {path}"),
            &["--path-as-is", "-X", "DELETE", &url],
        );
        attempt(
            &format!("DELETE {path} with the session"),
            &["--path-as-is", "-X", "DELETE", "-H", &b.cookie, &url],
        );
    }
    // A page of another origin cannot even ask: no CORS grant for any origin.
    let out = Command::new(require("curl", "curl"))
        .args(["-s", "-D", "-", "-o", "/dev/null", "-X", "OPTIONS"])
        .args(["-H", "Origin: http://evil.example"])
        .args(["-H", "Access-Control-Request-Method: DELETE"])
        .args(["-H", "Access-Control-Request-Headers: authorization"])
        .arg(&lift_url)
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    if head.contains("access-control-allow") {
        changed.push(format!("a CORS preflight was granted: {head}"));
    }
    let bans = env.json(&["ban", "list", "--json"]).to_string();
    for s in ["198.51.100.66", "198.51.100.67"] {
        if bans.contains(s) {
            changed.push(format!("{s} was banned"));
        }
    }
    if !bans.contains("198.51.100.5") {
        changed.push("the ban of 198.51.100.5 was lifted".into());
    }
    // Control: the console's own form and the API do it.
    let (code, _) = curl(&[
        "-H",
        &b.cookie,
        "-H",
        "Sec-Fetch-Site: same-origin",
        "-H",
        &format!("Origin: http://{http}"),
        "--data-urlencode",
        &csrf_field,
        "--data",
        "source=198.51.100.66",
        &ban_form,
    ]);
    assert_eq!(code, 303, "control: the console's own form bans");
    assert_eq!(
        curl(&[
            "-X",
            "DELETE",
            "-H",
            &b.cookie,
            "-H",
            &csrf_header,
            &lift_url
        ])
        .0,
        204,
        "control: the session with its token lifts"
    );
    assert_eq!(
        curl(&[
            "-X",
            "DELETE",
            "-H",
            &bearer,
            &format!("{api_bans}/198.51.100.66")
        ])
        .0,
        204,
        "control: the token lifts"
    );
    server.stop();
    assert!(changed.is_empty(), "changed or answered: {changed:#?}");
}

/// The cached audit (one per registry version) follows changes the CLI makes in
/// another process while the console runs: an extension or a gateway made weak shows
/// weak at the next request, in the API, the list page and the dashboard count.
#[test]
fn the_cached_audit_never_shows_a_stale_strong_after_a_cli_change() {
    let env = with_admin();
    let bearer = token(&env, "ops");
    env.ok(&["ext", "add", "4100", "--name", "Lobby"]);
    env.ok(&[
        "gateway",
        "add",
        "gw1",
        "--vendor",
        "generic",
        "--ext",
        "2900",
        "--auth-id",
        "gwlogin7",
        "--password",
        "Gateway-Strong-Secret-51",
        "--host",
        "127.0.0.7",
    ]);
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let b = browser(&base, "127.0.0.1");
    let weak = |path: &str| -> Value {
        let (code, body) = curl(&["-H", &bearer, &format!("{base}/api/v1{path}")]);
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        if v.is_array() {
            v[0]["weak"].clone()
        } else {
            v["weak"].clone()
        }
    };
    let dashboard_weak = || -> String {
        let (_, page) = curl(&["-H", &b.cookie, &format!("{base}/")]);
        page.split("id=\"weak-total\"><span>")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .unwrap_or("")
            .to_owned()
    };
    // Control: strong, and the cache is warm.
    assert_eq!(weak("/extensions/4100"), false);
    assert_eq!(weak("/gateways"), false);
    assert_eq!(dashboard_weak(), "0");
    // Another process weakens both.
    env.ok(&["ext", "update", "4100", "--password", "4100"]);
    env.ok(&["gateway", "update", "gw1", "--password", "gwlogin7"]);
    let ext = weak("/extensions/4100");
    let gw = weak("/gateways");
    let (_, list) = curl(&["-H", &b.cookie, &format!("{base}/extensions?q=4100&weak=1")]);
    let dash = dashboard_weak();
    server.stop();
    assert_eq!(ext, true, "the extension still shows strong");
    assert_eq!(gw, true, "the gateway still shows strong");
    assert!(
        list.contains("/extensions/4100"),
        "the weak-only list misses 4100"
    );
    assert_eq!(dash, "2", "the dashboard's weak count");
}

/// Names, notes and reasons with markup, written through the API, the console and the
/// CLI, reach the pages that show them only escaped.
#[test]
fn hostile_names_notes_and_reasons_render_escaped() {
    let env = with_admin();
    let bearer = token(&env, "ops");
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let b = browser(&base, "127.0.0.1");
    let payloads = [
        "<script>alert(1)</script>",
        "\"><img src=x onerror=alert(2)>",
        "</td></tr><tr><td>forged",
    ];
    let name = serde_json::json!({ "number": "4200", "name": payloads[0] }).to_string();
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &bearer,
        "-H",
        "Content-Type: application/json",
        "--data",
        &name,
        &format!("{base}/api/v1/extensions"),
    ]);
    assert_eq!(code, 201, "{body}");
    let note = serde_json::json!({ "network": "192.0.2.0/24", "note": payloads[1] }).to_string();
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &bearer,
        "-H",
        "Content-Type: application/json",
        "--data",
        &note,
        &format!("{base}/api/v1/allow"),
    ]);
    assert_eq!(code, 201, "{body}");
    let (code, body) = curl(&[
        "-H",
        &b.cookie,
        "--data-urlencode",
        &format!("csrf={}", b.csrf),
        "--data",
        "source=198.51.100.9",
        "--data-urlencode",
        &format!("reason={}", payloads[2]),
        &format!("{base}/security/ban"),
    ]);
    assert_eq!(code, 303, "{body}");
    let mut raw = Vec::new();
    let mut seen = 0;
    for page in ["/", "/extensions", "/extensions/4200", "/security", "/log"] {
        let (code, html) = curl(&["-H", &b.cookie, &format!("{base}{page}")]);
        assert_eq!(code, 200, "{page}");
        for p in payloads {
            if html.contains(p) {
                raw.push(format!("{page}: {p}"));
            }
        }
        // minijinja writes `/` as `&#x2f;`.
        if html.contains("&lt;script&gt;alert(1)")
            || html.contains("&lt;img src=x onerror=alert(2)&gt;")
            || html.contains("&lt;tr&gt;&lt;td&gt;forged")
        {
            seen += 1;
        }
    }
    server.stop();
    assert!(
        seen >= 3,
        "control: the escaped text is shown ({seen} pages)"
    );
    assert!(raw.is_empty(), "unescaped: {raw:#?}");
}

/// Paging and search parameters chosen to cost the server: huge numbers, a zero or
/// huge page size, long and regex-like search text. Each is answered at once, with at
/// most the largest page, and a search matches no field but number, name and email.
#[test]
fn paging_and_search_cannot_be_made_to_cost_or_to_leak() {
    let env = with_admin();
    let bearer = token(&env, "ops");
    let csv = env.path("many.csv");
    let mut rows = String::from("number,name,email,kind,password,pin,sip_id,auth_id,mac,model\n");
    for n in 5000..6500 {
        rows.push_str(&format!("{n},Person {n},p{n}@example.com,user,,,,,,\n"));
    }
    std::fs::write(&csv, rows).expect("csv");
    env.ok(&["import", csv.to_str().expect("utf8")]);
    let auth = env.json(&["ext", "show", "5000", "--json"])["auth_id"]
        .as_str()
        .expect("auth_id")
        .to_owned();
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let b = browser(&base, "127.0.0.1");
    let long = "(a+)+$.*".repeat(2000);
    let mut slow = Vec::new();
    for query in [
        "page=99999999999999999999999999&per_page=100".to_owned(),
        "page=18446744073709551615&per_page=18446744073709551615".to_owned(),
        "page=-1&per_page=0".to_owned(),
        "per_page=1000000000".to_owned(),
        format!("q={long}&per_page=5"),
        "q=%25&weak=1&per_page=5".to_owned(),
    ] {
        for (who, url) in [
            (&bearer, format!("{base}/api/v1/extensions?{query}")),
            (&b.cookie, format!("{base}/extensions?{query}")),
        ] {
            let start = Instant::now();
            let (code, body) = curl(&["-H", who, &url]);
            let took = start.elapsed();
            assert_eq!(code, 200, "{url}");
            if took > Duration::from_secs(3) {
                slow.push(format!("{url}: {took:?}"));
            }
            if url.contains("/api/")
                && let Ok(v) = serde_json::from_str::<Value>(&body)
            {
                let n = v.as_array().map_or(0, Vec::len);
                assert!(n <= 1000, "{query}: {n} rows in one page");
            }
        }
    }
    // Search by a field the list does not search (the auth ID): nothing found.
    let (_, body) = curl(&[
        "-H",
        &bearer,
        &format!("{base}/api/v1/extensions?q={auth}&per_page=5"),
    ]);
    let found: Value = serde_json::from_str(&body).expect("json");
    // Control: the name is searched.
    let (_, named) = curl(&[
        "-H",
        &bearer,
        &format!("{base}/api/v1/extensions?q=person%205001&per_page=5"),
    ]);
    server.stop();
    assert_eq!(
        serde_json::from_str::<Value>(&named).expect("json")[0]["number"],
        "5001"
    );
    assert_eq!(found, serde_json::json!([]), "search by auth ID");
    assert!(slow.is_empty(), "slow answers: {slow:#?}");
}

/// Values the CLI refuses are refused by the API with the CLI's own sentence: a DID to
/// a gateway's virtual number, an extension on a gateway's number, a gateway on an
/// extension's number, a ban of an allow-listed address, a weak gateway password
/// shape the CLI refuses.
#[test]
fn the_api_refuses_what_the_cli_refuses_with_the_same_sentence() {
    let env = with_admin();
    let bearer = token(&env, "ops");
    env.ok(&["ext", "add", "4001"]);
    env.ok(&[
        "gateway",
        "add",
        "gw1",
        "--vendor",
        "generic",
        "--ext",
        "2900",
        "--auth-id",
        "gwlogin7",
        "--password",
        "Gateway-Strong-Secret-51",
        "--host",
        "127.0.0.7",
    ]);
    env.ok(&["allow", "add", "192.0.2.0/24"]);
    let before = env.snapshot();
    let server = env.serve();
    let base = format!("http://{}/api/v1", server.http);
    let post = |path: &str, body: &str| {
        curl(&[
            "-X",
            "POST",
            "-H",
            &bearer,
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
            &format!("{base}{path}"),
        ])
    };
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "/dids",
            r#"{"did": "+4930111", "number": "2900"}"#,
            vec!["did", "add", "+4930111", "--ext", "2900"],
        ),
        (
            "/extensions",
            r#"{"number": "2900"}"#,
            vec!["ext", "add", "2900"],
        ),
        (
            "/gateways",
            r#"{"name": "gw2", "vendor": "generic", "number": "4001", "auth_id": "gw2login",
                "password": "Gateway-Strong-Secret-52", "host": "127.0.0.8"}"#,
            vec![
                "gateway",
                "add",
                "gw2",
                "--vendor",
                "generic",
                "--ext",
                "4001",
                "--auth-id",
                "gw2login",
                "--password",
                "Gateway-Strong-Secret-52",
                "--host",
                "127.0.0.8",
            ],
        ),
        (
            "/gateways",
            r#"{"name": "gw3", "vendor": "generic", "number": "2901", "auth_id": "gw3login",
                "password": "line\nbreak", "host": "127.0.0.8"}"#,
            vec![
                "gateway",
                "add",
                "gw3",
                "--vendor",
                "generic",
                "--ext",
                "2901",
                "--auth-id",
                "gw3login",
                "--password",
                "line\nbreak",
                "--host",
                "127.0.0.8",
            ],
        ),
        (
            "/bans",
            r#"{"source": "192.0.2.5"}"#,
            vec!["ban", "add", "192.0.2.5"],
        ),
    ];
    let mut differ = Vec::new();
    for (path, body, cli) in &cases {
        let (code, answer) = post(path, body);
        let r = env.run(cli);
        if !(400..500).contains(&code) || r.code != 2 {
            differ.push(format!("{path}: API {code}, CLI exit {}", r.code));
            continue;
        }
        let sentence = api_error(&answer);
        if !r.stderr.contains(&sentence) {
            differ.push(format!("{path}: API {sentence:?}, CLI {:?}", r.stderr));
        }
        if sentence.contains("Gateway-Strong") || sentence.contains("line\nbreak") {
            differ.push(format!(
                "{path}: the error repeats the password: {sentence}"
            ));
        }
    }
    server.stop();
    assert_eq!(env.snapshot(), before, "a refused write changed something");
    assert!(differ.is_empty(), "{differ:#?}");
}

/// A ban by hand from the console or the API of the very address the administrator is
/// working from (or a prefix holding it) is taken like any other (control: another
/// address): the administrator's own phones and provisioning at that address are cut
/// off by a slip of the keyboard, with nothing asking first.
#[test]
fn the_console_does_not_ban_its_own_client() {
    let env = with_admin();
    let bearer = token(&env, "ops");
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let b = browser(&base, "127.0.0.1");
    let api_ban = |source: &str| {
        let body = serde_json::json!({ "source": source, "seconds": 3600 }).to_string();
        curl(&[
            "-X",
            "POST",
            "-H",
            &bearer,
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
            &format!("{base}/api/v1/bans"),
        ])
        .0
    };
    let page_ban = |source: &str| {
        curl(&[
            "-H",
            &b.cookie,
            "--data-urlencode",
            &format!("csrf={}", b.csrf),
            "--data-urlencode",
            &format!("source={source}"),
            "--data",
            "for=3600",
            &format!("{base}/security/ban"),
        ])
        .0
    };
    // Controls: another address, each way.
    assert_eq!(api_ban("198.51.100.1"), 201);
    assert_eq!(page_ban("198.51.100.2"), 303);
    let mut taken = Vec::new();
    for source in ["127.0.0.1", "127.0.0.0/8"] {
        let code = api_ban(source);
        if (200..300).contains(&code) {
            taken.push(format!("API ban of {source} -> {code}"));
        }
        let code = page_ban(source);
        if code == 303 {
            taken.push(format!("console ban of {source} -> {code}"));
        }
    }
    server.stop();
    assert!(
        taken.is_empty(),
        "the administrator's own address was banned: {taken:#?}"
    );
}
