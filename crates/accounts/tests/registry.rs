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

async fn open(data: &DataDir, realm: &str, seed: u64) -> Registry {
    let (reg, _) = Registry::open(
        data,
        settings(realm),
        Box::new(StdRng::seed_from_u64(seed)),
        Arc::new(ManualClock::new(1_700_000_000, std::time::Instant::now())),
    )
    .await
    .expect("open");
    reg
}

async fn stored_ha1s(reg: &Registry, number: &str) -> (String, String, String) {
    let mut conn = reg.store().conn().await.expect("conn");
    let row = q::get_extension(&mut conn, number)
        .await
        .expect("get")
        .expect("exists");
    (row.auth_id, row.ha1_md5, row.ha1_sha256)
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
        .import_extensions_csv(csv.as_bytes())
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
