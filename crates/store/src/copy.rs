//! Copying a whole database between backends, table by table: `sipward store copy`
//! (a SQLite data dir into PostgreSQL) and backups of a PostgreSQL database (into a
//! SQLite snapshot, so an archive has one format whichever backend made it).
//!
//! Both schemas declare the same tables and columns (a test holds them to it), and
//! every column is TEXT or an integer, so a row is copied value by value. The target
//! must be at the same schema version and hold no account yet; everything lands in one
//! transaction.

use sqlx::{AssertSqlSafe, Row};

use crate::db::{Backend, Store};
use crate::error::{Error, Result};

/// Tables others refer to, copied first (foreign keys are enforced on both backends).
const PARENTS: [&str; 5] = ["meta", "extensions", "gateways", "providers", "admins"];

/// What a copy moved: rows per table, in the order copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub tables: Vec<(String, u64)>,
}

impl Copied {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// One column and whether it holds integers.
struct Column {
    name: String,
    integer: bool,
}

/// Every table with its columns, parents first.
async fn tables(store: &Store) -> Result<Vec<(String, Vec<Column>)>> {
    let sql = match store.backend() {
        Backend::Sqlite => {
            "SELECT m.name AS t, p.name AS c, upper(p.type) AS ty FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations' \
             ORDER BY m.name, p.cid"
        }
        Backend::Postgres => {
            "SELECT CAST(table_name AS TEXT) AS t, CAST(column_name AS TEXT) AS c, \
             upper(CAST(data_type AS TEXT)) AS ty FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations' \
             ORDER BY table_name, ordinal_position"
        }
    };
    let mut conn = store.conn().await?;
    let rows = sqlx::query(sql)
        .fetch_all(crate::db::raw(&mut conn))
        .await?;
    let mut out: Vec<(String, Vec<Column>)> = Vec::new();
    for r in &rows {
        let (t, c, ty): (String, String, String) =
            (r.try_get("t")?, r.try_get("c")?, r.try_get("ty")?);
        let column = Column {
            name: c,
            integer: ty.contains("INT"),
        };
        match out.last_mut() {
            Some((name, cols)) if *name == t => cols.push(column),
            _ => out.push((t, vec![column])),
        }
    }
    out.sort_by_key(|(t, _)| {
        (
            PARENTS.iter().position(|p| p == t).unwrap_or(PARENTS.len()),
            t.clone(),
        )
    });
    Ok(out)
}

/// Whether `store` holds an install already (its key check, or any account).
pub async fn holds_data(store: &Store) -> Result<bool> {
    let mut conn = store.conn().await?;
    let key = crate::meta::get_meta(&mut conn, "key_check").await?;
    let accounts: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM extensions) + (SELECT COUNT(*) FROM gateways) + (SELECT COUNT(*) FROM providers)",
    )
    .fetch_one(crate::db::raw(&mut conn))
    .await?;
    Ok(key.is_some() || accounts > 0)
}

/// Copies every row of `from` into `to`, which must be at the same schema version and
/// hold no install ([`Error::CopyRefused`] otherwise). `progress` hears each table's
/// name and row count as it is done.
pub async fn copy_all(
    from: &Store,
    to: &Store,
    progress: &mut (dyn FnMut(&str, u64) + Send),
) -> Result<Copied> {
    let (vf, vt) = (from.schema_version().await?, to.schema_version().await?);
    if vf != vt {
        return Err(Error::CopyRefused {
            detail: format!("the source is at schema version {vf}, the target at {vt}"),
        });
    }
    if holds_data(to).await? {
        return Err(Error::CopyRefused {
            detail: "the target already holds an install (accounts or a secrets key check); copy into an empty database".into(),
        });
    }
    let source_tables = tables(from).await?;
    let target_tables = tables(to).await?;
    let mut copied = Copied::default();
    let mut tx = to.begin().await?;
    // The migrations' own rows (version counters) give way to the source's.
    for (table, _) in target_tables.iter().rev() {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(crate::db::raw(&mut tx))
            .await?;
    }
    let mut src = from.read_snapshot().await?;
    for (table, columns) in &source_tables {
        let Some((_, target_columns)) = target_tables.iter().find(|(t, _)| t == table) else {
            return Err(Error::CopyRefused {
                detail: format!("the target has no table {table}"),
            });
        };
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let mut target_names: Vec<&str> = target_columns.iter().map(|c| c.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        target_names.sort_unstable();
        if sorted != target_names {
            return Err(Error::CopyRefused {
                detail: format!("table {table} has other columns in the target"),
            });
        }
        let list = names.join(", ");
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {list} FROM {table}")))
            .fetch_all(crate::db::raw(&mut src))
            .await?;
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({list}) VALUES ({})",
            placeholders.join(", ")
        );
        for row in &rows {
            let mut q = sqlx::query(AssertSqlSafe(insert.clone()));
            for (i, c) in columns.iter().enumerate() {
                q = if c.integer {
                    q.bind(row.try_get::<Option<i64>, _>(i)?)
                } else {
                    q.bind(row.try_get::<Option<String>, _>(i)?)
                };
            }
            q.execute(crate::db::raw(&mut tx)).await?;
        }
        let n = rows.len() as u64;
        progress(table, n);
        copied.tables.push((table.clone(), n));
    }
    if to.backend() == Backend::Postgres {
        // Identity columns continue after the copied ids.
        sqlx::query(
            "SELECT 1 AS done FROM (SELECT setval(pg_get_serial_sequence('audit_log', 'id'), \
             COALESCE((SELECT MAX(id) FROM audit_log), 0) + 1, false)) AS s",
        )
        .fetch_one(crate::db::raw(&mut tx))
        .await?;
    }
    tx.commit().await?;
    Ok(copied)
}
