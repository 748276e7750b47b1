//! The account and credential workflow shared by the CLI, the console and the server:
//! extensions, gateways, providers, routes and DIDs as records (validated fields, strong
//! generated credentials, sealed secrets, current HA1s), the audit over everything
//! stored, CSV import, Re-Generate with provisioning files and the mail outbox, ban and
//! allow records, security epochs, backups of the data dir and the exposure facts.
//!
//! It does no SIP: the running server (`pbx`) reads what this crate writes.

pub mod audit_log;
pub mod background;
pub mod backup;
pub mod bans;
pub mod class_of_service;
pub mod credentials;
pub mod epoch;
mod error;
pub mod event;
pub mod exposure;
pub mod extension;
pub mod fetch;
pub mod findings;
pub mod gateway;
pub mod import;
pub mod mail;
pub mod open;
pub mod provider;
pub mod provisioning;
pub mod regenerate;
pub mod registry;
mod revocation;
pub mod running;
pub mod trunks;
pub mod voicemail;

pub use error::{Error, ImportErrors, Result, RowError};
pub use registry::{Registry, Settings};
