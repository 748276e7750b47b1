//! Failures of work no request waits for (writing bindings behind, reloads, ban records,
//! cleanup, best-effort sends): each is logged with its error chain and counted in
//! `sipward_background_errors_total{task=...}`, so a failing disk or database shows on a
//! dashboard instead of vanishing.
//!
//! The counters are process-wide: the failures happen in every crate above this one,
//! and the label set is fixed here so that no label is ever made from input.

use std::sync::atomic::{AtomicU64, Ordering};

/// What was being done when something failed: the `task` label (a fixed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Writing bindings, refreshes and removals to the store.
    Flush,
    /// Reloading the directory, trunks, guard or class of service from the store.
    Reload,
    /// Writing a ban record, or pruning old ones.
    BanRecord,
    /// Writing a provider registration's status, or the active calls.
    CallState,
    /// Sending queued mails.
    Outbox,
    /// Console bookkeeping: sessions, login records, provisioning fetch records, notes.
    Console,
    /// Scheduled backups and removing what a failed backup or restore left behind.
    Backup,
    /// Removing a file or directory that is no longer wanted.
    Cleanup,
    /// A UDP datagram the kernel refused (full buffer, unreachable peer).
    UdpSend,
    /// A TCP connection's writer ended with an error.
    TcpWrite,
    /// A socket option (buffer sizes, TCP_NODELAY, the kernel drop filter).
    SocketSetup,
}

impl Task {
    /// Every task, in the order `/metrics` lists them.
    pub const ALL: [Task; 11] = [
        Task::Flush,
        Task::Reload,
        Task::BanRecord,
        Task::CallState,
        Task::Outbox,
        Task::Console,
        Task::Backup,
        Task::Cleanup,
        Task::UdpSend,
        Task::TcpWrite,
        Task::SocketSetup,
    ];

    /// The label value: stable, like every metric name.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Flush => "flush",
            Task::Reload => "reload",
            Task::BanRecord => "ban_record",
            Task::CallState => "call_state",
            Task::Outbox => "outbox",
            Task::Console => "console",
            Task::Backup => "backup",
            Task::Cleanup => "cleanup",
            Task::UdpSend => "udp_send",
            Task::TcpWrite => "tcp_write",
            Task::SocketSetup => "socket_setup",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static COUNTS: [AtomicU64; Task::ALL.len()] = [const { AtomicU64::new(0) }; Task::ALL.len()];

/// Logs a failure of `task` (what was being done, and the error's whole chain) and
/// counts it. The error must not carry a secret: store, IO and SMTP errors here never do.
pub fn failed(task: Task, what: &str, error: &(dyn std::error::Error + 'static)) {
    count(task);
    tracing::warn!(task = task.as_str(), error = %Chain(error), "{what} failed");
}

/// `result`'s value, or None after logging and counting its error under `task`.
pub fn checked<T, E>(task: Task, what: &str, result: Result<T, E>) -> Option<T>
where
    E: std::error::Error + 'static,
{
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            failed(task, what, &e);
            None
        }
    }
}

/// A loop's failures in a row: every one is counted, the first of a streak is logged
/// and so is the recovery, so a store that is down for an hour logs two lines, not
/// 14,400.
#[derive(Debug)]
pub struct Health {
    task: Task,
    what: &'static str,
    failing: bool,
    failed_now: bool,
}

impl Health {
    pub fn new(task: Task, what: &'static str) -> Self {
        Self {
            task,
            what,
            failing: false,
            failed_now: false,
        }
    }

    /// `result`'s value, or None after counting its error (and logging it if it starts
    /// a streak).
    pub fn checked<T, E>(&mut self, result: Result<T, E>) -> Option<T>
    where
        E: std::error::Error + 'static,
    {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.failed_now = true;
                if self.failing {
                    count(self.task);
                } else {
                    self.failing = true;
                    failed(self.task, self.what, &e);
                }
                None
            }
        }
    }

    /// Ends one round: a round without failure ends the streak (and says so).
    pub fn settle(&mut self) {
        if self.failing && !self.failed_now {
            self.failing = false;
            tracing::info!(task = self.task.as_str(), "{} works again", self.what);
        }
        self.failed_now = false;
    }
}

/// Counts a failure without logging it: for failures that can come by the thousand
/// (a UDP send buffer full under load), where the count is the useful part.
pub fn count(task: Task) {
    COUNTS[task.index()].fetch_add(1, Ordering::Relaxed);
}

/// How many failures each task has had since the process started.
pub fn counts() -> [(Task, u64); Task::ALL.len()] {
    Task::ALL.map(|t| (t, COUNTS[t.index()].load(Ordering::Relaxed)))
}

/// An error and its sources, joined with ": ".
#[derive(Debug)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_in_index_order() {
        for (i, t) in Task::ALL.iter().enumerate() {
            assert_eq!(t.index(), i, "{t:?}");
        }
        let mut names: Vec<_> = Task::ALL.iter().map(|t| t.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Task::ALL.len());
    }

    #[test]
    fn a_failure_is_counted_under_its_task_only() {
        let before = counts();
        failed(
            Task::Cleanup,
            "removing a file",
            &std::io::Error::other("disk on fire"),
        );
        let after = counts();
        for ((t, b), (_, a)) in before.iter().zip(after.iter()) {
            // Other tests in this process may count too, never less.
            if *t == Task::Cleanup {
                assert!(a > b);
            } else {
                assert!(a >= b);
            }
        }
    }

    #[test]
    fn a_streak_counts_every_failure_and_ends_on_a_clean_round() {
        let mut h = Health::new(Task::Reload, "reloading");
        assert_eq!(h.checked(Ok::<_, std::io::Error>(1)), Some(1));
        h.settle();
        assert!(!h.failing);
        let before = COUNTS[Task::Reload.index()].load(Ordering::Relaxed);
        for _ in 0..3 {
            assert_eq!(h.checked(Err::<u8, _>(std::io::Error::other("down"))), None);
            h.settle();
            assert!(h.failing);
        }
        assert!(COUNTS[Task::Reload.index()].load(Ordering::Relaxed) >= before + 3);
        h.checked(Ok::<_, std::io::Error>(()));
        h.settle();
        assert!(!h.failing);
    }

    #[test]
    fn the_chain_names_every_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("writing the bindings")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("database is locked"));
        assert_eq!(
            Chain(&e).to_string(),
            "writing the bindings: database is locked"
        );
    }
}
