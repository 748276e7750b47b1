//! Rows and queries for Re-Generate: per-phone provisioning secrets and file state, the
//! old-password grace window, the mail outbox and the re-fetch (NOTIFY) queue.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::{Db, raw};
use crate::error::Result;

/// A phone's provisioning secrets (sealed) and file state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisioningRow {
    pub number: String,
    /// The phone's own web UI admin password, set by its provisioning file.
    pub admin_password_enc: String,
    /// The password the phone fetches its file with (HTTP Digest, user = MAC).
    pub http_password_enc: String,
    pub generation: i64,
    pub written: i64,
}

fn prov_from_row(r: &AnyRow) -> Result<ProvisioningRow> {
    Ok(ProvisioningRow {
        number: r.try_get("number")?,
        admin_password_enc: r.try_get("admin_password_enc")?,
        http_password_enc: r.try_get("http_password_enc")?,
        generation: r.try_get("generation")?,
        written: r.try_get("written")?,
    })
}

const PROV_COLUMNS: &str = "number, admin_password_enc, http_password_enc, generation, written";

pub async fn get_provisioning(db: &mut dyn Db, number: &str) -> Result<Option<ProvisioningRow>> {
    let conn = raw(db);
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {PROV_COLUMNS} FROM provisioning WHERE number = $1"
    )))
    .bind(number)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(prov_from_row).transpose()
}

pub async fn all_provisioning(db: &mut dyn Db) -> Result<Vec<ProvisioningRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {PROV_COLUMNS} FROM provisioning ORDER BY number"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(prov_from_row).collect()
}

/// Rows whose files on disk are older than the database (a crash or a failed write).
pub async fn unwritten_provisioning(db: &mut dyn Db) -> Result<Vec<ProvisioningRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {PROV_COLUMNS} FROM provisioning WHERE written < generation ORDER BY number"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(prov_from_row).collect()
}

