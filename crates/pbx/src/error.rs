//! Errors of the running server, each one sentence an administrator can act on.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for SIP on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Accounts(#[from] accounts::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    /// Whether the cause lies with the operator's input or environment (exit code 2).
    pub fn is_operator_error(&self) -> bool {
        match self {
            Error::Bind { .. } => true,
            Error::Accounts(e) => e.is_operator_error(),
            Error::Store(e) => e.is_operator_error(),
        }
    }
}
