//! The web console in Debian's Chromium (through playwright-core, no browser download)
//! and the login lockout and JSON API through curl.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::Env;
use crate::peers::{SMTP_PASSWORD, Smtp, eventually_or, require};

pub(crate) const ADMIN_PASSWORD: &str = "Console-Test-Secret-77";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A data dir with two weak extensions, a strong one and one with a hostile name, a
/// known console password, and mail to the test SMTP server.
pub(crate) fn office(env: &Env, smtp: Option<&Smtp>) {
    env.ok(&["ext", "list"]);
    let mut config = String::from(
        "[sip]\ndomain = \"pbx.example.com\"\n[provisioning]\nbase_url = \"http://pbx.example.com:8080\"\n",
    );
    if let Some(smtp) = smtp {
        config.push_str(&smtp.config(SMTP_PASSWORD));
    }
    std::fs::write(env.data.join("sipward.toml"), config).expect("config");
    for n in ["4001", "4002"] {
        env.ok(&[
            "ext",
            "add",
            n,
            "--password",
            n,
            "--pin",
            n,
            "--email",
            &format!("u{n}@example.com"),
        ]);
    }
    env.ok(&[
        "ext",
        "add",
        "4003",
        "--name",
        "Reception",
        "--email",
        "u4003@example.com",
    ]);
    env.ok(&["ext", "add", "4009", "--name", "<script>alert(1)</script>"]);
    // A gateway on a weak login and a banned scanner, for the other pages.
    env.ok(&[
        "gateway",
        "add",
        "gw1",
        "--vendor",
        "generic",
        "--ext",
        "2900",
        "--auth-id",
        "gwadmin7",
        "--password",
        "gwadmin7",
        "--host",
        "127.0.0.7",
    ]);
    env.ok(&["ban", "add", "203.0.113.9", "--for", "1h"]);
    let (_, public) = crate::backup::keygen(env, "console-key.txt");
    env.ok(&["backup", "create", "--recipient", &public]);
    let r = env.run_with_stdin(
        &["admin", "passwd", "--password", "-"],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new(require("curl", "curl"))
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Logs in with curl from `ip`; the session cookie's value when it worked.
pub(crate) fn login(base: &str, ip: &str, password: &str) -> (u16, Option<String>) {
    login_with_code(base, ip, password, "")
}

fn login_with_code(base: &str, ip: &str, password: &str, code: &str) -> (u16, Option<String>) {
    let out = Command::new(require("curl", "curl"))
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--interface",
            ip,
            "-X",
            "POST",
        ])
        .args(["--data-urlencode", "name=admin", "--data-urlencode"])
        .arg(format!("password={password}"))
        .args(["--data-urlencode", &format!("code={code}")])
        .arg(format!("{base}/login"))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let cookie = head.lines().find_map(|l| {
        let l = l.to_ascii_lowercase();
        l.strip_prefix("set-cookie: sipward_session=")
            .map(|v| v.split(';').next().unwrap_or("").to_owned())
    });
    (code, cookie)
}

