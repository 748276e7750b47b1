//! Bindings owned by the node that holds their flow (issue 21), on both backends: a node
//! replaces only its own bindings, loads only its own (and unowned ones), and takes a
//! contact over from another node only with a newer registration.

#[path = "support/pg.rs"]
mod pg;

use store::account::{self, ExtensionRow};
use store::bindings::{self as b, BindingRow};
use store::nodes::{self, Claim};
use store::{Backend, PgUrl, Store};

async fn open_store(backend: Backend) -> Option<(tempfile::TempDir, Store)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = match backend {
        Backend::Sqlite => Store::open_sqlite(&dir.path().join("t.db"))
            .await
            .expect("open"),
        Backend::Postgres => {
            let url = pg::cluster()?.fresh_database();
            Store::open_postgres(&PgUrl::parse(&url).expect("url"))
                .await
                .expect("open")
        }
    };
    Some((dir, store))
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

on_both_backends!(
    each_node_writes_and_loads_only_the_bindings_it_holds,
    a_node_name_is_claimed_by_one_live_process,
    a_call_hops_only_to_a_live_node_that_holds_the_extension_and_publishes_an_address,
    a_node_takes_only_the_resyncs_of_the_phones_it_holds,
    a_burst_of_registrations_is_written_as_one_batch,
    each_node_writes_and_clears_only_its_own_calls,
);

fn extension(number: &str) -> ExtensionRow {
    ExtensionRow {
        number: number.into(),
        kind: "user".into(),
        name: "Ann".into(),
        email: None,
        auth_id: format!("a{number}"),
        sip_id: None,
        password_enc: "v1:00".into(),
        password_score: 4,
        pin_enc: "v1:00".into(),
        ha1_md5_enc: "a".into(),
        ha1_sha256_enc: "b".into(),
        mac: None,
        model: None,
        created_at: 1,
        updated_at: 1,
        credential_generation: 0,
        phone_transport: None,
        voicemail_after_secs: 20,
        voicemail_mail: true,
    }
}

fn binding(contact: &str, expires_at: i64, generation: i64) -> BindingRow {
    BindingRow {
        number: "1001".into(),
        contact: contact.into(),
        call_id: format!("call-{contact}"),
        cseq: 1,
        expires_at,
        source: "127.0.0.2:5060".into(),
        transport: "udp".into(),
        generation,
    }
}

fn contacts(rows: &[BindingRow]) -> Vec<&str> {
    let mut c: Vec<&str> = rows.iter().map(|r| r.contact.as_str()).collect();
    c.sort_unstable();
    c
}

