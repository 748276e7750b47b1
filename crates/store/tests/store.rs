//! Store tests, each run on both backends: a real SQLite file and a database of its own
//! in the test run's PostgreSQL cluster (`support/pg.rs`).

#[path = "support/pg.rs"]
mod pg;

use store::account::{self, ExtensionRow, GatewayRow};
use store::{Backend, Error, PgUrl, Store};

fn ext(number: &str, auth_id: &str) -> ExtensionRow {
    ExtensionRow {
        number: number.into(),
        kind: "user".into(),
        name: "Ann".into(),
        email: None,
        auth_id: auth_id.into(),
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

async fn extension_round_trip_and_conflicts(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let mut a = ext("1001", "authA");
    a.credential_generation = account::insert_extension(&mut conn, &a)
        .await
        .expect("insert");
    assert!(a.credential_generation > 0, "drawn by the store");
    assert_eq!(
        account::get_extension(&mut conn, "1001")
            .await
            .expect("get"),
        Some(a.clone())
    );

    let dup = account::insert_extension(&mut conn, &ext("1001", "authB")).await;
    assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
    let dup_auth = account::insert_extension(&mut conn, &ext("1002", "authA")).await;
    assert!(
        matches!(dup_auth, Err(Error::Conflict { .. })),
        "{dup_auth:?}"
    );

    let mut b = a.clone();
    b.name = "Bea".into();
    b.updated_at = 2;
    assert!(
        account::update_extension(&mut conn, &b)
            .await
            .expect("update")
    );
    assert_eq!(
        account::get_extension(&mut conn, "1001")
            .await
            .expect("get")
            .map(|e| e.name),
        Some("Bea".into())
    );
    assert!(
        !account::update_extension(&mut conn, &ext("9999", "x"))
            .await
            .expect("absent")
    );

    account::insert_gateway(
        &mut conn,
        &GatewayRow {
            name: "gw1".into(),
            vendor: "generic".into(),
            number: "4001".into(),
            auth_id: "gwauth".into(),
            password_enc: "v1:00".into(),
            password_score: 4,
            ha1_md5_enc: "a".into(),
            ha1_sha256_enc: "b".into(),
            host: "192.0.2.1".into(),
            created_at: 1,
            updated_at: 1,
        },
    )
    .await
    .expect("gateway");
    assert_eq!(
        account::auth_id_owner(&mut conn, "gwauth")
            .await
            .expect("owner")
            .as_deref(),
        Some("gateway:gw1")
    );
    assert_eq!(
        account::auth_id_owner(&mut conn, "authA")
            .await
            .expect("owner")
            .as_deref(),
        Some("ext:1001")
    );
    assert_eq!(
        account::number_owner(&mut conn, "4001")
            .await
            .expect("owner")
            .as_deref(),
        Some("gateway:gw1")
    );
    assert_eq!(
        account::number_owner(&mut conn, "5000")
            .await
            .expect("owner"),
        None
    );

    assert!(
        account::delete_extension(&mut conn, "1001")
            .await
            .expect("delete")
    );
    assert!(
        !account::delete_extension(&mut conn, "1001")
            .await
            .expect("gone")
    );
    assert_eq!(
        account::count_extensions(&mut conn).await.expect("count"),
        0
    );

    store::meta::set_meta(&mut conn, "k", "v1")
        .await
        .expect("meta");
    store::meta::set_meta(&mut conn, "k", "v2")
        .await
        .expect("meta upsert");
    assert_eq!(
        store::meta::get_meta(&mut conn, "k")
            .await
            .expect("meta")
            .as_deref(),
        Some("v2")
    );
}

#[tokio::test]
async fn a_corrupt_file_is_reported_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    std::fs::write(&path, vec![0x5a; 8192]).expect("write junk");
    let err = Store::open_sqlite(&path).await.expect_err("must refuse");
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.is_operator_error());
    assert!(
        err.to_string().contains("not a valid sipward database"),
        "{err}"
    );
}

async fn a_transaction_rolls_back_as_a_whole(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut tx = store.begin().await.expect("begin");
    account::insert_extension(&mut tx, &ext("1001", "a1"))
        .await
        .expect("insert");
    assert!(
        account::insert_extension(&mut tx, &ext("1001", "a2"))
            .await
            .is_err()
    );
    drop(tx); // rolled back
    let mut conn = store.conn().await.expect("conn");
    assert_eq!(
        account::count_extensions(&mut conn).await.expect("count"),
        0
    );
}

