//! Persistence for sipward: the data directory, the secrets vault, and the database
//! (SQLite embedded by default, through sqlx's `Any` driver with portable SQL so that a
//! PostgreSQL backend can share the same queries).
//!
//! The database is the source of truth: every process (the server, each CLI call) reads
//! it afresh, so a change made by one is seen by the others without a restart.
//!
//! Every query lives here, behind typed repository functions that take a [`Db`] handle
//! (a pooled [`Conn`] or a [`Tx`]); no other crate names sqlx.

pub mod account;
pub mod audit_log;
pub mod backup;
pub mod bindings;
pub mod console;
pub mod copy;
mod datadir;
mod db;
pub mod directory;
mod error;
pub mod failures;
pub mod fraud;
pub mod grace;
pub mod guard;
pub mod jobs;
pub mod listen;
pub mod meta;
pub mod nodes;
pub mod outbound;
pub mod outbox;
pub mod provisioning;
pub mod signing;
pub mod trends;
pub mod trunks;
mod vault;
pub mod voicemail;

pub use datadir::DataDir;
pub use db::{Backend, Conn, Db, PgUrl, Store, Tx};
pub use error::{BackupError, Error, Result};
pub use vault::Vault;

/// One page of accounts read in number order: up to a limit's rows after a number, and
/// the last number read (where the next page starts), in the database's own collation.
#[derive(Debug)]
pub struct Page<T> {
    pub rows: Vec<T>,
    /// `None` when no account lies after the cursor.
    pub last: Option<String>,
}
