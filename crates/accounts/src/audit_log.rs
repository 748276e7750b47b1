//! The administrators' audit log: who did what to which subject, never a secret. Every
//! entry is written by [`Registry::log_in`], the one place that appends to it, whether
//! the change came from the CLI, the console, a security epoch or a backup.

use store::Db;
use store::audit_log::{self as q, LogRow};

use crate::Result;
use crate::registry::Registry;

/// One entry, as the code that made the change describes it.
#[derive(Clone, Copy, Debug)]
pub struct LogEntry<'a> {
    /// `admin NAME (console, ADDRESS)`, `sipward admin passwd`, ...
    pub actor: &'a str,
    /// A stable dotted id: `backup.created`, `admin.password_set`, `epoch1.regenerated`.
    pub action: &'a str,
    /// `ext:1001`, `admin:NAME`, a path.
    pub subject: &'a str,
    pub detail: &'a str,
}

impl Registry {
    /// Appends `entry`, stamped `at`, inside the caller's transaction (so the entry lands
    /// with the change it records) or on a connection.
    pub async fn log_in(&self, db: &mut dyn Db, at: i64, entry: LogEntry<'_>) -> Result<()> {
        q::append(
            db,
            at,
            entry.actor,
            entry.action,
            entry.subject,
            entry.detail,
        )
        .await?;
        Ok(())
    }

    /// Appends `entry`, stamped now, on a connection of its own.
    pub async fn log(&self, entry: LogEntry<'_>) -> Result<()> {
        let mut conn = self.store.conn().await?;
        self.log_in(&mut conn, self.now(), entry).await
    }

    /// The newest `limit` entries, oldest first.
    pub async fn recent_log(&self, limit: i64) -> Result<Vec<LogRow>> {
        let mut conn = self.store.conn().await?;
        Ok(q::recent(&mut conn, limit).await?)
    }
}
