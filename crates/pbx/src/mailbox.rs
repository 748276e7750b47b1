//! The voicemail's store side in the running server: [`Deposits`] and [`Boxes`] through the
//! account workflow's voicemail boxes (`accounts::voicemail`), which own the message
//! files, their rows, the mails and the audit log.

use std::net::IpAddr;

use accounts::Registry;
use accounts::voicemail::{PendingMessage, Summary, caller_actor};
use policy::Secret;
use policy::voicemail::{Credential, Login, MessageView, PinChange};

use crate::voicemail::{BoxFuture, Boxes, Deposits, Opened, Waiting};

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

/// The registry's answer, or a refusal when the store fails (logged).
fn or_refused<T>(r: accounts::Result<T>, what: &str, refused: T) -> T {
    r.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "voicemail {what} failed");
        refused
    })
}

impl Boxes for Mailboxes {
    fn login(&self, mailbox: &str, credential: Credential, source: IpAddr) -> BoxFuture<'_, Login> {
        let mailbox = mailbox.to_owned();
        Box::pin(async move {
            let r = self.registry.login(&mailbox, credential, source).await;
            or_refused(r, "login", Login::Refused)
        })
    }

    fn messages(&self, mailbox: &str) -> BoxFuture<'_, Option<Vec<MessageView>>> {
        let mailbox = mailbox.to_owned();
        Box::pin(async move { self.registry.messages(&mailbox).await.ok() })
    }

    fn recording(&self, mailbox: &str, id: &str) -> BoxFuture<'_, Option<Vec<u8>>> {
        let (mailbox, id) = (mailbox.to_owned(), id.to_owned());
        Box::pin(async move { self.registry.open_message(&mailbox, &id).await.ok() })
    }

    fn delete(&self, mailbox: &str, id: &str, source: IpAddr) -> BoxFuture<'_, bool> {
        let (mailbox, id) = (mailbox.to_owned(), id.to_owned());
        Box::pin(async move {
            let r = self
                .registry
                .delete_message(&mailbox, &id, &caller_actor(source))
                .await;
            or_refused(r, "delete", false)
        })
    }

    fn save(&self, mailbox: &str, id: &str, source: IpAddr) -> BoxFuture<'_, bool> {
        let (mailbox, id) = (mailbox.to_owned(), id.to_owned());
        Box::pin(async move {
            let r = self
                .registry
                .save_message(&mailbox, &id, &caller_actor(source))
                .await;
            or_refused(r, "save", false)
        })
    }

    fn change_pin(&self, mailbox: &str, pin: Secret, source: IpAddr) -> BoxFuture<'_, PinChange> {
        let mailbox = mailbox.to_owned();
        Box::pin(async move {
            let r = self
                .registry
                .change_pin(&mailbox, &pin, &caller_actor(source))
                .await;
            or_refused(
                r,
                "PIN change",
                PinChange::Refused {
                    reason: "the PIN could not be stored".into(),
                },
            )
        })
    }

    fn set_greeting(&self, mailbox: &str, wav: Vec<u8>, source: IpAddr) -> BoxFuture<'_, bool> {
        let mailbox = mailbox.to_owned();
        Box::pin(async move {
            let r = self
                .registry
                .set_greeting(&mailbox, &wav, &caller_actor(source))
                .await
                .map(|()| true);
            or_refused(r, "greeting", false)
        })
    }
}
