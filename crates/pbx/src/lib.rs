//! The running PBX's application layer. For now: the registry workflow shared by the CLI
//! and (later) the console: validating input, generating strong credentials, sealing
//! secrets, keeping HA1s current, the audit over everything stored, and CSV import.

pub mod audit;
mod error;
pub mod import;
pub mod registry;

pub use error::{Error, Result};
pub use registry::{Clock, Registry, Settings};
