//! Voicemail boxes off the wire: the login lockout on a clock the tests move, weak PIN
//! changes, messages and their files, mails and the audit log.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use accounts::extension::NewExtension;
use accounts::voicemail::{Credential, Login, PinChange, Summary};
use accounts::{Registry, Settings};
use policy::clock::ManualClock;
use policy::{PolicyConfig, Secret};
use rand::SeedableRng;
use rand::rngs::StdRng;
use store::DataDir;

const NOW: i64 = 1_700_000_000;
const GOOD: &str = "482913";

fn settings() -> Settings {
    Settings {
        realm: "sipward".into(),
        domain: None,
        policy: PolicyConfig::default(),
        dialplan: Default::default(),
        admin_email: None,
        provisioning: Default::default(),
    }
}

async fn open(data: &DataDir, clock: &Arc<ManualClock>) -> Registry {
    let (reg, _) = Registry::open(
        data,
        settings(),
        Box::new(StdRng::seed_from_u64(7)),
        clock.clone(),
    )
    .await
    .expect("open");
    reg
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: DataDir,
    clock: Arc<ManualClock>,
    reg: Registry,
}

async fn fixture(pin: &str, email: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path().join("d"));
    let clock = Arc::new(ManualClock::new(NOW, std::time::Instant::now()));
    let reg = open(&data, &clock).await;
    reg.add_extension(
        "1001",
        NewExtension {
            pin: Some(pin.into()),
            email: email.map(str::to_owned),
            ..Default::default()
        },
    )
    .await
    .expect("add");
    Fixture {
        _dir: dir,
        data,
        clock,
        reg,
    }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn pin(p: &str) -> Credential {
    Credential::Pin(Secret::new(p))
}

async fn login(reg: &Registry, p: &str, source: IpAddr) -> Login {
    reg.login("1001", pin(p), source).await.expect("login")
}

const GRANTED: Login = Login::Granted {
    must_change_pin: false,
};

#[tokio::test]
async fn five_wrong_pins_from_several_sources_lock_the_box_and_the_right_pin_is_refused() {
    let f = fixture(GOOD, None).await;
    assert_eq!(login(&f.reg, GOOD, ip(1)).await, GRANTED);
    for i in 0..4u8 {
        assert_eq!(login(&f.reg, "111111", ip(10 + i)).await, Login::Refused);
        f.clock.advance(Duration::from_secs(60));
    }
    // Four failures from four sources: not locked yet.
    assert_eq!(login(&f.reg, GOOD, ip(1)).await, GRANTED);
    // The right PIN cleared the count; five more within 15 minutes lock.
    for i in 0..5u8 {
        assert_eq!(login(&f.reg, "222222", ip(20 + i)).await, Login::Refused);
        f.clock.advance(Duration::from_secs(120));
    }
    let view = f.reg.voicemail_box("1001").await.expect("box");
    assert!(view.locked_until.is_some(), "{view:?}");
    // Locked: the right PIN is refused exactly as a wrong one, and does not unlock.
    assert_eq!(login(&f.reg, GOOD, ip(1)).await, Login::Refused);
    assert_eq!(login(&f.reg, GOOD, ip(1)).await, Login::Refused);
    f.clock.advance(Duration::from_secs(3000));
    assert_eq!(
        login(&f.reg, GOOD, ip(1)).await,
        Login::Refused,
        "still within the hour"
    );
    // The owner's own phone is not locked out.
    assert_eq!(
        f.reg
            .login("1001", Credential::AuthenticatedOwner, ip(1))
            .await
            .expect("owner"),
        GRANTED
    );
    f.clock.advance(Duration::from_secs(700));
    assert_eq!(
        login(&f.reg, GOOD, ip(1)).await,
        GRANTED,
        "the hour is over"
    );
    let log = f.reg.recent_log(50).await.expect("log");
    assert!(
        log.iter()
            .any(|e| e.action == "voicemail.locked" && e.subject == "ext:1001"),
        "{log:?}"
    );
}

