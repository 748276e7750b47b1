//! Console administrators, sessions and API tokens. Tokens are stored as SHA-256 digests
//! only: a copy of the database opens no session.

use sqlx::Row;

use crate::db::{Db, raw};
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub admin: String,
    pub csrf: String,
    pub source: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Sets an administrator's password hash (creating the administrator), ending every
/// session they had.
pub async fn set_admin(db: &mut dyn Db, name: &str, hash: &str, now: i64) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO admins (name, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $3) \
         ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(hash)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM console_sessions WHERE admin = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn admin_hash(db: &mut dyn Db, name: &str) -> Result<Option<String>> {
    let conn = raw(db);
    let row = sqlx::query("SELECT password_hash FROM admins WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.try_get("password_hash")).transpose()?)
}

pub async fn insert_session(db: &mut dyn Db, token_sha256: &str, s: &SessionRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO console_sessions (token_sha256, admin, csrf, source, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token_sha256)
    .bind(&s.admin)
    .bind(&s.csrf)
    .bind(&s.source)
    .bind(s.created_at)
    .bind(s.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The live session with this token digest.
pub async fn session(db: &mut dyn Db, token_sha256: &str, now: i64) -> Result<Option<SessionRow>> {
    let conn = raw(db);
    let row = sqlx::query(
        "SELECT admin, csrf, source, created_at, expires_at FROM console_sessions \
         WHERE token_sha256 = $1 AND expires_at > $2",
    )
    .bind(token_sha256)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(SessionRow {
            admin: r.try_get("admin")?,
            csrf: r.try_get("csrf")?,
            source: r.try_get("source")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
        })
    })
    .transpose()
}

/// Ends one session, and every expired one.
pub async fn delete_session(db: &mut dyn Db, token_sha256: &str, now: i64) -> Result<()> {
    let conn = raw(db);
    sqlx::query("DELETE FROM console_sessions WHERE token_sha256 = $1 OR expires_at <= $2")
        .bind(token_sha256)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn insert_token(db: &mut dyn Db, name: &str, token_sha256: &str, now: i64) -> Result<()> {
    let conn = raw(db);
    sqlx::query("INSERT INTO api_tokens (name, token_sha256, created_at) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(token_sha256)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::on_conflict(e, || format!("API token {name:?}")))?;
    Ok(())
}

/// The name of the API token with this digest.
pub async fn token_name(db: &mut dyn Db, token_sha256: &str) -> Result<Option<String>> {
    let conn = raw(db);
    let row = sqlx::query("SELECT name FROM api_tokens WHERE token_sha256 = $1")
        .bind(token_sha256)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.try_get("name")).transpose()?)
}

/// Removes a token; whether one was there.
pub async fn delete_token(db: &mut dyn Db, name: &str) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM api_tokens WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// An administrator's sealed TOTP secret and last accepted step, when TOTP is on.
pub async fn admin_totp(db: &mut dyn Db, name: &str) -> Result<Option<(String, i64)>> {
    let conn = raw(db);
    let row = sqlx::query("SELECT totp_enc, totp_last_step FROM admins WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(r) = row else { return Ok(None) };
    let sealed: Option<String> = r.try_get("totp_enc")?;
    Ok(sealed.map(|s| (s, r.try_get("totp_last_step").unwrap_or(0))))
}

/// Turns TOTP on (with a sealed secret) or off (`None`); whether the administrator exists.
/// Their sessions end either way.
pub async fn set_admin_totp(db: &mut dyn Db, name: &str, sealed: Option<&str>) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query("UPDATE admins SET totp_enc = $1, totp_last_step = 0 WHERE name = $2")
        .bind(sealed)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    // A second factor changed: sessions opened without it (perhaps with a leaked
    // password, the reason to turn it on) end, as after a new password.
    sqlx::query("DELETE FROM console_sessions WHERE admin = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Records `step` as used, only if it is newer than the last one; whether it was.
pub async fn accept_totp_step(db: &mut dyn Db, name: &str, step: i64) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query(
        "UPDATE admins SET totp_last_step = $1 WHERE name = $2 AND totp_last_step < $1",
    )
    .bind(step)
    .bind(name)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}
