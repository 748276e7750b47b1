//! Outbound calling settings per extension: class of service, fraud-limit overrides and
//! suspension. A missing row (or NULL column) means the defaults for the extension's kind.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::{Db, raw};
use crate::error::Result;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundRow {
    pub number: String,
    pub class_of_service: Option<String>,
    pub concurrent_external: Option<i64>,
    pub attempts_per_minute: Option<i64>,
    pub international_per_day: Option<i64>,
    /// 0 when not suspended.
    pub suspended_at: i64,
    pub suspend_reason: String,
}

/// An extension with its outbound settings (defaults where there is no row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallingRow {
    /// `user` or `fax`.
    pub kind: String,
    pub outbound: OutboundRow,
}

const COLUMNS: &str = "o.class_of_service, o.concurrent_external, o.attempts_per_minute, \
     o.international_per_day, coalesce(o.suspended_at, 0) AS suspended_at, \
     coalesce(o.suspend_reason, '') AS suspend_reason";

fn from_row(r: &AnyRow) -> Result<CallingRow> {
    Ok(CallingRow {
        kind: r.try_get("kind")?,
        outbound: OutboundRow {
            number: r.try_get("number")?,
            class_of_service: r.try_get("class_of_service")?,
            concurrent_external: r.try_get("concurrent_external")?,
            attempts_per_minute: r.try_get("attempts_per_minute")?,
            international_per_day: r.try_get("international_per_day")?,
            suspended_at: r.try_get("suspended_at")?,
            suspend_reason: r.try_get("suspend_reason")?,
        },
    })
}

/// The extensions whose outbound settings are not a user extension's defaults: fax
/// extensions and those with a stored row. (Fetching all 10,000 rows of a big install
/// one by one cost ~100 ms and 14 MiB at every start and reload; the rest are users
/// with the defaults, known from the directory.)
pub async fn calling(db: &mut dyn Db) -> Result<Vec<CallingRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT e.number AS number, e.kind AS kind, {COLUMNS} FROM extensions e \
         LEFT JOIN outbound o ON o.number = e.number \
         WHERE e.kind <> 'user' OR o.number IS NOT NULL ORDER BY e.number"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// One extension's outbound settings; None when the extension does not exist.
pub async fn calling_of(db: &mut dyn Db, number: &str) -> Result<Option<CallingRow>> {
    let conn = raw(db);
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT e.number AS number, e.kind AS kind, {COLUMNS} FROM extensions e \
         LEFT JOIN outbound o ON o.number = e.number WHERE e.number = $1"
    )))
    .bind(number)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn put_outbound(db: &mut dyn Db, o: &OutboundRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO outbound (number, class_of_service, concurrent_external, attempts_per_minute, \
         international_per_day, suspended_at, suspend_reason) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (number) DO UPDATE SET class_of_service = excluded.class_of_service, \
         concurrent_external = excluded.concurrent_external, attempts_per_minute = excluded.attempts_per_minute, \
         international_per_day = excluded.international_per_day, suspended_at = excluded.suspended_at, \
         suspend_reason = excluded.suspend_reason",
    )
    .bind(&o.number)
    .bind(&o.class_of_service)
    .bind(o.concurrent_external)
    .bind(o.attempts_per_minute)
    .bind(o.international_per_day)
    .bind(o.suspended_at)
    .bind(&o.suspend_reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Suspends an extension's outbound calling (keeps its other settings). Returns false
/// when the extension does not exist.
pub async fn suspend(db: &mut dyn Db, number: &str, at: i64, reason: &str) -> Result<bool> {
    let conn = raw(db);
    let Some(mut row) = calling_of(conn, number).await? else {
        return Ok(false);
    };
    row.outbound.suspended_at = at;
    row.outbound.suspend_reason = reason.to_owned();
    put_outbound(conn, &row.outbound).await?;
    Ok(true)
}