async fn each_node_writes_and_loads_only_the_bindings_it_holds(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let g = account::insert_extension(
        &mut conn,
        &ExtensionRow {
            number: "1001".into(),
            kind: "user".into(),
            name: "Ann".into(),
            email: None,
            auth_id: "ann1001".into(),
            sip_id: None,
            password_enc: "v1:00".into(),
            password_score: 4,
            pin_enc: "v1:00".into(),
            ha1_md5_enc: "a".into(),
            ha1_sha256_enc: "b".into(),
            mac: None,
            model: None,
            created_at: 1,
            updated_at: 1,
            credential_generation: 0,
            phone_transport: None,
            voicemail_after_secs: 20,
            voicemail_mail: true,
        },
    )
    .await
    .expect("insert");
    // A binding from before nodes (unowned): any node loads it, to take it over.
    b::replace_bindings(&mut conn, "1001", &[binding("sip:old@h", 100, g)], 0)
        .await
        .expect("unowned");
    let of = |rows: Vec<BindingRow>| {
        contacts(&rows)
            .iter()
            .map(|c| (*c).to_owned())
            .collect::<Vec<_>>()
    };
    for node in ["a", "b"] {
        assert_eq!(
            of(b::live_node_bindings(&mut conn, node, 0)
                .await
                .expect("load")),
            ["sip:old@h"]
        );
    }
    // a writes it back with its own phone (it is a's now); b writes its phone.
    b::replace_node_bindings(
        &mut conn,
        "a",
        "1001",
        &[binding("sip:x@h", 100, g), binding("sip:old@h", 100, g)],
        0,
    )
    .await
    .expect("a");
    b::replace_node_bindings(&mut conn, "b", "1001", &[binding("sip:y@h", 100, g)], 0)
        .await
        .expect("b");
    assert_eq!(
        of(b::live_bindings(&mut conn, 0).await.expect("all")),
        ["sip:old@h", "sip:x@h", "sip:y@h"],
        "b's write left a's bindings alone"
    );
    assert_eq!(
        of(b::live_node_bindings(&mut conn, "a", 0).await.expect("a")),
        ["sip:old@h", "sip:x@h"]
    );
    assert_eq!(
        of(b::live_node_bindings(&mut conn, "b", 0).await.expect("b")),
        ["sip:y@h"]
    );
    // The phone behind x registers again through b (a died, or DNS moved it): b holds it.
    b::replace_node_bindings(
        &mut conn,
        "b",
        "1001",
        &[binding("sip:y@h", 100, g), binding("sip:x@h", 200, g)],
        0,
    )
    .await
    .expect("b takes x");
    assert_eq!(
        of(b::live_node_bindings(&mut conn, "b", 0).await.expect("b")),
        ["sip:x@h", "sip:y@h"]
    );
    // a, still holding its older registration, writes it back: it does not take it back.
    b::replace_node_bindings(
        &mut conn,
        "a",
        "1001",
        &[binding("sip:x@h", 100, g), binding("sip:old@h", 100, g)],
        0,
    )
    .await
    .expect("a writes a stale x");
    assert_eq!(
        of(b::live_node_bindings(&mut conn, "a", 0).await.expect("a")),
        ["sip:old@h"]
    );
    assert_eq!(
        of(b::live_node_bindings(&mut conn, "b", 0).await.expect("b")),
        ["sip:x@h", "sip:y@h"],
        "the newer registration through b stays b's"
    );
}

/// Claims `name` for `instance` at `now`, stale before `now - 15`.
async fn claim(store: &Store, name: &str, instance: &str, now: i64) -> Claim {
    let mut tx = store.begin().await.expect("begin");
    let c = nodes::claim(&mut tx, name, instance, "127.0.0.1:5070", now, now - 15)
        .await
        .expect("claim");
    tx.commit().await.expect("commit");
    c
}

async fn a_node_name_is_claimed_by_one_live_process(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    assert_eq!(
        claim(&store, "pbx1", "p1", 1000).await,
        Claim::Taken,
        "a free name"
    );
    // Control: another name is free whatever pbx1 does.
    assert_eq!(claim(&store, "pbx2", "p2", 1000).await, Claim::Taken);
    // A second process under a live name is refused, and told when it was last seen.
    assert_eq!(
        claim(&store, "pbx1", "p3", 1005).await,
        Claim::Held { heartbeat_at: 1000 }
    );
    assert!(nodes::holds(&mut conn, "pbx1", "p1").await.expect("holds"));
    assert!(!nodes::holds(&mut conn, "pbx1", "p3").await.expect("holds"));
    // Its own row is its own again (a claim repeated).
    assert_eq!(claim(&store, "pbx1", "p1", 1006).await, Claim::Taken);
    // The heartbeat keeps it live: 15 s after the claim it is still held.
    assert!(
        nodes::heartbeat(&mut conn, "pbx1", "p1", 1010)
            .await
            .expect("beat")
    );
    assert_eq!(
        claim(&store, "pbx1", "p3", 1021).await,
        Claim::Held { heartbeat_at: 1010 }
    );
    // Stalled past the staleness: the name is taken over, and the old process's next
    // heartbeat says so (it then writes nothing under it).
    assert_eq!(claim(&store, "pbx1", "p3", 1026).await, Claim::Taken);
    assert!(
        !nodes::heartbeat(&mut conn, "pbx1", "p1", 1027)
            .await
            .expect("beat")
    );
    assert!(!nodes::holds(&mut conn, "pbx1", "p1").await.expect("holds"));
    let live: Vec<(String, String)> = nodes::live_nodes(&mut conn, 1020)
        .await
        .expect("live")
        .into_iter()
        .map(|n| (n.name, n.instance))
        .collect();
    assert_eq!(
        live,
        [("pbx1".to_owned(), "p3".to_owned())],
        "pbx2 went stale"
    );
    // A clean stop gives the name up (only the holder's own row goes).
    assert!(
        !nodes::release(&mut conn, "pbx1", "p1")
            .await
            .expect("release")
    );
    assert!(
        nodes::release(&mut conn, "pbx1", "p3")
            .await
            .expect("release")
    );
    assert_eq!(claim(&store, "pbx1", "p4", 1028).await, Claim::Taken);
}

