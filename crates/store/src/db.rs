//! The database and the handles callers hold on it. A [`Store`] is a pool; a [`Conn`]
//! is one pooled connection, a [`Tx`] one transaction. Both are opaque outside this
//! crate: they can only be handed to this crate's repository functions (which take any
//! [`Db`]), so no SQL is written anywhere else and no other crate names sqlx.

use std::io;
use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Connection, Executor, Transaction};

use crate::error::{Error, Result};

const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; \
                       PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

/// A connection pool to the data dir's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
}

/// One connection from the pool; back to the pool when dropped.
#[derive(Debug)]
pub struct Conn(PoolConnection<Any>);

/// A transaction: everything written through it lands together at [`Tx::commit`], or
/// not at all when it is dropped.
#[derive(Debug)]
pub struct Tx(Transaction<'static, Any>);

/// Something repository functions can run queries on: a [`Conn`] or a [`Tx`]. Sealed:
/// only this crate can reach the connection inside.
pub trait Db: sealed::Raw + Send {}

mod sealed {
    /// The connection behind a handle. The trait cannot be named outside this crate, so
    /// it cannot be implemented there; and its method takes a [`Key`] that only this
    /// crate can make, so it cannot be called there either (a `dyn Db` would otherwise
    /// expose it).
    pub trait Raw {
        fn raw(&mut self, key: Key) -> &mut sqlx::AnyConnection;
    }

    #[derive(Clone, Copy, Debug)]
    pub struct Key(pub(super) ());
}

use sealed::{Key, Raw};

/// The connection behind `db`, for the repository functions of this crate.
pub(crate) fn raw(db: &mut dyn Db) -> &mut AnyConnection {
    db.raw(Key(()))
}

impl Raw for Conn {
    fn raw(&mut self, _: Key) -> &mut AnyConnection {
        &mut self.0
    }
}

impl Raw for Tx {
    fn raw(&mut self, _: Key) -> &mut AnyConnection {
        &mut self.0
    }
}

/// Repository functions call each other with the connection they were given.
impl Raw for AnyConnection {
    fn raw(&mut self, _: Key) -> &mut AnyConnection {
        self
    }
}

impl Db for Conn {}
impl Db for Tx {}
impl Db for AnyConnection {}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        Ok(self.0.commit().await?)
    }
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
        schema().run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(db) => Error::from_open(path, db),
            sqlx::migrate::MigrateError::VersionTooNew(v, _) => Error::SchemaTooNew { version: v },
            other => Error::Migrate(other),
        })
    }

    /// A connection from the pool, for reads and single writes.
    pub async fn conn(&self) -> Result<Conn> {
        Ok(Conn(self.pool.acquire().await?))
    }

    /// Starts a transaction; everything written through it lands together or not at all.
    ///
    /// `BEGIN IMMEDIATE`: the write lock is taken at the start. A deferred transaction
    /// that reads, then writes after another process (the running server writing
    /// bindings behind) committed, fails in WAL mode with SQLITE_BUSY_SNAPSHOT, which no
    /// busy timeout retries: `ext update` next to a running `serve` failed that way
    /// under load. Taken up front, the lock is waited for like any other.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(Tx(self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Writes a consistent snapshot of the database to `dest` (which must not exist).
    pub async fn snapshot_into(&self, dest: &Path) -> Result<()> {
        let path = dest
            .to_str()
            .ok_or_else(|| Error::io(dest, io::Error::other("the path is not valid UTF-8")))?;
        sqlx::query("VACUUM INTO $1")
            .bind(path)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Rewrites the database file without its free pages and empties the write-ahead
    /// log, so values overwritten (HA1s stored in the clear before they were sealed) are
    /// gone from the disk, not only from the tables. Must run outside any transaction.
    pub async fn compact(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        conn.execute("VACUUM").await?;
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
        Ok(())
    }

    /// The highest migration applied to this database.
    pub async fn schema_version(&self) -> Result<i64> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(v.unwrap_or(0))
    }

    /// The highest schema version this build knows.
    pub fn known_schema_version() -> i64 {
        MIGRATIONS.iter().map(|(v, _, _)| *v).max().unwrap_or(0)
    }
}

