//! Store tests against a real SQLite file.

use store::account::{self, ExtensionRow, GatewayRow};
use store::{Error, Store};

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

#[tokio::test]
async fn extension_round_trip_and_conflicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("t.db"))
        .await
        .expect("open");
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

#[tokio::test]
async fn a_transaction_rolls_back_as_a_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("t.db"))
        .await
        .expect("open");
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

#[tokio::test]
async fn ban_records_keep_first_seen_and_old_ones_are_pruned() {
    use store::guard::{self as g, BanRow};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("t.db"))
        .await
        .expect("open");
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

async fn open_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("t.db"))
        .await
        .expect("open");
    (dir, store)
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

#[tokio::test]
async fn bindings_belong_to_their_extension_and_its_credential_generation() {
    use store::bindings as b;
    let (_dir, store) = open_store().await;
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

#[tokio::test]
async fn a_grace_window_keeps_the_old_generation_until_it_ends() {
    use store::bindings as b;
    use store::grace::{self, GraceRow};
    let (_dir, store) = open_store().await;
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

#[tokio::test]
async fn withdrawn_mails_stay_withdrawn_even_when_claimed() {
    use store::outbox::{self as o, OutboxRow};
    let (_dir, store) = open_store().await;
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

#[tokio::test]
async fn a_phone_lookup_returns_one_row_either_way() {
    use store::provisioning as p;
    let (_dir, store) = open_store().await;
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

#[tokio::test]
async fn voicemail_boxes_and_messages_belong_to_their_extension() {
    use store::voicemail::{self as vm, BoxRow, MessageRow};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("t.db"))
        .await
        .expect("open");
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
