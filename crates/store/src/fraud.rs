//! Fraud limits held in the database, exact however many nodes share it: counters
//! (attempts per minute, international calls per day) moved by one conditional upsert
//! each, and the leases external calls hold while they count (the concurrent-calls
//! limit), which their node renews and which lapse when it dies.
//!
//! Exactness does not come from a lock sipward takes but from the statements
//! themselves. A counter is `INSERT … ON CONFLICT DO UPDATE SET used = used + 1 WHERE
//! used + 1 <= cap RETURNING used`: PostgreSQL re-checks the `WHERE` against the row as
//! the writer before it left it, SQLite runs one writer at a time. A lease is taken in a
//! transaction ([`Tx`]) that first writes the account's gate row (on PostgreSQL a row
//! lock held to the commit, so the next admission of that account waits for it and then
//! counts with a fresh snapshot; on SQLite the transaction is the only writer), then
//! inserts the lease only while fewer than `cap` live ones exist.
//!
//! A lease that lapsed (its node stalled past its expiry, so another node may have
//! taken the place) is never revived by a renewal: [`renew_leases`] moves only live
//! ones and names the others, and the node takes each again through [`take_lease`],
//! under the cap, or ends its call.

use sqlx::Row;

use crate::db::{Db, Tx, raw};
use crate::error::Result;

/// A per-period counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// External call attempts, per minute (UTC minutes).
    AttemptsPerMinute,
    /// International and high-cost calls, per day (UTC days).
    InternationalPerDay,
}

impl Counter {
    fn id(self) -> &'static str {
        match self {
            Counter::AttemptsPerMinute => "attempts_minute",
            Counter::InternationalPerDay => "international_day",
        }
    }

    /// The length of one period, in seconds.
    pub fn period_secs(self) -> i64 {
        match self {
            Counter::AttemptsPerMinute => 60,
            Counter::InternationalPerDay => 86_400,
        }
    }
}

/// Counts one use of `counter` by `account` in the period `now` falls in, unless that
/// would take the count past `cap`. `Some(used)`, this use included; `None` when it
/// would break the cap (then nothing is counted).
pub async fn count(
    db: &mut dyn Db,
    account: &str,
    counter: Counter,
    now: i64,
    cap: u32,
) -> Result<Option<u32>> {
    let len = counter.period_secs();
    let period = now.div_euclid(len) * len;
    let used: Option<i64> = sqlx::query_scalar(
        "INSERT INTO fraud_counts (account, counter, period, ends_at, used) \
         SELECT $1, $2, $3, $4, 1 WHERE 1 <= $5 \
         ON CONFLICT (account, counter, period) DO UPDATE SET used = fraud_counts.used + 1 \
         WHERE fraud_counts.used + 1 <= $5 \
         RETURNING used",
    )
    .bind(account)
    .bind(counter.id())
    .bind(period)
    .bind(period + len)
    .bind(i64::from(cap))
    .fetch_optional(raw(db))
    .await?;
    Ok(used.map(|u| u32::try_from(u).unwrap_or(u32::MAX)))
}

/// How often `account` has used `counter` in the period `now` falls in.
pub async fn used(db: &mut dyn Db, account: &str, counter: Counter, now: i64) -> Result<u32> {
    let len = counter.period_secs();
    let used: Option<i64> = sqlx::query_scalar(
        "SELECT used FROM fraud_counts WHERE account = $1 AND counter = $2 AND period = $3",
    )
    .bind(account)
    .bind(counter.id())
    .bind(now.div_euclid(len) * len)
    .fetch_optional(raw(db))
    .await?;
    Ok(used.map_or(0, |u| u32::try_from(u).unwrap_or(u32::MAX)))
}

/// A call's lease: its unique name (the node's name in it), the account the call is
/// charged to, the node that renews it, and until when it holds unless renewed.
#[derive(Clone, Copy, Debug)]
pub struct Lease<'a> {
    pub lease: &'a str,
    pub account: &'a str,
    pub node: &'a str,
    pub expires_at: i64,
}

