//! Persistence for sipward: the data directory, the secrets vault, and the database
//! (SQLite embedded by default, through sqlx's `Any` driver with portable SQL so that a
//! PostgreSQL backend can share the same queries).
//!
//! The database is the source of truth: every process (the server, each CLI call) reads
//! it afresh, so a change made by one is seen by the others without a restart.

pub mod audit_log;
pub mod backup;
pub mod console;
mod datadir;
mod error;
pub mod guard;
pub mod outbound;
pub mod regen;
pub mod registrar;
pub mod registry;
pub mod trunks;
mod vault;

pub use datadir::DataDir;
pub use error::{Error, Result};
pub use vault::Vault;

use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Executor};

const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; \
                       PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

/// A connection pool to the registry database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
}

/// SQLite wants a file URL; characters that URLs treat specially are percent-encoded
/// (the SQLite driver decodes them again).
fn sqlite_url(path: &Path) -> String {
    let mut url = String::from("sqlite://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    url
}

impl Store {
    /// Opens (creating when absent) the SQLite database at `path` and applies migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let opts = AnyConnectOptions::from_str(&sqlite_url(path)).map_err(Error::Db)?;
        // One direct connection first: a pool would retry a failing connection until its
        // acquire timeout and then report only that, hiding "file is not a database".
        let mut probe: AnyConnection = opts
            .connect()
            .await
            .map_err(|e| Error::from_open(path, e))?;
        probe
            .execute(PRAGMAS)
            .await
            .map_err(|e| Error::from_open(path, e))?;
        probe.close().await.map_err(|e| Error::from_open(path, e))?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(PRAGMAS).await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| Error::from_open(path, e))?;
        let store = Self { pool };
        store.migrate(path).await?;
        Ok(store)
    }

    async fn migrate(&self, path: &Path) -> Result<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(db) => Error::from_open(path, db),
                sqlx::migrate::MigrateError::VersionTooNew(v, _) => {
                    Error::SchemaTooNew { version: v }
                }
                other => Error::Migrate(other),
            })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a transaction; everything written through it lands together or not at all.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(self.pool.begin().await?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_special_characters() {
        assert_eq!(
            sqlite_url(Path::new("/tmp/a b?#/db.sqlite")),
            "sqlite:///tmp/a%20b%3F%23/db.sqlite?mode=rwc"
        );
    }
}