async fn a_call_hops_only_to_a_live_node_that_holds_the_extension_and_publishes_an_address(
    backend: Backend,
) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let g = account::insert_extension(
        &mut conn,
        &ExtensionRow {
            number: "1001".into(),
            kind: "user".into(),
            name: "Ann".into(),
            email: None,
            auth_id: "ann1001".into(),
            sip_id: None,
            password_enc: "v1:00".into(),
            password_score: 4,
            pin_enc: "v1:00".into(),
            ha1_md5_enc: "a".into(),
            ha1_sha256_enc: "b".into(),
            mac: None,
            model: None,
            created_at: 1,
            updated_at: 1,
            credential_generation: 0,
            phone_transport: None,
            voicemail_after_secs: 20,
            voicemail_mail: true,
        },
    )
    .await
    .expect("insert");
    // a: live, publishes a hop address. b: live, takes no hops. c: stale. d: this node.
    for (name, hop, at) in [
        ("a", "10.0.0.1:5070", 1000),
        ("b", "", 1000),
        ("c", "10.0.0.3:5070", 900),
        ("d", "10.0.0.4:5070", 1000),
    ] {
        let mut tx = store.begin().await.expect("begin");
        nodes::claim(&mut tx, name, name, hop, at, at - 15)
            .await
            .expect("claim");
        tx.commit().await.expect("commit");
    }
    for node in ["a", "b", "c", "d"] {
        let contact = format!("sip:{node}@h");
        b::replace_node_bindings(&mut conn, node, "1001", &[binding(&contact, 2000, g)], 1000)
            .await
            .expect("bind");
    }
    let hops = |own: &'static str, number: &'static str| {
        let store = store.clone();
        async move {
            let mut conn = store.conn().await.expect("conn");
            b::hops_to(&mut conn, number, own, 1000, 985)
                .await
                .expect("hops")
        }
    };
    assert_eq!(
        hops("d", "1001").await,
        [("a".to_owned(), "10.0.0.1:5070".to_owned())],
        "only the live node that holds 1001 and takes hops"
    );
    // From a, the others: d (a live node with an address), never a itself.
    assert_eq!(
        hops("a", "1001").await,
        [("d".to_owned(), "10.0.0.4:5070".to_owned())]
    );
    assert!(hops("d", "1002").await.is_empty(), "nobody holds 1002");
    // The bulk form the reload uses gives the same, for every extension at once.
    let mut conn = store.conn().await.expect("conn");
    assert_eq!(
        b::all_hops(&mut conn, "d", 1000, 985, 10)
            .await
            .expect("all"),
        [("1001".to_owned(), "10.0.0.1:5070".to_owned())]
    );
    assert_eq!(
        b::all_hops(&mut conn, "a", 1000, 985, 10)
            .await
            .expect("all"),
        [("1001".to_owned(), "10.0.0.4:5070".to_owned())]
    );
    assert!(
        b::all_hops(&mut conn, "d", 1000, 985, 0)
            .await
            .expect("all")
            .is_empty(),
        "bounded"
    );
    assert!(
        b::all_hops(&mut conn, "d", 2001, 985, 10)
            .await
            .expect("all")
            .is_empty(),
        "expired bindings lead nowhere"
    );
    drop(conn);
    // Expired bindings lead nowhere.
    let mut conn = store.conn().await.expect("conn");
    assert!(
        b::hops_to(&mut conn, "1001", "d", 2001, 985)
            .await
            .expect("hops")
            .is_empty()
    );
}

