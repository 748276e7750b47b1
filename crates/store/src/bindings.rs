//! Registrations as the running registrar writes them: read back at start, by `ext show`,
//! by Re-Generate (grace sources) and the exposure advisor. A gateway's registrations
//! (by its virtual number) are kept in a table of their own, tied to the gateway.
//!
//! A binding belongs to its extension (removing the extension removes its bindings) and
//! to the credential generation it was made with. Only bindings of the extension's
//! current generation, or of the generation its open grace window keeps alive, are ever
//! read or written: a binding made with credentials that were since changed is revoked
//! here even if a running server still holds it in memory and tries to write it back.
//!
//! A binding also belongs to the node that holds its flow (the NAT mapping or the TCP
//! connection are that node's): a node writes, replaces and loads only its own, and
//! takes over a contact another node held only with a newer registration.

use sqlx::Row;

use crate::db::{Backend, Db, backend, raw};
use crate::error::Result;

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
    /// The credential generation of the login that made it.
    pub generation: i64,
}

/// The condition that a binding `b` is still backed by credentials that exist.
/// (`$1` is now; absent rows compare as -1, which no generation is, so the condition is
/// never NULL.)
/// A grace window backs old bindings only while its auth ID is the extension's: a new
/// auth ID kills the old SIP login at once (the window then keeps only the provisioning
/// login), so nothing made with it is listed, loaded or written again.
const CURRENT: &str = "(b.generation = coalesce((SELECT e.credential_generation FROM extensions e WHERE e.number = b.number), -1) \
     OR b.generation = coalesce((SELECT g.generation FROM credential_grace g JOIN extensions e ON e.number = g.number \
     WHERE g.number = b.number AND g.expires_at > $1 AND g.auth_id = e.auth_id), -1))";

const COLUMNS: &str =
    "b.number, b.contact, b.call_id, b.cseq, b.expires_at, b.source, b.transport, b.generation";

/// Bindings that have not expired at `now` and whose credentials still exist: the
/// extensions', and the gateways' (whose generation, derived from the gateway's
/// credentials, the running server checks against its directory).
pub async fn live_bindings(db: &mut dyn Db, now: i64) -> Result<Vec<BindingRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM bindings b WHERE b.expires_at > $1 AND {CURRENT} \
         UNION ALL SELECT {COLUMNS} FROM gateway_bindings b WHERE b.expires_at > $1"
    )))
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(binding_from_row).collect()
}

/// How many bindings [`live_bindings`] would return, counted by the database (the
/// console's registrations picture every minute: no row leaves the database).
pub async fn count_live_bindings(db: &mut dyn Db, now: i64) -> Result<i64> {
    let conn = raw(db);
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT COUNT(*) FROM bindings b WHERE b.expires_at > $1 AND {CURRENT}) \
         + (SELECT COUNT(*) FROM gateway_bindings b WHERE b.expires_at > $1) AS n"
    )))
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("n")?)
}

/// The live bindings `node` holds, and the unowned ones (written before bindings had
/// owners, or by a process that is no node), which it takes over: what a node loads at
/// start. Other nodes' bindings are theirs: their flows are not this node's.
pub async fn live_node_bindings(db: &mut dyn Db, node: &str, now: i64) -> Result<Vec<BindingRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM bindings b WHERE b.expires_at > $1 AND {CURRENT} AND (b.node = $2 OR b.node = '') \
         UNION ALL SELECT {COLUMNS} FROM gateway_bindings b WHERE b.expires_at > $1 AND (b.node = $2 OR b.node = '')"
    )))
    .bind(now)
    .bind(node)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(binding_from_row).collect()
}

