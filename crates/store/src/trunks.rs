//! Outbound routes, DIDs, provider registration status and the active-calls snapshot.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::{Db, raw};
use crate::error::Result;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRow {
    pub name: String,
    pub pattern: String,
    /// `gateway` or `provider`.
    pub trunk_kind: String,
    pub trunk: String,
    pub strip: i64,
    pub prepend: String,
    pub priority: i64,
    pub created_at: i64,
}

const ROUTE_COLUMNS: &str =
    "name, pattern, trunk_kind, trunk, strip, prepend, priority, created_at";

fn route(r: &AnyRow) -> Result<RouteRow> {
    Ok(RouteRow {
        name: r.try_get("name")?,
        pattern: r.try_get("pattern")?,
        trunk_kind: r.try_get("trunk_kind")?,
        trunk: r.try_get("trunk")?,
        strip: r.try_get("strip")?,
        prepend: r.try_get("prepend")?,
        priority: r.try_get("priority")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Every route, in the order they are tried (priority, then name).
pub async fn routes(db: &mut dyn Db) -> Result<Vec<RouteRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ROUTE_COLUMNS} FROM routes ORDER BY priority, name"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(route).collect()
}

pub async fn get_route(db: &mut dyn Db, name: &str) -> Result<Option<RouteRow>> {
    let conn = raw(db);
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ROUTE_COLUMNS} FROM routes WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(route).transpose()
}

pub async fn insert_route(db: &mut dyn Db, r: &RouteRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO routes ({ROUTE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )))
    .bind(&r.name)
    .bind(&r.pattern)
    .bind(&r.trunk_kind)
    .bind(&r.trunk)
    .bind(r.strip)
    .bind(&r.prepend)
    .bind(r.priority)
    .bind(r.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn delete_route(db: &mut dyn Db, name: &str) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM routes WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The routes that send calls to a trunk (a trunk they use cannot be removed).
pub async fn routes_to(db: &mut dyn Db, kind: &str, trunk: &str) -> Result<Vec<String>> {
    let conn = raw(db);
    let rows =
        sqlx::query("SELECT name FROM routes WHERE trunk_kind = $1 AND trunk = $2 ORDER BY name")
            .bind(kind)
            .bind(trunk)
            .fetch_all(&mut *conn)
            .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<String, _>("name")?))
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DidRow {
    pub did: String,
    pub number: String,
    pub created_at: i64,
}

fn did(r: &AnyRow) -> Result<DidRow> {
    Ok(DidRow {
        did: r.try_get("did")?,
        number: r.try_get("number")?,
        created_at: r.try_get("created_at")?,
    })
}

pub async fn dids(db: &mut dyn Db) -> Result<Vec<DidRow>> {
    let conn = raw(db);
    let rows = sqlx::query("SELECT did, number, created_at FROM dids ORDER BY did")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(did).collect()
}

pub async fn get_did(db: &mut dyn Db, d: &str) -> Result<Option<DidRow>> {
    let conn = raw(db);
    let row = sqlx::query("SELECT did, number, created_at FROM dids WHERE did = $1")
        .bind(d)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(did).transpose()
}