/// Inserts or replaces a phone's provisioning row.
pub async fn put_provisioning(db: &mut dyn Db, p: &ProvisioningRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO provisioning (number, admin_password_enc, http_password_enc, generation, written) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (number) DO UPDATE SET \
         admin_password_enc = excluded.admin_password_enc, http_password_enc = excluded.http_password_enc, \
         generation = excluded.generation, written = excluded.written",
    )
    .bind(&p.number)
    .bind(&p.admin_password_enc)
    .bind(&p.http_password_enc)
    .bind(p.generation)
    .bind(p.written)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records that the files of `number` at `generation` are on disk (unless a newer
/// generation was stored meanwhile).
pub async fn mark_written(db: &mut dyn Db, number: &str, generation: i64) -> Result<()> {
    let conn = raw(db);
    sqlx::query("UPDATE provisioning SET written = $2 WHERE number = $1 AND written < $2")
        .bind(number)
        .bind(generation)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The old credentials of an extension during its grace window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraceRow {
    pub number: String,
    pub auth_id: String,
    pub ha1_md5: String,
    pub ha1_sha256: String,
    /// IP addresses, comma-separated.
    pub sources: String,
    pub expires_at: i64,
}

fn grace_from_row(r: &AnyRow) -> Result<GraceRow> {
    Ok(GraceRow {
        number: r.try_get("number")?,
        auth_id: r.try_get("auth_id")?,
        ha1_md5: r.try_get("ha1_md5")?,
        ha1_sha256: r.try_get("ha1_sha256")?,
        sources: r.try_get("sources")?,
        expires_at: r.try_get("expires_at")?,
    })
}

/// Grace windows still open at `now`.
pub async fn live_graces(db: &mut dyn Db, now: i64) -> Result<Vec<GraceRow>> {
    let conn = raw(db);
    let rows = sqlx::query(
        "SELECT number, auth_id, ha1_md5, ha1_sha256, sources, expires_at FROM credential_grace WHERE expires_at > $1",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(grace_from_row).collect()
}

pub async fn get_grace(db: &mut dyn Db, number: &str) -> Result<Option<GraceRow>> {
    let conn = raw(db);
    let row = sqlx::query(
        "SELECT number, auth_id, ha1_md5, ha1_sha256, sources, expires_at FROM credential_grace WHERE number = $1",
    )
    .bind(number)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(grace_from_row).transpose()
}

pub async fn put_grace(db: &mut dyn Db, g: &GraceRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO credential_grace (number, auth_id, ha1_md5, ha1_sha256, sources, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (number) DO UPDATE SET auth_id = excluded.auth_id, \
         ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256, sources = excluded.sources, \
         expires_at = excluded.expires_at",
    )
    .bind(&g.number)
    .bind(&g.auth_id)
    .bind(&g.ha1_md5)
    .bind(&g.ha1_sha256)
    .bind(&g.sources)
    .bind(g.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Ends grace windows: those of `numbers`, and every expired one.
pub async fn end_graces(db: &mut dyn Db, numbers: &[String], now: i64) -> Result<()> {
    let conn = raw(db);
    for n in numbers {
        sqlx::query("DELETE FROM credential_grace WHERE number = $1")
            .bind(n)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("DELETE FROM credential_grace WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One mail in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: String,
    pub number: String,
    pub recipient: String,
    pub message_enc: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub lease_until: i64,
    pub last_error: String,
    pub created_at: i64,
    pub sent_at: i64,
}

const OUTBOX_COLUMNS: &str = "id, number, recipient, message_enc, state, attempts, next_attempt_at, \
     lease_until, last_error, created_at, sent_at";

fn outbox_from_row(r: &AnyRow) -> Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.try_get("id")?,
        number: r.try_get("number")?,
        recipient: r.try_get("recipient")?,
        message_enc: r.try_get("message_enc")?,
        state: r.try_get("state")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        lease_until: r.try_get("lease_until")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        sent_at: r.try_get("sent_at")?,
    })
}

/// Queues a mail; mails of the same extension still waiting are superseded (they carry
/// credentials that no longer work).
pub async fn queue_mail(db: &mut dyn Db, m: &OutboxRow) -> Result<()> {
    let conn = raw(db);
    supersede_mail(conn, &m.number).await?;
    insert_mail(conn, m).await
}

/// Queues a mail without superseding anything (alerts).
pub async fn insert_mail(db: &mut dyn Db, m: &OutboxRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO outbox ({OUTBOX_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    )))
    .bind(&m.id)
    .bind(&m.number)
    .bind(&m.recipient)
    .bind(&m.message_enc)
    .bind(&m.state)
    .bind(m.attempts)
    .bind(m.next_attempt_at)
    .bind(m.lease_until)
    .bind(&m.last_error)
    .bind(m.created_at)
    .bind(m.sent_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks the extension's mails still waiting as superseded (a newer change, or the
/// extension was removed: their credentials no longer work).
pub async fn supersede_mail(db: &mut dyn Db, number: &str) -> Result<()> {
    let conn = raw(db);
    sqlx::query("UPDATE outbox SET state = 'superseded' WHERE number = $1 AND state = 'queued'")
        .bind(number)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Mails ready to send at `now`: queued and due, or claimed by a sender whose lease ran
/// out (it died). Oldest first, at most `limit`.
pub async fn due_mail(db: &mut dyn Db, now: i64, limit: i64) -> Result<Vec<OutboxRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE (state = 'queued' AND next_attempt_at <= $1) \
         OR (state = 'sending' AND lease_until <= $1) ORDER BY created_at, id LIMIT $2"
    )))
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(outbox_from_row).collect()
}

/// Claims a mail for sending until `lease_until`; false when another sender has it.
pub async fn claim_mail(db: &mut dyn Db, id: &str, now: i64, lease_until: i64) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query(
        "UPDATE outbox SET state = 'sending', lease_until = $3 WHERE id = $1 AND \
         ((state = 'queued' AND next_attempt_at <= $2) OR (state = 'sending' AND lease_until <= $2))",
    )
    .bind(id)
    .bind(now)
    .bind(lease_until)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the outcome of a send attempt: `state` is sent, queued (retry at
/// `next_attempt_at`) or failed.
pub async fn finish_mail(
    db: &mut dyn Db,
    id: &str,
    state: &str,
    next_attempt_at: i64,
    error: &str,
    now: i64,
) -> Result<()> {
    let conn = raw(db);
    let sent_at = if state == "sent" { now } else { 0 };
    sqlx::query(
        "UPDATE outbox SET state = $2, attempts = attempts + 1, next_attempt_at = $3, \
         last_error = $4, sent_at = $5, lease_until = 0 WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(next_attempt_at)
    .bind(error)
    .bind(sent_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn get_mail(db: &mut dyn Db, id: &str) -> Result<Option<OutboxRow>> {
    let conn = raw(db);
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(outbox_from_row).transpose()
}

/// Every mail, newest first (for `sipward mail list`).
pub async fn list_mail(db: &mut dyn Db) -> Result<Vec<OutboxRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY created_at DESC, id"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(outbox_from_row).collect()
}

/// Asks the running server to tell the phones of `number` to re-fetch their files.
pub async fn request_resync(db: &mut dyn Db, number: &str, now: i64) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO resync (number, created_at) VALUES ($1, $2) \
         ON CONFLICT (number) DO UPDATE SET created_at = excluded.created_at",
    )
    .bind(number)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Takes every pending re-fetch request (the rows are deleted).
pub async fn take_resyncs(db: &mut dyn Db) -> Result<Vec<String>> {
    let conn = raw(db);
    let rows = sqlx::query("DELETE FROM resync RETURNING number")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<String, _>("number")?))
        .collect()
}
