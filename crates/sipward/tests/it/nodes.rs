//! Node identity (issue 21): the name a node goes by among the nodes sharing one
//! database, on `/metrics` and never an address.

use crate::harness::Env;

fn node_line(metrics: &str) -> Option<&str> {
    metrics
        .lines()
        .find(|l| l.starts_with("sipward_node_info{"))
}

#[test]
fn the_node_name_is_on_metrics_and_the_flag_wins_over_the_file() {
    let env = Env::with_config("[cluster]\nnode = \"from-file\"\n");
    let server = env.serve_with(&["--node-name", "PBX-A"]);
    let (code, metrics) = server.http_get("/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        node_line(&metrics),
        Some("sipward_node_info{node=\"pbx-a\"} 1")
    );
    server.stop();
    // Without the flag, the file's name.
    let server = env.serve();
    let metrics = server.http_get("/metrics").1;
    assert_eq!(
        node_line(&metrics),
        Some("sipward_node_info{node=\"from-file\"} 1")
    );
    server.stop();
}

#[test]
fn without_a_name_the_host_name_names_the_node() {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    let host = host.trim().to_ascii_lowercase();
    let env = Env::new();
    let server = env.serve();
    let metrics = server.http_get("/metrics").1;
    assert_eq!(
        node_line(&metrics).map(str::to_owned),
        Some(format!("sipward_node_info{{node=\"{host}\"}} 1"))
    );
    server.stop();
}

#[test]
fn an_address_never_names_a_node() {
    let env = Env::new();
    let err = env.fails(
        &[
            "serve",
            "--sip",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--node-name",
            "10.0.0.1",
        ],
        2,
    );
    assert!(err.contains("--node-name"), "{err}");
    assert!(err.contains("IP address"), "{err}");
    // The control, a name that starts, is the test above.
}

/// Issue 21: each binding belongs to the node that holds its flow. Two nodes on one
/// PostgreSQL database, one phone of extension 1001 registered through each: each node
/// writes only its own registrations, so neither write (nor a refresh) removes the
/// other node's. Before bindings had owners, the second node's write replaced all of
/// the extension's rows with its own.
#[test]
fn each_node_keeps_its_registrations_and_leaves_the_other_nodes() {
    use crate::peers::UdpClient;
    use crate::registrar::{ALICE, PASSWORD, register, status};
    use std::time::Duration;
    let Some(cluster) = crate::pg::cluster() else {
        return;
    };
    let url = cluster.fresh_database();
    let a = Env::on_postgres(&url, None);
    a.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "alice1001",
        "--password",
        PASSWORD,
    ]);
    let b = Env::on_postgres(&url, Some(&a));
    let node_a = a.serve_with(&["--node-name", "a"]);
    let node_b = b.serve_with(&["--node-name", "b"]);
    let office = UdpClient::from_address("127.0.0.2", node_a.sip, Duration::from_secs(2));
    let home = UdpClient::from_address("127.0.0.3", node_b.sip, Duration::from_secs(2));
    let contact = |c: &UdpClient| format!("<sip:1001@{}>", c.local);
    let sources = || -> Vec<String> {
        let show = a.json(&["ext", "show", "1001", "--json"]);
        let mut s: Vec<String> = show["registrations"]
            .as_array()
            .expect("registrations")
            .iter()
            .map(|r| {
                r["source"]
                    .as_str()
                    .and_then(|s| s.split(':').next())
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        s.sort();
        s
    };
    let at_office = contact(&office);
    let at_home = contact(&home);
    assert_eq!(
        status(&register(
            &office,
            &ALICE,
            "office",
            1,
            Some(&at_office),
            Some(300)
        )),
        200
    );
    assert_eq!(
        status(&register(
            &home,
            &ALICE,
            "home",
            1,
            Some(&at_home),
            Some(300)
        )),
        200
    );
    assert_eq!(sources(), ["127.0.0.2", "127.0.0.3"], "B's write kept A's");
    // A refreshes its phone: B's stays.
    assert_eq!(
        status(&register(
            &office,
            &ALICE,
            "office",
            3,
            Some(&at_office),
            Some(300)
        )),
        200
    );
    assert_eq!(sources(), ["127.0.0.2", "127.0.0.3"], "A's write kept B's");
    node_a.stop();
    node_b.stop();
}

/// Issue 21: a node name is held by one live process. A node that stalls past the
/// name's staleness (three missed heartbeats, 15 s) may have its name claimed by a new
/// process (the operator restarted it elsewhere); when the stalled one wakes up it finds
/// the name another's, writes no binding under it (its in-memory phone would replace
/// the new process's rows) and exits with an error that says so. Control: before the
/// stall, a second process under the live name is refused (the attacker's test in
/// `attack_cluster.rs` covers that refusal in full).
#[test]
fn a_node_whose_name_was_taken_over_while_it_stalled_stops_and_writes_nothing() {
    use crate::peers::UdpClient;
    use crate::registrar::{ALICE, PASSWORD, register, status};
    use std::time::{Duration, Instant};
    let Some(cluster) = crate::pg::cluster() else {
        return;
    };
    let url = cluster.fresh_database();
    let db = crate::pg::database_of(&url).to_owned();
    let a = Env::on_postgres(&url, None);
    a.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "alice1001",
        "--password",
        PASSWORD,
    ]);
    let b = Env::on_postgres(&url, Some(&a));
    let serve = [
        "serve",
        "--sip",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--node-name",
        "pbx1",
    ];
    let mut old = a.serve_with(&["--node-name", "pbx1"]);
    let office = UdpClient::from_address("127.0.0.81", old.sip, Duration::from_secs(2));
    let at_office = format!("<sip:1001@{}>", office.local);
    assert_eq!(
        status(&register(
            &office,
            &ALICE,
            "office",
            1,
            Some(&at_office),
            Some(300)
        )),
        200
    );
    // Control: while the old process is live, the name is refused.
    let err = b.fails(&serve, 2);
    assert!(err.contains("held by another live sipward"), "{err}");

    old.signal("STOP");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let stale = cluster.psql(
            &db,
            "SELECT COUNT(*) FROM nodes WHERE name = 'pbx1' \
             AND heartbeat_at < CAST(FLOOR(EXTRACT(EPOCH FROM now())) AS BIGINT) - 16",
        );
        if stale == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pbx1's heartbeat never went stale"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let new = b.serve_with(&["--node-name", "pbx1"]);
    let home = UdpClient::from_address("127.0.0.82", new.sip, Duration::from_secs(2));
    let at_home = format!("<sip:1001@{}>", home.local);
    assert_eq!(
        status(&register(
            &home,
            &ALICE,
            "home",
            1,
            Some(&at_home),
            Some(300)
        )),
        200
    );
    // The old process wakes up and the office phone registers a new contact through it:
    // were that written under pbx1, it would replace the new process's rows of 1001.
    // (Its 200 never comes, since it waits for that write: the thread's panic is
    // expected and ignored.)
    old.signal("CONT");
    let moved = std::thread::spawn(move || {
        register(
            &office,
            &ALICE,
            "office-2",
            1,
            Some("<sip:1001@127.0.0.81:5999>"),
            Some(300),
        )
    });
    let status = old.exited_within(Duration::from_secs(20));
    let log = old.log();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the stalled process stops with an error ({status:?}):\n{log}"
    );
    let _ = moved.join();
    assert!(log.contains("node_name_lost"), "it says why:\n{log}");
    assert!(log.contains("taken over"), "{log}");
    let sources = cluster.psql(
        &db,
        "SELECT string_agg(source, ',' ORDER BY source) FROM bindings \
         WHERE number = '1001' AND node = 'pbx1'",
    );
    assert!(
        sources.contains("127.0.0.82"),
        "the new process's phone keeps its row: {sources}"
    );
    let contacts = cluster.psql(
        &db,
        "SELECT COUNT(*) FROM bindings WHERE contact LIKE '%127.0.0.81:5999%'",
    );
    assert_eq!(
        contacts, "0",
        "nothing the stalled process took was written"
    );
    new.stop();
}

