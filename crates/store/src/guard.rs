//! The guard's records: bans and the allow list, and the version the running server
//! polls for changes made elsewhere (the CLI).

use sqlx::Row;

use crate::db::{Db, raw};
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanRow {
    /// The banned IP address, in its canonical text form.
    pub source: String,
    /// A rule id such as `manual` or `auth.failures`.
    pub reason: String,
    /// What triggered it, in words (counts, the user agent seen, who banned by hand).
    pub detail: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub expires_at: i64,
    /// How often this source has been banned (for escalation).
    pub times: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRow {
    /// An IP network in CIDR form.
    pub network: String,
    pub note: String,
    pub created_at: i64,
}

pub async fn guard_version(db: &mut dyn Db) -> Result<i64> {
    let conn = raw(db);
    crate::meta::meta_counter(conn, "guard_version").await
}

/// The guard settings an administrator changed outside the config file (JSON), if any.
pub async fn overrides(db: &mut dyn Db) -> Result<Option<String>> {
    crate::meta::get_meta(raw(db), "guard_overrides").await
}

/// Stores the changed guard settings and moves the guard version, so the running
/// server puts them in force at its next poll.
pub async fn set_overrides(db: &mut dyn Db, json: &str) -> Result<()> {
    let conn = raw(db);
    crate::meta::set_meta(conn, "guard_overrides", json).await?;
    sqlx::query(
        "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'guard_version'",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The `host` of every PSTN gateway (their addresses are never banned).
pub async fn gateway_hosts(db: &mut dyn Db) -> Result<Vec<String>> {
    let conn = raw(db);
    let rows = sqlx::query("SELECT host FROM gateways ORDER BY host")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| r.try_get("host").map_err(Into::into))
        .collect()
}

/// Bans in force at `now` (all bans when `now` is `None`).
pub async fn bans(db: &mut dyn Db, now: Option<i64>) -> Result<Vec<BanRow>> {
    let conn = raw(db);
    let rows = sqlx::query(
        "SELECT source, reason, detail, first_seen, last_seen, expires_at, times FROM bans \
         WHERE expires_at > $1 ORDER BY source",
    )
    .bind(now.unwrap_or(i64::MIN))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(ban_from_row).collect()
}

/// The ban record of one source, in force or not.
pub async fn get_ban(db: &mut dyn Db, source: &str) -> Result<Option<BanRow>> {
    let conn = raw(db);
    let row = sqlx::query(
        "SELECT source, reason, detail, first_seen, last_seen, expires_at, times FROM bans WHERE source = $1",
    )
    .bind(source)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(ban_from_row).transpose()
}

fn ban_from_row(r: &sqlx::any::AnyRow) -> Result<BanRow> {
    Ok(BanRow {
        source: r.try_get("source")?,
        reason: r.try_get("reason")?,
        detail: r.try_get("detail")?,
        first_seen: r.try_get("first_seen")?,
        last_seen: r.try_get("last_seen")?,
        expires_at: r.try_get("expires_at")?,
        times: r.try_get("times")?,
    })
}

/// Forgets bans that expired before `before` (they no longer feed escalation), so an
/// attack from many addresses cannot grow the table without end.
pub async fn prune_bans(db: &mut dyn Db, before: i64) -> Result<u64> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM bans WHERE expires_at < $1")
        .bind(before)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// Inserts or replaces the ban of a source; an existing record keeps its `first_seen`.
pub async fn put_ban(db: &mut dyn Db, b: &BanRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO bans (source, reason, detail, first_seen, last_seen, expires_at, times) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (source) DO UPDATE SET reason = excluded.reason, \
         detail = excluded.detail, last_seen = excluded.last_seen, expires_at = excluded.expires_at, \
         times = excluded.times",
    )
    .bind(&b.source)
    .bind(&b.reason)
    .bind(&b.detail)
    .bind(b.first_seen)
    .bind(b.last_seen)
    .bind(b.expires_at)
    .bind(b.times)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn delete_ban(db: &mut dyn Db, source: &str) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM bans WHERE source = $1")
        .bind(source)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn allow_list(db: &mut dyn Db) -> Result<Vec<AllowRow>> {
    let conn = raw(db);
    let rows = sqlx::query("SELECT network, note, created_at FROM allow_list ORDER BY network")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AllowRow {
                network: r.try_get("network")?,
                note: r.try_get("note")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

pub async fn add_allow(db: &mut dyn Db, a: &AllowRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query("INSERT INTO allow_list (network, note, created_at) VALUES ($1, $2, $3)")
        .bind(&a.network)
        .bind(&a.note)
        .bind(a.created_at)
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::on_conflict(e, || format!("allow-list entry {}", a.network)))?;
    Ok(())
}

pub async fn delete_allow(db: &mut dyn Db, network: &str) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM allow_list WHERE network = $1")
        .bind(network)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}