/// Check-sync is sent by the node that holds the phone's flow: a node takes the
/// re-fetch requests of extensions with a live binding of its own (or an unowned one),
/// leaves those whose phones are all on other nodes, and drops (counting them) those
/// with no live binding anywhere.
async fn a_node_takes_only_the_resyncs_of_the_phones_it_holds(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let generation = |number: &'static str| ExtensionRow {
        number: number.into(),
        kind: "user".into(),
        name: "Ann".into(),
        email: None,
        auth_id: format!("ann{number}"),
        sip_id: None,
        password_enc: "v1:00".into(),
        password_score: 4,
        pin_enc: "v1:00".into(),
        ha1_md5_enc: "a".into(),
        ha1_sha256_enc: "b".into(),
        mac: None,
        model: None,
        created_at: 1,
        updated_at: 1,
        credential_generation: 0,
        phone_transport: None,
        voicemail_after_secs: 20,
        voicemail_mail: true,
    };
    let on = |number: &str, contact: &str, expires_at: i64, g: i64| BindingRow {
        number: number.into(),
        ..binding(contact, expires_at, g)
    };
    let mut gens = Vec::new();
    for n in ["1001", "1002", "1003", "1004"] {
        let row = generation(n);
        gens.push(
            account::insert_extension(&mut conn, &row)
                .await
                .expect("insert"),
        );
    }
    // 1001 on a, 1002 on b, 1003 on both, 1004 nowhere live (its binding expired).
    b::replace_node_bindings(
        &mut conn,
        "a",
        "1001",
        &[on("1001", "sip:p1@h", 100, gens[0])],
        0,
    )
    .await
    .expect("a");
    b::replace_node_bindings(
        &mut conn,
        "b",
        "1002",
        &[on("1002", "sip:p2@h", 100, gens[1])],
        0,
    )
    .await
    .expect("b");
    b::replace_node_bindings(
        &mut conn,
        "a",
        "1003",
        &[on("1003", "sip:p3@h", 100, gens[2])],
        0,
    )
    .await
    .expect("a");
    b::replace_node_bindings(
        &mut conn,
        "b",
        "1003",
        &[on("1003", "sip:q3@h", 100, gens[2])],
        0,
    )
    .await
    .expect("b");
    b::replace_node_bindings(
        &mut conn,
        "a",
        "1004",
        &[on("1004", "sip:p4@h", 10, gens[3])],
        0,
    )
    .await
    .expect("a");
    for n in ["1001", "1002", "1003", "1004"] {
        store::provisioning::request_resync(&mut conn, n, 20)
            .await
            .expect("request");
    }
    let a = store::provisioning::take_resyncs(&mut conn, "a", 20)
        .await
        .expect("a takes");
    assert_eq!(a.numbers, ["1001", "1003"], "a's phones");
    assert_eq!(a.dropped, 1, "1004 has no live phone anywhere");
    let again = store::provisioning::take_resyncs(&mut conn, "a", 20)
        .await
        .expect("a again");
    assert_eq!(
        again,
        store::provisioning::Resyncs::default(),
        "1002 is b's"
    );
    let b = store::provisioning::take_resyncs(&mut conn, "b", 20)
        .await
        .expect("b takes");
    assert_eq!(
        b.numbers,
        ["1002", "1003"],
        "1003's phone on b hears it too"
    );
    assert_eq!(b.dropped, 0);
    // A request for 1001 while its phone is on a; the phone then leaves a (its binding
    // expires) before a takes it: b drops it, so that a dead node's requests do not
    // pile up, and a takes nothing.
    store::provisioning::request_resync(&mut conn, "1001", 20)
        .await
        .expect("request");
    let later = store::provisioning::take_resyncs(&mut conn, "b", 200)
        .await
        .expect("b later");
    assert_eq!((later.numbers.len(), later.dropped), (0, 1), "{later:?}");
    let a = store::provisioning::take_resyncs(&mut conn, "a", 200)
        .await
        .expect("a later");
    assert_eq!(a, store::provisioning::Resyncs::default());
    // Asked while 1002 had no live phone: the first node that holds one takes it, a
    // node without one leaves it.
    store::provisioning::request_resync(&mut conn, "1002", 150)
        .await
        .expect("request");
    b::replace_node_bindings(
        &mut conn,
        "b",
        "1002",
        &[on("1002", "sip:p2@h", 400, gens[1])],
        0,
    )
    .await
    .expect("b registers again");
    let a = store::provisioning::take_resyncs(&mut conn, "a", 200)
        .await
        .expect("a");
    assert_eq!(a, store::provisioning::Resyncs::default(), "not a's");
    let b = store::provisioning::take_resyncs(&mut conn, "b", 200)
        .await
        .expect("b");
    assert_eq!(b.numbers, ["1002"]);
}

