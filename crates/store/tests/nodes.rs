//! Bindings owned by the node that holds their flow (issue 21), on both backends: a node
//! replaces only its own bindings, loads only its own (and unowned ones), and takes a
//! contact over from another node only with a newer registration.

#[path = "support/pg.rs"]
mod pg;

use store::account::{self, ExtensionRow};
use store::bindings::{self as b, BindingRow};
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
    a_node_takes_only_the_resyncs_of_the_phones_it_holds,
);

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
    assert_eq!(b.numbers, ["1002"]);
    assert_eq!(b.dropped, 0);
}