/// Takes `l` unless `account` holds `cap` leases live at `now` already (`None`: no cap,
/// for calls that are never refused but still count, such as emergency calls). True
/// when taken. A lease of that name that lapsed (still in the table until pruned) is
/// taken again by the same conditional statement. Takes a [`Tx`]: the gate row and the
/// insert must commit together, or the gate orders nothing.
pub async fn take_lease(tx: &mut Tx, l: &Lease<'_>, now: i64, cap: Option<u32>) -> Result<bool> {
    let conn = raw(tx);
    sqlx::query(
        "INSERT INTO call_gates (account, turns) VALUES ($1, 1) \
         ON CONFLICT (account) DO UPDATE SET turns = call_gates.turns + 1",
    )
    .bind(l.account)
    .execute(&mut *conn)
    .await?;
    let cap = cap.map_or(i64::MAX, i64::from);
    let taken = sqlx::query(
        "INSERT INTO call_leases (lease, account, node, expires_at) \
         SELECT $1, $2, $3, $4 \
         WHERE (SELECT COUNT(*) FROM call_leases WHERE account = $2 AND expires_at > $5) < $6 \
         ON CONFLICT (lease) DO UPDATE SET expires_at = excluded.expires_at, \
         node = excluded.node",
    )
    .bind(l.lease)
    .bind(l.account)
    .bind(l.node)
    .bind(l.expires_at)
    .bind(now)
    .bind(cap)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(taken == 1)
}

/// The leases of `account` live at `now`, on every node.
pub async fn live_leases(db: &mut dyn Db, account: &str, now: i64) -> Result<u32> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM call_leases WHERE account = $1 AND expires_at > $2",
    )
    .bind(account)
    .bind(now)
    .fetch_one(raw(db))
    .await?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Ends the leases named (calls that no longer count); how many there were.
pub async fn release_leases(db: &mut dyn Db, leases: &[String]) -> Result<u64> {
    let conn = raw(db);
    let mut gone = 0;
    for lease in leases {
        gone += sqlx::query("DELETE FROM call_leases WHERE lease = $1")
            .bind(lease)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    Ok(gone)
}

/// Moves the expiry of the leases named (calls still up) that are live at `now` to
/// `expires_at`; returns the names of those that were not (lapsed, or pruned). A lapsed
/// lease stays lapsed: its place may be another node's call's by now, so its call counts
/// again only by taking it again under the cap ([`take_lease`]).
pub async fn renew_leases(
    db: &mut dyn Db,
    leases: &[String],
    now: i64,
    expires_at: i64,
) -> Result<Vec<String>> {
    let conn = raw(db);
    let mut lapsed = Vec::new();
    for lease in leases {
        let kept = sqlx::query(
            "UPDATE call_leases SET expires_at = $2 WHERE lease = $1 AND expires_at > $3",
        )
        .bind(lease)
        .bind(expires_at)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if kept == 0 {
            lapsed.push(lease.clone());
        }
    }
    Ok(lapsed)
}

/// Deletes what no longer counts at `now`: lapsed leases, counters of ended periods,
/// and gate rows of accounts that hold no lease. Keeps the tables as small as what is
/// live.
pub async fn prune(db: &mut dyn Db, now: i64) -> Result<u64> {
    let conn = raw(db);
    let mut gone = sqlx::query("DELETE FROM call_leases WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    gone += sqlx::query("DELETE FROM fraud_counts WHERE ends_at <= $1")
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    gone += sqlx::query(
        "DELETE FROM call_gates WHERE NOT EXISTS \
         (SELECT 1 FROM call_leases l WHERE l.account = call_gates.account)",
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(gone)
}

/// The rows of each fraud table (`/metrics`-style sizes, and tests of the pruning).
pub async fn table_sizes(db: &mut dyn Db) -> Result<[(&'static str, u64); 3]> {
    let conn = raw(db);
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM call_gates) AS gates, \
         (SELECT COUNT(*) FROM call_leases) AS leases, \
         (SELECT COUNT(*) FROM fraud_counts) AS counts",
    )
    .fetch_one(&mut *conn)
    .await?;
    let n = |name: &str| -> Result<u64> {
        let v: i64 = row.try_get(name)?;
        Ok(u64::try_from(v).unwrap_or(0))
    };
    Ok([
        ("call_gates", n("gates")?),
        ("call_leases", n("leases")?),
        ("fraud_counts", n("counts")?),
    ])
}
