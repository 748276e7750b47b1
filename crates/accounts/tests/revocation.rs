//! A credential change lets go of everything the old credentials reached (issue 15),
//! against a real store with a clock the tests move: bindings, the phone's provisioning
//! login, and queued mails (also those a sender claimed and never finished).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use accounts::extension::{ExtensionChange, NewExtension};
use accounts::mail::{MailOutcome, Mailer, Security, SmtpSettings};
use accounts::regenerate::Selection;
use accounts::registry::ProvisioningSettings;
use accounts::{Registry, Settings};
use policy::PolicyConfig;
use policy::clock::ManualClock;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sip::digest::{Algorithm, ha1};
use store::DataDir;
use store::bindings::{BindingRow, bindings_of, replace_bindings};

const NOW: i64 = 1_700_000_000;
const MAC: &str = "001565aabbcc";

struct Fixture {
    _dir: tempfile::TempDir,
    data: DataDir,
    reg: Registry,
    clock: Arc<ManualClock>,
}

async fn fresh(grace_secs: i64) -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let data = DataDir::new(dir.path().join("d"));
    let clock = Arc::new(ManualClock::new(NOW, std::time::Instant::now()));
    let settings = Settings {
        realm: "sipward".into(),
        domain: Some("pbx.example.com".into()),
        policy: PolicyConfig::default(),
        dialplan: Default::default(),
        admin_email: None,
        provisioning: ProvisioningSettings {
            base_url: Some("http://pbx.example.com:8080".into()),
            grace_secs,
            ..ProvisioningSettings::default()
        },
    };
    let (reg, _) = Registry::open(
        &data,
        settings,
        Box::new(StdRng::seed_from_u64(7)),
        clock.clone(),
    )
    .await
    .expect("open");
    Fixture {
        _dir: dir,
        data,
        reg,
        clock,
    }
}

fn desk(email: &str) -> NewExtension {
    NewExtension {
        email: Some(email.into()),
        password: Some("Zq8xLmTr4wPyK7vB2".into()),
        mac: Some(MAC.into()),
        model: Some("Yealink T46U".into()),
        ..NewExtension::default()
    }
}

/// A binding of 1001 from `source`, made under the extension's generation now.
async fn register(reg: &Registry, source: &str) {
    let mut conn = reg.store().conn().await.expect("conn");
    let generation = store::account::get_extension(&mut conn, "1001")
        .await
        .expect("get")
        .expect("exists")
        .credential_generation;
    let mut rows = bindings_of(&mut conn, "1001", NOW).await.expect("of");
    rows.push(BindingRow {
        number: "1001".into(),
        contact: format!("sip:1001@{source}"),
        call_id: "c".into(),
        cseq: 1,
        expires_at: NOW + 3600,
        source: source.into(),
        transport: "udp".into(),
        generation,
    });
    assert_eq!(
        replace_bindings(&mut conn, "1001", &rows, NOW)
            .await
            .expect("bind"),
        rows.len()
    );
}

async fn contacts(reg: &Registry) -> Vec<String> {
    let mut conn = reg.store().conn().await.expect("conn");
    bindings_of(&mut conn, "1001", NOW)
        .await
        .expect("of")
        .into_iter()
        .map(|b| b.contact)
        .collect()
}

/// The provisioning login's password in the phone's file.
fn file_login(data: &DataDir) -> String {
    std::fs::read_to_string(data.provisioning_dir().join(format!("{MAC}.cfg")))
        .expect("file")
        .lines()
        .find_map(|l| l.strip_prefix("static.auto_provision.server.password = "))
        .expect("login line")
        .to_owned()
}

async fn mails(reg: &Registry) -> Vec<(String, String, String)> {
    reg.outbox()
        .await
        .expect("outbox")
        .into_iter()
        .map(|m| (m.id, m.recipient, m.state))
        .collect()
}

/// A mailer to a port where nothing listens: a send it tries is deferred.
fn dead_mailer() -> Mailer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    Mailer::new(&SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        security: Security::None,
        username: None,
        password: None,
        from: "pbx@example.com".into(),
        ca_file: None,
        timeout: Duration::from_secs(2),
    })
    .expect("mailer")
}

