//! Errors of the running server, each one sentence an administrator can act on.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for SIP on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "the node name {node:?} is held by another live sipward (last seen {seen_secs_ago} s ago): \
         give this node a name of its own (--node-name or [cluster] node); if that process is \
         gone, the name is free in {free_in_secs} s"
    )]
    NodeNameHeld {
        node: String,
        seen_secs_ago: i64,
        free_in_secs: i64,
    },
    #[error(
        "the node name {node:?} was taken over by another sipward while this one stalled: \
         stopped, and its bindings were not written"
    )]
    NodeNameLost { node: String },
    #[error(transparent)]
    Accounts(#[from] accounts::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    /// Whether the cause lies with the operator's input or environment (exit code 2).
    pub fn is_operator_error(&self) -> bool {
        match self {
            Error::Bind { .. } | Error::NodeNameHeld { .. } => true,
            Error::NodeNameLost { .. } => false,
            Error::Accounts(e) => e.is_operator_error(),
            Error::Store(e) => e.is_operator_error(),
        }
    }
}
