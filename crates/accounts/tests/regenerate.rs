//! The Re-Generate workflow against a real store, with a fixed clock and seeded RNG.

use std::sync::Arc;

use accounts::extension::NewExtension;
use accounts::mail::MailOutcome;
use accounts::regenerate::{FilesOutcome, Selection};
use accounts::registry::ProvisioningSettings;
use accounts::{Registry, Settings};
use policy::PolicyConfig;
use policy::clock::ManualClock;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sip::digest::{Algorithm, ha1};
use store::DataDir;
use store::bindings::{BindingRow, replace_bindings};

const NOW: i64 = 1_700_000_000;

async fn open(data: &DataDir, seed: u64) -> (Registry, accounts::open::Opened) {
    let settings = Settings {
        realm: "sipward".into(),
        domain: Some("pbx.example.com".into()),
        policy: PolicyConfig::default(),
        dialplan: Default::default(),
        admin_email: None,
        provisioning: ProvisioningSettings {
            base_url: Some("http://pbx.example.com:8080".into()),
            ..ProvisioningSettings::default()
        },
    };
    Registry::open(
        data,
        settings,
        Box::new(StdRng::seed_from_u64(seed)),
        Arc::new(ManualClock::new(NOW, std::time::Instant::now())),
    )
    .await
    .expect("open")
}

/// A new data dir (kept alive by the returned TempDir) and its registry.
async fn fresh(seed: u64) -> (tempfile::TempDir, DataDir, Registry) {
    let dir = tempfile::tempdir().expect("tmp");
    let data = DataDir::new(dir.path().join("d"));
    let (reg, _) = open(&data, seed).await;
    (dir, data, reg)
}

fn phone(email: Option<&str>, password: &str) -> NewExtension {
    NewExtension {
        email: email.map(str::to_owned),
        password: Some(password.into()),
        auth_id: None,
        mac: Some("00:15:65:aa:bb:cc".into()),
        model: Some("Yealink T46U".into()),
        ..NewExtension::default()
    }
}

fn file_password(data: &DataDir) -> String {
    std::fs::read_to_string(data.provisioning_dir().join("001565aabbcc.cfg"))
        .expect("file")
        .lines()
        .find_map(|l| l.strip_prefix("account.1.password = ").map(str::to_owned))
        .expect("password line")
}

#[tokio::test]
async fn files_behind_the_database_are_rewritten_at_the_next_open() {
    let (_dir, data, reg) = fresh(1).await;
    reg.add_extension("1001", phone(None, "Zq8xLmTr4wPyK7vB2"))
        .await
        .expect("add");
    assert_eq!(file_password(&data), "Zq8xLmTr4wPyK7vB2");

    // A crash between the commit and the file write: the row says generation 2, the
    // file on disk is gone (or old).
    let mut conn = reg.store().conn().await.expect("conn");
    let mut p = store::provisioning::get_provisioning(&mut conn, "1001")
        .await
        .expect("q")
        .expect("row");
    assert_eq!((p.generation, p.written), (1, 1));
    p.generation = 2;
    store::provisioning::put_provisioning(&mut conn, &p)
        .await
        .expect("put");
    drop(conn);
    std::fs::remove_file(data.provisioning_dir().join("001565aabbcc.cfg")).expect("rm");
    reg.store().close().await;

    let (reg, opened) = open(&data, 2).await;
    assert_eq!(opened.provisioning_rewritten, 1);
    assert_eq!(file_password(&data), "Zq8xLmTr4wPyK7vB2");
    let mut conn = reg.store().conn().await.expect("conn");
    let p = store::provisioning::get_provisioning(&mut conn, "1001")
        .await
        .expect("q")
        .expect("row");
    assert_eq!((p.generation, p.written), (2, 2));
}

/// The extension's credential generation as stored.
async fn generation(reg: &Registry, number: &str) -> i64 {
    let mut conn = reg.store().conn().await.expect("conn");
    store::account::get_extension(&mut conn, number)
        .await
        .expect("get")
        .expect("exists")
        .credential_generation
}

async fn regenerate_1001(reg: &Registry, email: bool) -> Vec<accounts::regenerate::Regenerated> {
    reg.regenerate(
        &Selection::Numbers(vec!["1001".into()]),
        email,
        &mut |_, _| {},
    )
    .await
    .expect("regenerate")
}

