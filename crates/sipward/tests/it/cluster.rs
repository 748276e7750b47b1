//! Several sipward nodes on one PostgreSQL database (issue 21): each node has its own
//! data dir (the same secrets key copied in) and its own ports on loopback; the
//! database is a fresh one in the test run's cluster (`store/tests/support/pg.rs`).

use std::time::{Duration, Instant};

use crate::guard::options;
use crate::harness::Env;
use crate::peers::{Server, UdpClient, eventually};
use crate::pg;

/// Two nodes' data dirs on one new database: `a` created it (and the key), `b` was
/// given a copy of the key. `config` is both nodes' `sipward.toml`.
fn two_nodes(cluster: &pg::Cluster, config: &str) -> (Env, Env) {
    let url = cluster.fresh_database();
    let a = Env::on_postgres(&url, None);
    a.ok(&["ext", "list"]);
    let b = Env::on_postgres(&url, Some(&a));
    for env in [&a, &b] {
        std::fs::create_dir_all(&env.data).expect("data dir");
        std::fs::write(env.data.join("sipward.toml"), config).expect("config");
    }
    (a, b)
}

/// How long after `since` the node at `server` stopped answering `ip` (probing until
/// `deadline`): the start of the first unanswered probe.
fn silenced_after(server: &Server, ip: &str, since: Instant, deadline: Duration) -> Duration {
    let client = UdpClient::from_address(ip, server.sip, Duration::from_millis(200));
    let mut n = 10_000;
    loop {
        let probe_started = Instant::now();
        n += 1;
        if options(&client, n).is_none() {
            return probe_started.saturating_duration_since(since);
        }
        assert!(
            since.elapsed() < deadline,
            "{ip} still answered after {deadline:?}"
        );
    }
}

#[test]
fn a_ban_made_on_one_node_silences_the_source_on_the_other_within_a_second() {
    use crate::registrar::{ALICE, Login, PASSWORD, register, status};
    let Some(cluster) = pg::cluster() else {
        return;
    };
    let (a, b) = two_nodes(cluster, "");
    // Made on A, known to B: one registry.
    a.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "alice1001",
        "--password",
        PASSWORD,
    ]);
    let node_a = a.serve();
    let node_b = b.serve();
    let office = UdpClient::new(node_b.sip);
    assert_eq!(
        status(&register(&office, &ALICE, "office", 1, None, Some(60))),
        200,
        "B authenticates an extension added through A"
    );
    for (node, ip) in [(&node_a, "127.0.0.2"), (&node_a, "127.0.0.3")] {
        let c = UdpClient::from_address(ip, node.sip, Duration::from_secs(2));
        assert!(options(&c, 1).is_some(), "A answers {ip} before any ban");
    }

    // `sipward ban add` on B.
    b.ok(&["ban", "add", "127.0.0.2", "--for", "1h"]);
    let cli = silenced_after(&node_a, "127.0.0.2", Instant::now(), Duration::from_secs(5));
    assert!(
        cli < Duration::from_secs(1),
        "CLI ban on B reached A in {cli:?}"
    );

    // The guard on B bans a guesser (10 wrong passwords): A drops it too.
    let guesser = UdpClient::from_address("127.0.0.3", node_b.sip, Duration::from_millis(500));
    let wrong = Login {
        password: "guess",
        ..ALICE
    };
    for i in 0..10 {
        assert_eq!(
            status(&register(&guesser, &wrong, &format!("g{i}"), 1, None, None)),
            401
        );
    }
    let banned_at = Instant::now();
    let guard = silenced_after(&node_a, "127.0.0.3", banned_at, Duration::from_secs(5));
    assert!(
        guard < Duration::from_secs(1),
        "the guard's ban on B reached A in {guard:?}"
    );
    let bans = a.json(&["ban", "list", "--json"]);
    let reasons: Vec<(&str, &str)> = bans
        .as_array()
        .expect("array")
        .iter()
        .map(|b| {
            (
                b["source"].as_str().unwrap_or(""),
                b["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [("127.0.0.2", "manual"), ("127.0.0.3", "auth.failures")]
    );
    assert!(
        node_a.metric("sipward_store_hints_total") > 0,
        "A heard the database's notifications"
    );
    eprintln!("ban propagation B -> A: CLI {cli:?}, guard {guard:?}");
}

#[test]
fn a_cut_listener_and_a_database_restart_leave_no_node_stale() {
    let Some(cluster) = pg::private() else {
        return;
    };
    // A polls only every 2 s: what reaches it sooner came by notification.
    let (a, b) = two_nodes(&cluster, "[store]\npoll_ms = 2000\n");
    let db = pg::database_of(a.database.as_deref().expect("url")).to_owned();
    let node_a = a.serve();
    b.ok(&["ban", "add", "127.0.0.2", "--for", "1h"]);
    silenced_after(&node_a, "127.0.0.2", Instant::now(), Duration::from_secs(5));

    // The listening connection is cut: a ban made meanwhile still reaches A within
    // the poll, and A reconnects and reloads.
    assert_eq!(cluster.terminate(&db, "sipward-listener"), 1);
    b.ok(&["ban", "add", "127.0.0.3", "--for", "1h"]);
    let cut = silenced_after(&node_a, "127.0.0.3", Instant::now(), Duration::from_secs(5));
    assert!(cut < Duration::from_millis(2_500), "{cut:?}");
    eventually("A's listener reconnects", Duration::from_secs(10), || {
        node_a.metric("sipward_store_listener_reconnects_total") >= 1
    });

    // PostgreSQL restarts (crash-like): the nodes carry on, no ban is lost, and what
    // B writes afterwards reaches A.
    cluster.restart();
    eventually(
        "B works again after the restart",
        Duration::from_secs(20),
        || b.run(&["ban", "add", "127.0.0.4", "--for", "1h"]).code == 0,
    );
    silenced_after(&node_a, "127.0.0.4", Instant::now(), Duration::from_secs(5));
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let c = UdpClient::from_address(ip, node_a.sip, Duration::from_millis(300));
        assert!(options(&c, 7).is_none(), "{ip} is still banned on A");
    }
    eventually(
        "A's listener is back after the restart",
        Duration::from_secs(10),
        || node_a.metric("sipward_store_listener_reconnects_total") >= 2,
    );
    // Lifted on B: A lets the source in again (nothing stale either way).
    b.ok(&["ban", "remove", "127.0.0.2"]);
    let c = UdpClient::from_address("127.0.0.2", node_a.sip, Duration::from_millis(300));
    let mut n = 100;
    eventually(
        "A lifts the ban lifted on B",
        Duration::from_secs(5),
        || {
            n += 1;
            options(&c, n).is_some()
        },
    );
    node_a.stop();
}