#[tokio::test]
async fn regenerate_rotates_the_login_and_keeps_only_the_grace_sources_bindings() {
    let f = fresh(86_400).await;
    f.reg
        .add_extension("1001", desk("a@example.com"))
        .await
        .expect("add");
    let (_, old_login) = f
        .reg
        .phone_login("1001")
        .await
        .expect("login")
        .expect("phone");
    assert_eq!(
        file_login(&f.data),
        old_login.expose(),
        "the file carries it"
    );
    register(&f.reg, "192.0.2.10:5060").await;
    // The phone fetched its file with that login from there (the window keeps the old
    // login only where it fetched, not merely where the SIP password registered).
    f.reg
        .record_fetch("1001", "192.0.2.10".parse().expect("ip"))
        .await
        .expect("fetch");

    let r = f
        .reg
        .regenerate(
            &Selection::Numbers(vec!["1001".into()]),
            false,
            &mut |_, _| {},
        )
        .await
        .expect("regenerate");
    assert!(r[0].resync);
    assert_eq!(
        r[0].provisioning_sources,
        ["192.0.2.10".parse::<std::net::IpAddr>().expect("ip")]
    );
    // The provisioning login is rotated; the new file brings the new one.
    let (_, new_login) = f
        .reg
        .phone_login("1001")
        .await
        .expect("login")
        .expect("phone");
    assert!(!old_login.ct_eq(new_login.expose()), "rotated");
    assert_eq!(file_login(&f.data), new_login.expose());
    // The old login opens the file only from the registered phone's address.
    let login = f.reg.provisioning_login(MAC).await.expect("lookup");
    assert!(login.phone.is_some());
    assert!(login.password.ct_eq(new_login.expose()));
    let grace = login.grace.expect("the old login's window");
    let old_ha1 = ha1(
        Algorithm::Md5,
        MAC,
        accounts::provisioning::REALM,
        old_login.expose(),
    );
    // At rest the old login is sealed like the SIP HA1s, bound to the window.
    {
        let mut conn = f.reg.store().conn().await.expect("conn");
        let row = store::grace::get_grace(&mut conn, "1001")
            .await
            .expect("read")
            .expect("a window");
        let old_sha = ha1(
            Algorithm::Sha256,
            MAC,
            accounts::provisioning::REALM,
            old_login.expose(),
        );
        for (stored, plain) in [
            (&row.prov_ha1_md5_enc, &old_ha1),
            (&row.prov_ha1_sha256_enc, &old_sha),
        ] {
            assert!(stored.starts_with("v1:"), "sealed: {stored}");
            assert!(!stored.contains(plain.as_str()), "no HA1 in the clear");
        }
        // Copied into the SIP column, the login does not open: that window's old SIP
        // password stops working, never turns into the provisioning login.
        let mut swapped = row.clone();
        swapped.prov_ha1_md5_enc = row.ha1_md5_enc.clone();
        swapped.prov_ha1_sha256_enc = row.ha1_sha256_enc.clone();
        store::grace::put_grace(&mut conn, &swapped)
            .await
            .expect("swap");
        drop(conn);
        let login = f.reg.provisioning_login(MAC).await.expect("lookup");
        assert!(
            login.grace.is_none(),
            "a value copied between fields never opens"
        );
        let mut conn = f.reg.store().conn().await.expect("conn");
        store::grace::put_grace(&mut conn, &row)
            .await
            .expect("restore");
    }
    let phone_ip = "192.0.2.10".parse().expect("ip");
    let elsewhere = "198.51.100.9".parse().expect("ip");
    assert_eq!(
        grace.ha1_for(Algorithm::Md5, phone_ip, NOW),
        Some(old_ha1.as_str())
    );
    assert_eq!(grace.ha1_for(Algorithm::Md5, elsewhere, NOW), None);
    assert_eq!(grace.ha1_for(Algorithm::Md5, phone_ip, NOW + 86_400), None);
    // The phone's binding stays (it is at a source of the window)...
    assert_eq!(contacts(&f.reg).await, ["sip:1001@192.0.2.10:5060"]);
    // ...until the window ends: then the bindings made with the old password go.
    let mut conn = f.reg.store().conn().await.expect("conn");
    store::grace::end_graces(&mut conn, &["1001".into()], NOW)
        .await
        .expect("end");
    assert!(contacts(&f.reg).await.is_empty());
    assert!(
        f.reg
            .provisioning_login(MAC)
            .await
            .expect("lookup")
            .grace
            .is_none()
    );
}

