//! One throwaway PostgreSQL cluster per test process, and a fresh database in it for
//! each test that asks. Shared by the store's tests and the sipward cluster tests
//! (`#[path]`-included), so it uses only std and the PostgreSQL command-line tools
//! (initdb, pg_ctl, psql): no test outside `crates/store` names sqlx.
//!
//! The cluster lives in a temp dir, listens on 127.0.0.1 on a free port with `trust`
//! authentication and `fsync=off`, and is stopped and removed by a watchdog shell once
//! the test process is gone (statics are never dropped, so nothing else would).
//! Missing PostgreSQL fails loudly under `CI=true`; elsewhere the PostgreSQL half of a
//! test reports that it was skipped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The running cluster of this test process.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    next_db: AtomicU32,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

/// The cluster, started on first use; `None` (after saying so) when PostgreSQL is not
/// installed and `CI` is not `true`.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER.get_or_init(start).as_ref()
}

/// A cluster of the caller's own (a test that restarts PostgreSQL must not do it
/// under the other tests' feet); stopped and removed once the test process is gone.
pub fn private() -> Option<Cluster> {
    start()
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The directory holding initdb and pg_ctl: PATH first, then Debian's layout.
fn find_bin() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            // Resolved: a PATH entry may be a symlink to initdb alone, and psql
            // and pg_ctl are wanted from the same installation.
            if let Ok(initdb) = dir.join("initdb").canonicalize()
                && let Some(real) = initdb.parent()
                && real.join("pg_ctl").is_file()
                && real.join("psql").is_file()
            {
                return Some(real.to_owned());
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// initdb and pg_ctl refuse root: as root they run as the `postgres` user.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start() -> Option<Cluster> {
    let Some(bin) = find_bin() else {
        assert!(
            !ci(),
            "PostgreSQL is missing (no initdb/pg_ctl in PATH or /usr/lib/postgresql/*/bin): \
             install the `postgresql` package; CI=true requires it"
        );
        eprintln!("PostgreSQL is not installed: the PostgreSQL half of these tests is skipped");
        return None;
    };
    let dir = std::env::temp_dir().join(format!(
        "sipward-pg-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("cluster dir");
    if is_root() {
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown of the cluster dir to postgres");
    }
    let data = dir.join("data");
    let out = as_owner(&bin.join("initdb"))
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "-D",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster = Cluster {
        bin,
        dir,
        port: free_port(),
        next_db: AtomicU32::new(0),
    };
    cluster.pg_ctl_start();
    // The watchdog: stops the cluster and removes it when this process is gone.
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         {runuser} {pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        runuser = if is_root() {
            "runuser -u postgres --"
        } else {
            ""
        },
        pg_ctl = cluster.bin.join("pg_ctl").display(),
        data = data.display(),
        dir = cluster.dir.display(),
    );
    // `setsid -f` forks it off in a session of its own and returns at once.
    let started = Command::new("setsid")
        .args(["-f", "sh", "-c", &stop])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(started, "start the cluster's watchdog");
    Some(cluster)
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            self.dir.display(),
            self.port
        );
        let out = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "start"])
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {} (log: {})",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs one SQL command as the superuser on database `db` and returns psql's
    /// unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new empty database for one test; returns its URL.
    pub fn fresh_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Stops the cluster at once (like a crash) and starts it again on the same port.
    pub fn restart(&self) {
        let out = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl stop");
        assert!(out.status.success(), "pg_ctl stop failed");
        self.pg_ctl_start();
    }

    /// Ends every connection to database `db` whose application name is `app`
    /// (`pg_terminate_backend`); returns how many were ended.
    pub fn terminate(&self, db: &str, app: &str) -> usize {
        let out = self.psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND application_name = '{app}'"
            ),
        );
        out.parse().unwrap_or(0)
    }
}

/// The database name at the end of a URL made by [`Cluster::url`].
pub fn database_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `deadline`.
pub fn wait_for<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
