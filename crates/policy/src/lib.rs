//! Pure policy for sipward: validated account fields, secret handling, the
//! weak-credential rules behind `sipward audit`, the generators for strong credentials,
//! and the toll-fraud rules: the dial plan (E.164), classes of service, fraud limits,
//! transfers and the route audit.
//!
//! Architecture invariant: this crate does no IO. It reads no files, no environment,
//! no clock (it only defines [`clock::Clock`], which the binary implements) and no OS
//! randomness; callers pass randomness in (any [`rand_core::CryptoRng`])
//! and data files are compiled in. Every rule has unit tests both ways.

pub mod audit;
pub mod ban;
pub mod clock;
pub mod config;
pub mod destination;
pub mod dialplan;
pub mod e164;
pub mod epoch;
pub mod exposure;
pub mod fields;
pub mod fraud;
pub mod generate;
pub mod high_cost;
pub mod nanp;
pub mod password;
pub mod pin;
pub mod places;
pub mod route;
pub mod scanner;
pub mod secret;
pub mod switch;
pub mod transfer;
pub mod trunk;
pub mod vendor;
pub mod voicemail;
pub mod weakening;

pub use audit::{Finding, Kind, RuleId, Severity};
pub use config::PolicyConfig;
pub use fields::InvalidField;
pub use secret::Secret;
