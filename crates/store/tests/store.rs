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
    }
}

#[tokio::test]
async fn extension_round_trip_and_conflicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("t.db"))
        .await
        .expect("open");
    let mut conn = store.conn().await.expect("conn");
    let a = ext("1001", "authA");
    account::insert_extension(&mut conn, &a)
        .await
        .expect("insert");
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