async fn ban_records_keep_first_seen_and_old_ones_are_pruned(backend: Backend) {
    use store::guard::{self as g, BanRow};
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let ban = |source: &str, seen: i64, expires_at: i64, times: i64| BanRow {
        source: source.into(),
        reason: "auth.failures".into(),
        detail: "d".into(),
        first_seen: seen,
        last_seen: seen,
        expires_at,
        times,
    };
    g::put_ban(&mut conn, &ban("192.0.2.1", 100, 200, 1))
        .await
        .expect("put");
    g::put_ban(&mut conn, &ban("192.0.2.1", 500, 900, 2))
        .await
        .expect("update");
    let b = g::get_ban(&mut conn, "192.0.2.1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (b.first_seen, b.last_seen, b.expires_at, b.times),
        (100, 500, 900, 2),
        "first_seen is kept"
    );
    assert_eq!(g::get_ban(&mut conn, "192.0.2.2").await.expect("get"), None);
    g::put_ban(&mut conn, &ban("192.0.2.3", 0, 50, 1))
        .await
        .expect("put");
    assert_eq!(g::prune_bans(&mut conn, 100).await.expect("prune"), 1);
    assert_eq!(g::bans(&mut conn, None).await.expect("all").len(), 1);
    assert_eq!(
        g::bans(&mut conn, Some(900)).await.expect("in force").len(),
        0,
        "expired at 900"
    );
}

/// A fresh store on `backend` (and the temp dir its SQLite file lives in); `None` when
/// PostgreSQL is not installed and CI does not require it.
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
    assert_eq!(store.backend(), backend);
    Some((dir, store))
}

/// Runs each named test (an `async fn(Backend)`) once per backend.
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
    extension_round_trip_and_conflicts,
    a_transaction_rolls_back_as_a_whole,
    ban_records_keep_first_seen_and_old_ones_are_pruned,
    bindings_belong_to_their_extension_and_its_credential_generation,
    a_grace_window_keeps_the_old_generation_until_it_ends,
    the_group_commit_binds_each_value_to_its_column,
    withdrawn_mails_stay_withdrawn_even_when_claimed,
    a_phone_lookup_returns_one_row_either_way,
    failure_counts_add_up_per_account_over_other_nodes,
    more_accounts_under_attack_than_a_read_holds_are_all_seen_page_by_page,
    voicemail_boxes_and_messages_belong_to_their_extension,
    the_audit_reads_every_extension_once_a_page_at_a_time,
);

async fn failure_counts_add_up_per_account_over_other_nodes(backend: Backend) {
    use store::failures::{self as f, FailureDelta};
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let d = |auth_id: &str, minute: i64, count: i64| FailureDelta {
        auth_id: auth_id.into(),
        minute,
        count,
    };
    f::add_auth_failures(&mut conn, "a", &[d("1001", 10, 3), d("1002", 10, 1)])
        .await
        .expect("a");
    f::add_auth_failures(&mut conn, "a", &[d("1001", 10, 2), d("1001", 11, 4)])
        .await
        .expect("a again: added, not replaced");
    f::add_auth_failures(&mut conn, "b", &[d("1001", 11, 5)])
        .await
        .expect("b");
    let seen_by = |node: &'static str, since: i64| {
        let store = store.clone();
        async move {
            let mut c = store.conn().await.expect("conn");
            f::others_auth_failures(&mut c, node, since, 100)
                .await
                .expect("others")
        }
    };
    assert_eq!(
        seen_by("b", 0).await,
        [("1001".to_owned(), 9), ("1002".to_owned(), 1)]
    );
    assert_eq!(seen_by("a", 0).await, [("1001".to_owned(), 5)]);
    assert_eq!(
        seen_by("c", 11).await,
        [("1001".to_owned(), 9)],
        "minute 10 is out of the window"
    );
    let mut c = store.conn().await.expect("conn");
    assert_eq!(
        f::others_auth_failures(&mut c, "c", 0, 1)
            .await
            .expect("top")
            .len(),
        1,
        "bounded"
    );
    assert_eq!(f::prune_auth_failures(&mut c, 11).await.expect("prune"), 2);
    assert_eq!(seen_by("c", 0).await, [("1001".to_owned(), 9)]);
}

