//! The fraud limits in the store (issue 21): counters and call leases hold their caps
//! exactly when many writers race, as they do when several nodes share one database.
//! Each test runs on both backends (a SQLite file, and a database of its own in the test
//! run's PostgreSQL cluster, `support/pg.rs`), on a runtime with two worker threads so
//! the racing tasks really run at once, each on its own pooled connection.

#[path = "support/pg.rs"]
mod pg;

use std::sync::Arc;

use store::fraud::{self, Counter, Lease};
use store::{Backend, PgUrl, Store};

/// A fresh store on `backend`; `None` when PostgreSQL is not installed and CI does not
/// require it (`support/pg.rs` fails under `CI=true`).
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
    Some((dir, store))
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

on_both_backends!(
    a_counter_stops_at_its_cap_and_a_new_period_starts_from_one,
    racing_counts_never_pass_the_cap,
    leases_hold_the_concurrent_cap_until_released_or_lapsed,
    a_lapsed_lease_is_not_revived_and_is_taken_again_only_under_the_cap,
    racing_admissions_take_exactly_the_cap,
);

async fn a_counter_stops_at_its_cap_and_a_new_period_starts_from_one(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let mut conn = store.conn().await.expect("conn");
    let minute = Counter::AttemptsPerMinute;
    for i in 1..=3 {
        assert_eq!(
            fraud::count(&mut conn, "1001", minute, 120 + i64::from(i), 3)
                .await
                .expect("count"),
            Some(i)
        );
    }
    assert_eq!(
        fraud::count(&mut conn, "1001", minute, 150, 3)
            .await
            .expect("count"),
        None,
        "the fourth in the minute breaks the cap"
    );
    assert_eq!(
        fraud::used(&mut conn, "1001", minute, 179)
            .await
            .expect("used"),
        3,
        "a refused use is not counted"
    );
    // Another account, another counter, another period: each from one.
    assert_eq!(
        fraud::count(&mut conn, "1002", minute, 150, 3)
            .await
            .expect("count"),
        Some(1)
    );
    assert_eq!(
        fraud::count(&mut conn, "1001", Counter::InternationalPerDay, 150, 3)
            .await
            .expect("count"),
        Some(1)
    );
    assert_eq!(
        fraud::count(&mut conn, "1001", minute, 180, 3)
            .await
            .expect("count"),
        Some(1),
        "the next minute"
    );
    // Ended periods are pruned; the current ones stay.
    fraud::prune(&mut conn, 181).await.expect("prune");
    let sizes = fraud::table_sizes(&mut conn).await.expect("sizes");
    assert_eq!(sizes[2], ("fraud_counts", 2), "1001's day and next minute");
}

async fn racing_counts_never_pass_the_cap(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = store.conn().await.expect("conn");
            fraud::count(&mut conn, "888", Counter::AttemptsPerMinute, 600, 5)
                .await
                .expect("count")
        }));
    }
    let mut granted = Vec::new();
    for t in tasks {
        if let Some(n) = t.await.expect("task") {
            granted.push(n);
        }
    }
    granted.sort_unstable();
    assert_eq!(granted, vec![1, 2, 3, 4, 5], "exactly the cap, each once");
}

async fn take(store: &Store, lease: &str, account: &str, now: i64, cap: Option<u32>) -> bool {
    let mut tx = store.begin().await.expect("begin");
    let taken = fraud::take_lease(
        &mut tx,
        &Lease {
            lease,
            account,
            node: "a",
            expires_at: now + 30,
        },
        now,
        cap,
    )
    .await
    .expect("take");
    tx.commit().await.expect("commit");
    taken
}

