//! SIP transactions (RFC 3261 §17), sans IO: the non-INVITE server transaction table
//! the endpoint answers through, and the timer values every transaction runs on.

pub mod server;
pub mod timer;

pub use server::{Seen, ServerTransactions, TIMER_J, TxKey};
pub use timer::{Reliability, Timers, TimersError};
