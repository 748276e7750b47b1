//! Bans and the allow list: records managed with the CLI, enforced by the running
//! server before it parses anything, kept across restarts.

use std::time::Duration;

use crate::harness::Env;
use crate::peers::{UdpClient, eventually};

fn options(c: &UdpClient, n: u32) -> Option<String> {
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
        Duration::from_secs(1),
        || probe(&attacker).is_none(),
    );
    assert!(probe(&office).is_some(), "others are still answered");
    assert!(server.metric("sipward_dropped_banned_total") >= 1);
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
        Duration::from_secs(2),
        || {
            m += 1;
            options(&attacker, m).is_some()
        },
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