#[tokio::test]
async fn one_failure_per_fifteen_minutes_never_locks_but_one_per_four_does() {
    let f = fixture(GOOD, None).await;
    // One per 15 minutes: each leaks out of the count before the next.
    for _ in 0..12 {
        assert_eq!(login(&f.reg, "111111", ip(9)).await, Login::Refused);
        f.clock.advance(Duration::from_secs(900));
    }
    assert_eq!(login(&f.reg, GOOD, ip(9)).await, GRANTED);
    // One every 4 minutes (a window that restarted at its end never locked this): one
    // failure leaks per 15 minutes, so the count reaches five at the sixth.
    for _ in 0..6 {
        assert_eq!(login(&f.reg, "111111", ip(9)).await, Login::Refused);
        f.clock.advance(Duration::from_secs(240));
    }
    assert_eq!(
        login(&f.reg, GOOD, ip(9)).await,
        Login::Refused,
        "locked: the right PIN is refused"
    );
}

#[tokio::test]
async fn the_count_and_the_lock_survive_a_restart() {
    let f = fixture(GOOD, None).await;
    for _ in 0..3 {
        login(&f.reg, "000001", ip(2)).await;
    }
    f.reg.store().close().await;
    let reg = open(&f.data, &f.clock).await;
    for _ in 0..2 {
        assert_eq!(login(&reg, "000001", ip(3)).await, Login::Refused);
    }
    reg.store().close().await;
    let reg = open(&f.data, &f.clock).await;
    assert_eq!(
        login(&reg, GOOD, ip(1)).await,
        Login::Refused,
        "locked across reopen"
    );
    assert!(
        reg.voicemail_box("1001")
            .await
            .expect("box")
            .locked_until
            .is_some()
    );
}

#[tokio::test]
async fn locks_escalate_and_a_wrong_pin_while_locked_does_not_extend_them() {
    let f = fixture(GOOD, None).await;
    let mut lengths = Vec::new();
    for _ in 0..3 {
        for _ in 0..5 {
            login(&f.reg, "999990", ip(4)).await;
        }
        let until = f
            .reg
            .voicemail_box("1001")
            .await
            .expect("box")
            .locked_until
            .expect("locked");
        lengths.push(until - f.clock_now());
        // Guessing on while locked changes nothing.
        for _ in 0..10 {
            login(&f.reg, "999990", ip(4)).await;
        }
        let again = f.reg.voicemail_box("1001").await.expect("box").locked_until;
        assert_eq!(again, Some(until));
        f.clock.advance(Duration::from_secs(
            u64::try_from(until - f.clock_now()).expect("ahead"),
        ));
    }
    assert_eq!(lengths, [3600, 3600, 86_400]);
}

impl Fixture {
    fn clock_now(&self) -> i64 {
        use policy::clock::Clock;
        self.clock.now()
    }
}

#[tokio::test]
async fn an_unknown_box_is_refused_like_a_wrong_pin() {
    let f = fixture(GOOD, None).await;
    for mailbox in ["1002", "x", "", "1001 OR 1=1"] {
        assert_eq!(
            f.reg.login(mailbox, pin(GOOD), ip(5)).await.expect("login"),
            Login::Refused,
            "{mailbox:?}"
        );
        assert_eq!(
            f.reg
                .login(mailbox, Credential::AuthenticatedOwner, ip(5))
                .await
                .expect("login"),
            Login::Refused
        );
    }
}

