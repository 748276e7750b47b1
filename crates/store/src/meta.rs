//! The data dir's meta table: settings it was made with (realm, key check, security
//! epoch, provisioning path) and the counters triggers move so that other processes
//! notice a change.

use sqlx::Row;

use crate::db::{Db, raw};
use crate::error::{Error, Result};

/// A value of the data dir's meta table (realm, key check, security epoch, ...).
pub async fn get_meta(db: &mut dyn Db, key: &str) -> Result<Option<String>> {
    let conn = raw(db);
    let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.try_get("value")).transpose()?)
}

/// Sets a value of the meta table.
pub async fn set_meta(db: &mut dyn Db, key: &str, value: &str) -> Result<()> {
    let conn = raw(db);
    sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A counter kept in `meta` by triggers (0 when absent); the running server polls it
/// to learn that another process changed a table.
pub async fn meta_counter(db: &mut dyn Db, key: &str) -> Result<i64> {
    let conn = raw(db);
    let text = get_meta(conn, key).await?.unwrap_or_else(|| "0".into());
    text.parse().map_err(|_| Error::Corrupt {
        path: "meta".into(),
        detail: format!("{key} is not a number"),
    })
}
