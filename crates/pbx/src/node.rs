//! This process's hold on its node name (issue 21). A node name owns the bindings and
//! call leases written under it, so exactly one live process may carry it: `serve`
//! claims the name in the store before it loads anything, renews the claim with a
//! heartbeat, writes bindings only inside transactions that find the claim still its
//! own, and gives the name up on a clean stop.
//!
//! A process that finds its name taken over (it stalled past [`STALE_AFTER_SECS`] and
//! another process claimed the name) stops serving and exits with an error rather than
//! carry on: its bindings and leases are now the other process's to write, a node that
//! kept answering would hold phones' flows that no stored row names, and a supervisor
//! restarting it meets the clear refusal at start instead of a silent split.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use store::nodes::Claim;

use crate::Result;

/// How often a node moves its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// A name whose heartbeat is this old may be claimed by another process: three missed
/// heartbeats.
pub const STALE_AFTER_SECS: i64 = 3 * HEARTBEAT_EVERY.as_secs() as i64;

/// This process's claim on its node name.
#[derive(Debug)]
pub struct NodeHold {
    name: String,
    instance: String,
    lost: AtomicBool,
    notify: tokio::sync::Notify,
}

impl NodeHold {
    /// Claims `name` for this process (`instance`, random per process) and publishes
    /// `hop`, where it takes internal hops ('' for none). `exclusive` says another lock
    /// proves this process the only one (a SQLite data dir's serve lock): the name is
    /// then taken whatever the row says.
    pub async fn claim(
        store: &store::Store,
        name: &str,
        instance: &str,
        hop: &str,
        now: i64,
        exclusive: bool,
    ) -> Result<Self> {
        let stale_before = if exclusive {
            i64::MAX
        } else {
            now.saturating_sub(STALE_AFTER_SECS)
        };
        let mut tx = store.begin().await?;
        let claim = store::nodes::claim(&mut tx, name, instance, hop, now, stale_before).await?;
        tx.commit().await?;
        match claim {
            Claim::Taken => Ok(Self {
                name: name.to_owned(),
                instance: instance.to_owned(),
                lost: AtomicBool::new(false),
                notify: tokio::sync::Notify::new(),
            }),
            Claim::Held { heartbeat_at } => Err(crate::Error::NodeNameHeld {
                node: name.to_owned(),
                seen_secs_ago: now.saturating_sub(heartbeat_at).max(0),
                free_in_secs: heartbeat_at
                    .saturating_add(STALE_AFTER_SECS)
                    .saturating_sub(now)
                    .max(0),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This process's random instance id (the `nodes` row's `instance`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether the name was taken over by another process.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Records that the name is another process's now, once, loudly.
    pub fn mark_lost(&self) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            accounts::event::emit(&serde_json::json!({
                "event": "node_name_lost",
                "node": self.name,
                "detail": "another process claimed this node's name while this one stalled; \
                           no binding is written under it again and the server stops",
            }));
            tracing::error!(
                node = %self.name,
                "this node's name was taken over by another process: stopping"
            );
            self.notify.notify_waiters();
            self.notify.notify_one();
        }
    }

    /// Resolves once the name is lost.
    pub async fn lost(&self) {
        while !self.is_lost() {
            self.notify.notified().await;
        }
    }

    /// Moves the heartbeat; marks the name lost when the row names another process.
    /// A store error changes nothing (the next heartbeat tries again; the name is held
    /// until it is stale).
    pub async fn beat(&self, store: &store::Store, now: i64) -> Result<()> {
        let mut conn = store.conn().await?;
        if !store::nodes::heartbeat(&mut conn, &self.name, &self.instance, now).await? {
            self.mark_lost();
        }
        Ok(())
    }

    /// Whether this process still holds the name, read in `tx` (the bindings' write):
    /// false marks it lost.
    pub async fn still_held(&self, tx: &mut store::Tx) -> Result<bool> {
        if self.is_lost() {
            return Ok(false);
        }
        let held = store::nodes::holds(tx, &self.name, &self.instance).await?;
        if !held {
            self.mark_lost();
        }
        Ok(held)
    }

    /// Gives the name up on a clean stop, so the next process under it starts at once.
    pub async fn release(&self, store: &store::Store) -> Result<()> {
        if self.is_lost() {
            return Ok(());
        }
        let mut conn = store.conn().await?;
        store::nodes::release(&mut conn, &self.name, &self.instance).await?;
        Ok(())
    }
}