/// The group commit of a burst: more extensions and rows than one statement carries, all
/// written in one call; a contact listed twice is written once (its later expiry), a row
/// of a stale generation not at all, another node's contact is taken over only by a
/// newer registration, and the node's own old rows are replaced.
async fn a_burst_of_registrations_is_written_as_one_batch(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    const N: usize = 1_100;
    let mut tx = store.begin().await.expect("begin");
    let mut generations = Vec::new();
    for i in 0..N {
        let number = format!("{}", 2000 + i);
        generations.push(
            account::insert_extension(&mut tx, &extension(&number))
                .await
                .expect("insert"),
        );
    }
    tx.commit().await.expect("commit");
    let row = |i: usize, contact: &str, expires_at: i64| BindingRow {
        number: format!("{}", 2000 + i),
        contact: contact.into(),
        call_id: format!("call-{i}-{contact}-{expires_at}"),
        cseq: 1,
        expires_at,
        source: "127.0.0.2:5060".into(),
        transport: "udp".into(),
        generation: generations[i],
    };
    let mut conn = store.conn().await.expect("conn");
    // Node b holds one contact of 2000 (expiring at 500) and one of 2001 (at 100).
    b::replace_node_bindings(&mut conn, "b", "2000", &[row(0, "sip:b@h", 500)], 0)
        .await
        .expect("b");
    b::replace_node_bindings(&mut conn, "b", "2001", &[row(1, "sip:b@h", 100)], 0)
        .await
        .expect("b");
    // Node a's old row of 2002, which the batch replaces.
    b::replace_node_bindings(&mut conn, "a", "2002", &[row(2, "sip:old@h", 900)], 0)
        .await
        .expect("a");
    let mut batch: Vec<(String, Vec<BindingRow>)> = (0..N)
        .map(|i| (format!("{}", 2000 + i), vec![row(i, "sip:a@h", 300)]))
        .collect();
    // 2000: b's contact, older here (stays b's); 2001: newer here (taken over).
    batch[0].1.push(row(0, "sip:b@h", 200));
    batch[1].1.push(row(1, "sip:b@h", 200));
    // 2003: one contact listed twice: the later expiry is written.
    batch[3].1.push(row(3, "sip:a@h", 400));
    // 2004: a row made with credentials since changed: refused.
    batch[4].1[0].generation += 1;
    let mut tx = store.begin().await.expect("begin");
    let written = b::replace_node_batch(&mut tx, "a", &batch, 0)
        .await
        .expect("batch");
    tx.commit().await.expect("commit");
    // N rows, less the refused one, plus the take-over of 2001's contact.
    assert_eq!(written, N);
    let a = b::live_node_bindings(&mut conn, "a", 0).await.expect("a");
    assert_eq!(
        a.len(),
        N,
        "every new binding stored but the refused one, and 2001's"
    );
    let find = |rows: &[BindingRow], n: &str, c: &str| {
        rows.iter()
            .find(|r| r.number == n && r.contact == c)
            .map(|r| r.expires_at)
    };
    assert_eq!(
        find(&a, "2000", "sip:b@h"),
        None,
        "b's newer contact stays b's"
    );
    assert_eq!(
        find(&a, "2001", "sip:b@h"),
        Some(200),
        "taken over by a newer one"
    );
    assert_eq!(find(&a, "2002", "sip:old@h"), None, "a's old row replaced");
    assert_eq!(
        find(&a, "2003", "sip:a@h"),
        Some(400),
        "listed twice: the later"
    );
    assert_eq!(
        find(&a, "2004", "sip:a@h"),
        None,
        "stale generation refused"
    );
    assert_eq!(find(&a, &format!("{}", 2000 + N - 1), "sip:a@h"), Some(300));
    let b_rows = b::live_node_bindings(&mut conn, "b", 0).await.expect("b");
    assert_eq!(contacts(&b_rows).len(), 1, "{b_rows:?}");
    assert_eq!(find(&b_rows, "2000", "sip:b@h"), Some(500));
    // An empty list removes the node's rows of that extension (and only the node's).
    let mut tx = store.begin().await.expect("begin");
    b::replace_node_batch(
        &mut tx,
        "a",
        &[("2000".into(), Vec::new()), ("2001".into(), Vec::new())],
        0,
    )
    .await
    .expect("remove");
    tx.commit().await.expect("commit");
    let all = b::live_bindings(&mut conn, 0).await.expect("live");
    assert_eq!(
        all.len(),
        N - 2,
        "a's three rows of them gone, b's one stays"
    );
    assert_eq!(find(&all, "2000", "sip:b@h"), Some(500));
}

