//! The directory as a server start builds it: HA1s read sealed and opened on first use
//! or by the pass after ready, never before; a password changed after a first use
//! replaces the opened HA1s; a value that does not open is an unknown user.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use accounts::extension::{ExtensionChange, NewExtension};
use accounts::{Registry, Settings};
use pbx::authenticator::{AuthConfig, Authenticator, Outcome};
use pbx::directory::{Directory, Opening};
use pbx::metrics::{Challenged, Metrics};
use policy::PolicyConfig;
use policy::clock::ManualClock;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sip::digest::{Algorithm, ResponseInput, expected_response, ha1};

const NOW: u64 = 1_795_894_105;
const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const OLD: &str = "Zq8xLmTr4wPyK7vB2";
const NEW: &str = "Nw7pQz4xTr9mLk2Vb";

async fn registry(dir: &std::path::Path) -> Registry {
    let settings = Settings {
        realm: "sipward".into(),
        domain: None,
        policy: PolicyConfig::default(),
        dialplan: Default::default(),
        admin_email: None,
        provisioning: Default::default(),
    };
    let clock = Arc::new(ManualClock::new(
        i64::try_from(NOW).expect("fits"),
        Instant::now(),
    ));
    let data = store::DataDir::new(dir.join("d"));
    let (reg, _) = Registry::open(&data, settings, Box::new(StdRng::seed_from_u64(3)), clock)
        .await
        .expect("open");
    reg
}

async fn load(reg: &Registry, opening: &Arc<Opening>, previous: Option<&Directory>) -> Directory {
    let mut conn = reg.store().conn().await.expect("conn");
    let c = reg
        .credentials(&mut conn, i64::try_from(NOW).expect("fits"))
        .await
        .expect("credentials");
    let (d, unopened) = Directory::load(c.accounts, c.graces, opening.clone(), 3, previous);
    assert!(unopened.is_empty(), "no gateway here: {unopened:?}");
    d
}

fn register(a: &Authenticator, d: &Directory, user: &str, password: &str) -> Outcome {
    let nonce = a.challenges(SRC, NOW, false)[0]
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("nonce")
        .to_owned();
    let uri = "sip:127.0.0.1:54686";
    let input = ResponseInput {
        method: "REGISTER",
        uri,
        nonce: &nonce,
        qop_auth: Some(("00000001", "6b8b4567")),
    };
    let response = expected_response(
        Algorithm::Md5,
        &ha1(Algorithm::Md5, user, "sipward", password),
        &input,
    );
    let text = format!(
        "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:16062;branch=z9hG4bK-1\r\n\
         Authorization: Digest username=\"{user}\",realm=\"sipward\",cnonce=\"6b8b4567\",nc=00000001,\
         qop=auth,uri=\"{uri}\",nonce=\"{nonce}\",response=\"{response}\",algorithm=MD5\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let m = sip::msg::parse(text.as_bytes()).expect("parses");
    a.verify(d, &m, "REGISTER", SRC, NOW)
}

fn accepted(o: &Outcome) -> bool {
    matches!(o, Outcome::Authenticated(_) | Outcome::Grace(_))
}

#[tokio::test]
async fn hashes_open_on_first_use_and_a_changed_password_replaces_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let reg = registry(dir.path()).await;
    for (n, id) in [("1001", "alice1001"), ("1002", "bob1002")] {
        let new = NewExtension {
            auth_id: Some(id.into()),
            password: Some(OLD.into()),
            ..NewExtension::default()
        };
        reg.add_extension(n, new).await.expect("add");
    }
    let metrics = Arc::new(Metrics::default());
    let auth = Authenticator::new(
        AuthConfig {
            realm: "sipward".into(),
            nonce_max_age_secs: 300,
            nc_capacity: 100,
            algorithms: vec![Algorithm::Md5],
        },
        [1; 32],
        [2; 32],
        metrics.clone(),
    );
    let opening = Arc::new(Opening {
        opener: Some(reg.ha1_opener()),
        realm: "sipward".into(),
    });

    let first = load(&reg, &opening, None).await;
    assert_eq!(first.opened_count(), 0, "a load opens nothing");
    assert!(!first.opened_all());
    // Unknown, wrong and right alike until the right one: nothing opened but alice's.
    assert!(!accepted(&register(&auth, &first, "nobody", OLD)));
    assert!(!accepted(&register(&auth, &first, "alice1001", NEW)));
    assert_eq!(
        first.opened_count(),
        1,
        "alice's pair, opened by her first try"
    );
    assert!(accepted(&register(&auth, &first, "alice1001", OLD)));
    let account = first.account("alice1001").expect("alice");
    assert!(!account.weak(), "a strong password, recognised once opened");

    // After a first use, a new password: the reload opens the new HA1s, keeps bob's.
    let change = ExtensionChange {
        password: Some(NEW.into()),
        ..ExtensionChange::default()
    };
    reg.update_extension("1001", change).await.expect("update");
    let bob_before = first.open_all();
    assert!(bob_before.is_empty(), "{bob_before:?}");
    let second = load(&reg, &opening, Some(&first)).await;
    assert_eq!(
        second.opened_count(),
        second.len() - 1,
        "every account but alice keeps what the last snapshot opened"
    );
    assert!(
        !accepted(&register(&auth, &second, "alice1001", OLD)),
        "old"
    );
    assert!(accepted(&register(&auth, &second, "alice1001", NEW)), "new");
    assert!(accepted(&register(&auth, &second, "bob1002", OLD)));
    // The snapshot before keeps its own (a request in flight when the reload lands).
    assert!(accepted(&register(&auth, &first, "alice1001", OLD)));
}

