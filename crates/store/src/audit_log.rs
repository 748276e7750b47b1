//! The administrators' audit log: who did what to which subject, never a secret.

use sqlx::Row;

use crate::db::{Db, raw};
use crate::error::Result;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

pub async fn append(
    db: &mut dyn Db,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The newest `limit` entries, oldest first.
pub async fn recent(db: &mut dyn Db, limit: i64) -> Result<Vec<LogRow>> {
    let conn = raw(db);
    let rows = sqlx::query(
        "SELECT id, at, actor, action, subject, detail FROM \
         (SELECT * FROM audit_log ORDER BY id DESC LIMIT $1) AS recent ORDER BY id",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LogRow {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                subject: r.try_get("subject")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect()
}