/// Where a call for extension `number` can hop (issue 21, the internal hop): the other
/// live nodes (heartbeat at or after `live_since`) that hold a live binding of it which
/// its credentials back, and publish an internal address; `(node, address)` by name.
/// Only extensions' bindings: a hop never leads to a gateway (nor to a trunk, another
/// hop or a voicemail), and `own` node's and unowned rows are never a hop's target.
pub async fn hops_to(
    db: &mut dyn Db,
    number: &str,
    own: &str,
    now: i64,
    live_since: i64,
) -> Result<Vec<(String, String)>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT n.name AS name, n.hop AS hop FROM bindings b JOIN nodes n ON n.name = b.node \
         WHERE b.number = $2 AND b.expires_at > $1 AND {CURRENT} AND b.node <> $3 AND b.node <> '' \
         AND n.hop <> '' AND n.heartbeat_at >= $4 ORDER BY n.name"
    )))
    .bind(now)
    .bind(number)
    .bind(own)
    .bind(live_since)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("hop")?)))
        .collect()
}

/// Every extension a call could hop for at once (the sending node's reload fills its
/// hop table from this, one query however many extensions): `(number, address)` pairs
/// as [`hops_to`] would give them for each number, by number, at most `limit` rows (what
/// lies beyond is not hopped to: those calls get the 480 they had before hops).
pub async fn all_hops(
    db: &mut dyn Db,
    own: &str,
    now: i64,
    live_since: i64,
    limit: i64,
) -> Result<Vec<(String, String)>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT b.number AS number, n.hop AS hop FROM bindings b JOIN nodes n ON n.name = b.node \
         WHERE b.expires_at > $1 AND {CURRENT} AND b.node <> $2 AND b.node <> '' \
         AND n.hop <> '' AND n.heartbeat_at >= $3 ORDER BY b.number, n.hop LIMIT $4"
    )))
    .bind(now)
    .bind(own)
    .bind(live_since)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("number")?, r.try_get("hop")?)))
        .collect()
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
        generation: r.try_get("generation")?,
    })
}

/// The live bindings of one extension (only those its credentials still back).
pub async fn bindings_of(db: &mut dyn Db, number: &str, now: i64) -> Result<Vec<BindingRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM bindings b WHERE b.number = $2 AND b.expires_at > $1 AND {CURRENT}"
    )))
    .bind(now)
    .bind(number)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(binding_from_row).collect()
}

/// Replaces the stored bindings of one extension with `rows`, as a process that is no
/// node of a cluster sees them ([`replace_node_bindings`] with the unowned node `""`).
pub async fn replace_bindings(
    db: &mut dyn Db,
    number: &str,
    rows: &[BindingRow],
    now: i64,
) -> Result<usize> {
    replace_node_bindings(db, "", number, rows, now).await
}

/// Replaces the stored bindings of one extension that `node` holds with `rows`
/// ([`replace_node_batch`] with one extension).
pub async fn replace_node_bindings(
    db: &mut dyn Db,
    node: &str,
    number: &str,
    rows: &[BindingRow],
    now: i64,
) -> Result<usize> {
    replace_node_batch(db, node, &[(number.to_owned(), rows.to_vec())], now).await
}

/// Extensions one statement deletes, and rows one statement writes: a group commit of a
/// burst of registrations is a handful of statements, not four per extension (on
/// PostgreSQL each statement is a round trip), and the bound parameters stay far below
/// SQLite's 32,766 and PostgreSQL's 65,535.
const NUMBERS_PER_STATEMENT: usize = 500;
const ROWS_PER_STATEMENT: usize = 250;

/// How a statement of the group commit names its bound parameters, numbered in the
/// order they appear in its text (which is the order they are bound in).
///
/// SQLite gets anonymous `?`: sqlx looks every parameter's name up by its index
/// (`sqlite3_bind_parameter_name`), and SQLite finds a *named* one (`$n`, `?n`) by a
/// walk along the statement's list of names, so binding a statement of P named
/// parameters costs P²/2 steps. With 2,000 parameters (250 rows of eight) that walk
/// was 14 % of the server's CPU at 16,000 REGISTER/s, and it grew with the batch: the
/// later a commit, the larger the next one and the dearer each of its rows, the
/// super-linear part of the REGISTER cost (bench/README.md). Anonymous parameters have
/// no name to walk to. PostgreSQL has no anonymous form and no such walk: `$n`.
#[derive(Clone, Copy, Debug)]
struct Params {
    backend: Backend,
    next: usize,
}

