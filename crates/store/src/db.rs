//! The database and the handles callers hold on it. A [`Store`] is a pool; a [`Conn`]
//! is one pooled connection, a [`Tx`] one transaction. Both are opaque outside this
//! crate: they can only be handed to this crate's repository functions (which take any
//! [`Db`]), so no SQL is written anywhere else and no other crate names sqlx.
//!
//! Two backends sit behind the same queries: SQLite in the data dir (the default) and
//! PostgreSQL (several nodes on one database). Each has its own migration set, with the
//! same tables and columns; the few queries that cannot be written portably ask
//! [`backend`] which one they run on.

use std::io;
use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Connection, Executor, Row, Transaction};

use crate::error::{Error, Result};

const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; \
                       PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

/// A connection pool to the data dir's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The PostgreSQL URL, for the connections that must not come from the pool (the
    /// listener, advisory locks). A secret when it carries a password.
    url: Option<PgUrl>,
}

/// Which database engine a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The engine behind a connection (sqlx's Any driver names it).
pub(crate) fn backend(conn: &AnyConnection) -> Backend {
    if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

/// A PostgreSQL connection URL. It may carry a password: `Display` and `Debug` show it
/// with the password replaced by `***`, so it can be logged and put in errors; only
/// [`PgUrl::expose`] gives the real text, for connecting.
#[derive(Clone)]
pub struct PgUrl(String);

impl PgUrl {
    /// Accepts `postgres://` and `postgresql://` URLs; anything else is refused with a
    /// sentence that never repeats the text (it may hold a password).
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(Error::DatabaseUrl {
                detail: "it must start with postgres:// or postgresql://".into(),
            });
        }
        if text.chars().any(char::is_control) {
            return Err(Error::DatabaseUrl {
                detail: "it holds a control character".into(),
            });
        }
        Ok(Self(text.to_owned()))
    }

    /// The URL with its password, for the driver only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password (if any) replaced by `***`.
    pub fn redacted(&self) -> String {
        let s = &self.0;
        let Some(scheme_end) = s.find("://").map(|i| i + 3) else {
            return "***".into();
        };
        let rest = &s[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        // The last '@' ends the userinfo (a password may itself contain '@').
        let Some(at) = authority.rfind('@') else {
            return redact_query(s);
        };
        let userinfo = &authority[..at];
        let user = match userinfo.find(':') {
            Some(colon) => format!("{}:***", &userinfo[..colon]),
            None => userinfo.to_owned(),
        };
        redact_query(&format!(
            "{}{}{}{}",
            &s[..scheme_end],
            user,
            &authority[at..],
            &rest[authority_end..]
        ))
    }
}