async fn leases_hold_the_concurrent_cap_until_released_or_lapsed(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    assert!(take(&store, "a/1", "1001", 100, Some(2)).await);
    assert!(take(&store, "a/2", "1001", 100, Some(2)).await);
    assert!(!take(&store, "a/3", "1001", 101, Some(2)).await, "a third");
    assert!(
        take(&store, "a/4", "1002", 101, Some(2)).await,
        "another account"
    );
    let mut conn = store.conn().await.expect("conn");
    assert_eq!(
        fraud::live_leases(&mut conn, "1001", 101).await.expect("n"),
        2
    );
    // A call ends: its lease goes, and the next call takes its place.
    assert_eq!(
        fraud::release_leases(&mut conn, &["a/1".into()])
            .await
            .expect("release"),
        1
    );
    assert!(take(&store, "a/5", "1001", 102, Some(2)).await);
    // A lease renewed holds on; one that is not (its node died) lapses.
    assert_eq!(
        fraud::renew_leases(&mut conn, &["a/5".into(), "a/gone".into()], 102, 200)
            .await
            .expect("renew"),
        vec!["a/gone".to_owned()]
    );
    assert!(
        !take(&store, "a/6", "1001", 129, Some(2)).await,
        "a/2 still live"
    );
    assert!(
        take(&store, "a/7", "1001", 130, Some(2)).await,
        "a/2 lapsed at 130"
    );
    assert!(!take(&store, "a/8", "1001", 131, Some(2)).await);
    // No cap (an emergency call): taken, and it counts against the next call.
    assert!(take(&store, "a/9", "1003", 131, None).await);
    assert!(!take(&store, "a/10", "1003", 131, Some(1)).await);
    // Pruning removes lapsed leases and gates nobody holds.
    fraud::prune(&mut conn, 250).await.expect("prune");
    let sizes = fraud::table_sizes(&mut conn).await.expect("sizes");
    assert_eq!(sizes[0], ("call_gates", 0));
    assert_eq!(sizes[1], ("call_leases", 0));
}

async fn racing_admissions_take_exactly_the_cap(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            take(&store, &format!("n{}/{i}", i % 2), "1001", 500, Some(2)).await
        }));
    }
    let mut taken = 0;
    for t in tasks {
        taken += usize::from(t.await.expect("task"));
    }
    assert_eq!(taken, 2);
    let mut conn = store.conn().await.expect("conn");
    assert_eq!(
        fraud::live_leases(&mut conn, "1001", 500).await.expect("n"),
        2
    );
}

/// A node that stalled past its lease's expiry: the renewal does not revive the lease
/// (another node may have taken its place), and the node takes it again only while
/// the cap has room.
async fn a_lapsed_lease_is_not_revived_and_is_taken_again_only_under_the_cap(backend: Backend) {
    let Some((_dir, store)) = open_store(backend).await else {
        return;
    };
    // Node a's two calls, cap 2; both leases lapse at 130.
    assert!(take(&store, "a/1", "1001", 100, Some(2)).await);
    assert!(take(&store, "a/2", "1001", 100, Some(2)).await);
    // Node b takes a place freed by a's lapsed lease.
    let taken_by_b = async |lease: &str, now: i64| {
        let mut tx = store.begin().await.expect("begin");
        let taken = fraud::take_lease(
            &mut tx,
            &Lease {
                lease,
                account: "1001",
                node: "b",
                expires_at: now + 30,
            },
            now,
            Some(2),
        )
        .await
        .expect("take");
        tx.commit().await.expect("commit");
        taken
    };
    assert!(taken_by_b("b/1", 135).await, "a's places lapsed");
    let mut conn = store.conn().await.expect("conn");
    // a resumes at 136: neither lease is renewed, both are named.
    assert_eq!(
        fraud::renew_leases(&mut conn, &["a/1".into(), "a/2".into()], 136, 166)
            .await
            .expect("renew"),
        vec!["a/1".to_owned(), "a/2".to_owned()]
    );
    assert_eq!(
        fraud::live_leases(&mut conn, "1001", 136).await.expect("n"),
        1,
        "the renewal revived nothing"
    );
    // a takes one back (room for one), not the other.
    assert!(
        take(&store, "a/1", "1001", 136, Some(2)).await,
        "one place left"
    );
    assert!(
        !take(&store, "a/2", "1001", 136, Some(2)).await,
        "the cap is full"
    );
    assert_eq!(
        fraud::live_leases(&mut conn, "1001", 136).await.expect("n"),
        2
    );
    // The lease taken again renews like any other.
    assert!(
        fraud::renew_leases(&mut conn, &["a/1".into()], 150, 180)
            .await
            .expect("renew")
            .is_empty()
    );
    assert!(
        !taken_by_b("b/2", 160).await,
        "a/1 holds its place again (to 180), b/1 the other (to 165)"
    );
}