#[tokio::test]
async fn a_new_password_says_where_the_old_one_still_works() {
    let f = fresh(86_400).await;
    f.reg
        .add_extension("1001", desk("a@example.com"))
        .await
        .expect("add");
    register(&f.reg, "192.0.2.10:5060").await;
    let up = f
        .reg
        .update_extension(
            "1001",
            ExtensionChange {
                password: Some("Nq4Zt8LmXw2Kp7RbQ".into()),
                ..ExtensionChange::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(
        up.grace.sources,
        vec!["192.0.2.10".parse::<IpAddr>().expect("ip")]
    );
    assert!(up.grace.until.is_some(), "{:?}", up.grace);

    // Control: without a window nothing stays open, and the change says so.
    register(&f.reg, "192.0.2.11:5060").await;
    let up = f
        .reg
        .update_extension(
            "1001",
            ExtensionChange {
                password: Some("Vb3Hs9QwTx6Lm2PkR".into()),
                no_grace: true,
                ..ExtensionChange::default()
            },
        )
        .await
        .expect("update");
    assert!(up.grace.sources.is_empty(), "{:?}", up.grace);
    assert!(up.grace.provisioning_sources.is_empty(), "{:?}", up.grace);
}

#[tokio::test]
async fn a_new_password_without_a_window_drops_every_binding_at_once() {
    let f = fresh(0).await;
    f.reg
        .add_extension("1001", desk("a@example.com"))
        .await
        .expect("add");
    register(&f.reg, "192.0.2.10:5060").await;
    let (_, old_login) = f.reg.phone_login("1001").await.expect("l").expect("p");
    f.reg
        .update_extension(
            "1001",
            ExtensionChange {
                password: Some("Nq4Zt8LmXw2Kp7RbQ".into()),
                ..ExtensionChange::default()
            },
        )
        .await
        .expect("update");
    assert!(
        contacts(&f.reg).await.is_empty(),
        "the old login's binding is gone"
    );
    let (_, new_login) = f.reg.phone_login("1001").await.expect("l").expect("p");
    assert!(
        !old_login.ct_eq(new_login.expose()),
        "rotated with the password"
    );
    assert!(
        f.reg
            .provisioning_login(MAC)
            .await
            .expect("l")
            .grace
            .is_none()
    );
    // Control: a change of the name alone revokes nothing.
    register(&f.reg, "192.0.2.10:5060").await;
    f.reg
        .update_extension(
            "1001",
            ExtensionChange {
                name: Some("Alice".into()),
                ..ExtensionChange::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(contacts(&f.reg).await.len(), 1);
    let (_, same) = f.reg.phone_login("1001").await.expect("l").expect("p");
    assert!(same.ct_eq(new_login.expose()));
}

#[tokio::test]
async fn a_fixed_address_gets_the_new_mail_and_the_old_one_is_never_sent() {
    let f = fresh(86_400).await;
    f.reg
        .add_extension("1001", desk("alcie@example.com"))
        .await
        .expect("add");
    let r = f
        .reg
        .regenerate(
            &Selection::Numbers(vec!["1001".into()]),
            true,
            &mut |_, _| {},
        )
        .await
        .expect("regenerate");
    let MailOutcome::Queued { id: first } = &r[0].mail else {
        panic!("queued: {:?}", r[0].mail)
    };
    f.reg
        .update_extension(
            "1001",
            ExtensionChange {
                email: Some("alice@example.com".into()),
                ..ExtensionChange::default()
            },
        )
        .await
        .expect("fix the address");
    let all = mails(&f.reg).await;
    assert!(all.contains(&(
        first.clone(),
        "alcie@example.com".into(),
        "superseded".into()
    )));
    let waiting: Vec<_> = all.iter().filter(|m| m.2 == "queued").collect();
    assert_eq!(waiting.len(), 1, "{all:?}");
    assert_eq!(
        waiting[0].1, "alice@example.com",
        "the new mail goes to the new address"
    );

    // A new PIN withdraws that one in turn, and queues one with the PIN that holds.
    f.reg
        .update_extension(
            "1001",
            ExtensionChange {
                pin: Some("482915".into()),
                ..ExtensionChange::default()
            },
        )
        .await
        .expect("new pin");
    let all = mails(&f.reg).await;
    assert_eq!(all.iter().filter(|m| m.2 == "queued").count(), 1, "{all:?}");
    assert_eq!(
        all.iter().filter(|m| m.2 == "superseded").count(),
        2,
        "{all:?}"
    );
}

#[tokio::test]
async fn a_claimed_mail_whose_sender_died_is_rechecked_when_its_lease_lapses() {
    let f = fresh(86_400).await;
    f.reg
        .add_extension("1001", desk("a@example.com"))
        .await
        .expect("add");
    let queue = |reg: Registry| async move {
        let r = reg
            .regenerate(
                &Selection::Numbers(vec!["1001".into()]),
                true,
                &mut |_, _| {},
            )
            .await
            .expect("regenerate");
        match &r[0].mail {
            MailOutcome::Queued { id } => id.clone(),
            other => panic!("queued: {other:?}"),
        }
    };
    let mailer = dead_mailer();

    // Control: a claimed mail whose sender died is tried again once its lease lapses.
    let id = queue(f.reg.clone()).await;
    let mut conn = f.reg.store().conn().await.expect("conn");
    assert!(
        store::outbox::claim_mail(&mut conn, &id, NOW, NOW + 120)
            .await
            .expect("claim")
    );
    assert!(
        f.reg
            .send_due_mail(&mailer, None)
            .await
            .expect("send")
            .is_empty(),
        "leased"
    );
    f.clock.advance(Duration::from_secs(121));
    let tried = f.reg.send_due_mail(&mailer, None).await.expect("send");
    assert!(
        matches!(tried.as_slice(), [(i, MailOutcome::Deferred { .. })] if *i == id),
        "{tried:?}"
    );

    // The same, but the extension is removed while the mail is claimed.
    let id = queue(f.reg.clone()).await;
    // (The mail the control deferred is superseded by this newer one.)
    let now = NOW + 121;
    assert!(
        store::outbox::claim_mail(&mut conn, &id, now, now + 120)
            .await
            .expect("claim")
    );
    f.reg.remove_extension("1001").await.expect("remove");
    f.clock.advance(Duration::from_secs(121));
    let tried = f.reg.send_due_mail(&mailer, None).await.expect("send");
    assert!(tried.is_empty(), "never sent: {tried:?}");
    let all = mails(&f.reg).await;
    assert!(all.iter().all(|m| m.2 == "superseded"), "{all:?}");
}

#[tokio::test]
async fn a_mail_changed_behind_the_outbox_s_back_is_withdrawn_at_the_claim() {
    let f = fresh(86_400).await;
    f.reg
        .add_extension("1001", desk("a@example.com"))
        .await
        .expect("add");
    let r = f
        .reg
        .regenerate(
            &Selection::Numbers(vec!["1001".into()]),
            true,
            &mut |_, _| {},
        )
        .await
        .expect("regenerate");
    let MailOutcome::Queued { id } = &r[0].mail else {
        panic!("queued")
    };
    // The extension's PIN changes in a way that withdrew nothing (a restore of an older
    // backup, say): the sender's own check still holds the mail back.
    let mut conn = f.reg.store().conn().await.expect("conn");
    let mut row = store::account::get_extension(&mut conn, "1001")
        .await
        .expect("get")
        .expect("exists");
    row.pin_enc = "v1:00".into();
    store::account::update_extension(&mut conn, &row)
        .await
        .expect("update");
    let tried = f
        .reg
        .send_due_mail(&dead_mailer(), None)
        .await
        .expect("send");
    assert!(
        matches!(tried.as_slice(), [(i, MailOutcome::Withdrawn { .. })] if i == id),
        "{tried:?}"
    );
}

#[tokio::test]
async fn looking_up_a_login_costs_the_same_whether_a_phone_has_it() {
    let f = fresh(86_400).await;
    f.reg
        .add_extension("1001", desk("a@example.com"))
        .await
        .expect("add");
    let known = f.reg.provisioning_login(MAC).await.expect("known");
    let phone = known.phone.expect("phone");
    // Its vendor's file, and the CA file TLS phones fetch (served once written).
    assert_eq!(phone.files, [format!("{MAC}.cfg"), format!("{MAC}-ca.pem")]);
    assert!(phone.path_of(&format!("{MAC}.cfg")).is_some());
    assert!(phone.path_of("y000000000028.cfg").is_none());
    for user in ["0015650000aa", "admin", ""] {
        let unknown = f.reg.provisioning_login(user).await.expect("unknown");
        assert!(unknown.phone.is_none() && unknown.grace.is_none());
        // A stand-in secret, never empty, never a phone's.
        assert_eq!(
            unknown.password.expose().len(),
            known.password.expose().len()
        );
        assert!(!unknown.password.ct_eq(known.password.expose()));
    }
}
