//! Pure credential policy for sipward: validated account fields, secret handling,
//! the weak-credential rules behind `sipward audit`, and the generators for strong
//! credentials.
//!
//! Architecture invariant: this crate does no IO. It reads no files, no environment,
//! no clock (it only defines [`clock::Clock`], which the binary implements) and no OS
//! randomness; callers pass randomness in (any [`rand_core::CryptoRng`])
//! and data files are compiled in. Every rule has unit tests both ways.

pub mod audit;
pub mod ban;
pub mod clock;
pub mod config;
pub mod dialplan;
pub mod epoch;
pub mod exposure;
pub mod fields;
pub mod generate;
pub mod password;
pub mod pin;
pub mod route;
pub mod scanner;
pub mod secret;
pub mod trunk;
pub mod vendor;

pub use audit::{Finding, Kind, RuleId, Severity};
pub use config::PolicyConfig;
pub use fields::InvalidField;
pub use secret::Secret;
