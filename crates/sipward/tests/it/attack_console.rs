//! Attacks on the HTTP door of issue #17 from outside: who the server thinks a client is
//! behind a trusted reverse proxy, and Host header variants against the DNS rebinding
//! check.
//!
//! A reverse proxy such as nginx (`proxy_set_header X-Forwarded-For
//! $proxy_add_x_forwarded_for`) or HAProxy (`option forwardfor`) appends the client's
//! address to `X-Forwarded-For` and passes every other header through untouched,
//! `Forwarded` included: that one is whatever the client wrote. The tests play the proxy
//! with curl bound to its address, sending exactly what such a proxy forwards.

use std::process::Command;
use std::time::Duration;

use crate::harness::Env;
use crate::peers::{eventually, require};

const PASSWORD: &str = "Console-Attack-Secret-47";
const PROXY: &str = "127.0.0.60";

fn with_admin(config: &str) -> Env {
    let env = Env::with_config(config);
    let r = env.run_with_stdin(
        &["admin", "passwd", "--password", "-"],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    env
}

/// curl from the loopback address `ip`: the status.
fn curl_from(ip: &str, args: &[&str]) -> u16 {
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
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// What the proxy forwards for a client at `real` that wrote `client_headers` itself.
fn through_proxy(real: &str, client_headers: &[&str], url: &str, extra: &[&str]) -> u16 {
    let xff = format!("X-Forwarded-For: {real}");
    let mut args: Vec<&str> = vec!["-H", &xff];
    for h in client_headers {
        args.extend(["-H", h]);
    }
    args.extend_from_slice(extra);
    args.push(url);
    curl_from(PROXY, &args)
}

/// A client behind the proxy names itself in a `Forwarded` header, which the proxy
/// passes on; the proxy's own `X-Forwarded-For` names its real address. sipward judges
/// the `Forwarded` one: any client reads `/metrics` by naming an allow-listed address.
#[test]
fn a_client_behind_the_proxy_cannot_choose_its_address_with_forwarded() {
    let env = with_admin(&format!(
        "[http]\ntrusted_proxies = [\"{PROXY}\"]\n[console]\nallow = [\"198.51.100.0/24\"]\n"
    ));
    let server = env.serve();
    let url = format!("http://{}/metrics", server.http);
    // Controls: the proxy's header decides as documented.
    assert_eq!(through_proxy("198.51.100.7", &[], &url, &[]), 200);
    assert_eq!(through_proxy("203.0.113.9", &[], &url, &[]), 403);
    // The attack: the client at 203.0.113.9 writes a Forwarded header of its own.
    let forged = through_proxy("203.0.113.9", &["Forwarded: for=198.51.100.7"], &url, &[]);
    server.stop();
    assert_eq!(
        forged, 403,
        "a client at 203.0.113.9 read /metrics by writing `Forwarded: for=198.51.100.7` \
         (the proxy's X-Forwarded-For, which names it, was ignored)"
    );
}

/// The same header turned the other way: `Forwarded: for=unknown` (a valid RFC 7239
/// obfuscated node) makes sipward judge the request as the proxy's own address, so ten
/// wrong provisioning logins from one client anywhere put the proxy's address in the
/// ban list (the kernel filter and the SIP door use that list too), as on main before
/// #17; and the client itself is never banned.
#[test]
fn a_client_behind_the_proxy_cannot_get_the_proxy_banned() {
    let env = with_admin(&format!("[http]\ntrusted_proxies = [\"{PROXY}\"]\n"));
    let server = env.serve();
    let url = format!("http://{}/prov/wrong/001565aabbcc.cfg", server.http);
    let login = ["--digest", "-u", "001565aabbcc:wrong"];
    // Control: without the header, the client itself is banned.
    for _ in 0..10 {
        through_proxy("203.0.113.66", &[], &url, &login);
    }
    eventually("the client is banned", Duration::from_secs(10), || {
        env.json(&["ban", "list", "--json"])
            .to_string()
            .contains("203.0.113.66")
    });
    // The attack, from another client.
    for _ in 0..10 {
        through_proxy("203.0.113.77", &["Forwarded: for=unknown"], &url, &login);
    }
    // Its failures are counted against someone: wait until they are (the client, or
    // the stand-in in the discard prefix 100::/64 that unknown clients of the proxy
    // are judged as), or until the proxy shows up in the ban list.
    let mut banned = String::new();
    eventually(
        "the attack's failures are judged",
        Duration::from_secs(10),
        || {
            banned = env.json(&["ban", "list", "--json"]).to_string();
            banned.contains("203.0.113.77") || banned.contains("100::") || banned.contains(PROXY)
        },
    );
    let phone = through_proxy("198.51.100.20", &[], &url, &[]);
    server.stop();
    assert!(
        !banned.contains(PROXY),
        "ten wrong logins with `Forwarded: for=unknown` from 203.0.113.77 banned the proxy's \
         address {PROXY}, not the client (a remote phone behind it gets {phone}): {banned}"
    );
}

/// Host header variants against the DNS rebinding check: each names no configured host,
/// or names the server in a form a rebinding page cannot make a browser send. Those
/// that are no name of the server must be refused; loopback forms are answered.
#[test]
fn host_header_variants_do_not_pass_the_rebinding_check() {
    let env = with_admin("[console]\nhosts = [\"pbx.example.com\"]\n");
    let server = env.serve();
    let port = server.http.port();
    let url = format!("http://{}/api/v1/openapi.json", server.http);
    let refused = [
        format!("rebind.attacker.example:{port}"),
        format!("REBIND.attacker.example:{port}"),
        format!("pbx.example.com.attacker.example:{port}"),
        format!("pbx.example.com.:{port}"),
        format!("localhost.:{port}"),
        format!("localhost.attacker.example:{port}"),
        format!("127.0.0.1.attacker.example:{port}"),
        format!("[fe80::1%25lo]:{port}"),
        "127.0.0.2".to_owned(),
        format!("pbx.example.com@rebind.attacker.example:{port}"),
        String::new(),
    ];
    let mut leaked = Vec::new();
    for host in &refused {
        let h = format!("Host: {host}");
        let code = curl_from("127.0.0.1", &["-H", &h, &url]);
        if code != 421 && code != 400 {
            leaked.push(format!("Host `{host}` -> {code}"));
        }
    }
    // Absolute-form request target naming the attacker, with an accepted Host.
    let code = curl_from(
        "127.0.0.1",
        &[
            "--request-target",
            &format!("http://rebind.attacker.example:{port}/api/v1/openapi.json"),
            "-H",
            &format!("Host: 127.0.0.1:{port}"),
            &url,
        ],
    );
    if code != 421 && code != 400 {
        leaked.push(format!("absolute-form target at the attacker -> {code}"));
    }
    // Controls: the server's own names.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("LOCALHOST:{port}"),
        format!("PBX.Example.COM:{port}"),
        "pbx.example.com".to_owned(),
    ] {
        let h = format!("Host: {host}");
        assert_eq!(
            curl_from("127.0.0.1", &["-H", &h, &url]),
            200,
            "control: Host `{host}`"
        );
    }
    server.stop();
    assert!(leaked.is_empty(), "answered: {leaked:#?}");
}
