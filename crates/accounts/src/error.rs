//! Errors of the registry workflow, each one sentence an administrator can act on.

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
    Import(crate::import::ImportErrors),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Template(#[from] crate::provisioning::TemplateError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the cause lies with the operator's input or environment (exit code 2).
    pub fn is_operator_error(&self) -> bool {
        match self {
            Error::Invalid(_) | Error::NotFound { .. } | Error::InUse { .. } | Error::Import(_) => {
                true
            }
            Error::Store(e) => e.is_operator_error(),
            Error::Template(_) | Error::Io { .. } => true,
        }
    }

    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Store(store::Error::Db(e))
    }
}
