//! Errors of the registry workflow, each one sentence an administrator can act on.

use std::fmt;

use policy::InvalidField;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("{what} does not exist")]
    NotFound { what: String },
    #[error("{what} is already used by {owner}")]
    InUse { what: String, owner: String },
    #[error("{0}")]
    Import(ImportErrors),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Template(#[from] crate::provisioning::TemplateError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Voicemail(#[from] crate::voicemail::limits::VoicemailError),
    /// Work handed to a worker thread was dropped because the runtime is stopping.
    #[error("sipward is shutting down")]
    ShuttingDown,
}

impl Error {
    /// Whether the cause lies with the operator's input or environment (exit code 2).
    pub fn is_operator_error(&self) -> bool {
        match self {
            Error::Invalid(_) | Error::NotFound { .. } | Error::InUse { .. } | Error::Import(_) => {
                true
            }
            Error::Store(e) => e.is_operator_error(),
            Error::Template(_) | Error::Io { .. } | Error::Voicemail(_) => true,
            Error::ShuttingDown => false,
        }
    }

    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }
}

/// How many row errors the message lists before summarising the rest.
const SHOWN_ERRORS: usize = 50;

/// One bad row of a CSV import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

/// Why a file was not imported: one entry per bad row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportErrors(pub Vec<RowError>);

impl fmt::Display for ImportErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "nothing was imported: the CSV file has {n} error{}",
            if n == 1 { "" } else { "s" }
        )?;
        for e in self.0.iter().take(SHOWN_ERRORS) {
            write!(f, "\n  line {}: {}", e.line, e.message)?;
        }
        if n > SHOWN_ERRORS {
            write!(f, "\n  … and {} more", n - SHOWN_ERRORS)?;
        }
        Ok(())
    }
}