#[tokio::test]
async fn a_value_that_does_not_open_is_an_unknown_user_and_is_reported_by_the_pass() {
    let dir = tempfile::tempdir().expect("tmp");
    let reg = registry(dir.path()).await;
    for (n, id) in [("1001", "alice1001"), ("1002", "bob1002")] {
        let new = NewExtension {
            auth_id: Some(id.into()),
            password: Some(OLD.into()),
            ..NewExtension::default()
        };
        reg.add_extension(n, new).await.expect("add");
    }
    // Alice's sealed MD5 HA1 copied into bob's row: it does not open there.
    let mut conn = reg.store().conn().await.expect("conn");
    let alice = store::account::get_extension(&mut conn, "1001")
        .await
        .expect("read")
        .expect("alice");
    let mut bob = store::account::get_extension(&mut conn, "1002")
        .await
        .expect("read")
        .expect("bob");
    bob.ha1_md5_enc = alice.ha1_md5_enc;
    store::account::update_extension(&mut conn, &bob)
        .await
        .expect("copy");
    drop(conn);
    let metrics = Arc::new(Metrics::default());
    let auth = Authenticator::new(
        AuthConfig {
            realm: "sipward".into(),
            nonce_max_age_secs: 300,
            nc_capacity: 100,
            algorithms: vec![Algorithm::Md5],
        },
        [1; 32],
        [2; 32],
        metrics.clone(),
    );
    let opening = Arc::new(Opening {
        opener: Some(reg.ha1_opener()),
        realm: "sipward".into(),
    });
    let d = load(&reg, &opening, None).await;
    let unknown =
        || metrics.challenged_by_reason[Challenged::UnknownUser as usize].load(Ordering::Relaxed);
    // Before the pass: bob's right password (for either algorithm's HA1) is refused,
    // counted as an unknown user, as when the load left him out.
    assert!(!accepted(&register(&auth, &d, "bob1002", OLD)));
    assert_eq!(unknown(), 1);
    assert!(!accepted(&register(&auth, &d, "nobody", OLD)));
    assert_eq!(unknown(), 2);
    assert!(accepted(&register(&auth, &d, "alice1001", OLD)));
    // The pass names the field for the operator; the snapshot without bob is the one
    // the server puts in force.
    assert_eq!(d.open_all(), ["ext/1002/ha1_md5"]);
    assert!(d.opened_all());
    let without = d.without_unopened().expect("bob left out");
    assert!(without.account("bob1002").is_none());
    assert!(without.account("alice1001").is_some());
    assert_eq!(without.len(), d.len() - 1);
    assert!(!accepted(&register(&auth, &without, "bob1002", OLD)));
    assert_eq!(unknown(), 3);
    assert!(
        without.without_unopened().is_none(),
        "nothing more to leave out"
    );
}
