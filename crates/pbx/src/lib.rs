//! The running PBX: the registry workflow shared by the CLI and the console
//! (validation, strong credentials, sealed secrets, HA1s, the audit, CSV import) and the
//! SIP server (transports -> endpoint -> authenticator -> registrar).

pub mod audit;
pub mod authenticator;
pub mod b2bua;
pub mod bans;
pub mod directory;
pub mod endpoint;
mod error;
pub mod exposure;
pub mod guard;
pub mod import;
pub mod mail;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod provisioning;
pub mod proxy;
pub mod registrar;
pub mod registry;
pub mod server;
pub mod transport;
pub mod trunk;

pub use error::{Error, Result};
pub use registry::{Clock, Registry, Settings};