#[test]
fn the_console_in_a_real_browser() {
    require("chromium", "chromium");
    let node = require("node", "nodejs");
    let browser = root().join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in tests/browser; run scripts/test, which installs it"
    );
    let env = Env::new();
    let smtp = Smtp::start(&env);
    office(&env, Some(&smtp));
    let server = env.serve();
    let artifacts = root().join("target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts");
    let out = Command::new(node)
        .arg(browser.join("console.mjs"))
        .current_dir(&browser)
        .env("BASE", format!("http://{}", server.http))
        .env("NAME", "admin")
        .env("PASSWORD", ADMIN_PASSWORD)
        .env("WEAK", "4001,4002")
        .env("STRONG", "4003")
        .env("XSS", "4009")
        .env("NEW", "4200")
        .env("ARTIFACTS", &artifacts)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
            panic!(
                "no observations ({e}):\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(seen["error"], Value::Null, "{seen:#}\n{}", server.log());

    assert_eq!(seen["redirectedToLogin"], true);
    assert_eq!(seen["loggedIn"], true);
    assert_eq!(
        seen["cookie"],
        serde_json::json!({"httpOnly": true, "secure": true, "sameSite": "Strict"})
    );
    assert_eq!(seen["weakTotal"], "3", "two extensions and the gateway");
    assert_eq!(seen["recentBans"], serde_json::json!(["203.0.113.9"]));
    // The pictures: six charts, 48 hourly bars each; the server sampled at start, so the
    // current hour's strong share is the dashboard's score and 0 registrations.
    let charts = &seen["charts"];
    assert_eq!(
        charts["ids"],
        serde_json::json!([
            "chart-auth",
            "chart-bans",
            "chart-registrations",
            "chart-calls",
            "chart-refused",
            "chart-strong"
        ]),
        "{seen:#}"
    );
    let strong = charts["strong"].as_array().expect("strong");
    assert_eq!(strong.len(), 48);
    let now_bar = &strong[47];
    assert_eq!(now_bar[1], charts["score"], "{charts:#}");
    assert!(
        now_bar[0].as_str().is_some_and(|t| t.ends_with(":00:00Z")),
        "{charts:#}"
    );
    assert_eq!(charts["registrations"][47][1], "0", "{charts:#}");
    assert_eq!(charts["days"], 30);
    // The ban's time: ISO 8601 in the markup, words on screen, exact time on hover.
    let ban_time = &seen["banTime"];
    assert!(
        ban_time["iso"]
            .as_str()
            .is_some_and(|t| t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T'),
        "{ban_time}"
    );
    assert!(
        ban_time["text"]
            .as_str()
            .is_some_and(|t| t == "just now" || t.ends_with(" ago")),
        "{ban_time}"
    );
    assert!(ban_time["title"].as_str().is_some_and(|t| !t.is_empty()));
    // A weak row says so in words (not by colour alone), with each finding's title and
    // its rule id as the tooltip.
    let cell = seen["weakCell"].as_str().expect("cell");
    assert!(cell.starts_with("⚠ Weak"), "{cell}");
    assert!(cell.contains("Password is the extension number"), "{cell}");
    assert!(cell.contains("PIN is the extension number"), "{cell}");
    let tips = seen["weakRuleTips"].as_array().expect("tips");
    assert!(
        tips.contains(&Value::from("ext.password_equals_number")),
        "{tips:?}"
    );
    assert_eq!(seen["strongCell"], "Strong");
    // Server-side search by name and email; an empty result says what to do.
    assert_eq!(
        seen["searchByName"],
        serde_json::json!(["ext-4003"]),
        "{seen:#}"
    );
    assert_eq!(seen["searchByEmail"], serde_json::json!(["ext-4002"]));
    assert!(
        seen["searchEmpty"]
            .as_str()
            .is_some_and(|t| t.starts_with("No extension matches")),
        "{seen:#}"
    );
    // Weak rows bold red (computed), the strong one not.
    assert_eq!(seen["weakRow"]["color"], "rgb(192, 0, 0)", "{seen:#}");
    assert_eq!(seen["weakRow"]["weight"], "700");
    assert_ne!(seen["strongRow"]["color"], "rgb(192, 0, 0)");
    assert_eq!(seen["strongRow"]["weight"], "400");
    assert!(
        seen["weakTitle"]
            .as_str()
            .is_some_and(|t| t.contains("extension number"))
    );
    // The hostile name is text, and nothing ran.
    assert_eq!(seen["xssText"], "<script>alert(1)</script>");
    assert_eq!(seen["dialogs"], 0);
    assert_eq!(
        seen["weakOnlyRows"],
        serde_json::json!(["ext-4001", "ext-4002"])
    );
    // Re-Generate of the two, confirmed; they are normal afterwards.
    assert_eq!(seen["confirmList"], serde_json::json!(["4001", "4002"]));
    assert_eq!(
        seen["results"].as_array().map(Vec::len),
        Some(2),
        "{seen:#}"
    );
    assert_eq!(seen["afterRegenerate"]["a"], Value::Null);
    assert_eq!(seen["afterRegenerate"]["b"], Value::Null);
    assert_ne!(seen["afterRegenerate"]["color"], "rgb(192, 0, 0)");
    // The PIN box turned red while typing, before anything was saved.
    assert_ne!(seen["pinBefore"], seen["pinAfter"]);
    assert_eq!(seen["pinAfter"], "rgb(192, 0, 0)");
    assert!(
        seen["pinWhy"]
            .as_str()
            .is_some_and(|t| t.contains("extension number")),
        "{seen:#}"
    );
    let pin = env.json(&["ext", "show", "4003", "--reveal", "--json"])["pin"].clone();
    assert_ne!(pin, "4003", "typing is not saving");
    // A form on another site was refused.
    assert_eq!(seen["crossSiteStatus"], 403);
    // The add form generated credentials; the other pages.
    assert_eq!(
        seen["addedPassword"].as_str().map(str::len),
        Some(20),
        "{seen:#}"
    );
    assert!(env.ok(&["ext", "list"]).contains("4200"));
    assert_eq!(seen["gatewayClass"], "weak");
    // Gateways, providers, routes and DIDs: created, edited and removed in the forms, and
    // invalid input refused with the CLI's own sentence.
    let t = &seen["trips"];
    let row = |k: &str| -> Vec<String> {
        t[k].as_array()
            .unwrap_or_else(|| panic!("{k}: {seen:#}"))
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        row("gatewayAdded")[..5],
        ["gw9", "generic", "2960", "gwx2960", "127.0.0.11"]
    );
    assert_eq!(row("gatewayEdited")[4], "127.0.0.12");
    let cli = env.fails(&["gateway", "update", "gw1", "--host", "bad host!"], 2);
    let said = t["gatewayError"].as_str().expect("gateway error");
    assert!(
        !said.is_empty() && cli.contains(said),
        "CLI: {cli}\nconsole: {said}"
    );
    assert_eq!(
        row("providerEdited")[..3],
        ["carrier", "127.0.0.13", "acct2"]
    );
    assert_eq!(
        row("routeAdded")[1..6],
        ["national", "0ZX.", "gateway:gw9", "1", "+49"]
    );
    let cli = env.fails(
        &["route", "add", "r2", "--pattern", "0ZX.!", "--trunk", "gw1"],
        2,
    );
    let said = t["routeError"].as_str().expect("route error");
    assert!(
        !said.is_empty() && cli.contains(said),
        "CLI: {cli}\nconsole: {said}"
    );
    assert_eq!(
        row("routeEdited")[1..6],
        ["national", "00X.", "provider:carrier", "1", ""]
    );
    assert_eq!(row("didAdded"), ["4930999", "4003", "Edit"]);
    assert_eq!(row("didEdited"), ["4930999", "4009", "Edit"]);
    assert!(
        t["removeRefused"]
            .as_str()
            .is_some_and(|m| m.contains("route national")),
        "{t:#}"
    );
    assert!(
        t["emptyRoutes"]
            .as_str()
            .is_some_and(|m| m.starts_with("No outbound route yet"))
    );
    assert!(
        t["emptyDids"]
            .as_str()
            .is_some_and(|m| m.starts_with("No DID yet"))
    );
    assert_eq!(t["leftRows"], serde_json::json!(["gateway-gw1"]), "{t:#}");
    assert_eq!(
        env.json(&["route", "list", "--json"]),
        serde_json::json!([])
    );
    assert!(
        seen["calls"]
            .as_str()
            .is_some_and(|t| t.contains("No call is up")),
        "{seen:#}"
    );
    let backups = seen["backups"].as_array().expect("backups");
    assert_eq!(backups.len(), 1, "{seen:#}");
    assert!(
        backups[0]
            .as_str()
            .is_some_and(|n| n.starts_with("sipward-") && n.ends_with(".swbak"))
    );
    assert!(
        seen["thresholds"]
            .as_str()
            .is_some_and(|t| t.contains("10 within 600 s")),
        "{seen:#}"
    );
    assert_eq!(seen["bans"], serde_json::json!([["203.0.113.9", "manual"]]));
    assert_eq!(seen["topBanned"], serde_json::json!([["203.0.113.9", "1"]]));
    assert!(
        seen["bansAfter"]
            .as_str()
            .is_some_and(|t| t.contains("No source is banned"))
    );
    assert_eq!(
        seen["bannedByHand"],
        serde_json::json!([["198.51.100.20", "manual", "seen scanning"]])
    );
    assert_eq!(env.json(&["ban", "list", "--json"]), serde_json::json!([]));
    assert!(
        seen["nftables"]
            .as_str()
            .is_some_and(|t| t.contains("policy drop"))
    );
    let shown: Vec<&str> = seen["logActions"]
        .as_array()
        .expect("log")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for a in [
        "console.login",
        "ext.regenerated",
        "ext.added",
        "ban.lifted",
    ] {
        assert!(shown.contains(&a), "{a} not in {shown:?}");
    }
    // axe-core on every page: no serious or critical violation.
    let axe = seen["axe"].as_object().expect("axe");
    assert!(axe.len() >= 18, "{axe:?}");
    for (page, found) in axe {
        assert_eq!(found, &serde_json::json!([]), "axe on {page}");
    }
    // A phone-wide window never scrolls sideways (wide tables scroll in their box).
    for (page, overflow) in seen["phoneOverflow"].as_object().expect("phone") {
        assert!(
            overflow.as_i64().is_some_and(|o| o <= 0),
            "{page}: {overflow}"
        );
    }
    // Keyboard: the skip link first, focus visible on the next controls.
    assert_eq!(seen["firstTab"], "Skip to the content");
    assert_eq!(seen["focusOutline"], "solid", "{seen:#}");
    let mut shots: Vec<String> = axe
        .keys()
        .flat_map(|p| [format!("desktop-{p}.png"), format!("phone-{p}.png")])
        .collect();
    shots.extend(
        [
            "dashboard.png",
            "extensions.png",
            "edit.png",
            "security.png",
            "advisor.png",
        ]
        .map(String::from),
    );
    for shot in shots {
        assert!(
            artifacts
                .join(&shot)
                .metadata()
                .is_ok_and(|m| m.len() > 1000),
            "{shot}"
        );
    }

    // The welcome mails of the two re-generated extensions arrive.
    eventually_or(
        "two welcome mails",
        Duration::from_secs(60),
        || smtp.messages().len() >= 2,
        || server.log(),
    );
    let to: Vec<String> = smtp
        .messages()
        .iter()
        .filter_map(|m| m.lines().next().map(str::to_owned))
        .collect();
    assert!(to.iter().any(|l| l.contains("u4001@example.com")), "{to:?}");
    assert!(to.iter().any(|l| l.contains("u4002@example.com")), "{to:?}");
    let log = env.json(&["log", "--json"]);
    let actions: Vec<&str> = log
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"console.login"), "{actions:?}");
    assert_eq!(
        actions.iter().filter(|a| **a == "ext.regenerated").count(),
        2
    );
    server.stop();
}

