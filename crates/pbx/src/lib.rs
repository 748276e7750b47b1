//! The running SIP server: transports -> guard -> endpoint -> authenticator -> registrar,
//! outbound admission, dialogs, proxy and B2BUA, trunks, check-sync NOTIFYs, provider
//! registrations, metrics; and the egress rule every message sipward sends passes. It
//! reads the accounts the `accounts` crate keeps and writes back what only it sees
//! (bindings, bans it made, suspensions, provider status, active calls).

pub mod admission;
pub mod authenticator;
pub mod b2bua;
pub mod dialog;
pub mod directory;
pub mod egress;
pub mod endpoint;
mod error;
pub mod flow;
pub mod guard;
pub mod handle;
pub mod hop;
pub mod mailbox;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod provider;
pub mod proxy;
pub mod registrar;
pub mod rtp;
pub mod server;
pub mod signalling;
pub mod tls;
pub mod transfer;
pub mod transport;
pub mod trunk;
pub mod voicemail;

pub use error::{Error, Result};
