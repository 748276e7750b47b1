//! Change hints from PostgreSQL: every version bump (the `bump_version` trigger of the
//! PostgreSQL migrations) sends a notification on [`CHANNEL`] naming the version row.
//!
//! A notification is a hint only. sqlx's listener loses what was sent while it was
//! reconnecting (sqlx #447, #1102, #2921), so a reconnect is reported as
//! [`Hint::Reconnected`]: whoever listens then re-reads every version, and polls them
//! anyway. The listener runs on a connection of its own (not from the store's pool),
//! named [`APPLICATION_NAME`] so that an operator (or a test) can find it in
//! `pg_stat_activity`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use crate::db::PgUrl;
use crate::error::{Error, Result};

/// The notification channel of the version rows.
pub const CHANNEL: &str = "sipward_versions";

/// The `application_name` of the listening connection.
pub const APPLICATION_NAME: &str = "sipward-listener";

/// The longest wait between two attempts to connect again.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the listener learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hint {
    /// A version row moved (its meta key, e.g. `guard_version`): re-read it now.
    Changed(String),
    /// The connection was lost and is back: anything may have changed meanwhile.
    Reconnected,
}

/// A LISTEN on [`CHANNEL`] that reconnects by itself.
pub struct VersionListener {
    url: PgUrl,
    listener: Option<PgListener>,
    /// The next wait before connecting again after a failure.
    backoff: Duration,
}

impl std::fmt::Debug for VersionListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionListener")
            .field("url", &self.url)
            .field("connected", &self.listener.is_some())
            .finish()
    }
}

impl VersionListener {
    /// Connects and listens; fails when the database cannot be reached now.
    pub async fn connect(url: &PgUrl) -> Result<Self> {
        let listener = listen(url).await?;
        Ok(Self {
            url: url.clone(),
            listener: Some(listener),
            backoff: Duration::from_millis(50),
        })
    }

    /// A listener that connects at its first [`VersionListener::next`] (which then
    /// says [`Hint::Reconnected`]): for a server that must start while the database's
    /// notifications cannot be reached yet.
    pub fn disconnected(url: &PgUrl) -> Self {
        Self {
            url: url.clone(),
            listener: None,
            backoff: Duration::from_millis(50),
        }
    }

    /// Waits for the next hint. Never fails: a lost connection is retried (with a
    /// backoff up to two seconds) until it is back, then reported as
    /// [`Hint::Reconnected`].
    pub async fn next(&mut self) -> Hint {
        loop {
            match &mut self.listener {
                Some(l) => match l.try_recv().await {
                    Ok(Some(n)) => {
                        // Payloads are version names of ours; anything longer is no
                        // hint of ours and is read as "something changed".
                        let name = n.payload();
                        return Hint::Changed(if name.len() <= 64 {
                            name.to_owned()
                        } else {
                            String::new()
                        });
                    }
                    // Ok(None): the connection was lost. An error (the server ended
                    // the session, say) is treated the same way.
                    Ok(None) | Err(_) => {
                        tracing::warn!(
                            "the database's change notifications were cut; reconnecting"
                        );
                        self.listener = None;
                    }
                },
                None => match listen(&self.url).await {
                    Ok(l) => {
                        self.listener = Some(l);
                        self.backoff = Duration::from_millis(50);
                        return Hint::Reconnected;
                    }
                    Err(_) => {
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    }
                },
            }
        }
    }
}

async fn listen(url: &PgUrl) -> Result<PgListener> {
    let unreachable = |e: sqlx::Error| Error::Connect {
        url: url.redacted(),
        detail: crate::db::connect_detail(&e),
    };
    let opts = PgConnectOptions::from_str(url.expose())
        .map_err(|_| Error::DatabaseUrl {
            detail: "the driver cannot parse it".into(),
        })?
        .application_name(APPLICATION_NAME);
    // A pool of one connection only for the listener: sqlx's listener takes its
    // connection from a pool; this one is nobody else's.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(opts);
    let mut listener = PgListener::connect_with(&pool).await.map_err(unreachable)?;
    // We reconnect ourselves, to report it.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await.map_err(unreachable)?;
    Ok(listener)
}