#[test]
fn the_sixth_login_from_a_source_is_refused_even_with_the_right_password() {
    let env = Env::new();
    office(&env, None);
    let server = env.serve();
    let base = format!("http://{}", server.http);
    for _ in 0..5 {
        assert_eq!(login(&base, "127.0.0.3", "not-the-password").0, 401);
    }
    let (code, cookie) = login(&base, "127.0.0.3", ADMIN_PASSWORD);
    assert_eq!((code, cookie.is_some()), (429, false));
    // Another address still logs in.
    let (code, cookie) = login(&base, "127.0.0.4", ADMIN_PASSWORD);
    assert_eq!(code, 303);
    assert!(cookie.is_some_and(|c| c.len() == 64));
    server.stop();
}

#[test]
fn the_api_answers_every_error_and_works_with_a_token() {
    let env = Env::new();
    office(&env, None);
    let token = env
        .ok(&["admin", "token", "create", "ci"])
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64);
    let server = env.serve();
    let base = format!("http://{}", server.http);
    let api = |path: &str| format!("{base}/api/v1{path}");
    let bearer = format!("Authorization: Bearer {token}");

    // 401 without a session or token, with a wrong or malformed token.
    let (code, body) = curl(&[&api("/extensions")]);
    assert_eq!(code, 401, "{body}");
    assert!(serde_json::from_str::<Value>(&body).is_ok_and(|v| v["error"].is_string()));
    let wrong = format!("Authorization: Bearer {}", "0".repeat(64));
    assert_eq!(curl(&["-H", &wrong, &api("/extensions")]).0, 401);
    assert_eq!(
        curl(&[
            "-H",
            "Authorization: Basic YWRtaW46eA==",
            &api("/extensions")
        ])
        .0,
        401
    );

    // 200 with the token: weak ones flagged.
    let (code, body) = curl(&["-H", &bearer, &api("/extensions")]);
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).expect("json");
    let weak: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["weak"] == true)
        .filter_map(|e| e["number"].as_str())
        .collect();
    assert_eq!(weak, ["4001", "4002"]);
    // Each finding in words, with its rule id.
    let first = list
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["number"] == "4001")
        .expect("4001");
    assert!(
        first["findings"].as_array().is_some_and(|f| f
            .iter()
            .any(|f| f["rule"] == "ext.password_equals_number"
                && f["title"] == "Password is the extension number")),
        "{first}"
    );
    // Server-side search, weak filter and paging.
    let page = |query: &str| -> Vec<String> {
        let (code, body) = curl(&["-H", &bearer, &api(&format!("/extensions?{query}"))]);
        assert_eq!(code, 200, "{query}: {body}");
        serde_json::from_str::<Value>(&body)
            .expect("json")
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|e| e["number"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(page("q=reception"), ["4003"]);
    assert_eq!(page("weak=1"), ["4001", "4002"]);
    let all = page("");
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(page("per_page=2&page=2"), all[2..4]);
    assert_eq!(page("per_page=2&page=99"), all[4..]);
    assert_eq!(
        page("page=nonsense&per_page=-1"),
        all,
        "first page, default size"
    );
    // 400, 404.
    assert_eq!(curl(&["-H", &bearer, &api("/extensions/abc")]).0, 400);
    assert_eq!(curl(&["-H", &bearer, &api("/extensions/9999")]).0, 404);
    assert_eq!(curl(&["-H", &bearer, &api("/nothing")]).0, 404);
    let post = |body: &str, auth: &[&str]| {
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
        ];
        args.extend_from_slice(auth);
        let url = api("/extensions/regenerate");
        args.push(&url);
        curl(&args)
    };
    assert_eq!(post("{not json", &["-H", &bearer]).0, 400);
    assert_eq!(post(r#"{"numbers": []}"#, &["-H", &bearer]).0, 400);
    assert_eq!(post(r#"{"numbers": ["9999"]}"#, &["-H", &bearer]).0, 404);
    assert_eq!(post(r#"{"numbers": ["4001"]}"#, &[]).0, 401);
    // 403: a console session without its CSRF token.
    let (_, cookie) = login(&base, "127.0.0.1", ADMIN_PASSWORD);
    let cookie = format!("Cookie: sipward_session={}", cookie.expect("session"));
    assert_eq!(post(r#"{"numbers": ["4001"]}"#, &["-H", &cookie]).0, 403);
    assert_eq!(
        post(
            r#"{"numbers": ["4001"]}"#,
            &["-H", &cookie, "-H", "X-CSRF-Token: 00"]
        )
        .0,
        403
    );
    // An unknown extension's edit page is a 404, not an error page.
    assert_eq!(
        curl(&["-H", &cookie, &format!("{base}/extensions/9999")]).0,
        404
    );
    assert_eq!(
        curl(&["-H", &cookie, &format!("{base}/extensions/12ab")]).0,
        404
    );
    // The session reads; the token changes.
    assert_eq!(curl(&["-H", &cookie, &api("/extensions/4001")]).0, 200);
    let (code, body) = post(r#"{"numbers": ["4001"], "email": false}"#, &["-H", &bearer]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["regenerated"][0]["number"],
        "4001"
    );
    let after: Value =
        serde_json::from_str(&curl(&["-H", &bearer, &api("/extensions/4001")]).1).expect("json");
    assert_eq!(after["weak"], false, "{after}");
    // Add (201, credentials generated and returned once), duplicate (409), remove (204),
    // remove again (404).
    let add = |body: &str| {
        let url = api("/extensions");
        curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-H",
            &bearer,
            "--data",
            body,
            &url,
        ])
    };
    let (code, body) = add(r#"{"number": "4100", "name": "Lobby"}"#);
    assert_eq!(code, 201, "{body}");
    let added: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        added["generated"]["password"].as_str().map(str::len),
        Some(20)
    );
    assert_eq!(add(r#"{"number": "4100"}"#).0, 409);
    assert_eq!(add(r#"{"number": "12ab"}"#).0, 400);
    assert_eq!(add(r#"{"number": "4101", "colour": "red"}"#).0, 400);
    let delete = |n: &str| {
        curl(&[
            "-X",
            "DELETE",
            "-H",
            &bearer,
            &api(&format!("/extensions/{n}")),
        ])
        .0
    };
    assert_eq!(delete("4100"), 204);
    assert_eq!(delete("4100"), 404);
    // Gateways with findings, bans (lift: 204, again: 404), calls, the audit log.
    let get = |path: &str| -> Value {
        let (code, body) = curl(&["-H", &bearer, &api(path)]);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("json")
    };
    assert_eq!(get("/gateways")[0]["weak"], true);
    assert_eq!(get("/providers"), serde_json::json!([]));
    assert_eq!(get("/bans")[0]["source"], "203.0.113.9");
    assert!(get("/bans")[0]["last_seen"].is_string());
    // A ban by hand with `--for` ends; its end is an ISO time too.
    assert!(get("/bans")[0]["expires_at"].is_string());
    let lift = |s: &str| curl(&["-X", "DELETE", "-H", &bearer, &api(&format!("/bans/{s}"))]).0;
    assert_eq!(lift("203.0.113.9"), 204);
    assert_eq!(lift("203.0.113.9"), 404);
    assert_eq!(lift("not-an-address"), 400);
    assert_eq!(get("/calls")["calls"], serde_json::json!([]));
    let log = get("/log");
    // Times are ISO 8601 in the API.
    assert!(
        log[0]["at"]
            .as_str()
            .is_some_and(|t| t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T'),
        "{log}"
    );
    assert!(get("/calls")["written_at"].is_null() || get("/calls")["written_at"].is_string());
    assert!(
        log.as_array()
            .expect("log")
            .iter()
            .any(|e| e["action"] == "ban.lifted"
                && e["actor"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("API token ci"))),
        "{log}"
    );
    // Update (200, findings), a bad field (400), an unknown extension (404), a taken
    // auth ID (409); resume; the allow list (201, 409, removed, 404).
    let send = |method: &str, path: &str, body: &str| {
        let url = api(path);
        curl(&[
            "-X",
            method,
            "-H",
            "Content-Type: application/json",
            "-H",
            &bearer,
            "--data",
            body,
            &url,
        ])
    };
    let (code, body) = send("PATCH", "/extensions/4003", r#"{"pin": "4003"}"#);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ext.pin_equals_number"), "{body}");
    assert_eq!(
        send(
            "PATCH",
            "/extensions/4003",
            r#"{"email": "not an address"}"#
        )
        .0,
        400
    );
    assert_eq!(send("PATCH", "/extensions/9999", r#"{"name": "x"}"#).0, 404);
    let auth_4009 = get("/extensions/4009")["auth_id"]
        .as_str()
        .expect("auth")
        .to_owned();
    let taken = format!(r#"{{"auth_id": "{auth_4009}"}}"#);
    assert_eq!(send("PATCH", "/extensions/4003", &taken).0, 409);
    assert_eq!(send("POST", "/extensions/4003/resume", "").0, 200);
    assert_eq!(
        send(
            "POST",
            "/allow",
            r#"{"network": "192.0.2.0/24", "note": "office"}"#
        )
        .0,
        201
    );
    assert_eq!(
        send("POST", "/allow", r#"{"network": "192.0.2.0/24"}"#).0,
        409
    );
    assert_eq!(get("/allow")[0]["network"], "192.0.2.0/24");
    assert_eq!(
        send(
            "POST",
            "/allow",
            r#"{"network": "192.0.2.0/24", "remove": true}"#
        )
        .0,
        200
    );
    assert_eq!(
        send(
            "POST",
            "/allow",
            r#"{"network": "192.0.2.0/24", "remove": true}"#
        )
        .0,
        404
    );
    assert_eq!(send("POST", "/allow", r#"{"network": "nonsense"}"#).0, 400);
    // A revoked token no longer works.
    env.ok(&["admin", "token", "remove", "ci"]);
    assert_eq!(curl(&["-H", &bearer, &api("/extensions")]).0, 401);

    // The OpenAPI document lists every endpoint the router serves.
    let (code, body) = curl(&[&api("/openapi.json")]);
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&body).expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/api/v1/extensions",
        "/api/v1/extensions/{number}",
        "/api/v1/extensions/regenerate",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    // Every page carries the strict CSP.
    let out = Command::new(require("curl", "curl"))
        .args(["-s", "-D", "-", "-o", "/dev/null"])
        .arg(format!("{base}/login"))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    server.stop();
}

/// `{"error": ...}` of an API answer.
fn api_error(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("not an error: {body}"))
}

#[test]
fn gateways_providers_routes_dids_and_bans_are_written_through_the_api_with_the_cli_s_checks() {
    let env = Env::new();
    office(&env, None);
    let token = env
        .ok(&["admin", "token", "create", "ops"])
        .trim()
        .to_owned();
    let server = env.serve();
    let base = format!("http://{}/api/v1", server.http);
    let bearer = format!("Authorization: Bearer {token}");
    let send = |method: &str, path: &str, body: &str| {
        let url = format!("{base}{path}");
        let mut args = vec!["-X", method, "-H", &bearer];
        if !body.is_empty() {
            args.extend(["-H", "Content-Type: application/json", "--data", body]);
        }
        args.push(&url);
        curl(&args)
    };

    // A gateway: added (its weak login found), shown by the CLI, changed, refused input
    // with the CLI's own sentence.
    let (code, body) = send(
        "POST",
        "/gateways",
        r#"{"name": "pstn", "vendor": "generic", "number": "2950", "auth_id": "pstn2950",
            "password": "pstn2950", "host": "127.0.0.8"}"#,
    );
    assert_eq!(code, 201, "{body}");
    let added: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(added["item"]["host"], "127.0.0.8");
    assert!(
        added["findings"].as_array().is_some_and(|f| f
            .iter()
            .any(|f| f["rule"] == "gateway.password_equals_auth_id"
                && f["title"] == "Password is the login name")),
        "{added}"
    );
    assert_eq!(
        env.json(&["gateway", "show", "pstn", "--json"])["host"],
        "127.0.0.8"
    );
    let (code, body) = send("PATCH", "/gateways/pstn", r#"{"host": "127.0.0.9:5070"}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        env.json(&["gateway", "show", "pstn", "--json"])["host"],
        "127.0.0.9:5070"
    );
    let (code, body) = send("PATCH", "/gateways/pstn", r#"{"host": "bad host!"}"#);
    assert_eq!(code, 400, "{body}");
    let cli = env.fails(&["gateway", "update", "pstn", "--host", "bad host!"], 2);
    assert!(cli.contains(&api_error(&body)), "CLI: {cli}\nAPI: {body}");
    let (code, body) = send(
        "POST",
        "/gateways",
        r#"{"name": "gw2", "vendor": "nosuch", "number": "2951", "auth_id": "x2951",
            "password": "Long-Enough-Secret-81", "host": "127.0.0.8"}"#,
    );
    assert_eq!(code, 400, "{body}");
    let cli = env.fails(
        &[
            "gateway",
            "add",
            "gw2",
            "--vendor",
            "nosuch",
            "--ext",
            "2951",
            "--auth-id",
            "x2951",
            "--password",
            "Long-Enough-Secret-81",
            "--host",
            "127.0.0.8",
        ],
        2,
    );
    assert!(cli.contains(&api_error(&body)), "CLI: {cli}\nAPI: {body}");
    assert_eq!(
        send("POST", "/gateways", r#"{"name": "x", "colour": "red"}"#).0,
        400
    );
    assert_eq!(
        send("PATCH", "/gateways/nosuch", r#"{"host": "127.0.0.1"}"#).0,
        404
    );

    // A provider.
    let (code, body) = send(
        "POST",
        "/providers",
        r#"{"name": "carrier", "registrar": "127.0.0.10", "auth_id": "acct77",
            "password": "Carrier-Secret-Word-62"}"#,
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        send("PATCH", "/providers/carrier", r#"{"auth_id": "acct78"}"#).0,
        200
    );
    assert_eq!(
        env.json(&["provider", "show", "carrier", "--json"])["auth_id"],
        "acct78"
    );

    // A route to the gateway; the gateway cannot go while it is used.
    let (code, body) = send(
        "POST",
        "/routes",
        r#"{"name": "national", "pattern": "0ZX.", "trunk": "pstn", "strip": 1, "prepend": "+49"}"#,
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = send(
        "PATCH",
        "/routes/national",
        r#"{"trunk": "carrier", "priority": 5}"#,
    );
    assert_eq!(code, 200, "{body}");
    let routes = env.json(&["route", "list", "--json"]);
    assert_eq!(routes[0]["trunk"], "carrier", "{routes}");
    assert_eq!(routes[0]["pattern"], "0ZX.", "the pattern stayed: {routes}");
    assert_eq!(routes[0]["priority"], 5);
    let (code, body) = send("PATCH", "/routes/national", r#"{"pattern": "0ZX.!"}"#);
    assert_eq!(code, 400, "{body}");
    let cli = env.fails(
        &[
            "route",
            "add",
            "other",
            "--pattern",
            "0ZX.!",
            "--trunk",
            "pstn",
        ],
        2,
    );
    assert!(cli.contains(&api_error(&body)), "CLI: {cli}\nAPI: {body}");
    assert_eq!(
        send("PATCH", "/routes/national", r#"{"trunk": "pstn"}"#).0,
        200
    );
    let (code, body) = send("DELETE", "/gateways/pstn", "");
    assert_eq!(code, 409, "{body}");
    assert!(api_error(&body).contains("route national"), "{body}");

    // A DID, moved to another extension, then removed.
    assert_eq!(
        send(
            "POST",
            "/dids",
            r#"{"did": "+4930123456", "number": "4003"}"#
        )
        .0,
        201
    );
    assert_eq!(
        send(
            "POST",
            "/dids",
            r#"{"did": "+4930123456", "number": "4003"}"#
        )
        .0,
        409
    );
    let (code, body) = send("PATCH", "/dids/+4930123456", r#"{"number": "4009"}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(env.json(&["did", "list", "--json"])[0]["number"], "4009");
    assert_eq!(
        send("PATCH", "/dids/+4930123456", r#"{"number": "9999"}"#).0,
        404
    );
    assert_eq!(send("DELETE", "/dids/+4930123456", "").0, 204);
    assert_eq!(send("DELETE", "/dids/+4930123456", "").0, 404);

    // Routes, then the gateway and provider, go.
    assert_eq!(send("DELETE", "/routes/national", "").0, 204);
    assert_eq!(send("DELETE", "/gateways/pstn", "").0, 204);
    assert_eq!(send("DELETE", "/providers/carrier", "").0, 204);
    assert_eq!(
        env.json(&["route", "list", "--json"]),
        serde_json::json!([])
    );

    // A ban by hand, for an hour; an allow-listed address cannot be banned.
    let (code, body) = send(
        "POST",
        "/bans",
        r#"{"source": "198.51.100.7", "reason": "seen scanning", "seconds": 3600}"#,
    );
    assert_eq!(code, 201, "{body}");
    let bans = env.json(&["ban", "list", "--json"]);
    assert!(
        bans.as_array()
            .is_some_and(|b| b.iter().any(|b| b["source"] == "198.51.100.7")),
        "{bans}"
    );
    assert_eq!(
        send(
            "POST",
            "/bans",
            r#"{"source": "198.51.100.8", "seconds": 0}"#
        )
        .0,
        400
    );
    assert_eq!(
        send("POST", "/bans", r#"{"source": "not an address"}"#).0,
        400
    );
    env.ok(&["allow", "add", "192.0.2.0/24"]);
    assert_eq!(send("POST", "/bans", r#"{"source": "192.0.2.5"}"#).0, 409);
    // The thresholds in force.
    let (code, body) = send("GET", "/guard", "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["auth_failures"],
        10
    );

    // Every change is in the audit log, by the token, without a secret.
    let log = env.json(&["log", "--json"]);
    let actions: Vec<(String, String)> = log
        .as_array()
        .expect("log")
        .iter()
        .filter(|e| {
            e["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("API token ops"))
        })
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_owned(),
                e["subject"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for (a, subj) in [
        ("gateway.added", "gateway:pstn"),
        ("gateway.updated", "gateway:pstn"),
        ("gateway.removed", "gateway:pstn"),
        ("provider.added", "provider:carrier"),
        ("provider.updated", "provider:carrier"),
        ("route.added", "route:national"),
        ("route.updated", "route:national"),
        ("route.removed", "route:national"),
        // DIDs are kept as digits.
        ("did.added", "did:4930123456"),
        ("did.updated", "did:4930123456"),
        ("did.removed", "did:4930123456"),
        ("ban.added", "198.51.100.7"),
    ] {
        assert!(
            actions.contains(&(a.to_owned(), subj.to_owned())),
            "{a} {subj} not in {actions:?}"
        );
    }
    assert!(
        !log.to_string().contains("pstn2950\",\"detail"),
        "no secret is logged"
    );
    assert!(!log.to_string().contains("Carrier-Secret"), "{log}");
    server.stop();
}

#[test]
fn admin_passwords_and_tokens_refuse_bad_input() {
    let env = Env::new();
    let r = env.run(&["ext", "list"]);
    assert!(r.stderr.contains("console login: admin / "), "{}", r.stderr);
    let err = env.fails(&["admin", "passwd", "--password", "short"], 2);
    assert!(err.contains("at least 12"), "{err}");
    let err = env.fails(&["admin", "passwd", "bad name!"], 2);
    assert!(err.contains("administrator name"), "{err}");
    env.ok(&["admin", "token", "create", "ci"]);
    let err = env.fails(&["admin", "token", "create", "ci"], 2);
    assert!(err.contains("already exists"), "{err}");
    let err = env.fails(&["admin", "token", "remove", "nope"], 2);
    assert!(err.contains("no API token"), "{err}");
}

#[test]
fn a_schemathesis_run_from_the_openapi_document_finds_no_server_error() {
    // On PATH, or beside the python3 that pip installed it for.
    let beside_python = Command::new("python3")
        .args([
            "-c",
            "import sys, os; print(os.path.dirname(sys.executable))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("schemathesis"))
        .filter(|p| p.is_file());
    let st = beside_python
        .unwrap_or_else(|| require("schemathesis", "python3 -m pip install schemathesis"));
    let env = Env::new();
    office(&env, None);
    let token = env
        .ok(&["admin", "token", "create", "fuzz"])
        .trim()
        .to_owned();
    let server = env.serve();
    let out = Command::new(st)
        .args([
            "run",
            &format!("http://{}/api/v1/openapi.json", server.http),
        ])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "60",
            "--seed",
            "1",
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        // Its cache of failing cases goes beside the data dir, not into the checkout.
        .current_dir(env.data.parent().expect("temp dir"))
        .output()
        .expect("schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(text.contains("passed"), "{text}");
    // Every documented operation was exercised, the trunk writes included.
    let selected = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Operations:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        selected.len() == 2 && selected[0] == selected[1] && selected[0] >= 31,
        "{selected:?}\n{text}"
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
    server.stop();
}

#[test]
fn the_console_answers_only_its_allow_list_when_one_is_set() {
    let env = Env::new();
    office(&env, None);
    let config = std::fs::read_to_string(env.data.join("sipward.toml")).expect("config");
    std::fs::write(
        env.data.join("sipward.toml"),
        config + "[console]\nallow = [\"127.0.0.5/32\"]\n",
    )
    .expect("config");
    let server = env.serve();
    let base = format!("http://{}", server.http);
    assert_eq!(login(&base, "127.0.0.1", ADMIN_PASSWORD).0, 403);
    let (code, cookie) = login(&base, "127.0.0.5", ADMIN_PASSWORD);
    assert_eq!(code, 303);
    let token = env
        .ok(&["admin", "token", "create", "ci"])
        .trim()
        .to_owned();
    let bearer = format!("Authorization: Bearer {token}");
    let url = format!("{base}/api/v1/extensions");
    assert_eq!(
        curl(&["--interface", "127.0.0.1", "-H", &bearer, &url]).0,
        403
    );
    assert_eq!(
        curl(&["--interface", "127.0.0.5", "-H", &bearer, &url]).0,
        200
    );
    // A session cookie from the allowed address is no use elsewhere.
    let cookie = format!("Cookie: sipward_session={}", cookie.expect("cookie"));
    let page = format!("{base}/extensions");
    assert_eq!(
        curl(&["--interface", "127.0.0.1", "-H", &cookie, &page]).0,
        303
    );
    assert_eq!(
        curl(&["--interface", "127.0.0.5", "-H", &cookie, &page]).0,
        200
    );
    // Bad networks are refused with one sentence.
    std::fs::write(
        env.data.join("sipward.toml"),
        "[console]\nallow = [\"10.0.0.0/33\"]\n",
    )
    .expect("config");
    let err = env.fails(&["ext", "list"], 2);
    assert!(err.contains("console.allow"), "{err}");
    server.stop();
}

#[test]
fn a_totp_second_factor_is_needed_once_turned_on_and_a_code_works_once() {
    let oathtool = require("oathtool", "oathtool");
    let env = Env::new();
    office(&env, None);
    let uri = env.ok(&["admin", "totp", "admin"]);
    let secret = uri
        .trim()
        .split("secret=")
        .nth(1)
        .and_then(|r| r.split('&').next())
        .expect("secret in the URI")
        .to_owned();
    let code = || {
        let out = Command::new(&oathtool)
            .args(["--totp", "-b", &secret])
            .output()
            .expect("oathtool");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let server = env.serve();
    let base = format!("http://{}", server.http);
    // The password alone, or with a wrong code, is not enough (and says the same).
    assert_eq!(login(&base, "127.0.0.6", ADMIN_PASSWORD).0, 401);
    assert_eq!(
        login_with_code(&base, "127.0.0.6", ADMIN_PASSWORD, "000000").0,
        401
    );
    // The authenticator's code (oathtool computes it independently) logs in, once.
    let now = code();
    let (status, cookie) = login_with_code(&base, "127.0.0.7", ADMIN_PASSWORD, &now);
    assert_eq!((status, cookie.is_some()), (303, true));
    assert_eq!(
        login_with_code(&base, "127.0.0.7", ADMIN_PASSWORD, &now).0,
        401,
        "replayed"
    );
    // Off again: the password suffices.
    env.ok(&["admin", "totp", "admin", "--off"]);
    assert_eq!(login(&base, "127.0.0.8", ADMIN_PASSWORD).0, 303);
    let err = env.fails(&["admin", "totp", "nobody"], 2);
    assert!(err.contains("no administrator"), "{err}");
    server.stop();
}