/// Two nodes count their calls from 1: each writes and clears only its own part of the
/// active calls (a shared key or a whole-table replace would erase the other's calls,
/// or fail on the same id); the snapshot is as old as its oldest writer.
async fn each_node_writes_and_clears_only_its_own_calls(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let call = |caller: &str| store::trunks::ActiveCallRow {
        id: "1".into(),
        caller: caller.into(),
        callee: "004930555".into(),
        kind: "outbound".into(),
        trunk: "pstn".into(),
        state: "answered".into(),
        started_at: 5,
        answered_at: 6,
    };
    let (none, at) = store::trunks::active_calls(&mut conn).await.expect("read");
    assert_eq!((none.len(), at), (0, 0), "no node wrote");
    store::trunks::replace_active_calls(&mut conn, "a", &[call("1001")], 100)
        .await
        .expect("a");
    store::trunks::replace_active_calls(&mut conn, "b", &[call("1002")], 90)
        .await
        .expect("b, the same call id");
    let (calls, at) = store::trunks::active_calls(&mut conn).await.expect("read");
    let callers: Vec<_> = calls.iter().map(|c| c.caller.as_str()).collect();
    assert_eq!((callers, at), (vec!["1001", "1002"], 90));
    store::trunks::replace_active_calls(&mut conn, "a", &[], 110)
        .await
        .expect("a's call ended");
    let (calls, at) = store::trunks::active_calls(&mut conn).await.expect("read");
    assert_eq!((calls, at), (vec![call("1002")], 90), "b's call stays");
    store::trunks::replace_active_calls(&mut conn, "b", &[], 0)
        .await
        .expect("b stops");
    let (calls, at) = store::trunks::active_calls(&mut conn).await.expect("read");
    assert_eq!((calls.len(), at), (0, 110), "a still writes");
}
