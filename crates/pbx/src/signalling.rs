//! What every part of sipward that places or carries requests shares: the egress rule it
//! sends through, the dialog table, the sources of branches, tags and Call-IDs, the
//! metrics, the clock, and the address sipward listens on (what its Vias, Contacts and
//! Record-Routes name).

use std::net::SocketAddr;
use std::sync::Arc;

use policy::clock::Clock;
use sip::branch::{Branch, BranchSource, KeyedBranches};

use crate::dialog::{Dialogs, Tokens};
use crate::egress::Egress;
use crate::flow::{Flow, TransportKind, local_for};
use crate::metrics::Metrics;

#[derive(Debug)]
pub struct Signalling {
    pub egress: Arc<Egress>,
    pub dialogs: Arc<Dialogs>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// The address the SIP sockets are bound to.
    pub bound: SocketAddr,
    /// The address the TLS listener is bound to, if there is one.
    pub tls_bound: Option<SocketAddr>,
    /// The internal hop socket's address (`[cluster] internal`), if hops are on: what
    /// a hop's Via and Record-Route name, so the other node answers and sends in-dialog
    /// requests there, never to the public socket.
    pub internal: Option<SocketAddr>,
    branches: KeyedBranches,
    tokens: Tokens,
}

impl Signalling {
    /// `key` comes from the OS CSPRNG (through the binary): branches and tags are
    /// unpredictable without it.
    pub fn new(
        egress: Arc<Egress>,
        dialogs: Arc<Dialogs>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        (bound, tls_bound): (SocketAddr, Option<SocketAddr>),
        key: [u8; 32],
    ) -> Self {
        let derive = |label: &[u8]| {
            use hmac::{Hmac, KeyInit, Mac};
            let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key)
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
            m.update(label);
            let k: [u8; 32] = m.finalize().into_bytes().into();
            k
        };
        Self {
            egress,
            dialogs,
            metrics,
            clock,
            bound,
            tls_bound,
            internal: None,
            branches: KeyedBranches::new(derive(b"branches")),
            tokens: Tokens::new(derive(b"tokens")),
        }
    }

    /// A new branch for a request of our own.
    pub fn branch(&self) -> Branch {
        self.branches.next_branch()
    }

    /// A new tag, Call-ID part or cnonce (`label` keeps uses apart).
    pub fn token(&self, label: &str) -> String {
        self.tokens.next(label)
    }

    /// The bound address that serves `flow`'s transport (the TLS listener for TLS, the
    /// internal socket for a hop).
    pub fn bound_for(&self, flow: &Flow) -> SocketAddr {
        match (flow.transport, self.tls_bound, self.internal) {
            (TransportKind::Tls, Some(tls), _) => tls,
            (TransportKind::Hop, _, Some(internal)) => internal,
            _ => self.bound,
        }
    }

    /// The address a peer on `flow` sees sipward at.
    pub fn local(&self, flow: &Flow) -> SocketAddr {
        local_for(self.bound_for(flow), flow.remote)
    }
}