/// A `password=` query parameter is a password too.
fn redact_query(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let params: Vec<String> = url[q + 1..]
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{}?{}", &url[..q], params.join("&"))
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUrl({})", self.redacted())
    }
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
        let store = Self {
            pool,
            backend: Backend::Sqlite,
            url: None,
        };
        store.migrate(path).await?;
        Ok(store)
    }

    /// Connects to the PostgreSQL database at `url` and applies migrations. Several
    /// nodes may do this at once: sqlx's migrator takes an advisory lock first.
    pub async fn open_postgres(url: &PgUrl) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let unreachable = |e: sqlx::Error| Error::Connect {
            url: url.redacted(),
            detail: connect_detail(&e),
        };
        let opts = AnyConnectOptions::from_str(url.expose()).map_err(|_| Error::DatabaseUrl {
            detail: "the driver cannot parse it".into(),
        })?;
        // One direct connection first, as for SQLite: the pool would hide the cause
        // behind its acquire timeout.
        let probe: AnyConnection = opts.connect().await.map_err(unreachable)?;
        probe.close().await.map_err(unreachable)?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(unreachable)?;
        let store = Self {
            pool,
            backend: Backend::Postgres,
            url: Some(url.clone()),
        };
        store.migrate(Path::new(&url.redacted())).await?;
        Ok(store)
    }

    /// Which engine this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A listener for the version rows' change hints (`None` on SQLite, where only
    /// polling tells one process of another's writes).
    pub async fn version_listener(&self) -> Result<Option<crate::listen::VersionListener>> {
        match &self.url {
            Some(url) => Ok(Some(crate::listen::VersionListener::connect(url).await?)),
            None => Ok(None),
        }
    }

    /// The PostgreSQL URL this store was opened with (`None` on SQLite).
    pub fn postgres_url(&self) -> Option<&PgUrl> {
        self.url.as_ref()
    }

    async fn migrate(&self, path: &Path) -> Result<()> {
        schema(self.backend)
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
    ///
    /// On PostgreSQL the same serialisation is an advisory transaction lock taken first,
    /// so a workflow that reads, then writes what it read (Re-Generate, the outbox's
    /// claims, the counters) behaves exactly as on SQLite, whichever node runs it.
    pub async fn begin(&self) -> Result<Tx> {
        match self.backend {
            Backend::Sqlite => Ok(Tx(self.pool.begin_with("BEGIN IMMEDIATE").await?)),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                    .bind(WRITE_LOCK)
                    .fetch_one(&mut *tx)
                    .await?;
                Ok(Tx(tx))
            }
        }
    }

    /// A read-only transaction whose reads all see one moment of the database
    /// (PostgreSQL: repeatable read; SQLite: a deferred transaction reads one WAL
    /// snapshot), whatever other nodes commit meanwhile.
    pub async fn read_snapshot(&self) -> Result<Tx> {
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        };
        Ok(Tx(self.pool.begin_with(begin).await?))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Writes a consistent snapshot of the database to `dest` (which must not exist),
    /// always as a SQLite file: a backup has one format whichever backend made it. A
    /// PostgreSQL database is copied table by table, read in one snapshot
    /// ([`Store::read_snapshot`]).
    pub async fn snapshot_into(&self, dest: &Path) -> Result<()> {
        if self.backend == Backend::Postgres {
            let snapshot = Store::open_sqlite(dest).await?;
            let copied = crate::copy::copy_all(self, &snapshot, &mut |_, _| {}).await;
            snapshot.close().await;
            return copied.map(|_| ());
        }
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
        match self.backend {
            Backend::Sqlite => {
                conn.execute("VACUUM").await?;
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
            }
            // PostgreSQL rewrites the tables; old row versions go with the old files.
            Backend::Postgres => {
                conn.execute("VACUUM FULL").await?;
            }
        }
        Ok(())
    }

    /// The highest migration applied to this database.
    pub async fn schema_version(&self) -> Result<i64> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(v.unwrap_or(0))
    }

    /// Every table of the schema (sqlx's bookkeeping aside) with its columns, as
    /// `(table, column)` sorted: the same list on both backends.
    pub async fn schema_columns(&self) -> Result<Vec<(String, String)>> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'"
            }
            Backend::Postgres => {
                "SELECT CAST(table_name AS TEXT) AS t, CAST(column_name AS TEXT) AS c \
                 FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'"
            }
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        let mut out = rows
            .iter()
            .map(|r| Ok((r.try_get("t")?, r.try_get("c")?)))
            .collect::<Result<Vec<(String, String)>>>()?;
        out.sort();
        Ok(out)
    }

    /// The highest schema version this build knows.
    pub fn known_schema_version() -> i64 {
        MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
    }
}

/// The key of the advisory lock every PostgreSQL write transaction takes (any constant;
/// this one spells "sipw").
const WRITE_LOCK: i64 = 0x7369_7077;

/// What a failed connection says, without the URL (the driver's text can carry it).
pub(crate) fn connect_detail(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Tls(_) => "TLS failed".into(),
        sqlx::Error::PoolTimedOut => "timed out".into(),
        _ => "the server refused or the URL is wrong".into(),
    }
}

/// One migration in both dialects: the same version and name, the SQLite file and the
/// PostgreSQL file of that name. A test holds both sets to the same tables and columns.
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $name,
            sqlite: include_str!(concat!("../migrations/sqlite/", $file)),
            postgres: include_str!(concat!("../migrations/postgres/", $file)),
        }
    };
}