#[tokio::test]
async fn a_weak_pin_must_be_changed_and_the_new_one_is_checked_by_the_same_rules() {
    let f = fixture("1001", Some("ann@example.com")).await;
    assert_eq!(
        login(&f.reg, "1001", ip(1)).await,
        Login::Granted {
            must_change_pin: true
        }
    );
    assert!(
        f.reg
            .voicemail_box("1001")
            .await
            .expect("box")
            .must_change_pin
    );
    let actor = accounts::voicemail::caller_actor(ip(1));
    for weak in ["1001", "1234", "0000", "123", "551001", "12a4", ""] {
        let got = f
            .reg
            .change_pin("1001", &Secret::new(weak), &actor)
            .await
            .expect("change");
        assert!(
            matches!(got, PinChange::Refused { .. }),
            "{weak:?}: {got:?}"
        );
    }
    // Still the old one, still forced.
    assert_eq!(
        login(&f.reg, "1001", ip(1)).await,
        Login::Granted {
            must_change_pin: true
        }
    );
    assert_eq!(
        f.reg
            .change_pin("1001", &Secret::new("739164"), &actor)
            .await
            .expect("change"),
        PinChange::Changed
    );
    assert_eq!(login(&f.reg, "1001", ip(1)).await, Login::Refused);
    assert_eq!(login(&f.reg, "739164", ip(1)).await, GRANTED);
    assert!(
        !f.reg
            .voicemail_box("1001")
            .await
            .expect("box")
            .must_change_pin
    );
    let revealed = f.reg.reveal_extension("1001").await.expect("reveal");
    assert!(revealed.pin.ct_eq("739164"));
    // Audit-logged, and the owner was told (without the PIN).
    let log = f.reg.recent_log(50).await.expect("log");
    assert!(log.iter().any(|e| e.action == "voicemail.pin_changed"));
    let mails = f.reg.outbox().await.expect("outbox");
    assert!(
        mails
            .iter()
            .any(|m| m.number == "vm:1001" && m.recipient == "ann@example.com"),
        "{mails:?}"
    );
}

fn wav(samples: usize) -> Vec<u8> {
    let data = u32::try_from(samples * 2).expect("small");
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&8000u32.to_le_bytes());
    w.extend_from_slice(&16000u32.to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    w.resize(44 + samples * 2, 0x11);
    w
}

#[tokio::test]
async fn a_message_is_a_private_file_counted_mailed_and_deleted_with_its_row() {
    let f = fixture(GOOD, Some("ann@example.com")).await;
    let pending = f.reg.begin_message("1001").await.expect("begin");
    let path = pending.path().to_owned();
    assert!(path.starts_with(f.data.root().join("voicemail/1001")));
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&f.data.root().join("voicemail/1001")), 0o700);
    assert_eq!(mode(&f.data.root().join("voicemail")), 0o700);
    std::fs::write(&path, wav(8000)).expect("write");
    let summary = f
        .reg
        .commit_message(pending, "\"Bob\" <sip:1002@pbx>\r\nX-Evil: 1", 1000)
        .await
        .expect("commit");
    assert_eq!(summary, Summary { new: 1, saved: 0 });
    let messages = f.reg.messages("1001").await.expect("list");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].caller, "\"Bob\" <sip:1002@pbx>X-Evil: 1");
    assert_eq!(
        f.reg
            .open_message("1001", &messages[0].id)
            .await
            .expect("open"),
        wav(8000)
    );
    assert!(f.reg.open_message("1002", &messages[0].id).await.is_err());
    let mails = f.reg.outbox().await.expect("outbox");
    assert_eq!(
        mails.iter().filter(|m| m.number == "vm:1001").count(),
        1,
        "one mail with the message"
    );

    // A pending message that is not kept leaves no file.
    let dropped = f.reg.begin_message("1001").await.expect("begin");
    let dropped_path = dropped.path().to_owned();
    f.reg.discard(dropped);
    assert!(!dropped_path.exists());
    // Not a WAV: refused, removed.
    let junk = f.reg.begin_message("1001").await.expect("begin");
    let junk_path = junk.path().to_owned();
    std::fs::write(&junk_path, b"not audio").expect("write");
    assert!(f.reg.commit_message(junk, "x", 1).await.is_err());
    assert!(!junk_path.exists());

    let actor = "test";
    assert!(
        f.reg
            .save_message("1001", &messages[0].id, actor)
            .await
            .expect("save")
    );
    assert_eq!(
        f.reg.summary("1001").await.expect("summary"),
        Summary { new: 0, saved: 1 }
    );
    assert!(
        f.reg
            .delete_message("1001", &messages[0].id, actor)
            .await
            .expect("delete")
    );
    assert!(!path.exists(), "the file goes with the row");
    assert!(
        !f.reg
            .delete_message("1001", &messages[0].id, actor)
            .await
            .expect("again")
    );
    assert_eq!(
        f.reg.summary("1001").await.expect("summary"),
        Summary::default()
    );
}

