//! Issue #17 on the HTTP side: DNS rebinding (the Host check), the allow list over
//! /metrics and /healthz, the login lockout under concurrency and its lifting from the
//! CLI, a source holding connections open, and the real client behind a trusted proxy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::Env;
use crate::peers::{Server, eventually, require};

const PASSWORD: &str = "Console-Entry-Secret-31";

fn with_admin(config: &str) -> Env {
    let env = Env::with_config(config);
    let r = env.run_with_stdin(
        &["admin", "passwd", "--password", "-"],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    env
}

/// curl from the loopback address `ip`: (status, body).
fn curl_from(ip: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new(require("curl", "curl"))
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--interface", ip])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A login POST from `ip` with extra curl arguments: its status.
fn login(server: &Server, ip: &str, password: &str, extra: &[&str]) -> u16 {
    let url = format!("http://{}/login", server.http);
    let pw = format!("password={password}");
    let mut args = vec![
        "-X",
        "POST",
        "--data-urlencode",
        "name=admin",
        "--data-urlencode",
        &pw,
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    curl_from(ip, &args).0
}

#[test]
fn the_http_server_answers_only_its_own_names() {
    let env = with_admin("[console]\nhosts = [\"pbx.example.com\"]\n");
    let server = env.serve();
    let port = server.http.port();
    let url = |path: &str| format!("http://{}{path}", server.http);
    // A page from a name an attacker points at 127.0.0.1 (DNS rebinding): the browser
    // sends that name as Host.
    let rebound = format!("Host: rebind.attacker.example:{port}");
    for path in [
        "/metrics",
        "/api/v1/openapi.json",
        "/healthz",
        "/login",
        "/",
    ] {
        let (code, _) = curl_from("127.0.0.1", &["-H", &rebound, &url(path)]);
        assert_eq!(code, 421, "{path} (answered on main)");
    }
    // Its wrong logins reach no handler: the administrator is not locked out.
    for _ in 0..10 {
        assert_eq!(login(&server, "127.0.0.1", "guess", &["-H", &rebound]), 421);
    }
    assert_eq!(
        login(&server, "127.0.0.1", PASSWORD, &[]),
        303,
        "the administrator's own password (429 on main after five rebound guesses)"
    );
    // The configured name, the address connected to, and localhost are answered.
    for host in [
        format!("Host: pbx.example.com:{port}"),
        "Host: PBX.example.com".to_string(),
        format!("Host: localhost:{port}"),
        "Host: 127.0.0.1:9999".to_string(),
    ] {
        assert_eq!(
            curl_from("127.0.0.1", &["-H", &host, &url("/healthz")]).0,
            200,
            "{host}"
        );
    }
    assert_eq!(
        curl_from("127.0.0.1", &["-H", "Host: 127.0.0.2", &url("/healthz")]).0,
        421
    );
    assert!(server.metric("sipward_http_host_refused_total") >= 16);
}

#[test]
fn the_allow_list_covers_metrics_and_healthz_when_asked() {
    let env = with_admin("[console]\nallow = [\"127.0.0.5/32\"]\n");
    let server = env.serve();
    let url = |path: &str| format!("http://{}{path}", server.http);
    assert_eq!(
        curl_from("127.0.0.1", &[&url("/metrics")]).0,
        403,
        "(200 on main)"
    );
    let (code, body) = curl_from("127.0.0.5", &[&url("/metrics")]);
    assert_eq!(code, 200);
    assert!(body.contains("sipward_http_host_refused_total"), "{body}");
    assert_eq!(
        curl_from("127.0.0.1", &[&url("/healthz")]).0,
        200,
        "public by default"
    );
    server.stop();
    std::fs::write(
        env.data.join("sipward.toml"),
        "[console]\nallow = [\"127.0.0.5/32\"]\nhealthz = \"allow-list\"\n",
    )
    .expect("config");
    let server = env.serve();
    let url = |path: &str| format!("http://{}{path}", server.http);
    assert_eq!(curl_from("127.0.0.1", &[&url("/healthz")]).0, 403);
    assert_eq!(curl_from("127.0.0.5", &[&url("/healthz")]).0, 200);
}

/// Sends `n` wrong logins at once, from `ip(i)`; their statuses.
fn concurrent_logins(server: &Server, n: u32, ip: impl Fn(u32) -> String + Sync) -> Vec<u16> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let ip = &ip;
                s.spawn(move || login(server, &ip(i), "not-the-password", &[]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("login"))
            .collect()
    })
}

#[test]
fn concurrent_wrong_logins_get_at_most_the_limit_of_checks() {
    // Room for all 50 connections of one address at once (16 by default: the rest
    // would be closed unanswered before reaching the login).
    let env = with_admin("[http]\nconnections_per_source = 64\n");
    let server = env.serve();
    // 50 at once from one address: 5 are checked, the rest refused before any hashing.
    let codes = concurrent_logins(&server, 50, |_| "127.0.0.3".into());
    let checked = codes.iter().filter(|c| **c == 401).count();
    assert!(codes.iter().all(|c| *c == 401 || *c == 429), "{codes:?}");
    assert!(
        (1..=5).contains(&checked),
        "{checked} of 50 checked (all 50 on main): {codes:?}"
    );
    let verified = server.metric("sipward_console_logins_verified_total");
    assert_eq!(verified, checked as u64);
    assert!(
        server.metric("sipward_console_verifications_peak") <= 2,
        "at most two argon2 verifications at once"
    );
    // (Fewer than 5 when some found no verification slot in time: those count as
    // nothing.) Fill the source's window, then the right password is refused too.
    let mut more = 0;
    while login(&server, "127.0.0.3", "not-the-password", &[]) != 429 {
        more += 1;
        assert!(checked + more <= 5, "more than 5 failures from one source");
    }
    assert_eq!(
        login(&server, "127.0.0.3", PASSWORD, &[]),
        429,
        "locked out"
    );
    // Lifted from the CLI: the running server applies it at the next attempt.
    env.ok(&["admin", "unlock", "--source", "127.0.0.3"]);
    assert_eq!(login(&server, "127.0.0.3", PASSWORD, &[]), 303);
    // The per-account limit across sources: 30 addresses at once, at most 20 checks.
    let before = server.metric("sipward_console_logins_verified_total");
    let codes = concurrent_logins(&server, 30, |i| format!("127.0.1.{}", i + 1));
    let checked = server.metric("sipward_console_logins_verified_total") - before;
    assert!(checked <= 20, "{checked} checks for one account: {codes:?}");
    let mut n = 0;
    // Fill the account's window if the busy answers (no slot free) left room in it.
    while login(&server, "127.0.0.4", PASSWORD, &[]) != 429 {
        n += 1;
        assert!(n < 25, "the account never locked");
        for i in 0..5 {
            login(
                &server,
                &format!("127.0.2.{}", n * 5 + i),
                "not-the-password",
                &[],
            );
        }
    }
    env.ok(&["admin", "unlock", "admin"]);
    assert_eq!(login(&server, "127.0.0.4", PASSWORD, &[]), 303);
    let log = env.json(&["log", "--json"]);
    assert!(log.to_string().contains("admin.unlocked"), "{log}");
    // Bad input: one sentence, exit 2.
    env.fails(&["admin", "unlock"], 2);
    env.fails(&["admin", "unlock", "--source", "not-an-ip"], 2);
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("addr");
    s.bind(&local.into()).expect("bind");
    s.connect(&to.into()).expect("connect");
    s.into()
}

/// Whether the server has closed `s` (read sees the end) within `wait`.
fn closed(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // An answer (a 408) before closing is still closing.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn one_source_cannot_hold_the_http_server() {
    let env = with_admin("[http]\nconnections_per_source = 4\nheader_timeout_secs = 2\n");
    let server = env.serve();
    // 20 unfinished requests from one address (one header line, never the end).
    let mut held: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = connect_from("127.0.0.40", server.http);
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
            s
        })
        .collect();
    let open: Vec<bool> = held
        .iter_mut()
        .map(|s| !closed(s, Duration::from_millis(300)))
        .collect();
    assert_eq!(
        open.iter().filter(|o| **o).count(),
        4,
        "only the source's share stays open (all 20 on main): {open:?}"
    );
    // Everyone else is served meanwhile.
    assert_eq!(
        curl_from("127.0.0.41", &[&format!("http://{}/healthz", server.http)]).0,
        200
    );
    // The head never finishes: the deadline closes the rest (open for 35 s on main).
    let start = Instant::now();
    for (s, o) in held.iter_mut().zip(&open) {
        if *o {
            assert!(
                closed(s, Duration::from_secs(5)),
                "still open after {:?}",
                start.elapsed()
            );
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(server.metric("sipward_http_connections_refused_total") >= 16);
    // The source gets its share back once they are gone.
    eventually("the source is served again", Duration::from_secs(5), || {
        curl_from("127.0.0.40", &[&format!("http://{}/healthz", server.http)]).0 == 200
    });
}

#[test]
fn behind_a_trusted_proxy_bans_and_the_allow_list_see_the_real_client() {
    let env = with_admin(
        "[http]\ntrusted_proxies = [\"127.0.0.50\"]\n[console]\nallow = [\"198.51.100.0/24\"]\n",
    );
    let server = env.serve();
    let url = |path: &str| format!("http://{}{path}", server.http);
    let via_proxy = |client: &str, path: &str| {
        let xff = format!("X-Forwarded-For: {client}");
        curl_from("127.0.0.50", &["-H", &xff, &url(path)]).0
    };
    // The console's allow list judges the client the proxy names.
    assert_eq!(via_proxy("198.51.100.7", "/metrics"), 200);
    assert_eq!(via_proxy("203.0.113.9", "/metrics"), 403);
    assert_eq!(
        curl_from("127.0.0.50", &[&url("/metrics")]).0,
        403,
        "the proxy itself is not allowed"
    );
    // Ten wrong provisioning logins from one phone-less client through the proxy ban
    // that client only (a request without a login is only challenged, never counted).
    let wrong_login = |from: &str, xff: Option<&str>| {
        let mut args = vec!["--digest", "-u", "001565aabbcc:wrong"];
        let header = xff.map(|c| format!("X-Forwarded-For: {c}"));
        if let Some(h) = &header {
            args.extend(["-H", h.as_str()]);
        }
        let target = url("/prov/wrong/001565aabbcc.cfg");
        args.push(&target);
        curl_from(from, &args).0
    };
    for _ in 0..10 {
        wrong_login("127.0.0.50", Some("203.0.113.66"));
    }
    eventually("the client is banned", Duration::from_secs(10), || {
        env.json(&["ban", "list", "--json"])
            .to_string()
            .contains("203.0.113.66")
    });
    let bans = env.json(&["ban", "list", "--json"]);
    assert!(
        !bans.to_string().contains("127.0.0.50"),
        "the proxy (and every phone behind it) is not banned: {bans}"
    );
    assert_eq!(via_proxy("203.0.113.66", "/prov/wrong/x.cfg"), 403);
    assert_eq!(
        via_proxy("203.0.113.67", "/prov/wrong/x.cfg"),
        401,
        "others behind the proxy are answered"
    );
    // The audit log names the client of a login through the proxy.
    let xff = "X-Forwarded-For: 198.51.100.7";
    assert_eq!(login(&server, "127.0.0.50", PASSWORD, &["-H", xff]), 303);
    let log = env.json(&["log", "--json"]).to_string();
    assert!(log.contains("console, 198.51.100.7"), "{log}");
    // Forwarding headers from an address that is no listed proxy are ignored (the
    // request is judged by its own address), counted, and the advisor warns.
    for _ in 0..10 {
        wrong_login("127.0.0.51", Some("198.51.100.8"));
    }
    eventually(
        "the unlisted sender is banned itself",
        Duration::from_secs(10),
        || {
            env.json(&["ban", "list", "--json"])
                .to_string()
                .contains("127.0.0.51")
        },
    );
    assert!(
        !env.json(&["ban", "list", "--json"])
            .to_string()
            .contains("198.51.100.8")
    );
    let advice = env.json(&["advise", "--json"]).to_string();
    assert!(
        advice.contains("http.forwarded_untrusted") && advice.contains("127.0.0.51"),
        "{advice}"
    );
    assert!(server.log().contains(r#""event":"forwarded_untrusted""#));
}
