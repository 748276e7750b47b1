//! Voicemail rows: a mailbox's login state (failures, lock, escalation level, forced
//! PIN change, greeting file) and its messages. Rows are owned by their extension and
//! go with it (foreign keys); the audio files they name are the caller's to remove.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::{Db, raw};
use crate::error::Result;

/// A mailbox's login state. A box without a row has the default: nothing counted, not
/// locked, no PIN change pending, the default greeting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoxRow {
    pub number: String,
    pub failures: i64,
    pub failure_window_start: i64,
    pub locked_until: i64,
    pub lock_level: i64,
    pub last_locked_at: i64,
    pub must_change_pin: bool,
    /// The recorded greeting, relative to the data dir.
    pub greeting: Option<String>,
    pub updated_at: i64,
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRow {
    pub id: String,
    pub number: String,
    pub received_at: i64,
    pub duration_ms: i64,
    /// Who called, as text for display (never dialled).
    pub caller: String,
    /// `new` or `saved`.
    pub folder: String,
    /// The WAV file, relative to the data dir.
    pub file: String,
}

/// A box's messages in numbers, for the console's list and the MWI NOTIFY.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoxTotals {
    pub number: String,
    pub new: i64,
    pub saved: i64,
    pub total_ms: i64,
    /// The newest message's time (0: none).
    pub latest: i64,
}

const BOX_COLUMNS: &str = "number, failures, failure_window_start, locked_until, lock_level, \
     last_locked_at, must_change_pin, greeting, updated_at";
const MESSAGE_COLUMNS: &str = "id, number, received_at, duration_ms, caller, folder, file";

fn box_from_row(r: &AnyRow) -> Result<BoxRow> {
    Ok(BoxRow {
        number: r.try_get("number")?,
        failures: r.try_get("failures")?,
        failure_window_start: r.try_get("failure_window_start")?,
        locked_until: r.try_get("locked_until")?,
        lock_level: r.try_get("lock_level")?,
        last_locked_at: r.try_get("last_locked_at")?,
        must_change_pin: r.try_get::<i64, _>("must_change_pin")? != 0,
        greeting: r.try_get("greeting")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn message_from_row(r: &AnyRow) -> Result<MessageRow> {
    Ok(MessageRow {
        id: r.try_get("id")?,
        number: r.try_get("number")?,
        received_at: r.try_get("received_at")?,
        duration_ms: r.try_get("duration_ms")?,
        caller: r.try_get("caller")?,
        folder: r.try_get("folder")?,
        file: r.try_get("file")?,
    })
}

/// The box's login state, None when it was never written (the defaults hold).
pub async fn get_box(db: &mut dyn Db, number: &str) -> Result<Option<BoxRow>> {
    let conn = raw(db);
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {BOX_COLUMNS} FROM voicemail_boxes WHERE number = $1"
    )))
    .bind(number)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(box_from_row).transpose()
}

/// Every box with a stored state, in number order.
pub async fn list_boxes(db: &mut dyn Db) -> Result<Vec<BoxRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {BOX_COLUMNS} FROM voicemail_boxes ORDER BY LENGTH(number), number"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(box_from_row).collect()
}

/// Writes the box's state (inserted on first write). False when the extension does not
/// exist (nothing written).
pub async fn save_box(db: &mut dyn Db, b: &BoxRow) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO voicemail_boxes ({BOX_COLUMNS}) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE EXISTS (SELECT 1 FROM extensions WHERE number = $1) \
         ON CONFLICT (number) DO UPDATE SET failures = excluded.failures, \
         failure_window_start = excluded.failure_window_start, locked_until = excluded.locked_until, \
         lock_level = excluded.lock_level, last_locked_at = excluded.last_locked_at, \
         must_change_pin = excluded.must_change_pin, greeting = excluded.greeting, \
         updated_at = excluded.updated_at"
    )))
    .bind(&b.number)
    .bind(b.failures)
    .bind(b.failure_window_start)
    .bind(b.locked_until)
    .bind(b.lock_level)
    .bind(b.last_locked_at)
    .bind(i64::from(b.must_change_pin))
    .bind(&b.greeting)
    .bind(b.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn insert_message(db: &mut dyn Db, m: &MessageRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO voicemail_messages ({MESSAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )))
    .bind(&m.id)
    .bind(&m.number)
    .bind(m.received_at)
    .bind(m.duration_ms)
    .bind(&m.caller)
    .bind(&m.folder)
    .bind(&m.file)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The box's messages: new before saved, oldest first within each (the order a
/// mailbox is listened to in).
pub async fn messages_of(db: &mut dyn Db, number: &str) -> Result<Vec<MessageRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM voicemail_messages WHERE number = $1 \
         ORDER BY CASE folder WHEN 'new' THEN 0 ELSE 1 END, received_at, id"
    )))
    .bind(number)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(message_from_row).collect()
}

/// One message of the box; None when the box has no such message (another box's id
/// included).
pub async fn get_message(db: &mut dyn Db, number: &str, id: &str) -> Result<Option<MessageRow>> {
    let conn = raw(db);
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM voicemail_messages WHERE number = $1 AND id = $2"
    )))
    .bind(number)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(message_from_row).transpose()
}

/// Moves a message to `folder`; false when the box has no such message.
pub async fn set_folder(db: &mut dyn Db, number: &str, id: &str, folder: &str) -> Result<bool> {
    let conn = raw(db);
    let done =
        sqlx::query("UPDATE voicemail_messages SET folder = $3 WHERE number = $1 AND id = $2")
            .bind(number)
            .bind(id)
            .bind(folder)
            .execute(&mut *conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes a message's row; false when the box has no such message.
pub async fn delete_message(db: &mut dyn Db, number: &str, id: &str) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM voicemail_messages WHERE number = $1 AND id = $2")
        .bind(number)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// How many messages the box holds, (new, saved).
pub async fn counts(db: &mut dyn Db, number: &str) -> Result<(i64, i64)> {
    let conn = raw(db);
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(CASE folder WHEN 'new' THEN 1 ELSE 0 END), 0) AS BIGINT) AS new, \
         CAST(COALESCE(SUM(CASE folder WHEN 'saved' THEN 1 ELSE 0 END), 0) AS BIGINT) AS saved \
         FROM voicemail_messages WHERE number = $1",
    )
    .bind(number)
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.try_get("new")?, row.try_get("saved")?))
}

/// Every box that holds a message, with its totals, in number order.
pub async fn totals(db: &mut dyn Db) -> Result<Vec<BoxTotals>> {
    let conn = raw(db);
    let rows = sqlx::query(
        "SELECT number, \
         CAST(COALESCE(SUM(CASE folder WHEN 'new' THEN 1 ELSE 0 END), 0) AS BIGINT) AS new, \
         CAST(COALESCE(SUM(CASE folder WHEN 'saved' THEN 1 ELSE 0 END), 0) AS BIGINT) AS saved, \
         CAST(COALESCE(SUM(duration_ms), 0) AS BIGINT) AS total_ms, \
         CAST(COALESCE(MAX(received_at), 0) AS BIGINT) AS latest \
         FROM voicemail_messages GROUP BY number ORDER BY LENGTH(number), number",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(BoxTotals {
                number: r.try_get("number")?,
                new: r.try_get("new")?,
                saved: r.try_get("saved")?,
                total_ms: r.try_get("total_ms")?,
                latest: r.try_get("latest")?,
            })
        })
        .collect()
}
