//! SIP transactions (RFC 3261 §17), sans IO: the server transaction table (INVITE and
//! non-INVITE) the endpoint answers through, and the client transactions every request sipward
//! originates or forwards runs in (INVITE and non-INVITE, RFC 6026's corrections), in
//! a bounded table that matches responses to them. Time is always given by the caller.
//!
//! How a runtime drives client transactions: build the request, start it with the
//! destination it chose, and carry out the outputs; feed every response and every
//! deadline back in. Nothing here touches a socket or reads a clock.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//! use sip::branch::{BranchSource, KeyedBranches};
//! use sip::request::{Party, RequestBuilder, TopVia};
//! use sip::transaction::{Action, ClientTransactions, Reliability, ResponseClass, Timers};
//!
//! let branches = KeyedBranches::new([7; 32]); // the runtime draws this key from the OS CSPRNG
//! let mut table: ClientTransactions<SocketAddr> = ClientTransactions::new(65_536, Timers::default());
//! let (local, phone): (SocketAddr, SocketAddr) =
//!     ("192.0.2.1:5060".parse()?, "192.0.2.10:5062".parse()?);
//! let branch = branches.next_branch();
//! let notify = RequestBuilder::new("NOTIFY", "sip:1001@192.0.2.10:5062")
//!     .via(TopVia::new("UDP", local, &branch))
//!     .from(Party::new("sip:sipward@pbx.example.com").tag("a1b2c3"))
//!     .to(Party::new("sip:1001@pbx.example.com"))
//!     .call_id("5f1e0a@pbx.example.com")
//!     .cseq(1)
//!     .header("Event", "check-sync")
//!     .header("Subscription-State", "terminated;reason=timeout")
//!     .build()?;
//! let t0 = Instant::now(); // the runtime's clock; tests move time by hand
//! let (id, outputs) = table.start(notify, phone, Reliability::Unreliable, t0)?;
//! for o in &outputs {
//!     if let Action::Send { to, bytes } = &o.action {
//!         assert_eq!(*to, phone); // hand `bytes` to the egress rule and the socket
//!         # let _ = bytes;
//!     }
//! }
//! // Nothing heard by the first deadline (T1): the NOTIFY is sent again.
//! assert_eq!(table.next_deadline(), Some(t0 + Duration::from_millis(500)));
//! let retransmit = table.on_deadline(t0 + Duration::from_millis(500));
//! assert!(matches!(retransmit[0].action, Action::Send { .. }));
//! // The phone answers 200: delivered to whoever started the transaction.
//! let answer = format!(
//!     "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch};rport=5060\r\n\
//!      CSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n"
//! );
//! let answer = sip::msg::parse(answer.as_bytes())?;
//! let delivered = table.on_response(&answer, t0 + Duration::from_millis(600))?;
//! assert_eq!(delivered[0].tx, id);
//! assert_eq!(delivered[0].action, Action::Deliver(ResponseClass::Success));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod client;
pub mod client_table;
pub mod server;
pub mod timer;

pub use client::{
    Action, CancelError, ClientTransaction, ResponseClass, StartError, State, Unmatched,
};
pub use client_table::{ClientTransactions, Output, TxId};
pub use server::{
    INVITE_PENDING_MAX, Seen, ServerOutput, ServerTransactions, TIMER_J, TxKey, Unanswerable,
};
pub use timer::{Reliability, Timers, TimersError};
