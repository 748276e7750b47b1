//! Registry workflow tests with a fixed clock and a seeded RNG.

use std::sync::Arc;

use accounts::extension::{ExtensionChange, NewExtension};
use accounts::{Registry, Settings};
use policy::PolicyConfig;
use policy::clock::ManualClock;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sip::digest::{Algorithm, ha1};
use store::DataDir;
use store::account as q;

fn settings(realm: &str) -> Settings {
    Settings {
        realm: realm.into(),
        domain: None,
        policy: PolicyConfig::default(),
        dialplan: Default::default(),
        admin_email: None,
        provisioning: Default::default(),
    }
}

const NOW: i64 = 1_700_000_000;

async fn open(data: &DataDir, realm: &str, seed: u64) -> Registry {
    let (reg, _) = Registry::open(
        data,
        settings(realm),
        Box::new(StdRng::seed_from_u64(seed)),
        Arc::new(ManualClock::new(NOW, std::time::Instant::now())),
    )
    .await
    .expect("open");
    reg
}

/// An extension's auth ID and HA1s as the registrar gets them (opened from the store).
async fn stored_ha1s(reg: &Registry, number: &str) -> (String, String, String) {
    let mut conn = reg.store().conn().await.expect("conn");
    let found = reg.credentials(&mut conn, NOW).await.expect("credentials");
    let a = found
        .accounts
        .into_iter()
        .find(|a| a.number == number)
        .expect("exists");
    let opened = reg.ha1_opener().open_ha1s(&a.ha1s).expect("opens");
    (
        a.auth_id,
        opened.md5.expose().to_owned(),
        opened.sha256.expose().to_owned(),
    )
}

#[tokio::test]
async fn stored_digests_follow_password_auth_id_and_realm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path().join("d"));
    let reg = open(&data, "realm-a", 1).await;
    let pw = "Zq8xLmTr4wPyK7vB2";
    reg.add_extension(
        "1001",
        NewExtension {
            password: Some(pw.into()),
            ..Default::default()
        },
    )
    .await
    .expect("add");
    let (auth, md5, sha) = stored_ha1s(&reg, "1001").await;
    assert_eq!(md5, ha1(Algorithm::Md5, &auth, "realm-a", pw));
    assert_eq!(sha, ha1(Algorithm::Sha256, &auth, "realm-a", pw));

    // A new auth ID changes the digests even without a new password.
    reg.update_extension(
        "1001",
        ExtensionChange {
            auth_id: Some("newauth1".into()),
            ..Default::default()
        },
    )
    .await
    .expect("update");
    let (auth, md5, _) = stored_ha1s(&reg, "1001").await;
    assert_eq!(auth, "newauth1");
    assert_eq!(md5, ha1(Algorithm::Md5, "newauth1", "realm-a", pw));
    reg.store().close().await;

    // Reopening with another realm re-hashes every account.
    let reg = open(&data, "realm-b", 2).await;
    let (_, md5, sha) = stored_ha1s(&reg, "1001").await;
    assert_eq!(md5, ha1(Algorithm::Md5, "newauth1", "realm-b", pw));
    assert_eq!(sha, ha1(Algorithm::Sha256, "newauth1", "realm-b", pw));
    let fax = reg.reveal_extension("888").await.expect("fax");
    let (fax_auth, fax_md5, _) = stored_ha1s(&reg, "888").await;
    assert_eq!(
        fax_md5,
        ha1(Algorithm::Md5, &fax_auth, "realm-b", fax.password.expose())
    );
}

#[tokio::test]
async fn import_of_many_rows_is_consistent_with_single_adds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path().join("d"));
    let reg = open(&data, "r", 3).await;
    let mut csv = String::from("number,password\n");
    for n in 3000..3200 {
        csv.push_str(&format!("{n},\n"));
    }
    let report = reg
        .import_extensions_csv(csv.as_bytes(), "test")
        .await
        .expect("import");
    assert_eq!(report.imported, 200);
    assert_eq!(report.with_generated_credentials, 200);
    let findings = reg.audit().await.expect("audit");
    let serious: Vec<_> = findings
        .iter()
        .filter(|f| f.severity >= policy::Severity::Warning)
        .collect();
    assert!(
        serious.is_empty(),
        "generated credentials are never weak: {serious:?}"
    );
    // Each imported extension authenticates with its own digest.
    for n in ["3000", "3199"] {
        let secret = reg.reveal_extension(n).await.expect("reveal");
        let (auth, md5, _) = stored_ha1s(&reg, n).await;
        assert_eq!(
            md5,
            ha1(Algorithm::Md5, &auth, "r", secret.password.expose())
        );
    }
}

