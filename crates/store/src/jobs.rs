//! Single-instance jobs: work that one node at a time must do when several share a
//! PostgreSQL database (the mail outbox sender, the scheduled backups).
//!
//! A job is held through a session advisory lock taken on a connection of its own, not
//! a pooled one (a pooled connection goes back to the pool, lock and all, and sqlx's
//! `PgAdvisoryLock::acquire` is not cancel-safe: sqlx #4198). The lock lives as long as
//! that connection: a node that dies (even by `kill -9`) loses its connection, the
//! server releases the lock, and the next node that asks takes it. On SQLite there is
//! one node, and it always holds every job.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

use crate::db::{PgUrl, Store};

/// A job only one node runs at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Sending the mail outbox.
    Outbox,
    /// The scheduled backups (`[backup] interval`): one archive per interval, not one
    /// per node.
    Backup,
}

impl Job {
    /// Every job, for metrics.
    pub const ALL: [Job; 2] = [Job::Outbox, Job::Backup];

    /// Its stable name (metric labels, the connection's application name).
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Outbox => "outbox",
            Job::Backup => "backup",
        }
    }

    /// The advisory lock key: "sipw" and the job's number, apart from the write lock.
    fn key(self) -> i64 {
        let n = match self {
            Job::Outbox => 1,
            Job::Backup => 2,
        };
        (0x7369_7077_i64 << 16) | n
    }
}

/// One node's hold on a [`Job`].
pub struct JobLock {
    job: Job,
    url: Option<PgUrl>,
    conn: Option<PgConnection>,
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock")
            .field("job", &self.job)
            .field("url", &self.url)
            .field("held", &self.conn.is_some())
            .finish()
    }
}

impl JobLock {
    /// A hold on `job` for the node using `store` (nothing is taken until
    /// [`JobLock::hold`]).
    pub fn new(store: &Store, job: Job) -> Self {
        Self {
            job,
            url: store.postgres_url().cloned(),
            conn: None,
        }
    }

    /// Whether this node runs the job now: always on SQLite; on PostgreSQL when it
    /// holds the lock, which it checks (its connection alive) or tries to take. Never
    /// fails: an unreachable database means "not now".
    pub async fn hold(&mut self) -> bool {
        let Some(url) = &self.url else {
            return true;
        };
        if let Some(conn) = &mut self.conn {
            if conn.ping().await.is_ok() {
                return true;
            }
            // The connection (and with it the lock) is gone.
            tracing::warn!(
                job = self.job.as_str(),
                "lost the connection holding a single-instance job"
            );
            self.conn = None;
        }
        let Ok(opts) = PgConnectOptions::from_str(url.expose()) else {
            return false;
        };
        let app = format!("sipward-job-{}", self.job.as_str());
        let Ok(mut conn) = opts.application_name(&app).connect().await else {
            return false;
        };
        let taken = sqlx::query("SELECT pg_try_advisory_lock($1) AS taken")
            .bind(self.job.key())
            .fetch_one(&mut conn)
            .await
            .and_then(|r| r.try_get::<bool, _>("taken"));
        match taken {
            Ok(true) => {
                self.conn = Some(conn);
                true
            }
            // Another node holds it; this connection goes (it holds nothing).
            _ => {
                let _ = conn.close().await;
                false
            }
        }
    }

    /// Gives the job up (at shutdown, so another node takes it at once).
    pub async fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}