pub async fn insert_did(db: &mut dyn Db, d: &DidRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query("INSERT INTO dids (did, number, created_at) VALUES ($1, $2, $3)")
        .bind(&d.did)
        .bind(&d.number)
        .bind(d.created_at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn delete_did(db: &mut dyn Db, d: &str) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM dids WHERE did = $1")
        .bind(d)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// What the server last saw of a provider registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderStatusRow {
    pub name: String,
    /// `registering`, `registered` or `failed`.
    pub state: String,
    /// The provider's last answer (status line) or why nothing was sent.
    pub detail: String,
    pub registered_until: i64,
    pub updated_at: i64,
}

pub async fn put_provider_status(db: &mut dyn Db, s: &ProviderStatusRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO provider_status (name, state, detail, registered_until, updated_at) \
         SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM providers WHERE name = $1) \
         ON CONFLICT (name) DO UPDATE SET state = excluded.state, detail = excluded.detail, \
         registered_until = excluded.registered_until, updated_at = excluded.updated_at",
    )
    .bind(&s.name)
    .bind(&s.state)
    .bind(&s.detail)
    .bind(s.registered_until)
    .bind(s.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn provider_status(db: &mut dyn Db, name: &str) -> Result<Option<ProviderStatusRow>> {
    let conn = raw(db);
    let row = sqlx::query(
        "SELECT name, state, detail, registered_until, updated_at FROM provider_status WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(ProviderStatusRow {
            name: r.try_get("name")?,
            state: r.try_get("state")?,
            detail: r.try_get("detail")?,
            registered_until: r.try_get("registered_until")?,
            updated_at: r.try_get("updated_at")?,
        })
    })
    .transpose()
}

/// One call up right now, as `serve` last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveCallRow {
    pub id: String,
    pub caller: String,
    pub callee: String,
    /// `internal`, `outbound` or `inbound`.
    pub kind: String,
    /// The trunk (empty for internal calls).
    pub trunk: String,
    /// `setup`, `ringing` or `answered`.
    pub state: String,
    pub started_at: i64,
    /// 0 until answered.
    pub answered_at: i64,
}

/// Replaces `node`'s part of the snapshot of active calls and stamps when it wrote it;
/// the other nodes' calls stay. With no calls and `now` 0 (a node stopping), the node's
/// rows and stamp go: its calls are not shown as up, nor its stamp as the snapshot's.
pub async fn replace_active_calls(
    db: &mut dyn Db,
    node: &str,
    calls: &[ActiveCallRow],
    now: i64,
) -> Result<()> {
    let conn = raw(db);
    sqlx::query("DELETE FROM active_calls WHERE node = $1")
        .bind(node)
        .execute(&mut *conn)
        .await?;
    for c in calls {
        sqlx::query(
            "INSERT INTO active_calls (node, id, caller, callee, kind, trunk, state, started_at, answered_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(node)
        .bind(&c.id)
        .bind(&c.caller)
        .bind(&c.callee)
        .bind(&c.kind)
        .bind(&c.trunk)
        .bind(&c.state)
        .bind(c.started_at)
        .bind(c.answered_at)
        .execute(&mut *conn)
        .await?;
    }
    if calls.is_empty() && now == 0 {
        sqlx::query("DELETE FROM call_writers WHERE node = $1")
            .bind(node)
            .execute(&mut *conn)
            .await?;
    } else {
        sqlx::query(
            "INSERT INTO call_writers (node, written_at) VALUES ($1, $2) \
             ON CONFLICT (node) DO UPDATE SET written_at = excluded.written_at",
        )
        .bind(node)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The active calls of every node as last written, and when the snapshot was written:
/// the oldest stamp of the nodes that wrote (each rewrites its part every few seconds,
/// so a node that died with calls shows as a stale snapshot), 0 when no node did.
pub async fn active_calls(db: &mut dyn Db) -> Result<(Vec<ActiveCallRow>, i64)> {
    let conn = raw(db);
    let rows = sqlx::query(
        "SELECT id, caller, callee, kind, trunk, state, started_at, answered_at FROM active_calls \
         ORDER BY started_at, node, id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let calls = rows
        .iter()
        .map(|r| {
            Ok(ActiveCallRow {
                id: r.try_get("id")?,
                caller: r.try_get("caller")?,
                callee: r.try_get("callee")?,
                kind: r.try_get("kind")?,
                trunk: r.try_get("trunk")?,
                state: r.try_get("state")?,
                started_at: r.try_get("started_at")?,
                answered_at: r.try_get("answered_at")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let at: Option<i64> = sqlx::query_scalar("SELECT MIN(written_at) FROM call_writers")
        .fetch_one(&mut *conn)
        .await?;
    Ok((calls, at.unwrap_or(0)))
}