impl Params {
    fn new(backend: Backend) -> Self {
        Params { backend, next: 1 }
    }

    /// The next parameter.
    fn one(&mut self) -> String {
        let i = self.next;
        self.next += 1;
        match self.backend {
            Backend::Sqlite => "?".to_owned(),
            Backend::Postgres => format!("${i}"),
        }
    }

    /// `count` parameters, comma-separated.
    fn list(&mut self, count: usize) -> String {
        (0..count)
            .map(|_| self.one())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `(..), (..)`: `rows` tuples of `width` parameters.
    fn tuples(&mut self, rows: usize, width: usize) -> String {
        (0..rows)
            .map(|_| format!("({})", self.list(width)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Replaces the stored bindings that `node` holds of each extension in `batch` (its
/// number, and its rows; an empty list removes them): the node's own and unowned ones
/// are deleted first, other nodes' are left alone (their flows are theirs). A row for a
/// contact another node holds is taken over only when it is newer (it expires later:
/// the phone registered through this node since). A row whose generation is neither
/// the extension's nor its open grace window's is not written (its credentials
/// changed, or the extension is gone, since the server made it); a gateway's virtual
/// number goes to the gateway's table. Returns how many rows were written.
///
/// The running server's group commit: a few statements per batch whatever its size.
/// A contact listed twice for one extension is written once, its latest expiry.
pub async fn replace_node_batch(
    db: &mut dyn Db,
    node: &str,
    batch: &[(String, Vec<BindingRow>)],
    now: i64,
) -> Result<usize> {
    let conn = raw(db);
    let engine = backend(conn);
    for chunk in batch.chunks(NUMBERS_PER_STATEMENT) {
        let mut p = Params::new(engine);
        let (holder, list) = (p.one(), p.list(chunk.len()));
        for table in ["bindings", "gateway_bindings"] {
            let sql = format!(
                "DELETE FROM {table} WHERE (node = {holder} OR node = '') AND number IN ({list})"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(node);
            for (number, _) in chunk {
                q = q.bind(number);
            }
            q.execute(&mut *conn).await?;
        }
    }
    // One row per (number, contact), the one that expires last: one statement must not
    // touch a row twice (PostgreSQL refuses it), and row by row the later expiry won.
    let mut unique: Vec<&BindingRow> = Vec::new();
    let mut at: std::collections::HashMap<(&str, &str), usize> = std::collections::HashMap::new();
    for b in batch.iter().flat_map(|(_, rows)| rows) {
        match at.get(&(b.number.as_str(), b.contact.as_str())) {
            Some(&i) => {
                if unique[i].expires_at < b.expires_at {
                    unique[i] = b;
                }
            }
            None => {
                at.insert((&b.number, &b.contact), unique.len());
                unique.push(b);
            }
        }
    }
    // Taken over: from another node only by a newer registration of the contact.
    const TAKE_OVER: &str = "DO UPDATE SET call_id = excluded.call_id, cseq = excluded.cseq, \
         expires_at = excluded.expires_at, source = excluded.source, transport = excluded.transport, \
         generation = excluded.generation, node = excluded.node";
    // VALUES columns are column1.. on both engines: number, contact, call_id, cseq,
    // expires_at, source, transport, generation.
    const V: &str =
        "v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8";
    let mut written = 0;
    for chunk in unique.chunks(ROWS_PER_STATEMENT) {
        // Parameters in the order of the text: the node, the rows, then now.
        let mut p = Params::new(engine);
        let (holder, rows) = (p.one(), p.tuples(chunk.len(), 8));
        let at = p.one();
        let extensions = format!(
            "INSERT INTO bindings (number, contact, call_id, cseq, expires_at, source, transport, generation, node) \
             SELECT {V}, {holder} FROM (VALUES {rows}) AS v WHERE \
             EXISTS (SELECT 1 FROM extensions e WHERE e.number = v.column1 AND e.credential_generation = v.column8) \
             OR EXISTS (SELECT 1 FROM credential_grace g JOIN extensions e ON e.number = g.number \
             WHERE g.number = v.column1 AND g.generation = v.column8 AND g.expires_at > {at} AND g.auth_id = e.auth_id) \
             ON CONFLICT (number, contact) {TAKE_OVER} WHERE bindings.expires_at < excluded.expires_at"
        );
        let q = bind_rows(
            sqlx::query(sqlx::AssertSqlSafe(extensions)).bind(node),
            chunk,
        )
        .bind(now);
        written += usize::try_from(q.execute(&mut *conn).await?.rows_affected()).unwrap_or(0);
        // A gateway's virtual number: its own table (the rows above were not written).
        let mut p = Params::new(engine);
        let (holder, rows) = (p.one(), p.tuples(chunk.len(), 8));
        let gateways = format!(
            "INSERT INTO gateway_bindings (number, contact, call_id, cseq, expires_at, source, transport, generation, node) \
             SELECT {V}, {holder} FROM (VALUES {rows}) AS v WHERE EXISTS (SELECT 1 FROM gateways w WHERE w.number = v.column1) \
             ON CONFLICT (number, contact) {TAKE_OVER} WHERE gateway_bindings.expires_at < excluded.expires_at"
        );
        let q = bind_rows(sqlx::query(sqlx::AssertSqlSafe(gateways)).bind(node), chunk);
        written += usize::try_from(q.execute(&mut *conn).await?.rows_affected()).unwrap_or(0);
    }
    Ok(written)
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds each row's eight columns, in the order of the VALUES tuples.
fn bind_rows<'q>(mut q: AnyQuery<'q>, rows: &[&'q BindingRow]) -> AnyQuery<'q> {
    for b in rows {
        q = q
            .bind(&b.number)
            .bind(&b.contact)
            .bind(&b.call_id)
            .bind(b.cseq)
            .bind(b.expires_at)
            .bind(&b.source)
            .bind(&b.transport)
            .bind(b.generation);
    }
    q
}

/// Deletes every stored binding of the gateway with virtual number `number` (its
/// number or credentials change: what the old ones made is revoked).
pub async fn delete_gateway_bindings(db: &mut dyn Db, number: &str) -> Result<()> {
    let conn = raw(db);
    sqlx::query("DELETE FROM gateway_bindings WHERE number = $1")
        .bind(number)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes the given contacts' bindings of one extension (Re-Generate drops those its
/// grace window does not keep).
pub async fn delete_bindings(db: &mut dyn Db, number: &str, contacts: &[String]) -> Result<()> {
    let conn = raw(db);
    for c in contacts {
        sqlx::query("DELETE FROM bindings WHERE number = $1 AND contact = $2")
            .bind(number)
            .bind(c)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Removes bindings that expired before `now`, and those no credentials back any more
/// (a grace window ended, or the extension's credentials changed).
pub async fn delete_expired_bindings(db: &mut dyn Db, now: i64) -> Result<u64> {
    let conn = raw(db);
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM bindings AS b WHERE b.expires_at <= $1 OR NOT {CURRENT}"
    )))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let gateways = sqlx::query("DELETE FROM gateway_bindings WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() + gateways.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_parameters_are_anonymous_and_postgres_ones_numbered_in_text_order() {
        let mut p = Params::new(Backend::Sqlite);
        assert_eq!(
            (p.one(), p.tuples(2, 2), p.one()),
            ("?".into(), "(?, ?), (?, ?)".into(), "?".into())
        );
        let mut p = Params::new(Backend::Postgres);
        assert_eq!(
            (p.one(), p.tuples(2, 2), p.one()),
            ("$1".into(), "($2, $3), ($4, $5)".into(), "$6".into())
        );
        assert!(!Params::new(Backend::Sqlite).list(2000).contains('$'));
    }
}
