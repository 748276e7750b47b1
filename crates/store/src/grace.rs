//! Grace windows: the old credentials of a Re-Generated extension, kept for the
//! addresses its phones were registered from until the window ends: the old SIP HA1s,
//! the credential generation whose bindings stay, and the old provisioning login.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::{Db, raw};
use crate::error::Result;

/// The old credentials of an extension during its grace window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraceRow {
    pub number: String,
    pub auth_id: String,
    /// The old HA1s, sealed (`grace/1001/ha1_md5`).
    pub ha1_md5_enc: String,
    pub ha1_sha256_enc: String,
    /// IP addresses, comma-separated.
    pub sources: String,
    pub expires_at: i64,
    /// The credential generation the old credentials had: bindings made with it stay
    /// (from the sources above) until the window ends.
    pub generation: i64,
    /// The previous provisioning login (user = MAC; HA1s over the provisioning realm),
    /// empty when the phone had none: the phone fetches its new file with it. The HA1s
    /// log in like passwords, so they are sealed (`grace/1001/prov_ha1_md5`), or empty.
    pub prov_user: String,
    pub prov_ha1_md5_enc: String,
    pub prov_ha1_sha256_enc: String,
}

const GRACE_COLUMNS: &str = "number, auth_id, ha1_md5_enc, ha1_sha256_enc, sources, expires_at, \
     generation, prov_user, prov_ha1_md5_enc, prov_ha1_sha256_enc";

fn grace_from_row(r: &AnyRow) -> Result<GraceRow> {
    Ok(GraceRow {
        number: r.try_get("number")?,
        auth_id: r.try_get("auth_id")?,
        ha1_md5_enc: r.try_get("ha1_md5_enc")?,
        ha1_sha256_enc: r.try_get("ha1_sha256_enc")?,
        sources: r.try_get("sources")?,
        expires_at: r.try_get("expires_at")?,
        generation: r.try_get("generation")?,
        prov_user: r.try_get("prov_user")?,
        prov_ha1_md5_enc: r.try_get("prov_ha1_md5_enc")?,
        prov_ha1_sha256_enc: r.try_get("prov_ha1_sha256_enc")?,
    })
}

/// Grace windows still open at `now`.
pub async fn live_graces(db: &mut dyn Db, now: i64) -> Result<Vec<GraceRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {GRACE_COLUMNS} FROM credential_grace WHERE expires_at > $1"
    )))
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(grace_from_row).collect()
}

/// Every grace window, open or expired (for re-sealing them all at once).
pub async fn all_graces(db: &mut dyn Db) -> Result<Vec<GraceRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {GRACE_COLUMNS} FROM credential_grace"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(grace_from_row).collect()
}

pub async fn get_grace(db: &mut dyn Db, number: &str) -> Result<Option<GraceRow>> {
    let conn = raw(db);
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {GRACE_COLUMNS} FROM credential_grace WHERE number = $1"
    )))
    .bind(number)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(grace_from_row).transpose()
}

pub async fn put_grace(db: &mut dyn Db, g: &GraceRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO credential_grace (number, auth_id, ha1_md5_enc, ha1_sha256_enc, sources, expires_at, \
         generation, prov_user, prov_ha1_md5_enc, prov_ha1_sha256_enc) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (number) DO UPDATE SET auth_id = excluded.auth_id, \
         ha1_md5_enc = excluded.ha1_md5_enc, ha1_sha256_enc = excluded.ha1_sha256_enc, sources = excluded.sources, \
         expires_at = excluded.expires_at, generation = excluded.generation, prov_user = excluded.prov_user, \
         prov_ha1_md5_enc = excluded.prov_ha1_md5_enc, prov_ha1_sha256_enc = excluded.prov_ha1_sha256_enc",
    )
    .bind(&g.number)
    .bind(&g.auth_id)
    .bind(&g.ha1_md5_enc)
    .bind(&g.ha1_sha256_enc)
    .bind(&g.sources)
    .bind(g.expires_at)
    .bind(g.generation)
    .bind(&g.prov_user)
    .bind(&g.prov_ha1_md5_enc)
    .bind(&g.prov_ha1_sha256_enc)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Ends grace windows: those of `numbers`, and every expired one. The bindings the
/// ended windows kept (made with the old credentials) go with them.
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
    crate::bindings::delete_expired_bindings(conn, now).await?;
    Ok(())
}
