//! SIP protocol pieces for sipward, sans IO: message parsing and printing, typed
//! headers, SDP offer/answer, digest computations, stateless nonces, the request builder, and
//! transactions: the non-INVITE server table and the INVITE and non-INVITE client
//! transactions, all driven by a clock the caller gives. The transports that move
//! bytes live in `pbx`, which owns the sockets and the tasks.
//!
//! Architecture invariant: nothing here performs IO or panics on input.

pub mod branch;
pub mod digest;
pub mod header;
pub mod msg;
pub mod nonce;
pub mod request;
pub mod response;
pub mod sdp;
pub mod transaction;
