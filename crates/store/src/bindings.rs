//! Registrations as the running registrar writes them behind: read back at start, by
//! `ext show`, by Re-Generate (grace sources) and the exposure advisor.

use sqlx::Row;

use crate::db::{Db, raw};
use crate::error::Result;

/// A persisted registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingRow {
    pub number: String,
    pub contact: String,
    pub call_id: String,
    pub cseq: i64,
    pub expires_at: i64,
    pub source: String,
    pub transport: String,
}

/// Bindings that have not expired at `now`.
pub async fn live_bindings(db: &mut dyn Db, now: i64) -> Result<Vec<BindingRow>> {
    let conn = raw(db);
    let rows = sqlx::query(
        "SELECT number, contact, call_id, cseq, expires_at, source, transport FROM bindings WHERE expires_at > $1",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(binding_from_row).collect()
}

fn binding_from_row(r: &sqlx::any::AnyRow) -> Result<BindingRow> {
    Ok(BindingRow {
        number: r.try_get("number")?,
        contact: r.try_get("contact")?,
        call_id: r.try_get("call_id")?,
        cseq: r.try_get("cseq")?,
        expires_at: r.try_get("expires_at")?,
        source: r.try_get("source")?,
        transport: r.try_get("transport")?,
    })
}

/// The live bindings of one extension.
pub async fn bindings_of(db: &mut dyn Db, number: &str, now: i64) -> Result<Vec<BindingRow>> {
    let conn = raw(db);
    let rows = sqlx::query(
        "SELECT number, contact, call_id, cseq, expires_at, source, transport FROM bindings \
         WHERE number = $1 AND expires_at > $2",
    )
    .bind(number)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(binding_from_row).collect()
}

/// Replaces the stored bindings of one extension with `rows`.
pub async fn replace_bindings(db: &mut dyn Db, number: &str, rows: &[BindingRow]) -> Result<()> {
    let conn = raw(db);
    sqlx::query("DELETE FROM bindings WHERE number = $1")
        .bind(number)
        .execute(&mut *conn)
        .await?;
    for b in rows {
        sqlx::query(
            "INSERT INTO bindings (number, contact, call_id, cseq, expires_at, source, transport) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&b.number)
        .bind(&b.contact)
        .bind(&b.call_id)
        .bind(b.cseq)
        .bind(b.expires_at)
        .bind(&b.source)
        .bind(&b.transport)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Removes bindings that expired before `now`.
pub async fn delete_expired_bindings(db: &mut dyn Db, now: i64) -> Result<u64> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM bindings WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}
