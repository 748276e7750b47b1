//! The voicemail's store side in the running server: [`Deposits`] through the
//! account workflow's voicemail boxes (`accounts::voicemail`), which own the message
//! files, their rows, the mails and the audit log.

use accounts::Registry;
use accounts::voicemail::{PendingMessage, Summary};

use crate::voicemail::{BoxFuture, Deposits, Opened, Waiting};

/// [`Deposits`] backed by the data dir's registry.
#[derive(Clone, Debug)]
pub struct Mailboxes {
    registry: Registry,
}

impl Mailboxes {
    pub fn new(registry: Registry) -> Self {
        Mailboxes { registry }
    }
}

fn waiting(s: Summary) -> Waiting {
    Waiting {
        new: s.new,
        saved: s.saved,
    }
}

impl Deposits for Mailboxes {
    fn begin(&self, mailbox: &str) -> BoxFuture<'_, Option<Opened>> {
        let mailbox = mailbox.to_owned();
        Box::pin(async move {
            match self.registry.begin_message(&mailbox).await {
                Ok(p) => Some(Opened {
                    path: p.path().to_owned(),
                    handle: Box::new(p),
                }),
                Err(e) => {
                    tracing::info!(mailbox = %mailbox, error = %e, "voicemail box takes no message");
                    None
                }
            }
        })
    }

    fn commit(
        &self,
        opened: Opened,
        caller: String,
        duration_ms: u64,
    ) -> BoxFuture<'_, Option<Waiting>> {
        Box::pin(async move {
            let pending = opened.handle.downcast::<PendingMessage>().ok()?;
            match self
                .registry
                .commit_message(*pending, &caller, duration_ms)
                .await
            {
                Ok(s) => Some(waiting(s)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot file a voicemail message");
                    None
                }
            }
        })
    }

    fn discard(&self, opened: Opened) {
        if let Ok(p) = opened.handle.downcast::<PendingMessage>() {
            self.registry.discard(*p);
        }
    }

    fn greeting(&self, mailbox: &str) -> BoxFuture<'_, Option<Vec<u8>>> {
        let mailbox = mailbox.to_owned();
        Box::pin(async move { self.registry.greeting(&mailbox).await.ok().flatten() })
    }

    fn ring_times(&self) -> BoxFuture<'_, Option<std::collections::HashMap<String, u32>>> {
        Box::pin(async move {
            let mut conn = self.registry.store().conn().await.ok()?;
            let rows = store::account::list_extensions(&mut conn).await.ok()?;
            Some(
                rows.into_iter()
                    .map(|r| {
                        let secs = u32::try_from(r.voicemail_after_secs.max(0)).unwrap_or(0);
                        (r.number, secs)
                    })
                    .collect(),
            )
        })
    }

    fn waiting(&self, mailbox: &str) -> BoxFuture<'_, Option<Waiting>> {
        let mailbox = mailbox.to_owned();
        Box::pin(async move { self.registry.summary(&mailbox).await.ok().map(waiting) })
    }
}