#[tokio::test]
async fn emergency_alerts_are_merged_into_one_mail_an_hour() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = DataDir::new(dir.path().join("d"));
    let mut s = settings("sipward");
    s.admin_email = Some("admin@example.com".into());
    let (reg, _) = Registry::open(
        &data,
        s,
        Box::new(StdRng::seed_from_u64(7)),
        Arc::new(ManualClock::new(1_700_000_000, std::time::Instant::now())),
    )
    .await
    .expect("open");
    const T: i64 = 1_700_000_000;
    let window = |reg: &Registry| {
        let reg = reg.clone();
        async move {
            let mut conn = reg.store().conn().await.expect("conn");
            store::outbox::alert_window(&mut conn, "1001", "emergency")
                .await
                .expect("read")
                .expect("a window")
        }
    };
    let alerts = |reg: &Registry| {
        let reg = reg.clone();
        async move {
            reg.outbox()
                .await
                .expect("outbox")
                .into_iter()
                .filter(|m| m.number == "alert:1001")
                .collect::<Vec<_>>()
        }
    };
    // Three calls within minutes, the mail not sent yet: one mail that says three.
    for i in 0..3 {
        reg.emergency_alert("1001", "911", T + i * 60)
            .await
            .expect("alert");
    }
    let queued = alerts(&reg).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].next_attempt_at, T, "the first goes at once");
    let w = window(&reg).await;
    assert_eq!(
        (w.window_start, w.count, w.mail_id.as_str()),
        (T, 3, queued[0].id.as_str())
    );

    // Once that mail has gone, the next call waits for the next hour's mail...
    {
        let mut conn = reg.store().conn().await.expect("conn");
        store::outbox::finish_mail(&mut conn, &queued[0].id, "sent", 0, "", T + 200)
            .await
            .expect("sent");
    }
    reg.emergency_alert("1001", "112", T + 300)
        .await
        .expect("alert");
    reg.emergency_alert("1001", "112", T + 400)
        .await
        .expect("alert");
    let all = alerts(&reg).await;
    assert_eq!(all.len(), 2, "{all:?}");
    let next = all.iter().find(|m| m.state == "queued").expect("queued");
    assert_eq!(
        next.next_attempt_at,
        T + 3600,
        "not before the hour is over"
    );
    let w = window(&reg).await;
    assert_eq!((w.window_start, w.count), (T + 3600, 2));

    // ...and other extensions are not merged with this one.
    reg.emergency_alert("1002", "911", T + 500)
        .await
        .expect("alert");
    assert_eq!(
        reg.outbox()
            .await
            .expect("outbox")
            .iter()
            .filter(|m| m.number == "alert:1002" && m.next_attempt_at == T + 500)
            .count(),
        1
    );
    // Long after, a call opens a window of its own, mailed at once.
    reg.emergency_alert("1001", "911", T + 10_000)
        .await
        .expect("alert");
    let w = window(&reg).await;
    assert_eq!((w.window_start, w.count), (T + 10_000, 1));
}

#[tokio::test]
async fn digests_are_sealed_at_rest_bound_to_their_row_and_sealed_on_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path().join("d"));
    let reg = open(&data, "sipward", 5).await;
    let pw = |n: &str| format!("Zq8xLmTr4wPyK7vB{n}");
    for n in ["1001", "1002"] {
        reg.add_extension(
            n,
            NewExtension {
                password: Some(pw(n)),
                ..Default::default()
            },
        )
        .await
        .expect("add");
    }
    let mut conn = reg.store().conn().await.expect("conn");
    let row = |n: &'static str| row_of(&reg, n);
    let plain = |r: &q::ExtensionRow| {
        (
            ha1(Algorithm::Md5, &r.auth_id, "sipward", &pw(&r.number)),
            ha1(Algorithm::Sha256, &r.auth_id, "sipward", &pw(&r.number)),
        )
    };
    let a = row("1001").await;
    let (md5, sha) = plain(&a);
    for (stored, digest) in [(&a.ha1_md5_enc, &md5), (&a.ha1_sha256_enc, &sha)] {
        assert!(stored.starts_with("v1:"), "sealed: {stored}");
        assert!(!stored.contains(digest.as_str()), "no HA1 in the clear");
    }
    assert_eq!(
        stored_ha1s(&reg, "1001").await,
        (a.auth_id.clone(), md5.clone(), sha.clone()),
        "the registrar gets them opened"
    );

    // A sealed HA1 copied into another row does not open there: that account cannot
    // log in, and the field that failed is named.
    let mut b = row("1002").await;
    b.ha1_md5_enc = a.ha1_md5_enc.clone();
    q::update_extension(&mut conn, &b).await.expect("copy");
    let found = reg.credentials(&mut conn, NOW).await.expect("load");
    let opener = reg.ha1_opener();
    let open = |n: &str| {
        let c = found.accounts.iter().find(|c| c.number == n).expect("read");
        opener.open_ha1s(&c.ha1s).map(|_| ())
    };
    assert_eq!(open("1002"), Err(vec!["ext/1002/ha1_md5".to_owned()]));
    assert_eq!(open("1001"), Ok(()));

    // A data dir from before sealing: plain HA1s, and the marker migration 12 sets.
    for n in ["1001", "1002"] {
        let mut r = row(n).await;
        (r.ha1_md5_enc, r.ha1_sha256_enc) = plain(&r);
        q::update_extension(&mut conn, &r).await.expect("plain");
    }
    store::meta::set_meta(&mut conn, "ha1_sealed", "0")
        .await
        .expect("marker");
    drop(conn);
    reg.store().close().await;
    let reopen = || async {
        Registry::open(
            &data,
            settings("sipward"),
            Box::new(StdRng::seed_from_u64(6)),
            Arc::new(ManualClock::new(NOW, std::time::Instant::now())),
        )
        .await
        .expect("open")
    };
    let (reg, opened) = reopen().await;
    assert_eq!(opened.ha1_sealed, Some(2), "the two plain rows, not 888");
    let (auth, md5_now, sha_now) = stored_ha1s(&reg, "1002").await;
    assert_eq!((md5_now, sha_now), plain(&row_of(&reg, "1002").await));
    assert_eq!(auth, b.auth_id);
    let sealed = row_of(&reg, "1001").await;
    assert!(sealed.ha1_md5_enc.starts_with("v1:") && !sealed.ha1_md5_enc.contains(&md5));
    reg.store().close().await;
    let (reg, opened) = reopen().await;
    assert_eq!(opened.ha1_sealed, None, "once");
    reg.store().close().await;
}

async fn row_of(reg: &Registry, number: &str) -> q::ExtensionRow {
    let mut conn = reg.store().conn().await.expect("conn");
    q::get_extension(&mut conn, number)
        .await
        .expect("get")
        .expect("exists")
}
