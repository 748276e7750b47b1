//! The mail outbox: queued messages (sealed), claimed with a lease by whoever sends them,
//! retried with backoff, superseded by a newer change of the same extension. A
//! credentials mail carries the digest of what it was made from (`basis`), which its
//! sender checks against the extension before sending.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::{Db, raw};
use crate::error::Result;

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
    /// For a credentials mail, a digest of the recipient and the sealed credentials it
    /// was made from; empty for alerts (which are about, not for, an extension).
    pub basis: String,
}

const OUTBOX_COLUMNS: &str = "id, number, recipient, message_enc, state, attempts, next_attempt_at, \
     lease_until, last_error, created_at, sent_at, basis";

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
        basis: r.try_get("basis")?,
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
        "INSERT INTO outbox ({OUTBOX_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
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
    .bind(&m.basis)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks the extension's mails not yet sent as superseded (a newer change, or the
/// extension was removed: their credentials or address no longer hold). That includes
/// mails claimed by a sender (`sending`): one still sending finishes as it was going
/// to; one whose sender died is never picked up again. Returns how many it withdrew.
pub async fn supersede_mail(db: &mut dyn Db, number: &str) -> Result<u64> {
    let conn = raw(db);
    let done = sqlx::query(
        "UPDATE outbox SET state = 'superseded', lease_until = 0, \
         last_error = 'withdrawn: the account changed after it was queued' \
         WHERE number = $1 AND state IN ('queued', 'sending')",
    )
    .bind(number)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Withdraws one claimed mail that no longer matches its extension (its sender checked
/// before sending).
pub async fn withdraw_mail(db: &mut dyn Db, id: &str, reason: &str) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "UPDATE outbox SET state = 'superseded', lease_until = 0, last_error = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
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
/// `next_attempt_at`) or failed. A mail withdrawn while it was being sent stays
/// withdrawn unless it did go out (then the record says so).
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
         last_error = $4, sent_at = $5, lease_until = 0 \
         WHERE id = $1 AND (state = 'sending' OR $2 = 'sent')",
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

/// The merge window of one kind of alert about one extension (see `0010_alerts.sql`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertWindowRow {
    pub number: String,
    /// A stable reason id (`emergency`, ...).
    pub reason: String,
    /// When the window the mail `mail_id` covers began.
    pub window_start: i64,
    /// How many events that mail stands for so far.
    pub count: i64,
    pub mail_id: String,
}

/// The current merge window of `reason` alerts about `number`, if any.
pub async fn alert_window(
    db: &mut dyn Db,
    number: &str,
    reason: &str,
) -> Result<Option<AlertWindowRow>> {
    let conn = raw(db);
    let row = sqlx::query(
        "SELECT number, reason, window_start, count, mail_id FROM alert_windows \
         WHERE number = $1 AND reason = $2",
    )
    .bind(number)
    .bind(reason)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(AlertWindowRow {
            number: r.try_get("number")?,
            reason: r.try_get("reason")?,
            window_start: r.try_get("window_start")?,
            count: r.try_get("count")?,
            mail_id: r.try_get("mail_id")?,
        })
    })
    .transpose()
}

/// Records a merge window (replacing the extension's previous one for that reason).
pub async fn put_alert_window(db: &mut dyn Db, w: &AlertWindowRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO alert_windows (number, reason, window_start, count, mail_id) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (number, reason) DO UPDATE SET \
         window_start = excluded.window_start, count = excluded.count, mail_id = excluded.mail_id",
    )
    .bind(&w.number)
    .bind(&w.reason)
    .bind(w.window_start)
    .bind(w.count)
    .bind(&w.mail_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Replaces the message of a mail nobody has claimed yet; false when it is being sent
/// or gone already (the caller then queues another).
pub async fn replace_queued_message(db: &mut dyn Db, id: &str, message_enc: &str) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query("UPDATE outbox SET message_enc = $2 WHERE id = $1 AND state = 'queued'")
        .bind(id)
        .bind(message_enc)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}
