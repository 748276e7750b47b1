//! The console's time series: per metric and hour, a counter's increase or a gauge's
//! last value, written every minute by the server and pruned after [`KEEP_SECS`].

use sqlx::Row;

use crate::db::{Db, raw};
use crate::error::Result;

/// How long hours are kept: the longest chart is 30 days.
pub const KEEP_SECS: i64 = 31 * 86_400;

/// The start of the hour `at` falls in.
pub fn hour_of(at: i64) -> i64 {
    at - at.rem_euclid(3600)
}

/// Adds `delta` to a counter's hour.
pub async fn add(db: &mut dyn Db, metric: &str, at: i64, delta: i64) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO trends (metric, hour, value) VALUES ($1, $2, $3) \
         ON CONFLICT (metric, hour) DO UPDATE SET value = trends.value + excluded.value",
    )
    .bind(metric)
    .bind(hour_of(at))
    .bind(delta)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sets a gauge's value for its hour (the last one written wins).
pub async fn set(db: &mut dyn Db, metric: &str, at: i64, value: i64) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO trends (metric, hour, value) VALUES ($1, $2, $3) \
         ON CONFLICT (metric, hour) DO UPDATE SET value = excluded.value",
    )
    .bind(metric)
    .bind(hour_of(at))
    .bind(value)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The hours of `metric` from `from` on, oldest first: (hour start, value).
pub async fn series(db: &mut dyn Db, metric: &str, from: i64) -> Result<Vec<(i64, i64)>> {
    let conn = raw(db);
    let rows = sqlx::query(
        "SELECT hour, value FROM trends WHERE metric = $1 AND hour >= $2 ORDER BY hour",
    )
    .bind(metric)
    .bind(hour_of(from))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("hour")?, r.try_get("value")?)))
        .collect()
}

/// Drops hours before `before`; returns how many went.
pub async fn prune(db: &mut dyn Db, before: i64) -> Result<u64> {
    let conn = raw(db);
    Ok(sqlx::query("DELETE FROM trends WHERE hour < $1")
        .bind(hour_of(before))
        .execute(&mut *conn)
        .await?
        .rows_affected())
}

/// Rows held (to show the table stays bounded).
pub async fn rows(db: &mut dyn Db) -> Result<i64> {
    let conn = raw(db);
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM trends")
        .fetch_one(&mut *conn)
        .await?)
}
