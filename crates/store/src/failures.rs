//! Failed authentications per account, shared by the nodes on one database (issue 21).
//! Each serving process adds its new failures as deltas per account and minute under a
//! token of its own, and reads what the other processes added: its view of an account
//! is its own exact count plus theirs, behind the truth by at most one flush of theirs.

use sqlx::Row;

use crate::db::{Db, raw};
use crate::error::Result;

/// New failures of one account in one minute (Unix seconds / 60), seen by this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureDelta {
    pub auth_id: String,
    pub minute: i64,
    pub count: i64,
}

/// Adds this process's (`node`) new failures to the shared counts.
pub async fn add_auth_failures(db: &mut dyn Db, node: &str, deltas: &[FailureDelta]) -> Result<()> {
    let conn = raw(db);
    for d in deltas {
        sqlx::query(
            "INSERT INTO auth_failures (auth_id, node, minute, count) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (auth_id, node, minute) DO UPDATE SET count = auth_failures.count + excluded.count",
        )
        .bind(&d.auth_id)
        .bind(node)
        .bind(d.minute)
        .bind(d.count)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The failures other processes than `node` counted per account since `since_minute`
/// (the most-failed `limit` accounts, so a flood of auth IDs cannot fill memory).
pub async fn others_auth_failures(
    db: &mut dyn Db,
    node: &str,
    since_minute: i64,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    let conn = raw(db);
    let rows = sqlx::query(
        "SELECT auth_id, CAST(SUM(count) AS BIGINT) AS n FROM auth_failures \
         WHERE node <> $1 AND minute >= $2 GROUP BY auth_id ORDER BY n DESC, auth_id LIMIT $3",
    )
    .bind(node)
    .bind(since_minute)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("auth_id")?, r.try_get("n")?)))
        .collect()
}

/// One page of [`others_auth_failures`] in auth ID order: the accounts after `after`
/// (a cursor: the next page starts after the last ID of this one; `""` starts over), at
/// most `limit`. Paging through every account under attack, a bounded page a round,
/// reaches those a most-failed-first read of the same bound never does (more accounts
/// under attack than the bound).
pub async fn others_auth_failures_after(
    db: &mut dyn Db,
    node: &str,
    since_minute: i64,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    let conn = raw(db);
    let rows = sqlx::query(
        "SELECT auth_id, CAST(SUM(count) AS BIGINT) AS n FROM auth_failures \
         WHERE node <> $1 AND minute >= $2 AND auth_id > $3 GROUP BY auth_id \
         ORDER BY auth_id LIMIT $4",
    )
    .bind(node)
    .bind(since_minute)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("auth_id")?, r.try_get("n")?)))
        .collect()
}

/// Removes the counts of minutes before `before_minute`; returns how many rows went.
pub async fn prune_auth_failures(db: &mut dyn Db, before_minute: i64) -> Result<u64> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM auth_failures WHERE minute < $1")
        .bind(before_minute)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}