/// More accounts under attack than one bounded read holds (10,050 against a bound of
/// 10,000): the most-failed-first read never returns the least-failed accounts (the
/// control), and paging in auth ID order after a cursor reaches every one of them, each
/// once, in two bounded pages.
async fn more_accounts_under_attack_than_a_read_holds_are_all_seen_page_by_page(backend: Backend) {
    use store::failures::{self as f, FailureDelta};
    const BOUND: i64 = 10_000;
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    // Node b's failures: 10,000 accounts with 2 each, 50 with 1 (the long tail).
    let deltas: Vec<FailureDelta> = (0..10_050)
        .map(|i| FailureDelta {
            auth_id: format!("u{i:05}"),
            minute: 10,
            count: if i % 201 == 0 { 1 } else { 2 },
        })
        .collect();
    let tail: Vec<String> = deltas
        .iter()
        .filter(|d| d.count == 1)
        .map(|d| d.auth_id.clone())
        .collect();
    assert_eq!(tail.len(), 50);
    let mut tx = store.begin().await.expect("begin");
    f::add_auth_failures(&mut tx, "b", &deltas)
        .await
        .expect("b's failures");
    tx.commit().await.expect("commit");
    let mut c = store.conn().await.expect("conn");
    let top = f::others_auth_failures(&mut c, "a", 0, BOUND)
        .await
        .expect("top");
    assert_eq!(top.len(), 10_000);
    assert!(
        !top.iter().any(|(id, _)| tail.contains(id)),
        "control: the most-failed-first read never sees the tail"
    );
    let mut cursor = String::new();
    let mut seen = std::collections::HashMap::new();
    let mut pages = 0;
    loop {
        let page = f::others_auth_failures_after(&mut c, "a", 0, &cursor, BOUND)
            .await
            .expect("page");
        pages += 1;
        assert!(page.len() <= 10_000, "bounded");
        for (id, n) in &page {
            assert!(seen.insert(id.clone(), *n).is_none(), "{id} read twice");
        }
        match page.last() {
            Some((id, _)) if page.len() == 10_000 => cursor.clone_from(id),
            _ => break,
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(seen.len(), 10_050, "every account under attack");
    assert!(tail.iter().all(|id| seen.get(id) == Some(&1)));
    assert!(
        f::others_auth_failures_after(&mut c, "b", 0, "", BOUND)
            .await
            .expect("b's own")
            .is_empty(),
        "a node's own failures are not the others'"
    );
}

/// The audit's pages: bounded, in number order, each extension once, the cursor the
/// last number read, and an empty page (no cursor) after the last.
async fn the_audit_reads_every_extension_once_a_page_at_a_time(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let empty = account::list_extensions_for_audit(&mut conn, "", 2)
        .await
        .expect("empty");
    assert!(empty.rows.is_empty() && empty.last.is_none());
    // Inserted out of order; numbers of different lengths sort as text.
    for (n, number) in ["205", "1001", "30", "1002", "9"].iter().enumerate() {
        let mut e = ext(number, &format!("auth{n}"));
        if *number == "30" {
            e.email = Some("ann@example.com".into());
            e.sip_id = Some("ann".into());
        }
        account::insert_extension(&mut conn, &e)
            .await
            .expect("insert");
    }
    let mut cursor = String::new();
    let mut pages = Vec::new();
    loop {
        let page = account::list_extensions_for_audit(&mut conn, &cursor, 2)
            .await
            .expect("page");
        let Some(last) = page.last else {
            assert!(page.rows.is_empty());
            break;
        };
        assert!(page.rows.len() <= 2, "bounded");
        assert_eq!(
            page.rows.last().map(|r| r.number.as_str()),
            Some(last.as_str())
        );
        pages.push(page.rows);
        cursor = last;
    }
    let numbers: Vec<Vec<&str>> = pages
        .iter()
        .map(|p| p.iter().map(|r| r.number.as_str()).collect())
        .collect();
    assert_eq!(
        numbers,
        [vec!["1001", "1002"], vec!["205", "30"], vec!["9"]]
    );
    let thirty = &pages[1][1];
    assert_eq!(
        (
            thirty.email.as_deref(),
            thirty.sip_id.as_deref(),
            thirty.auth_id.as_str()
        ),
        (Some("ann@example.com"), Some("ann"), "auth2")
    );
    assert_eq!(
        (thirty.password_enc.as_str(), thirty.password_score),
        ("v1:00", 4)
    );
}

/// The two migration sets may differ in dialect, never in what they declare: the same
/// tables with the same columns (what `store copy` and backups rely on).
#[tokio::test]
async fn both_schemas_declare_the_same_tables_and_columns() {
    let Some((_a, sqlite)) = open_store(Backend::Sqlite).await else {
        return;
    };
    let Some((_b, postgres)) = open_store(Backend::Postgres).await else {
        return;
    };
    let a = sqlite.schema_columns().await.expect("sqlite columns");
    let b = postgres.schema_columns().await.expect("postgres columns");
    assert!(a.len() > 50, "{a:?}");
    assert_eq!(a, b);
    assert_eq!(
        sqlite.schema_version().await.expect("v"),
        postgres.schema_version().await.expect("v")
    );
}

fn binding(number: &str, contact: &str, generation: i64) -> store::bindings::BindingRow {
    store::bindings::BindingRow {
        number: number.into(),
        contact: contact.into(),
        call_id: "c".into(),
        cseq: 1,
        expires_at: 1000,
        source: "127.0.0.2:5060".into(),
        transport: "udp".into(),
        generation,
    }
}

fn contacts(rows: &[store::bindings::BindingRow]) -> Vec<&str> {
    rows.iter().map(|b| b.contact.as_str()).collect()
}

async fn bindings_belong_to_their_extension_and_its_credential_generation(backend: Backend) {
    use store::bindings as b;
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let g1 = account::insert_extension(&mut conn, &ext("1001", "a1"))
        .await
        .expect("insert");
    assert_eq!(
        b::replace_bindings(&mut conn, "1001", &[binding("1001", "sip:a@h", g1)], 0)
            .await
            .expect("write"),
        1
    );
    assert_eq!(
        contacts(&b::live_bindings(&mut conn, 0).await.expect("live")),
        ["sip:a@h"]
    );
    assert_eq!(
        b::count_live_bindings(&mut conn, 0).await.expect("count"),
        1
    );

    // New credentials: the binding made with the old ones is neither read nor written.
    let g2 = account::renew_credentials(&mut conn, "1001")
        .await
        .expect("renew")
        .expect("exists");
    assert!(g2 > g1);
    assert!(
        b::bindings_of(&mut conn, "1001", 0)
            .await
            .expect("of")
            .is_empty()
    );
    assert_eq!(
        b::count_live_bindings(&mut conn, 0).await.expect("count"),
        0,
        "the count leaves out what the list leaves out"
    );
    assert_eq!(
        b::replace_bindings(&mut conn, "1001", &[binding("1001", "sip:a@h", g1)], 0)
            .await
            .expect("write"),
        0,
        "a running server's stale binding is refused"
    );
    b::replace_bindings(&mut conn, "1001", &[binding("1001", "sip:new@h", g2)], 0)
        .await
        .expect("write");
    assert_eq!(
        contacts(&b::bindings_of(&mut conn, "1001", 0).await.expect("of")),
        ["sip:new@h"]
    );

    // Removed: its bindings go with it; the number added again never gets them back.
    assert!(
        account::delete_extension(&mut conn, "1001")
            .await
            .expect("delete")
    );
    assert!(
        b::live_bindings(&mut conn, 0)
            .await
            .expect("live")
            .is_empty()
    );
    assert_eq!(
        b::replace_bindings(&mut conn, "1001", &[binding("1001", "sip:new@h", g2)], 0)
            .await
            .expect("write"),
        0,
        "no extension: nothing written (and no foreign-key error)"
    );
    let g3 = account::insert_extension(&mut conn, &ext("1001", "other"))
        .await
        .expect("re-add");
    assert!(g3 > g2, "a re-added number gets a generation never used");
    assert_eq!(
        b::replace_bindings(&mut conn, "1001", &[binding("1001", "sip:new@h", g2)], 0)
            .await
            .expect("write"),
        0,
        "the previous owner's binding stays out"
    );
    assert!(
        b::bindings_of(&mut conn, "1001", 0)
            .await
            .expect("of")
            .is_empty()
    );
}

async fn a_grace_window_keeps_the_old_generation_until_it_ends(backend: Backend) {
    use store::bindings as b;
    use store::grace::{self, GraceRow};
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let g1 = account::insert_extension(&mut conn, &ext("1001", "a1"))
        .await
        .expect("insert");
    b::replace_bindings(&mut conn, "1001", &[binding("1001", "sip:a@h", g1)], 0)
        .await
        .expect("write");
    let g2 = account::renew_credentials(&mut conn, "1001")
        .await
        .expect("renew")
        .expect("exists");
    grace::put_grace(
        &mut conn,
        &GraceRow {
            number: "1001".into(),
            auth_id: "a1".into(),
            ha1_md5_enc: "m".into(),
            ha1_sha256_enc: "s".into(),
            sources: "127.0.0.2".into(),
            expires_at: 500,
            generation: g1,
            prov_user: String::new(),
            prov_ha1_md5_enc: String::new(),
            prov_ha1_sha256_enc: String::new(),
        },
    )
    .await
    .expect("grace");
    let phone = binding("1001", "sip:new@h", g2);
    b::replace_bindings(
        &mut conn,
        "1001",
        &[binding("1001", "sip:a@h", g1), phone],
        0,
    )
    .await
    .expect("write");
    assert_eq!(
        b::bindings_of(&mut conn, "1001", 0)
            .await
            .expect("of")
            .len(),
        2,
        "both held"
    );
    assert_eq!(
        b::bindings_of(&mut conn, "1001", 500)
            .await
            .expect("of")
            .len(),
        1,
        "an expired window backs nothing"
    );
    // The new login ends the window: the old binding goes with it.
    grace::end_graces(&mut conn, &["1001".into()], 10)
        .await
        .expect("end");
    assert_eq!(
        b::delete_expired_bindings(&mut conn, 10)
            .await
            .expect("sweep"),
        0,
        "already gone"
    );
    assert_eq!(
        contacts(&b::bindings_of(&mut conn, "1001", 10).await.expect("of")),
        ["sip:new@h"]
    );
}

/// The group commit's statements number their parameters in the order of the text
/// (`?` on SQLite, `$n` on PostgreSQL): every column read back is the value given, the
/// node is the writer's, and the time (`now`, bound last) is what ends a grace window:
/// a row of the old generation is written before the window ends and refused after.
async fn the_group_commit_binds_each_value_to_its_column(backend: Backend) {
    use store::bindings as b;
    use store::grace::{self, GraceRow};
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let g1 = account::insert_extension(&mut conn, &ext("1001", "a1"))
        .await
        .expect("insert");
    let g2 = account::renew_credentials(&mut conn, "1001")
        .await
        .expect("renew")
        .expect("exists");
    let other = account::insert_extension(&mut conn, &ext("1002", "a2"))
        .await
        .expect("insert");
    grace::put_grace(
        &mut conn,
        &GraceRow {
            number: "1001".into(),
            auth_id: "a1".into(),
            ha1_md5_enc: "m".into(),
            ha1_sha256_enc: "s".into(),
            sources: "127.0.0.2".into(),
            expires_at: 500,
            generation: g1,
            prov_user: String::new(),
            prov_ha1_md5_enc: String::new(),
            prov_ha1_sha256_enc: String::new(),
        },
    )
    .await
    .expect("grace");
    let row = |number: &str, contact: &str, n: i64, generation: i64| b::BindingRow {
        number: number.into(),
        contact: contact.into(),
        call_id: format!("call-{n}"),
        cseq: 7 + n,
        expires_at: 10_000 + n,
        source: format!("192.0.2.{n}:50{n}0"),
        transport: if n % 2 == 0 { "udp" } else { "tcp" }.into(),
        generation,
    };
    let batch = || {
        vec![
            (
                "1001".to_owned(),
                vec![
                    row("1001", "sip:new@h", 1, g2),
                    row("1001", "sip:old@h", 2, g1),
                ],
            ),
            ("1002".to_owned(), vec![row("1002", "sip:b@h", 3, other)]),
        ]
    };
    // After the window (now 600): the old generation's row is refused.
    let mut tx = store.begin().await.expect("begin");
    let written = b::replace_node_batch(&mut tx, "node-x", &batch(), 600)
        .await
        .expect("batch");
    tx.commit().await.expect("commit");
    assert_eq!(written, 2, "the window ended at 500: the old row refused");
    let mut got = b::live_node_bindings(&mut conn, "node-x", 0)
        .await
        .expect("read");
    got.sort_by(|x, y| x.contact.cmp(&y.contact));
    assert_eq!(
        got,
        vec![
            row("1002", "sip:b@h", 3, other),
            row("1001", "sip:new@h", 1, g2)
        ],
        "every column as given"
    );
    assert!(
        b::live_node_bindings(&mut conn, "node-y", 0)
            .await
            .expect("read")
            .is_empty(),
        "written as node-x's"
    );
    // Inside the window (now 400): written too.
    let mut tx = store.begin().await.expect("begin");
    let written = b::replace_node_batch(&mut tx, "node-x", &batch(), 400)
        .await
        .expect("batch");
    tx.commit().await.expect("commit");
    assert_eq!(written, 3, "inside the window the old row is kept");
    let got = b::live_node_bindings(&mut conn, "node-x", 0)
        .await
        .expect("read");
    assert!(got.contains(&row("1001", "sip:old@h", 2, g1)), "{got:?}");
}

async fn withdrawn_mails_stay_withdrawn_even_when_claimed(backend: Backend) {
    use store::outbox::{self as o, OutboxRow};
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let mail = |id: &str| OutboxRow {
        id: id.into(),
        number: "1001".into(),
        recipient: "a@example.com".into(),
        message_enc: "v1:00".into(),
        state: "queued".into(),
        attempts: 0,
        next_attempt_at: 0,
        lease_until: 0,
        last_error: String::new(),
        created_at: 0,
        sent_at: 0,
        basis: "b".into(),
    };
    o::insert_mail(&mut conn, &mail("m1")).await.expect("m1");
    o::insert_mail(&mut conn, &mail("m2")).await.expect("m2");
    // m1's sender claims it and dies; m2 waits.
    assert!(
        o::claim_mail(&mut conn, "m1", 10, 130)
            .await
            .expect("claim")
    );
    assert_eq!(
        o::supersede_mail(&mut conn, "1001")
            .await
            .expect("supersede"),
        2
    );
    // Its lease runs out: nothing is due, and a late finish does not bring it back.
    assert!(
        o::due_mail(&mut conn, 1000, 10)
            .await
            .expect("due")
            .is_empty()
    );
    o::finish_mail(&mut conn, "m1", "queued", 0, "retry", 1000)
        .await
        .expect("finish");
    let states: Vec<String> = o::list_mail(&mut conn)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.state)
        .collect();
    assert_eq!(states, ["superseded", "superseded"]);
    // A send that did go out is recorded as sent.
    o::finish_mail(&mut conn, "m2", "sent", 0, "", 1000)
        .await
        .expect("sent");
    assert!(
        o::list_mail(&mut conn)
            .await
            .expect("list")
            .iter()
            .any(|m| m.state == "sent")
    );
}

async fn a_phone_lookup_returns_one_row_either_way(backend: Backend) {
    use store::provisioning as p;
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let mut e = ext("1001", "a1");
    e.mac = Some("001565aabbcc".into());
    e.model = Some("Yealink T46U".into());
    account::insert_extension(&mut conn, &e)
        .await
        .expect("insert");
    p::put_provisioning(
        &mut conn,
        &p::ProvisioningRow {
            number: "1001".into(),
            admin_password_enc: "v1:aa".into(),
            http_password_enc: "v1:bb".into(),
            generation: 1,
            written: 1,
        },
    )
    .await
    .expect("prov");
    let known = p::phone_by_mac(&mut conn, "001565aabbcc", 0)
        .await
        .expect("known");
    assert_eq!(known.number.as_deref(), Some("1001"));
    assert_eq!(known.http_password_enc.as_deref(), Some("v1:bb"));
    assert_eq!(known.grace_sources, None);
    let unknown = p::phone_by_mac(&mut conn, "0015650000aa", 0)
        .await
        .expect("unknown");
    assert_eq!(unknown, p::PhoneByMac::default());
}

async fn voicemail_boxes_and_messages_belong_to_their_extension(backend: Backend) {
    use store::voicemail::{self as vm, BoxRow, MessageRow};
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    account::insert_extension(&mut conn, &ext("1001", "authA"))
        .await
        .expect("insert");
    let mut b = BoxRow {
        number: "1001".into(),
        failures: 2,
        failure_window_start: 100,
        updated_at: 100,
        ..Default::default()
    };
    assert!(vm::save_box(&mut conn, &b).await.expect("save"));
    b.locked_until = 4000;
    b.must_change_pin = true;
    assert!(vm::save_box(&mut conn, &b).await.expect("update"));
    assert_eq!(
        vm::get_box(&mut conn, "1001").await.expect("get"),
        Some(b.clone())
    );
    let ghost = BoxRow {
        number: "1002".into(),
        ..b.clone()
    };
    assert!(!vm::save_box(&mut conn, &ghost).await.expect("no extension"));
    assert_eq!(vm::get_box(&mut conn, "1002").await.expect("get"), None);

    let msg = |id: &str, at: i64, folder: &str| MessageRow {
        id: id.into(),
        number: "1001".into(),
        received_at: at,
        duration_ms: 1500,
        caller: "\"Bob\" <sip:1002@pbx>".into(),
        folder: folder.into(),
        file: format!("voicemail/1001/{id}.wav"),
    };
    vm::insert_message(&mut conn, &msg("b", 20, "new"))
        .await
        .expect("b");
    vm::insert_message(&mut conn, &msg("a", 30, "saved"))
        .await
        .expect("a");
    vm::insert_message(&mut conn, &msg("c", 10, "new"))
        .await
        .expect("c");
    let ids: Vec<String> = vm::messages_of(&mut conn, "1001")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["c", "b", "a"], "new first, oldest first");
    assert_eq!(vm::counts(&mut conn, "1001").await.expect("counts"), (2, 1));
    assert!(
        vm::set_folder(&mut conn, "1001", "c", "saved")
            .await
            .expect("save")
    );
    assert!(
        !vm::set_folder(&mut conn, "1002", "c", "saved")
            .await
            .expect("other box")
    );
    assert!(
        vm::get_message(&mut conn, "1002", "c")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        vm::delete_message(&mut conn, "1001", "b")
            .await
            .expect("delete")
    );
    let totals = vm::totals(&mut conn).await.expect("totals");
    assert_eq!(totals.len(), 1);
    assert_eq!(
        (
            totals[0].new,
            totals[0].saved,
            totals[0].total_ms,
            totals[0].latest
        ),
        (0, 2, 3000, 30)
    );

    // Gone with the extension.
    account::delete_extension(&mut conn, "1001")
        .await
        .expect("delete");
    assert!(
        vm::messages_of(&mut conn, "1001")
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(vm::get_box(&mut conn, "1001").await.expect("get"), None);
}

/// Every write of a watched table moves its version row and sends a hint; a listener
/// whose connection is cut says so when it is back (what was sent meanwhile is lost,
/// so the caller re-reads everything), and hears later writes again.
#[tokio::test]
async fn a_listener_hears_version_bumps_and_says_when_it_reconnected() {
    use store::listen::{APPLICATION_NAME, Hint};
    let Some(cluster) = pg::cluster() else {
        return;
    };
    let url = cluster.fresh_database();
    let store = Store::open_postgres(&PgUrl::parse(&url).expect("url"))
        .await
        .expect("open");
    let mut listener = store
        .version_listener()
        .await
        .expect("listen")
        .expect("postgres listens");
    let ban = |source: &str| store::guard::BanRow {
        source: source.into(),
        reason: "manual".into(),
        detail: "d".into(),
        first_seen: 1,
        last_seen: 1,
        expires_at: i64::MAX,
        times: 1,
    };
    let mut conn = store.conn().await.expect("conn");
    let before = store::guard::guard_version(&mut conn).await.expect("v");
    store::guard::put_ban(&mut conn, &ban("192.0.2.1"))
        .await
        .expect("ban");
    assert!(store::guard::guard_version(&mut conn).await.expect("v") > before);
    assert_eq!(
        next_hint(&mut listener).await,
        Hint::Changed("guard_version".into())
    );

    let db = pg::database_of(&url).to_owned();
    let ended = tokio::task::spawn_blocking(move || {
        pg::cluster().map(|c| c.terminate(&db, APPLICATION_NAME))
    })
    .await
    .expect("join");
    assert_eq!(ended, Some(1), "one listening connection");
    assert_eq!(next_hint(&mut listener).await, Hint::Reconnected);
    store::guard::put_ban(&mut conn, &ban("192.0.2.2"))
        .await
        .expect("ban");
    assert_eq!(
        next_hint(&mut listener).await,
        Hint::Changed("guard_version".into())
    );
    // SQLite has nothing to listen to.
    let Some((_dir, sqlite)) = open_store(Backend::Sqlite).await else {
        return;
    };
    assert!(sqlite.version_listener().await.expect("none").is_none());
}

async fn next_hint(l: &mut store::listen::VersionListener) -> store::listen::Hint {
    tokio::time::timeout(std::time::Duration::from_secs(10), l.next())
        .await
        .expect("a hint within 10 s")
}

/// One holder of a job at a time on PostgreSQL; the next takes over once the holder's
/// connection is gone (released, or ended by the server as when a node dies). SQLite
/// has one node, which always holds every job.
#[tokio::test]
async fn a_job_has_one_holder_and_another_takes_over_when_it_is_gone() {
    use store::jobs::{Job, JobLock};
    let Some((_dir, sqlite)) = open_store(Backend::Sqlite).await else {
        return;
    };
    let (mut one, mut two) = (
        JobLock::new(&sqlite, Job::Outbox),
        JobLock::new(&sqlite, Job::Outbox),
    );
    assert!(one.hold().await && two.hold().await);

    let Some(cluster) = pg::cluster() else {
        return;
    };
    let url = cluster.fresh_database();
    let store = Store::open_postgres(&PgUrl::parse(&url).expect("url"))
        .await
        .expect("open");
    let mut a = JobLock::new(&store, Job::Outbox);
    let mut b = JobLock::new(&store, Job::Outbox);
    assert!(a.hold().await, "free: A takes it");
    assert!(a.hold().await, "and keeps it");
    assert!(!b.hold().await, "B waits");
    a.release().await;
    assert!(b.hold().await, "released: B takes it");
    assert!(!a.hold().await, "A waits now");
    // B's connection is ended by the server (a dead node's would be): A takes over.
    let db = pg::database_of(&url).to_owned();
    let ended = tokio::task::spawn_blocking(move || {
        pg::cluster().map(|c| c.terminate(&db, "sipward-job-outbox"))
    })
    .await
    .expect("join");
    assert_eq!(ended, Some(1), "only the holder keeps a connection");
    assert!(a.hold().await, "B's lock went with its connection");
    assert!(!b.hold().await, "B finds A holding it");
}

/// A SQLite database copied into PostgreSQL holds the same rows, a target that holds an
/// install is refused, and a PostgreSQL snapshot (what a backup archives) is a SQLite
/// file with the same rows again.
#[tokio::test]
async fn a_database_copies_between_backends_and_a_postgres_snapshot_is_sqlite() {
    use store::copy::copy_all;
    let Some((dir, sqlite)) = open_store(Backend::Sqlite).await else {
        return;
    };
    let mut conn = sqlite.conn().await.expect("conn");
    let mut generation = 0;
    for (n, a) in [("1001", "a1"), ("1002", "a2")] {
        let mut e = ext(n, a);
        e.email = Some(format!("{n}@example.com"));
        let g = account::insert_extension(&mut conn, &e).await.expect("ext");
        if n == "1001" {
            generation = g;
        }
    }
    store::meta::set_meta(&mut conn, "key_check", "sealed")
        .await
        .expect("meta");
    store::bindings::replace_bindings(
        &mut conn,
        "1001",
        &[binding("1001", "<sip:a@b>", generation)],
        0,
    )
    .await
    .expect("binding");
    store::audit_log::append(&mut conn, 5, "admin", "ext.add", "ext:1001", "")
        .await
        .expect("log");
    drop(conn);

    let Some(cluster) = pg::cluster() else {
        return;
    };
    let url = PgUrl::parse(&cluster.fresh_database()).expect("url");
    let postgres = Store::open_postgres(&url).await.expect("open");
    let mut seen = Vec::new();
    let copied = copy_all(&sqlite, &postgres, &mut |t, n| seen.push((t.to_owned(), n)))
        .await
        .expect("copy");
    assert_eq!(
        seen.first().map(|(t, _)| t.as_str()),
        Some("meta"),
        "parents first"
    );
    assert!(copied.tables.contains(&("extensions".to_owned(), 2)));
    assert!(copied.tables.contains(&("bindings".to_owned(), 1)));
    let mut pg_conn = postgres.conn().await.expect("conn");
    let listed = account::list_extensions(&mut pg_conn).await.expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].email.as_deref(), Some("1001@example.com"));
    assert_eq!(
        store::meta::get_meta(&mut pg_conn, "key_check")
            .await
            .expect("meta")
            .as_deref(),
        Some("sealed")
    );
    // The audit log's ids go on after the copied ones.
    store::audit_log::append(&mut pg_conn, 6, "admin", "ext.add", "ext:1002", "")
        .await
        .expect("log after the copy");
    let log = store::audit_log::recent(&mut pg_conn, 10)
        .await
        .expect("log");
    assert_eq!(log.len(), 2);
    assert!(log[1].id > log[0].id);

    let err = copy_all(&sqlite, &postgres, &mut |_, _| {})
        .await
        .expect_err("the target holds an install now");
    assert!(matches!(err, Error::CopyRefused { .. }), "{err}");
    assert!(err.is_operator_error());

    let snap = dir.path().join("snapshot.db");
    postgres.snapshot_into(&snap).await.expect("snapshot");
    let back = Store::open_sqlite(&snap).await.expect("open snapshot");
    let mut c = back.conn().await.expect("conn");
    assert_eq!(
        account::list_extensions(&mut c).await.expect("list").len(),
        2
    );
    assert_eq!(
        store::audit_log::recent(&mut c, 10)
            .await
            .expect("log")
            .len(),
        2
    );
    assert_eq!(
        back.schema_version().await.expect("v"),
        postgres.schema_version().await.expect("v")
    );
}
