//! The administrators' audit log: who did what to which subject, never a secret. Every
//! entry is written by [`Registry::log_in`], the one place that appends to it, whether
//! the change came from the CLI, the console, a security epoch or a backup.

use store::Db;
use store::audit_log::{self as q, LogRow};

use crate::Result;
use crate::registry::Registry;

/// A setting an administrator changes, from the CLI or the console: both write the same
/// action id and subject for the same change, so the log reads the same whichever way
/// the change was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Extension,
    Gateway,
    Provider,
    Route,
    Did,
    /// A source banned by hand (the subject is the address itself).
    Ban,
    /// An allow-list network (the subject is the network itself).
    Allow,
}

/// What was done to a [`Setting`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Updated,
    Removed,
    /// New credentials made by Re-Generate.
    Regenerated,
}

impl Setting {
    fn word(self) -> &'static str {
        match self {
            Setting::Extension => "ext",
            Setting::Gateway => "gateway",
            Setting::Provider => "provider",
            Setting::Route => "route",
            Setting::Did => "did",
            Setting::Ban => "ban",
            Setting::Allow => "allow",
        }
    }

    /// The action id: `gateway.added`, `ext.removed`; a ban that is removed was `lifted`.
    pub fn action(self, change: Change) -> String {
        let verb = match (self, change) {
            (_, Change::Added) => "added",
            (_, Change::Updated) => "updated",
            (Setting::Ban, Change::Removed) => "lifted",
            (_, Change::Removed) => "removed",
            (_, Change::Regenerated) => "regenerated",
        };
        format!("{}.{verb}", self.word())
    }

    /// The subject: `ext:1001`, `gateway:office`; a ban or allow entry is its address.
    pub fn subject(self, id: &str) -> String {
        match self {
            Setting::Ban | Setting::Allow => id.to_owned(),
            _ => format!("{}:{id}", self.word()),
        }
    }
}

/// The most characters a field of an entry keeps.
const FIELD_MAX: usize = 500;

/// `text` as one line: control characters (line breaks, tabs, escapes) become spaces,
/// the ends are trimmed and at most [`FIELD_MAX`] characters are kept, so an entry can
/// neither forge a second line nor hide its end.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .chars()
        .take(FIELD_MAX)
        .collect()
}

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
    /// Every field is made one line of bounded text first ([`one_line`]): what a caller
    /// passes may hold what an administrator or the environment typed.
    pub async fn log_in(&self, db: &mut dyn Db, at: i64, entry: LogEntry<'_>) -> Result<()> {
        q::append(
            db,
            at,
            &one_line(entry.actor),
            &one_line(entry.action),
            &one_line(entry.subject),
            &one_line(entry.detail),
        )
        .await?;
        Ok(())
    }

    /// Appends `entry`, stamped now, on a connection of its own.
    pub async fn log(&self, entry: LogEntry<'_>) -> Result<()> {
        let mut conn = self.store.conn().await?;
        self.log_in(&mut conn, self.now(), entry).await
    }

    /// Logs `change` to `setting` named `id`, stamped now. `detail` names what changed,
    /// never a value that may be a secret.
    pub async fn log_setting(
        &self,
        actor: &str,
        setting: Setting,
        change: Change,
        id: &str,
        detail: &str,
    ) -> Result<()> {
        let (action, subject) = (setting.action(change), setting.subject(id));
        self.log(LogEntry {
            actor,
            action: &action,
            subject: &subject,
            detail,
        })
        .await
    }

    /// The newest `limit` entries, oldest first.
    pub async fn recent_log(&self, limit: i64) -> Result<Vec<LogRow>> {
        let mut conn = self.store.conn().await?;
        Ok(q::recent(&mut conn, limit).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::{Change, Setting};

    #[test]
    fn entries_are_one_line_of_bounded_text() {
        assert_eq!(super::one_line(" seen scanning\n\t"), "seen scanning");
        assert_eq!(
            super::one_line("eve\n2026-11-30 admin ext.removed\u{1b}[2J"),
            "eve 2026-11-30 admin ext.removed [2J"
        );
        assert_eq!(super::one_line(&"x".repeat(9000)).len(), 500);
    }

    #[test]
    fn actions_and_subjects_read_the_same_from_cli_and_console() {
        assert_eq!(Setting::Gateway.action(Change::Added), "gateway.added");
        assert_eq!(Setting::Extension.action(Change::Updated), "ext.updated");
        assert_eq!(Setting::Ban.action(Change::Removed), "ban.lifted");
        assert_eq!(Setting::Allow.action(Change::Removed), "allow.removed");
        assert_eq!(Setting::Did.subject("+4930123"), "did:+4930123");
        assert_eq!(Setting::Ban.subject("192.0.2.7"), "192.0.2.7");
        assert_eq!(Setting::Extension.subject("1001"), "ext:1001");
    }
}