#[tokio::test]
async fn grace_keeps_the_password_phones_have_and_mails_are_superseded() {
    let (_dir, data, reg) = fresh(3).await;
    let original = "Zq8xLmTr4wPyK7vB2";
    let added = reg
        .add_extension("1001", phone(Some("a@example.com"), original))
        .await
        .expect("add");
    let auth_id = added.extension.auth_id.clone();
    let mut conn = reg.store().conn().await.expect("conn");
    let g1 = generation(&reg, "1001").await;
    let binding = |source: &str| BindingRow {
        number: "1001".into(),
        contact: format!("sip:1001@{source}"),
        call_id: "c".into(),
        cseq: 1,
        expires_at: NOW + 3600,
        source: source.into(),
        transport: "udp".into(),
        generation: g1,
    };
    replace_bindings(&mut conn, "1001", &[binding("192.0.2.10:5060")], NOW)
        .await
        .expect("bind");

    let first = regenerate_1001(&reg, true).await;
    let r = &first[0];
    assert!(matches!(r.files, FilesOutcome::Written { .. }));
    assert!(r.resync, "a registered phone is told to re-fetch");
    assert_eq!(
        r.grace_sources,
        vec!["192.0.2.10".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(r.grace_until, Some(NOW + 86_400));
    assert_eq!(file_password(&data), r.password.expose());
    let g = store::grace::get_grace(&mut conn, "1001")
        .await
        .expect("q")
        .expect("grace");
    assert_eq!(
        grace_md5(&reg, &mut conn).await,
        ha1(Algorithm::Md5, &auth_id, "sipward", original)
    );
    assert!(
        !g.ha1_md5_enc
            .contains(&ha1(Algorithm::Md5, &auth_id, "sipward", original)),
        "the old HA1 is sealed too"
    );

    // A second Re-Generate while the window is open keeps the password the phone has,
    // and adds the addresses registered since.
    // (Both made with the old password the window keeps.)
    replace_bindings(
        &mut conn,
        "1001",
        &[binding("192.0.2.10:5060"), binding("192.0.2.11:5060")],
        NOW,
    )
    .await
    .expect("bind");
    let second = regenerate_1001(&reg, true).await;
    let g = store::grace::get_grace(&mut conn, "1001")
        .await
        .expect("q")
        .expect("grace");
    assert_eq!(
        grace_md5(&reg, &mut conn).await,
        ha1(Algorithm::Md5, &auth_id, "sipward", original)
    );
    assert_eq!(g.sources, "192.0.2.10,192.0.2.11");
    // The first mail (with a password that no longer works) is superseded.
    let states: Vec<(String, String)> = store::outbox::list_mail(&mut conn)
        .await
        .expect("mail")
        .into_iter()
        .map(|m| (m.id, m.state))
        .collect();
    let id = |o: &MailOutcome| match o {
        MailOutcome::Queued { id } => id.clone(),
        other => panic!("not queued: {other:?}"),
    };
    assert!(states.contains(&(id(&first[0].mail), "superseded".into())));
    assert!(states.contains(&(id(&second[0].mail), "queued".into())));

    // No phone registered: the old password dies at once.
    replace_bindings(&mut conn, "1001", &[], NOW)
        .await
        .expect("unbind");
    let third = regenerate_1001(&reg, false).await;
    assert!(third[0].grace_sources.is_empty() && !third[0].resync);
    assert_eq!(third[0].mail, MailOutcome::Skipped);
    assert!(
        store::grace::get_grace(&mut conn, "1001")
            .await
            .expect("q")
            .is_none()
    );
}

#[tokio::test]
async fn selections_and_unknown_numbers() {
    let (_dir, _data, reg) = fresh(4).await;
    reg.add_extension(
        "1001",
        NewExtension {
            password: Some("1001".into()),
            ..NewExtension::default()
        },
    )
    .await
    .expect("add");
    reg.add_extension("1002", NewExtension::default())
        .await
        .expect("add");
    let mut none = |_: usize, _: usize| {};
    let weak = reg
        .regenerate(&Selection::Weak, true, &mut none)
        .await
        .expect("weak");
    let numbers: Vec<&str> = weak.iter().map(|r| r.number.as_str()).collect();
    assert_eq!(numbers, ["1001"]);
    assert_eq!(weak[0].mail, MailOutcome::NoEmail);
    assert_eq!(weak[0].files, FilesOutcome::NoPhone);
    // Nothing weak is left.
    assert!(
        reg.regenerate(&Selection::Weak, true, &mut none)
            .await
            .expect("weak")
            .is_empty()
    );

    let before = reg.reveal_extension("1002").await.expect("reveal").password;
    let err = reg
        .regenerate(
            &Selection::Numbers(vec!["1002".into(), "1999".into()]),
            true,
            &mut none,
        )
        .await
        .expect_err("unknown");
    assert!(err.to_string().contains("1999"), "{err}");
    assert_eq!(
        reg.reveal_extension("1002").await.expect("reveal").password,
        before,
        "nothing changed"
    );
    let all = reg
        .regenerate(&Selection::All, true, &mut none)
        .await
        .expect("all");
    assert_eq!(all.len(), 3, "888, 1001, 1002");
}

/// The old MD5 HA1 of extension 1001's grace window, as the registrar opens it.
async fn grace_md5(reg: &Registry, conn: &mut store::Conn) -> String {
    let found = reg.credentials(conn, NOW).await.expect("credentials");
    let g = found
        .graces
        .iter()
        .find(|g| g.number == "1001")
        .expect("open grace window");
    let opened = reg.ha1_opener().open_ha1s(&g.ha1s).expect("opens");
    opened.md5.expose().to_owned()
}
