//! Node names held by one live process (issue 21). A node's name owns rows other nodes
//! leave alone (its bindings, its call leases): two processes under one name, a cloned
//! machine's host name say, would replace each other's bindings. So a process claims
//! its name at start, keeps it with a heartbeat, and writes bindings only while the row
//! still names it ([`holds`], inside the write's own transaction).
//!
//! The row also publishes where the node takes internal hops from the others (`hop`),
//! which they read with [`live_nodes`].

use sqlx::Row;

use crate::db::{Db, Tx, raw};
use crate::error::Result;

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The name is this process's now.
    Taken,
    /// Another live process holds it; its last heartbeat was at `heartbeat_at`.
    Held { heartbeat_at: i64 },
}

/// One node as its row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRow {
    pub name: String,
    /// The holding process's random instance id.
    pub instance: String,
    /// Where it takes internal hops (`IP:PORT`), empty when it takes none.
    pub hop: String,
    pub heartbeat_at: i64,
}

/// Claims `name` for the process `instance` at `now`, in one conditional upsert: taken
/// when the name has no row, when its heartbeat is older than `stale_before`, or when
/// the row is this instance's already. Runs in a [`Tx`] so that it orders against the
/// bindings' writes (which check [`holds`] in theirs).
pub async fn claim(
    tx: &mut Tx,
    name: &str,
    instance: &str,
    hop: &str,
    now: i64,
    stale_before: i64,
) -> Result<Claim> {
    let conn = raw(tx);
    let taken: Option<String> = sqlx::query_scalar(
        "INSERT INTO nodes (name, instance, hop, heartbeat_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET instance = excluded.instance, hop = excluded.hop, \
         heartbeat_at = excluded.heartbeat_at \
         WHERE nodes.instance = excluded.instance OR nodes.heartbeat_at < $5 \
         RETURNING name",
    )
    .bind(name)
    .bind(instance)
    .bind(hop)
    .bind(now)
    .bind(stale_before)
    .fetch_optional(&mut *conn)
    .await?;
    if taken.is_some() {
        return Ok(Claim::Taken);
    }
    let heartbeat_at: i64 = sqlx::query_scalar("SELECT heartbeat_at FROM nodes WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Claim::Held { heartbeat_at })
}

/// Moves the heartbeat of `name` while `instance` holds it. False when the row names
/// another process (or none): the name was taken over, and this process must stop
/// writing under it.
pub async fn heartbeat(db: &mut dyn Db, name: &str, instance: &str, now: i64) -> Result<bool> {
    let moved = sqlx::query("UPDATE nodes SET heartbeat_at = $3 WHERE name = $1 AND instance = $2")
        .bind(name)
        .bind(instance)
        .bind(now)
        .execute(raw(db))
        .await?
        .rows_affected();
    Ok(moved == 1)
}

/// Whether `instance` holds `name` now.
pub async fn holds(db: &mut dyn Db, name: &str, instance: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE name = $1 AND instance = $2")
        .bind(name)
        .bind(instance)
        .fetch_one(raw(db))
        .await?;
    Ok(n == 1)
}

/// Gives `name` up (a clean stop), so the next process under it starts at once. Only
/// `instance`'s own row goes.
pub async fn release(db: &mut dyn Db, name: &str, instance: &str) -> Result<bool> {
    let gone = sqlx::query("DELETE FROM nodes WHERE name = $1 AND instance = $2")
        .bind(name)
        .bind(instance)
        .execute(raw(db))
        .await?
        .rows_affected();
    Ok(gone == 1)
}

/// The nodes whose heartbeat is at or after `live_since`, by name.
pub async fn live_nodes(db: &mut dyn Db, live_since: i64) -> Result<Vec<NodeRow>> {
    let rows = sqlx::query(
        "SELECT name, instance, hop, heartbeat_at FROM nodes WHERE heartbeat_at >= $1 \
         ORDER BY name",
    )
    .bind(live_since)
    .fetch_all(raw(db))
    .await?;
    rows.iter()
        .map(|r| {
            Ok(NodeRow {
                name: r.try_get("name")?,
                instance: r.try_get("instance")?,
                hop: r.try_get("hop")?,
                heartbeat_at: r.try_get("heartbeat_at")?,
            })
        })
        .collect()
}
