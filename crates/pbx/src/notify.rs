//! Telling registered phones to re-fetch their provisioning files: an out-of-dialog
//! `NOTIFY` with `Event: check-sync` (or the vendor's variant), sent to each
//! registration's flow (UDP, or the phone's own TCP connection) as a non-INVITE client
//! transaction of `sip::transaction` under the egress rule's registration permit.
//! Retransmission and Timer F come from the transaction, driven by the server's clock.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sip::request::{Party, RequestBuilder, TopVia};
use sip::transaction::{Action, ResponseClass, TxId};

use crate::egress::{Delivery, Owner, Purpose};
use crate::flow::{Flow, our_uri};
use crate::metrics::Metrics;
use crate::signalling::Signalling;

/// At most this many NOTIFYs wait for an answer at once (bounded like every table).
pub const MAX_PENDING: usize = 65_536;

/// An unsolicited RFC 3842 `message-summary` NOTIFY for one registration of extension
/// `number` (the voicemail's message-waiting light), with `body` from
/// `crate::voicemail::message_summary`.
pub fn build_message_summary(
    sig: &Signalling,
    contact: &str,
    number: &str,
    realm: &str,
    flow: &Flow,
    body: &str,
) -> Option<Vec<u8>> {
    let branch = sig.branch();
    let tag = sig.token("notify-tag");
    let call_id = format!("{}@sipward", sig.token("notify-call-id"));
    let from = format!("sip:{number}@{realm}");
    let to = format!("sip:{number}@{realm}");
    let us = our_uri(sig.bound_for(flow), flow, Some("sipward"));
    RequestBuilder::new("NOTIFY", contact)
        .via(TopVia::new(
            flow.transport.via_token(),
            sig.local(flow),
            &branch,
        ))
        .from(Party::new(&from).tag(&tag))
        .to(Party::new(&to))
        .call_id(&call_id)
        .cseq(1)
        .contact(&us)
        .header("Event", "message-summary")
        .header("Subscription-State", "terminated;reason=timeout")
        .body("application/simple-message-summary", body.as_bytes())
        .build()
        .ok()
}

/// The NOTIFY client side.
#[derive(Debug)]
pub struct Notifier {
    sig: Arc<Signalling>,
    pending: Mutex<HashSet<TxId>>,
}

impl Notifier {
    pub fn new(sig: Arc<Signalling>) -> Self {
        Self {
            sig,
            pending: Mutex::new(HashSet::new()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashSet<TxId>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// NOTIFYs sent and not answered yet (bounded by [`MAX_PENDING`]), for `/metrics`.
    pub fn pending_count(&self) -> usize {
        self.pending().len()
    }

    /// The NOTIFY for one registration of extension `number`: to its Contact URI as
    /// Request-URI, sent on the flow it registered from. None when a value would not
    /// make a valid request (the builder refuses control characters and the like).
    pub fn build(
        &self,
        contact: &str,
        number: &str,
        realm: &str,
        event: &str,
        flow: &Flow,
    ) -> Option<Vec<u8>> {
        let branch = self.sig.branch();
        let tag = self.sig.token("notify-tag");
        let call_id = format!("{}@sipward", self.sig.token("notify-call-id"));
        let from = format!("sip:sipward@{realm}");
        let to = format!("sip:{number}@{realm}");
        let us = our_uri(self.sig.bound_for(flow), flow, Some("sipward"));
        RequestBuilder::new("NOTIFY", contact)
            .via(TopVia::new(
                flow.transport.via_token(),
                self.sig.local(flow),
                &branch,
            ))
            .from(Party::new(&from).tag(&tag))
            .to(Party::new(&to))
            .call_id(&call_id)
            .cseq(1)
            .contact(&us)
            .header("Event", event)
            .header("Subscription-State", "terminated;reason=timeout")
            .build()
            .ok()
    }

    /// Sends check-sync NOTIFYs to every registration of `number` (Contact URI, flow).
    /// Returns how many went out.
    pub fn check_sync(
        &self,
        number: &str,
        realm: &str,
        event: &str,
        registrations: &[(String, Flow)],
    ) -> usize {
        let mut sent = 0;
        // Held while each starts: an answer may come before `start` returns.
        let mut pending = self.pending();
        for (contact, flow) in registrations {
            if pending.len() >= MAX_PENDING {
                break;
            }
            let Some(bytes) = self.build(contact, number, realm, event, flow) else {
                continue;
            };
            if let Ok(tx) = self.sig.egress.start(
                bytes,
                *flow,
                Purpose::Registration { number },
                Owner::Notify,
            ) {
                pending.insert(tx);
                Metrics::inc(&self.sig.metrics.notify_sent);
                sent += 1;
            }
        }
        sent
    }

    /// Counts an answer to a message-summary NOTIFY too (they share [`Owner::Notify`]).
    pub fn track(&self, tx: sip::transaction::TxId) {
        let mut p = self.pending();
        if p.len() < MAX_PENDING {
            p.insert(tx);
        }
    }

    /// An output of one of our NOTIFY transactions.
    pub fn on_delivery(&self, d: &Delivery) {
        let m = &self.sig.metrics;
        match d.action {
            Action::Deliver(ResponseClass::Success | ResponseClass::Failure)
                if self.pending().remove(&d.tx) =>
            {
                Metrics::inc(&m.notify_answered);
            }
            Action::TimedOut | Action::TransportFailed if self.pending().remove(&d.tx) => {
                Metrics::inc(&m.notify_unanswered);
            }
            Action::Terminated => {
                self.pending().remove(&d.tx);
            }
            _ => {}
        }
    }
}