/// Issue 21: only the node that holds a phone's flow sends it check-sync. Two nodes on
/// one PostgreSQL database; the phone of 1001 registers through A; 1001 is
/// Re-Generated with the CLI of B's data dir. Both nodes poll the pending re-fetch
/// requests; B, which holds no flow of 1001, must leave the request to A, and the phone
/// gets A's NOTIFY. (Before, whichever node polled first took every request: when that
/// was B, it found no registration of its own and the phone was never told.)
#[test]
fn check_sync_for_a_phone_registered_on_a_comes_from_a_when_b_regenerates_it() {
    use crate::peers::UdpClient;
    use crate::registrar::{ALICE, PASSWORD, register, status};
    use std::time::{Duration, Instant};
    let Some(cluster) = crate::pg::cluster() else {
        return;
    };
    let url = cluster.fresh_database();
    let a = Env::on_postgres(&url, None);
    a.ok(&[
        "ext",
        "add",
        "1001",
        "--auth-id",
        "alice1001",
        "--password",
        PASSWORD,
        "--mac",
        "001565aabb01",
        "--model",
        "snom D785",
    ]);
    let b = Env::on_postgres(&url, Some(&a));
    let node_a = a.serve_with(&["--node-name", "a"]);
    let node_b = b.serve_with(&["--node-name", "b"]);
    let desk = UdpClient::from_address("127.0.0.2", node_a.sip, Duration::from_secs(1));
    let contact = format!("<sip:1001@{}>", desk.local);
    assert_eq!(
        status(&register(
            &desk,
            &ALICE,
            "desk",
            1,
            Some(&contact),
            Some(300)
        )),
        200
    );
    let out = b.json(&["ext", "regenerate", "1001", "--no-email", "--json"]);
    assert_eq!(out["regenerated"][0]["resync"], true, "{out}");
    // Both nodes poll every second or so; several rounds of each pass.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut notify = None;
    while notify.is_none() && Instant::now() < deadline {
        notify = desk
            .receive()
            .filter(|m| m.starts_with("NOTIFY ") && m.contains("check-sync"));
    }
    let notify = notify.unwrap_or_else(|| {
        panic!(
            "the phone on A was never told to re-sync (sent by A: {}, by B: {})\n{}",
            node_a.metric("sipward_notify_sent_total"),
            node_b.metric("sipward_notify_sent_total"),
            node_a.log()
        )
    });
    assert!(notify.contains("Event: check-sync"), "{notify}");
    assert_eq!(
        node_b.metric("sipward_notify_sent_total"),
        0,
        "B has no flow"
    );
    node_a.stop();
    node_b.stop();
}