/// The schema's migrations, embedded: (version, file name's description, SQL). Listed
/// by hand rather than by `sqlx::migrate!`, which needs sqlx's proc-macro crates (and
/// their dependencies) in every build for this one list; a test holds the list to the
/// directory. Checksums are computed as sqlx computes them from the files, so data dirs
/// migrated by either agree.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "registry",
        include_str!("../migrations/sqlite/0001_registry.sql"),
    ),
    (
        2,
        "registrar",
        include_str!("../migrations/sqlite/0002_registrar.sql"),
    ),
    (
        3,
        "guard",
        include_str!("../migrations/sqlite/0003_guard.sql"),
    ),
    (
        4,
        "regenerate",
        include_str!("../migrations/sqlite/0004_regenerate.sql"),
    ),
    (
        5,
        "outbound",
        include_str!("../migrations/sqlite/0005_outbound.sql"),
    ),
    (
        6,
        "trunks",
        include_str!("../migrations/sqlite/0006_trunks.sql"),
    ),
    (
        7,
        "epochs",
        include_str!("../migrations/sqlite/0007_epochs.sql"),
    ),
    (
        8,
        "console",
        include_str!("../migrations/sqlite/0008_console.sql"),
    ),
    (
        9,
        "totp",
        include_str!("../migrations/sqlite/0009_totp.sql"),
    ),
    (
        10,
        "alerts",
        include_str!("../migrations/sqlite/0010_alerts.sql"),
    ),
    (
        11,
        "revoke",
        include_str!("../migrations/sqlite/0011_revoke.sql"),
    ),
    (
        12,
        "sealed_ha1",
        include_str!("../migrations/sqlite/0012_sealed_ha1.sql"),
    ),
    (
        13,
        "gateway_bindings",
        include_str!("../migrations/sqlite/0013_gateway_bindings.sql"),
    ),
    (
        14,
        "fetch_sources",
        include_str!("../migrations/sqlite/0014_fetch_sources.sql"),
    ),
    (
        15,
        "trends",
        include_str!("../migrations/sqlite/0015_trends.sql"),
    ),
    (
        16,
        "phone_transport",
        include_str!("../migrations/sqlite/0016_phone_transport.sql"),
    ),
    (
        17,
        "voicemail",
        include_str!("../migrations/sqlite/0017_voicemail.sql"),
    ),
];

fn schema() -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    name.replace('_', " ").into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_migrations_are_the_directory_s_files_with_sqlx_s_checksums() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("migrations dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|(v, name, _)| format!("{v:04}_{name}.sql"))
            .collect();
        assert_eq!(listed, files, "MIGRATIONS lists every file, in order");
        // sqlx's own resolution of the directory (what `migrate!` did) gives the same
        // versions, descriptions and checksums: databases migrated before agree.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let from_files = rt
            .block_on(sqlx::migrate::Migrator::new(dir.as_path()))
            .expect("resolve");
        let ours = schema();
        assert_eq!(from_files.iter().count(), ours.iter().count());
        for (a, b) in from_files.iter().zip(ours.iter()) {
            assert_eq!(a.version, b.version);
            assert_eq!(a.description, b.description);
            assert_eq!(a.checksum, b.checksum, "migration {}", a.version);
            assert_eq!(a.no_tx, b.no_tx);
        }
    }

    #[test]
    fn urls_escape_special_characters() {
        assert_eq!(
            sqlite_url(Path::new("/tmp/a b?#/db.sqlite")),
            "sqlite:///tmp/a%20b%3F%23/db.sqlite?mode=rwc"
        );
    }
}
