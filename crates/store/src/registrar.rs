//! What the running registrar reads and writes: the credential directory (auth IDs and
//! HA1s, never secrets), the registry version it polls for changes, and bindings.

use sqlx::Row;

use crate::db::{Db, raw};
use crate::error::{Error, Result};

/// An account that can authenticate to the registrar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryRow {
    /// `ext` or `gateway`.
    pub kind: &'static str,
    /// The extension number (or the gateway's virtual extension number).
    pub number: String,
    pub auth_id: String,
    pub sip_id: Option<String>,
    pub ha1_md5: String,
    pub ha1_sha256: String,
    /// The password's zxcvbn score (0..=4), stored when it was set.
    pub password_score: u8,
}

/// Increases whenever an extension or gateway is written (SQLite triggers).
pub async fn registry_version(db: &mut dyn Db) -> Result<i64> {
    let conn = raw(db);
    crate::registry::meta_counter(conn, "registry_version").await
}

/// Every account that can register, packed by SQLite into one value (see
/// `list_extensions_for_audit` for why).
pub async fn directory(db: &mut dyn Db) -> Result<Vec<DirectoryRow>> {
    let conn = raw(db);
    let row = sqlx::query(
        "SELECT (SELECT group_concat('ext' || char(31) || number || char(31) || auth_id || char(31) || \
                coalesce(sip_id, '') || char(31) || ha1_md5 || char(31) || ha1_sha256 || char(31) || password_score, char(30)) FROM extensions) AS e, \
                (SELECT group_concat('gateway' || char(31) || number || char(31) || auth_id || char(31) || \
                '' || char(31) || ha1_md5 || char(31) || ha1_sha256 || char(31) || password_score, char(30)) FROM gateways) AS g",
    )
    .fetch_one(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for col in ["e", "g"] {
        let packed: Option<String> = row.try_get(col)?;
        for record in packed
            .as_deref()
            .unwrap_or("")
            .split('\u{1e}')
            .filter(|r| !r.is_empty())
        {
            let f: Vec<&str> = record.split('\u{1f}').collect();
            let [kind, number, auth_id, sip_id, md5, sha, score] = f[..] else {
                return Err(Error::Corrupt {
                    path: "extensions".into(),
                    detail: "a directory row has unexpected fields".into(),
                });
            };
            out.push(DirectoryRow {
                kind: if kind == "gateway" { "gateway" } else { "ext" },
                number: number.to_owned(),
                auth_id: auth_id.to_owned(),
                sip_id: (!sip_id.is_empty()).then(|| sip_id.to_owned()),
                ha1_md5: md5.to_owned(),
                ha1_sha256: sha.to_owned(),
                password_score: score.parse().unwrap_or(0),
            });
        }
    }
    Ok(out)
}

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
