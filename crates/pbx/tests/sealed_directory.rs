//! The directory as a server start builds it: HA1s read sealed and opened on first use
//! or by the pass after ready, never before; a password changed after a first use
//! replaces the opened HA1s; a value that does not open is an unknown user.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use accounts::extension::ExtensionChange;
use pbx::metrics::{Challenged, Metrics};

mod sealed;
use sealed::*;

#[tokio::test]
async fn hashes_open_on_first_use_and_a_changed_password_replaces_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let reg = registry(dir.path()).await;
    add(&reg, "1001", "alice1001", OLD).await;
    add(&reg, "1002", "bob1002", OLD).await;
    let metrics = Arc::new(Metrics::default());
    let auth = authenticator_with(metrics.clone());
    let opening = opening(&reg);

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
    add(&reg, "1001", "alice1001", OLD).await;
    add(&reg, "1002", "bob1002", OLD).await;
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
    let auth = authenticator_with(metrics.clone());
    let opening = opening(&reg);
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
