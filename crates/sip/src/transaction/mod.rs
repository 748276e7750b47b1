//! SIP transactions (RFC 3261 §17), sans IO: the non-INVITE server transaction table
//! the endpoint answers through, and the client transactions every request sipward
//! originates or forwards runs in (INVITE and non-INVITE, RFC 6026's corrections), in
//! a bounded table that matches responses to them. Time is always given by the caller.

pub mod client;
pub mod client_table;
pub mod server;
pub mod timer;

pub use client::{
    Action, CancelError, ClientTransaction, ResponseClass, StartError, State, Unmatched,
};
pub use client_table::{ClientTransactions, Output, TxId};
pub use server::{Seen, ServerTransactions, TIMER_J, TxKey};
pub use timer::{Reliability, Timers, TimersError};
