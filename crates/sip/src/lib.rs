//! SIP protocol pieces for sipward, sans IO: message parsing and printing, typed
//! headers, digest computations, stateless nonces, and the non-INVITE server
//! transaction table. The transports that move bytes live in `pbx`, which owns the
//! sockets and the tasks.
//!
//! Architecture invariant: nothing here performs IO or panics on input.

pub mod branch;
pub mod digest;
pub mod header;
pub mod msg;
pub mod nonce;
pub mod request;
pub mod response;
pub mod transaction;
