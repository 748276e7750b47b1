//! Store errors. Each says what is wrong in a sentence an administrator can act on, and
//! says whether the cause is the operator's input or environment (exit code 2) or an
//! internal failure.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the secrets key {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("the secrets key {path} is not a sipward key (expected 64 hex digits)")]
    KeyInvalid { path: PathBuf },
    #[error(
        "the secrets key {path} is missing but the database {db} already exists; restore the key from a backup (a new key could not decrypt the stored secrets)"
    )]
    KeyMissing { path: PathBuf, db: PathBuf },
    #[error(
        "the secrets key does not match this database (the stored secrets cannot be decrypted with it); restore the matching key"
    )]
    KeyMismatch,
    #[error(
        "the backup signing key {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    SigningKeyPermissions { path: PathBuf, mode: u32 },
    #[error("the backup signing key {path} is not a sipward key (expected 64 hex digits)")]
    SigningKeyInvalid { path: PathBuf },
    #[error("stored secret {what} cannot be decrypted: the database or the key was altered")]
    Decrypt { what: String },
    #[error("the database {path} is not a valid sipward database ({detail})")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the database was written by a newer sipward (schema version {version}); upgrade sipward"
    )]
    SchemaTooNew { version: i64 },
    #[error("the database URL is not usable: {detail}")]
    DatabaseUrl { detail: String },
    /// `url` is redacted (no password).
    #[error("cannot connect to the database {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("the database cannot be copied: {detail}")]
    CopyRefused { detail: String },
    #[error("{what} already exists")]
    Conflict { what: String },
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl Error {
    /// Whether the cause lies with the operator's input or environment (exit code 2)
    /// rather than with sipward itself.
    pub fn is_operator_error(&self) -> bool {
        matches!(
            self,
            Error::KeyPermissions { .. }
                | Error::KeyInvalid { .. }
                | Error::SigningKeyPermissions { .. }
                | Error::SigningKeyInvalid { .. }
                | Error::KeyMissing { .. }
                | Error::KeyMismatch
                | Error::Corrupt { .. }
                | Error::SchemaTooNew { .. }
                | Error::Conflict { .. }
                | Error::DatabaseUrl { .. }
                | Error::CopyRefused { .. }
                | Error::Connect { .. }
                | Error::Io { .. }
                | Error::Backup(_)
        )
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Classifies an error seen while opening the database: SQLite's "not a database"
    /// and "malformed" codes mean the file is corrupt, not that sipward failed.
    pub(crate) fn from_open(path: &Path, e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            // SQLITE_CORRUPT (11) and SQLITE_NOTADB (26).
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if code == "11" || code == "26" {
                return Error::Corrupt {
                    path: path.to_owned(),
                    detail: db.message().to_owned(),
                };
            }
        }
        Error::Db(e)
    }

    /// Maps a unique-constraint violation to [`Error::Conflict`] naming `what`.
    pub(crate) fn on_conflict(e: sqlx::Error, what: impl FnOnce() -> String) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return Error::Conflict { what: what() };
        }
        Error::Db(e)
    }
}

/// Why a backup could not be read: each says what is wrong in one sentence.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} is not a sipward backup (not an age-encrypted file)")]
    NotAge(PathBuf),
    #[error("wrong passphrase or key: {0} cannot be decrypted with it")]
    WrongKey(PathBuf),
    #[error("{0} is encrypted with a passphrase: give the passphrase, not a key")]
    WantsPassphrase(PathBuf),
    #[error("{0} is encrypted to a key: give its identity file (--identity), not a passphrase")]
    WantsIdentity(PathBuf),
    #[error("{path} is damaged or cut short ({detail}); it cannot be trusted")]
    Damaged { path: PathBuf, detail: String },
    #[error("{path} has a bad manifest: {detail}")]
    BadManifest { path: PathBuf, detail: String },
    #[error("{path} does not match its manifest: {detail}")]
    Mismatch { path: PathBuf, detail: String },
    #[error("{path} has a bad signature ({detail}): it was altered or forged")]
    BadSignature { path: PathBuf, detail: String },
    #[error("{path} is refused before anything is written: {detail}")]
    TooLarge { path: PathBuf, detail: String },
    #[error("{0}")]
    BadKey(String),
    /// The archive is sound but not restorable here (an older security epoch, a newer
    /// schema): the sentence says why and what to do.
    #[error("{0}")]
    Refused(String),
}

impl BackupError {
    pub(crate) fn damaged(path: &Path, e: impl std::fmt::Display) -> Self {
        Self::Damaged {
            path: path.to_owned(),
            detail: e.to_string(),
        }
    }
}