/// The schema's migrations, embedded. Listed by hand rather than by `sqlx::migrate!`,
/// which needs sqlx's proc-macro crates (and their dependencies) in every build for this
/// one list; a test holds the list to both directories. Checksums are computed as sqlx
/// computes them from the files, so data dirs migrated by either agree.
pub(crate) const MIGRATIONS: &[Migration] = &[
    migration!(1, "registry", "0001_registry.sql"),
    migration!(2, "registrar", "0002_registrar.sql"),
    migration!(3, "guard", "0003_guard.sql"),
    migration!(4, "regenerate", "0004_regenerate.sql"),
    migration!(5, "outbound", "0005_outbound.sql"),
    migration!(6, "trunks", "0006_trunks.sql"),
    migration!(7, "epochs", "0007_epochs.sql"),
    migration!(8, "console", "0008_console.sql"),
    migration!(9, "totp", "0009_totp.sql"),
    migration!(10, "alerts", "0010_alerts.sql"),
    migration!(11, "revoke", "0011_revoke.sql"),
    migration!(12, "sealed_ha1", "0012_sealed_ha1.sql"),
    migration!(13, "gateway_bindings", "0013_gateway_bindings.sql"),
    migration!(14, "fetch_sources", "0014_fetch_sources.sql"),
    migration!(15, "trends", "0015_trends.sql"),
    migration!(16, "phone_transport", "0016_phone_transport.sql"),
    migration!(17, "voicemail", "0017_voicemail.sql"),
    migration!(18, "shared_failures", "0018_shared_failures.sql"),
    migration!(19, "binding_nodes", "0019_binding_nodes.sql"),
    migration!(20, "fraud_limits", "0020_fraud_limits.sql"),
    migration!(21, "nodes", "0021_nodes.sql"),
    migration!(22, "node_rows", "0022_node_rows.sql"),
];

fn schema(backend: Backend) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{MigrationType, Migrator};
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|m| {
                let sql = match backend {
                    Backend::Sqlite => m.sqlite,
                    Backend::Postgres => m.postgres,
                };
                sqlx::migrate::Migration::new(
                    m.version,
                    m.name.replace('_', " ").into(),
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
        for (backend, sub) in [
            (Backend::Sqlite, "migrations/sqlite"),
            (Backend::Postgres, "migrations/postgres"),
        ] {
            check_migrations(backend, sub);
        }
    }

    fn check_migrations(backend: Backend, sub: &str) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(sub);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("migrations dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(
            listed, files,
            "MIGRATIONS lists every file of {sub}, in order"
        );
        // sqlx's own resolution of the directory (what `migrate!` did) gives the same
        // versions, descriptions and checksums: databases migrated before agree.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let from_files = rt
            .block_on(sqlx::migrate::Migrator::new(dir.as_path()))
            .expect("resolve");
        let ours = schema(backend);
        assert_eq!(from_files.iter().count(), ours.iter().count());
        for (a, b) in from_files.iter().zip(ours.iter()) {
            assert_eq!(a.version, b.version);
            assert_eq!(a.description, b.description);
            assert_eq!(a.checksum, b.checksum, "migration {}", a.version);
            assert_eq!(a.no_tx, b.no_tx);
        }
    }

    #[test]
    fn a_postgres_url_never_shows_its_password() {
        for (url, shown) in [
            (
                "postgres://sipward:s3cr%40t@db.example:5432/pbx",
                "postgres://sipward:***@db.example:5432/pbx",
            ),
            (
                "postgresql://u:p@ss@h/db?sslmode=require&password=other",
                "postgresql://u:***@h/db?sslmode=require&password=***",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres:///db?host=/run/pg", "postgres:///db?host=/run/pg"),
        ] {
            let u = PgUrl::parse(url).expect("valid");
            assert_eq!(u.to_string(), shown);
            assert!(!format!("{u:?}").contains("s3cr"), "{u:?}");
        }
        let err = PgUrl::parse("mysql://u:hunter2@h/db").expect_err("not postgres");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn urls_escape_special_characters() {
        assert_eq!(
            sqlite_url(Path::new("/tmp/a b?#/db.sqlite")),
            "sqlite:///tmp/a%20b%3F%23/db.sqlite?mode=rwc"
        );
    }
}