#[tokio::test]
async fn a_greeting_is_replaced_logged_and_mailed_and_the_box_goes_with_its_extension() {
    let f = fixture(GOOD, Some("ann@example.com")).await;
    assert_eq!(f.reg.greeting("1001").await.expect("none"), None);
    assert!(f.reg.set_greeting("1001", b"nope", "t").await.is_err());
    f.reg
        .set_greeting("1001", &wav(100), "t")
        .await
        .expect("set");
    f.reg
        .set_greeting("1001", &wav(200), "t")
        .await
        .expect("again");
    assert_eq!(f.reg.greeting("1001").await.expect("get"), Some(wav(200)));
    let files = std::fs::read_dir(f.data.root().join("voicemail/1001"))
        .expect("dir")
        .count();
    assert_eq!(files, 1, "the old greeting's file is gone");
    let log = f.reg.recent_log(50).await.expect("log");
    assert_eq!(
        log.iter()
            .filter(|e| e.action == "voicemail.greeting_set")
            .count(),
        2
    );
    assert!(
        f.reg
            .outbox()
            .await
            .expect("outbox")
            .iter()
            .any(|m| m.number == "vm:1001")
    );

    f.reg.remove_extension("1001").await.expect("remove");
    assert!(!f.data.root().join("voicemail/1001").exists());
}

#[tokio::test]
async fn a_box_without_voicemail_takes_no_message_and_a_full_box_takes_no_more() {
    let f = fixture(GOOD, None).await;
    f.reg
        .update_extension(
            "1001",
            accounts::extension::ExtensionChange {
                voicemail_after_secs: Some("0".into()),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert!(f.reg.begin_message("1001").await.is_err());
    f.reg
        .update_extension(
            "1001",
            accounts::extension::ExtensionChange {
                voicemail_after_secs: Some("25".into()),
                voicemail_mail: Some("off".into()),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    let v = f.reg.get_extension("1001").await.expect("get");
    assert_eq!((v.voicemail_after_secs, v.voicemail_mail), (25, false));
    for _ in 0..accounts::voicemail::MAX_MESSAGES {
        let p = f.reg.begin_message("1001").await.expect("begin");
        std::fs::write(p.path(), wav(10)).expect("write");
        f.reg.commit_message(p, "c", 10).await.expect("commit");
    }
    assert!(matches!(
        f.reg.begin_message("1001").await,
        Err(accounts::Error::Voicemail(
            accounts::voicemail::VoicemailError::BoxFull { .. }
        ))
    ));
    for bad in ["301", "-1", "x"] {
        assert!(
            f.reg
                .update_extension(
                    "1001",
                    accounts::extension::ExtensionChange {
                        voicemail_after_secs: Some(bad.into()),
                        ..Default::default()
                    },
                )
                .await
                .is_err(),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn csv_import_takes_the_voicemail_settings_and_refuses_bad_ones() {
    let f = fixture(GOOD, None).await;
    let bad = "number,name,voicemail_after_secs\n2001,A,0\n2002,B,900\n";
    assert!(
        f.reg
            .import_extensions_csv(bad.as_bytes(), "test")
            .await
            .is_err()
    );
    assert!(f.reg.get_extension("2001").await.is_err(), "all or nothing");
    let good = "number,name,email,voicemail_after_secs,voicemail_mail\n\
                2001,A,a@example.com,0,on\n2002,B,b@example.com,45,off\n2003,C,,,\n";
    f.reg
        .import_extensions_csv(good.as_bytes(), "test")
        .await
        .expect("import");
    let got = |n: &'static str| {
        let reg = f.reg.clone();
        async move {
            let v = reg.get_extension(n).await.expect("get");
            (v.voicemail_after_secs, v.voicemail_mail)
        }
    };
    assert_eq!(got("2001").await, (0, true));
    assert_eq!(got("2002").await, (45, false));
    assert_eq!(got("2003").await, (20, true), "defaults");
}
