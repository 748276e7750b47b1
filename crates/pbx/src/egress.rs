//! The egress rule, written once: every message sipward sends passes here, and only
//! here can a [`Cleared`] message be made, the one thing the transports write to a
//! socket. A message goes out only under one of five permits, each checked against the
//! table that is authoritative for it, never on the caller's word:
//!
//! - (a) a response, to the flow of the request it answers: the server transaction
//!   table, which remembered that flow when the request arrived (RFC 3261 §18.2.2,
//!   RFC 3581), finds it from the response's own top Via and CSeq;
//! - (b) a request of a client transaction sipward created, to the destination chosen
//!   when it was created: the live client transaction table;
//! - (c) a request within a live dialog sipward authorised, from one party's flow to the
//!   other party's flow (or from sipward's own leg; or a BYE of sipward's own, in one
//!   party's name, in a proxied dialog it is closing because credentials were revoked):
//!   the dialog table;
//! - (d) NOTIFY and OPTIONS to the flow of a live registration: the registrar;
//! - (e) REGISTER to a configured provider's registrar: the trunk table.
//!
//! A client transaction is created only under (c), (d), (e), or, for the INVITE that
//! starts a call, to a live registration of the called extension or to the trunk the
//! route chose; after that, (b) holds every message of it to that destination.
//! Everything else is dropped and counted in `sipward_egress_denied_total{reason}`.
//!
//! Responses from peers reach a client transaction or are dropped (and counted in
//! `sipward_responses_dropped_total{reason}`): nothing is ever forwarded because of
//! what a Via says.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use policy::clock::Clock;
use sip::header::addr::NameAddr;
use sip::msg::{self, Message, Name, StartLine};
use sip::transaction::{
    Action, CancelError, ClientTransactions, Output, Seen, ServerOutput, ServerTransactions, State,
    Timers, TxId, TxKey, Unanswerable, Unmatched,
};

use crate::dialog::{Dialogs, Refusal};
use crate::flow::{Flow, TransportKind};
use crate::metrics::Metrics;
use crate::registrar::Registrar;
use crate::trunk::Trunks;

/// Client transactions at once (every request sipward has in flight). An INVITE's
/// stays 32 s after its 2xx (RFC 6026 Timer M) and a BYE's 5 s (Timer K): 3,000 calls/s
/// hold about 111,000.
pub const CLIENT_CAPACITY: usize = 262_144;
/// Non-INVITE server transactions remembered at once.
pub const SERVER_CAPACITY: usize = 65_536;
/// INVITE server transactions at once. A ringing call keeps its own; one whose work is
/// done (answered 300-699, or its 2xx relayed and waiting 32 s for Timer L) makes room
/// for a new INVITE when the table is full.
pub const INVITE_CAPACITY: usize = 65_536;

/// A message the egress rule let through, with where it goes. Only this module can
/// make one; the transports write nothing else.
#[derive(Debug)]
pub struct Cleared {
    flow: Flow,
    bytes: Arc<[u8]>,
}

impl Cleared {
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The transports' writing side: the only way to a socket.
pub trait Wire: Send + Sync + std::fmt::Debug {
    /// Writes the message; `Err` when the flow cannot be reached (a stream flow whose
    /// connection is gone).
    fn send(&self, message: Cleared) -> Result<(), Undeliverable>;
}

/// The flow could not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the flow cannot be reached (its connection is gone)")]
pub struct Undeliverable;

/// Why a message was not sent: the reason labels of
/// `sipward_egress_denied_total{reason}` (a fixed set: never addresses or users).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Denial {
    #[error("a response that answers no request sipward received")]
    NoServerTransaction,
    #[error("a second final answer to a request")]
    Answered,
    #[error("bytes that are not a message sipward may send")]
    Malformed,
    #[error("a request of no live client transaction, or to another destination")]
    NoClientTransaction,
    #[error("a request to a flow no live registration of the extension came on")]
    NotARegistration,
    #[error("a call to an address that is not the route's trunk")]
    NotATrunk,
    #[error("a REGISTER to an address that is no provider's registrar")]
    NotAProvider,
    #[error("a request within no dialog sipward knows")]
    NoDialog,
    #[error("a request within a dialog that has ended")]
    DialogEnded,
    #[error("an in-dialog request that does not come from a party of the dialog")]
    NotFromAParty,
    #[error("an in-dialog request to anything but the other party's flow")]
    NotToTheOtherParty,
    #[error("a method this permit does not cover")]
    WrongMethod,
    #[error("a sips: Request-URI on a flow that is not TLS")]
    SipsOverClear,
    #[error("a hop to anything but a live node that holds the extension")]
    NotAHop,
}

impl Denial {
    pub const ALL: [Denial; 14] = [
        Denial::NoServerTransaction,
        Denial::Answered,
        Denial::Malformed,
        Denial::NoClientTransaction,
        Denial::NotARegistration,
        Denial::NotATrunk,
        Denial::NotAProvider,
        Denial::NoDialog,
        Denial::DialogEnded,
        Denial::NotFromAParty,
        Denial::NotToTheOtherParty,
        Denial::WrongMethod,
        Denial::SipsOverClear,
        Denial::NotAHop,
    ];

    /// Its place in [`Denial::ALL`] and in the metric's labels.
    fn index(self) -> usize {
        Denial::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }

    /// The stable label of the reason (`sipward_egress_denied_total{reason}`).
    pub fn as_str(self) -> &'static str {
        crate::metrics::EGRESS_DENIALS[self.index()]
    }
}

/// What a request asked of every hop it takes, read once from the Request-URI it
/// arrived with, where its target is chosen (the proxy's bindings, the B2BUA's trunk),
/// and carried in the [`Purpose`] to the egress check: a forwarded request's own URI
/// (a `sip:` Contact, a trunk's `sip:` URI) no longer shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hops {
    /// Any transport.
    Any,
    /// TLS only: the Request-URI was `sips:` (RFC 3261 §26.2, RFC 5630 §3.1.3: such a
    /// request travels over TLS on every hop, or not at all).
    Tls,
}

impl Hops {
    /// What the Request-URI `uri` asks (its scheme, case-insensitive).
    pub fn of(uri: &str) -> Self {
        let sips = uri
            .get(..5)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("sips:"));
        if sips { Self::Tls } else { Self::Any }
    }

    /// Whether a request may leave on `to`.
    pub fn allows(self, to: &Flow) -> bool {
        self == Self::Any || to.transport == TransportKind::Tls
    }
}

/// Whether a request to `uri` would leave on a flow that is not TLS while the URI is
/// `sips:`.
fn sips_over_clear(uri: &str, to: &Flow) -> bool {
    !Hops::of(uri).allows(to)
}

impl From<Refusal> for Denial {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NoDialog => Denial::NoDialog,
            Refusal::Ended => Denial::DialogEnded,
            Refusal::NotFromAParty => Denial::NotFromAParty,
            Refusal::NotToTheOtherParty => Denial::NotToTheOtherParty,
        }
    }
}

/// Why a client transaction did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotStarted {
    #[error("refused by the egress rule: {0}")]
    Denied(Denial),
    #[error("the request is not one a client transaction can carry")]
    Unfit,
    #[error("the client transaction table is full")]
    Full,
    #[error(transparent)]
    Undeliverable(#[from] Undeliverable),
}

/// Why a response from a peer reached no client transaction: the reason labels of
/// `sipward_responses_dropped_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error(transparent)]
    Unmatched(#[from] Unmatched),
    #[error("the response came from another peer than the request went to")]
    WrongSource,
}

impl Dropped {
    /// Its place in the metric's labels.
    fn index(self) -> usize {
        match self {
            Dropped::Unmatched(Unmatched::NotAResponse) => 0,
            Dropped::Unmatched(Unmatched::NoBranch) => 1,
            Dropped::Unmatched(Unmatched::NoCSeq) => 2,
            Dropped::Unmatched(Unmatched::NoTransaction) => 3,
            Dropped::WrongSource => 4,
        }
    }

    /// The stable label of the reason (`sipward_responses_dropped_total{reason}`).
    pub fn as_str(self) -> &'static str {
        crate::metrics::RESPONSES_DROPPED[self.index()]
    }
}

/// The part of sipward a client transaction reports to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    Proxy,
    B2bua,
    Notify,
    Provider,
    /// The voicemail's BYE to its caller.
    Voicemail,
}

/// Why sipward starts a client transaction: which permit its destination must meet.
#[derive(Clone, Copy, Debug)]
pub enum Purpose<'a> {
    /// A branch of a call to the extension `number`: `to` must be a flow a live
    /// registration of it came on, and one `hops` allows.
    Callee { number: &'a str, hops: Hops },
    /// The INVITE of a call to the extension `number` hopped to the node that holds its
    /// phone (issue 21): `to` must be, over UDP, the internal address of a live node
    /// that holds a live binding of it ([`crate::hop::Targets`]). Only an INVITE, only
    /// to such a node: a hop never reaches a trunk, a gateway or a phone directly.
    Hop { number: &'a str },
    /// The INVITE of a call to the trunk `label` (`gateway:NAME`, `provider:NAME`): `to`
    /// must be that trunk's address (or, for a gateway, where it is registered from),
    /// and one `hops` allows.
    Trunk { label: &'a str, hops: Hops },
    /// A request within a dialog (c): relayed for the peer on `from`, or sipward's own
    /// (`None`) on a back-to-back leg or, a BYE only, in a proxied dialog it closes.
    InDialog { from: Option<&'a Flow> },
    /// NOTIFY or OPTIONS to a registration of the extension `number` (d).
    Registration { number: &'a str },
    /// REGISTER to a provider's registrar (e).
    Provider,
}

/// An output of a client transaction for its owner (the sends are done already).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub tx: TxId,
    pub owner: Owner,
    pub action: Action<Flow>,
}

/// How the server transaction table treats an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Relayed,
    Once,
    Own2xx,
}

/// What became of a request that arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// New: handle it.
    New,
    /// A retransmission, absorbed or answered again from the table.
    Retransmission,
    /// No room to remember it: it cannot be answered, so it is dropped.
    Full,
}

#[derive(Debug)]
struct ClientSide {
    table: ClientTransactions<Flow>,
    /// Every live transaction this rule started, with its destination and owner.
    live: HashMap<TxId, (Flow, Owner)>,
}

/// The egress rule and the transaction tables it consults.
#[derive(Debug)]
pub struct Egress {
    wire: OnceLock<Arc<dyn Wire>>,
    server: Mutex<ServerTransactions<Flow>>,
    client: Mutex<ClientSide>,
    dialogs: Arc<Dialogs>,
    registrar: Arc<Registrar>,
    trunks: Arc<Trunks>,
    /// Where calls may hop to other nodes (issue 21); empty without hops.
    hop_targets: Arc<crate::hop::Targets>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

/// The Call-ID, From tag and To tag of an in-dialog request.
fn dialog_ids<'m>(m: &'m Message<'_>) -> Option<(&'m str, &'m str, &'m str)> {
    let call_id = m.header(Name::CallId)?;
    let from = NameAddr::parse(m.header(Name::From)?)?.tag()?;
    let to = NameAddr::parse(m.header(Name::To)?)?.tag()?;
    Some((call_id, from, to))
}

impl Egress {
    pub fn new(
        dialogs: Arc<Dialogs>,
        registrar: Arc<Registrar>,
        trunks: Arc<Trunks>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let timers = Timers::default();
        Self {
            wire: OnceLock::new(),
            server: Mutex::new(ServerTransactions::new(
                SERVER_CAPACITY,
                INVITE_CAPACITY,
                timers,
            )),
            client: Mutex::new(ClientSide {
                table: ClientTransactions::new(CLIENT_CAPACITY, timers),
                live: HashMap::new(),
            }),
            dialogs,
            registrar,
            trunks,
            hop_targets: Arc::default(),
            metrics,
            clock,
        }
    }

    /// Connects the transports (once, before the first message is read).
    pub fn connect(&self, wire: Arc<dyn Wire>) {
        let _ = self.wire.set(wire);
    }

    fn server(&self) -> std::sync::MutexGuard<'_, ServerTransactions<Flow>> {
        self.server.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn client(&self) -> std::sync::MutexGuard<'_, ClientSide> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sizes of the transaction tables, for `/metrics`.
    pub fn table_sizes(&self) -> [(&'static str, usize); 3] {
        let server = self.server().len();
        let client = self.client();
        [
            ("server_transactions", server),
            ("client_transactions", client.table.len()),
            ("client_transaction_owners", client.live.len()),
        ]
    }

    fn deny(&self, d: Denial) -> Denial {
        Metrics::inc(&self.metrics.egress_denied[d.index()]);
        d
    }

    /// The one place a message is written.
    fn write(&self, flow: Flow, bytes: Arc<[u8]>) -> Result<(), Undeliverable> {
        match self.wire.get() {
            Some(w) => w.send(Cleared { flow, bytes }),
            // Not connected yet (unit tests, or before the server runs): nothing leaves.
            None => Ok(()),
        }
    }

    // ------------------------------------------------------------------------------
    // Server side: permit (a).

    /// A request arrived on `source`; its answers go to `reply_to` (for datagrams the
    /// RFC 3581 target). Retransmissions are absorbed or answered again here.
    pub fn arrived(&self, key: &TxKey, reply_to: Flow, now: Instant) -> Arrival {
        let seen = self
            .server()
            .on_request(key, reply_to, reply_to.reliability(), now);
        match seen {
            Seen::New => Arrival::New,
            Seen::Absorb => Arrival::Retransmission,
            Seen::Resend { to, bytes } => {
                let _ = self.write(to, bytes);
                Arrival::Retransmission
            }
            Seen::Full => Arrival::Full,
        }
    }

    /// The TU gives the request `key` no answer: its entry goes at once (see
    /// [`sip::transaction::server::ServerTransactions::abandon`]).
    pub fn abandon(&self, key: &TxKey) {
        self.server().abandon(key);
    }

    /// [`Egress::arrived`] for an emergency INVITE from a source with standing: when
    /// the INVITE table is full, it takes the place of the oldest pending INVITE that
    /// is not an emergency call, whose key comes back so that its TU gives it up.
    pub fn arrived_urgent(
        &self,
        key: &TxKey,
        reply_to: Flow,
        now: Instant,
    ) -> (Arrival, Option<TxKey>) {
        let (seen, evicted) =
            self.server()
                .on_urgent_request(key, reply_to, reply_to.reliability(), now);
        let arrival = match seen {
            Seen::New => Arrival::New,
            Seen::Absorb => Arrival::Retransmission,
            Seen::Resend { to, bytes } => {
                let _ = self.write(to, bytes);
                Arrival::Retransmission
            }
            Seen::Full => Arrival::Full,
        };
        (arrival, evicted)
    }

    /// An ACK with the key of an INVITE server transaction: true when it acknowledged
    /// sipward's 300-699 answer (and ends here).
    pub fn ack_arrived(&self, key: &TxKey, now: Instant) -> bool {
        self.server().on_ack(key, now)
    }

    /// Whether the request `key` still waits for its final answer.
    pub fn pending(&self, key: &TxKey) -> bool {
        self.server().pending(key)
    }

    /// Permit (a): sends a response to the request `key` to the flow that request came
    /// on, as the server transaction table remembered it. The response must be one
    /// (a status line) and name that request's branch in its top Via; a request not in
    /// the table, or one that has had its final answer, gets nothing more.
    pub fn respond(&self, key: &TxKey, bytes: Vec<u8>) -> Result<(), Denial> {
        self.answer(key, bytes, Answer::Relayed)
    }

    /// [`Egress::respond`] for sipward's own answers to requests it refuses or
    /// challenges: a failure to an INVITE is not repeated by Timer G, so a forged source
    /// gets one answer per request, never an amplified stream.
    pub fn respond_once(&self, key: &TxKey, bytes: Vec<u8>) -> Result<(), Denial> {
        self.answer(key, bytes, Answer::Once)
    }

    /// [`Egress::respond`] for a 2xx of sipward's own to an INVITE: repeated until
    /// [`Egress::acknowledged`].
    pub fn respond_until_ack(&self, key: &TxKey, bytes: Vec<u8>) -> Result<(), Denial> {
        self.answer(key, bytes, Answer::Own2xx)
    }

    fn answer(&self, key: &TxKey, bytes: Vec<u8>, kind: Answer) -> Result<(), Denial> {
        let answers = match msg::parse(&bytes) {
            Ok(m) if matches!(m.start, StartLine::Response { .. }) => m
                .header(Name::Via)
                .and_then(sip::header::via::Via::parse_top)
                .and_then(|v| v.branch)
                .is_some_and(|b| b == key.branch()),
            _ => return Err(self.deny(Denial::Malformed)),
        };
        if !answers {
            return Err(self.deny(Denial::NoServerTransaction));
        }
        let bytes: Arc<[u8]> = bytes.into();
        let now = self.clock.instant();
        let recorded = {
            let mut server = self.server();
            match kind {
                Answer::Relayed => server.respond(key, Arc::clone(&bytes), now),
                Answer::Once => server.respond_once(key, Arc::clone(&bytes), now),
                Answer::Own2xx => server.respond_until_ack(key, Arc::clone(&bytes), now),
            }
        };
        match recorded {
            Ok(to) => {
                // A stream that closed takes the answer with it; the peer is gone.
                let _ = self.write(to, bytes);
                Ok(())
            }
            Err(Unanswerable::Answered) => Err(self.deny(Denial::Answered)),
            Err(Unanswerable::NotAResponse) => Err(self.deny(Denial::Malformed)),
            Err(Unanswerable::NoKey | Unanswerable::NoTransaction) => {
                Err(self.deny(Denial::NoServerTransaction))
            }
        }
    }

    /// The ACK of sipward's own 2xx to the INVITE `key` arrived.
    pub fn acknowledged(&self, key: &TxKey) {
        self.server().acknowledged(key);
    }

    // ------------------------------------------------------------------------------
    // Client side: permits (b) to (e).

    /// Where calls may hop to other nodes: the server replaces it on each reload.
    pub fn hop_targets(&self) -> &Arc<crate::hop::Targets> {
        &self.hop_targets
    }

    /// Checks the destination of a new client transaction against the table its
    /// purpose names.
    fn check(&self, m: &Message<'_>, to: &Flow, purpose: Purpose<'_>) -> Result<(), Denial> {
        let StartLine::Request { method, uri } = m.start else {
            return Err(Denial::Malformed);
        };
        if sips_over_clear(uri, to) {
            return Err(Denial::SipsOverClear);
        }
        let now = self.clock.now();
        match purpose {
            Purpose::Callee { number, hops } => {
                if !hops.allows(to) {
                    return Err(Denial::SipsOverClear);
                }
                if method != "INVITE" {
                    return Err(Denial::WrongMethod);
                }
                if !self.registrar.has_flow(number, to, now) {
                    return Err(Denial::NotARegistration);
                }
            }
            Purpose::Hop { number } => {
                if method != "INVITE" {
                    return Err(Denial::WrongMethod);
                }
                if to.transport != TransportKind::Hop || !self.hop_targets.allows(number, to.remote)
                {
                    return Err(Denial::NotAHop);
                }
            }
            Purpose::Registration { number } => {
                if !matches!(method, "NOTIFY" | "OPTIONS") {
                    return Err(Denial::WrongMethod);
                }
                if !self.registrar.has_flow(number, to, now) {
                    return Err(Denial::NotARegistration);
                }
            }
            Purpose::Trunk { label, hops } => {
                if !hops.allows(to) {
                    return Err(Denial::SipsOverClear);
                }
                if method != "INVITE" {
                    return Err(Denial::WrongMethod);
                }
                let registered = |gateway: &str| self.registrar.has_flow(gateway, to, now);
                if !self.trunks.reaches(label, to, registered) {
                    return Err(Denial::NotATrunk);
                }
            }
            Purpose::Provider => {
                if method != "REGISTER" {
                    return Err(Denial::WrongMethod);
                }
                if to.transport != TransportKind::Udp
                    || !self.trunks.is_provider_registrar(to.remote)
                {
                    return Err(Denial::NotAProvider);
                }
            }
            Purpose::InDialog { from } => {
                let (call_id, from_tag, to_tag) = dialog_ids(m).ok_or(Denial::NoDialog)?;
                self.dialogs
                    .permits(call_id, from_tag, to_tag, method, from, to)?;
            }
        }
        Ok(())
    }

    /// Starts a client transaction for `request` to `to` after checking its purpose's
    /// permit; the request goes out at once. Its outputs go to `owner`.
    pub fn start(
        &self,
        request: Vec<u8>,
        to: Flow,
        purpose: Purpose<'_>,
        owner: Owner,
    ) -> Result<TxId, NotStarted> {
        {
            let m = msg::parse(&request).map_err(|_| NotStarted::Unfit)?;
            if let Err(d) = self.check(&m, &to, purpose) {
                return Err(NotStarted::Denied(self.deny(d)));
            }
        }
        let now = self.clock.instant();
        let (id, outputs) = {
            let mut c = self.client();
            let (id, outputs) = c
                .table
                .start(request, to, to.reliability(), now)
                .map_err(|e| match e {
                    sip::transaction::StartError::Full => NotStarted::Full,
                    _ => NotStarted::Unfit,
                })?;
            c.live.insert(id, (to, owner));
            (id, outputs)
        };
        let failed = self.carry_out(outputs, now);
        if !failed.is_empty() {
            // The first message could not go: the transaction is over before it began.
            let mut c = self.client();
            c.table.remove(id);
            c.live.remove(&id);
            return Err(NotStarted::Undeliverable(Undeliverable));
        }
        Ok(id)
    }

    /// Gives up the INVITE `invite` with a CANCEL (its own transaction, same owner).
    pub fn cancel(&self, invite: TxId) -> Result<TxId, CancelError> {
        let now = self.clock.instant();
        let (id, outputs) = {
            let mut c = self.client();
            let owner = c
                .live
                .get(&invite)
                .copied()
                .ok_or(CancelError::UnknownTransaction)?;
            let (id, outputs) = c.table.cancel(invite, now)?;
            c.live.insert(id, owner);
            (id, outputs)
        };
        // A CANCEL that cannot be delivered changes nothing the INVITE's own timeout
        // does not settle.
        let _ = self.run_outputs(outputs, now);
        Ok(id)
    }

    /// Forgets a client transaction without any output.
    pub fn forget(&self, tx: TxId) {
        let mut c = self.client();
        c.table.remove(tx);
        c.live.remove(&tx);
    }

    /// The state of a live client transaction.
    pub fn state(&self, tx: TxId) -> Option<State> {
        self.client().table.get(tx).map(|t| t.state())
    }

    /// Permit (c) for an ACK of a 2xx (no transaction carries it): within a dialog,
    /// from one party (or sipward's own leg) to the other party's flow.
    pub fn ack(&self, ack: Vec<u8>, from: Option<&Flow>, to: Flow) -> Result<(), Denial> {
        {
            let m = msg::parse(&ack).map_err(|_| self.deny(Denial::Malformed))?;
            let StartLine::Request { method: "ACK", uri } = m.start else {
                return Err(self.deny(Denial::WrongMethod));
            };
            if sips_over_clear(uri, &to) {
                return Err(self.deny(Denial::SipsOverClear));
            }
            let (call_id, from_tag, to_tag) =
                dialog_ids(&m).ok_or_else(|| self.deny(Denial::NoDialog))?;
            self.dialogs
                .permits(call_id, from_tag, to_tag, "ACK", from, &to)
                .map_err(|r| self.deny(r.into()))?;
        }
        let _ = self.write(to, ack.into());
        Ok(())
    }

    /// Sends what client transactions asked for, each checked against the live table
    /// (b); returns the transactions whose message could not be delivered.
    fn carry_out(&self, outputs: Vec<Output<Flow>>, _now: Instant) -> Vec<TxId> {
        let mut failed = Vec::new();
        for o in outputs {
            let Action::Send { to, bytes } = o.action else {
                continue;
            };
            let permitted = self
                .client()
                .live
                .get(&o.tx)
                .is_some_and(|(dest, _)| *dest == to);
            if !permitted {
                self.deny(Denial::NoClientTransaction);
                continue;
            }
            if self.write(to, bytes).is_err() {
                failed.push(o.tx);
            }
        }
        failed
    }

    /// Carries out outputs (sends through (b), transport failures fed back) and returns
    /// what the owners must hear; forgets terminated transactions.
    fn run_outputs(&self, outputs: Vec<Output<Flow>>, now: Instant) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        let mut queue = outputs;
        while !queue.is_empty() {
            let sends: Vec<Output<Flow>> = queue
                .iter()
                .filter(|o| matches!(o.action, Action::Send { .. }))
                .cloned()
                .collect();
            let others: Vec<Output<Flow>> = queue
                .into_iter()
                .filter(|o| !matches!(o.action, Action::Send { .. }))
                .collect();
            let failed = self.carry_out(sends, now);
            let mut c = self.client();
            for o in others {
                let owner = c.live.get(&o.tx).map(|(_, owner)| *owner);
                if o.action == Action::Terminated {
                    c.live.remove(&o.tx);
                }
                if let Some(owner) = owner {
                    deliveries.push(Delivery {
                        tx: o.tx,
                        owner,
                        action: o.action,
                    });
                }
            }
            queue = failed
                .into_iter()
                .flat_map(|tx| c.table.on_transport_error(tx, now))
                .collect();
        }
        deliveries
    }

    /// A response arrived from `source`: the outputs of the client transaction it
    /// answers (ACKs of failures are sent here), or why it answers none.
    pub fn on_response(
        &self,
        m: &Message<'_>,
        source: &Flow,
        now: Instant,
    ) -> Result<Vec<Delivery>, Dropped> {
        let outputs = {
            let mut c = self.client();
            let key = sip::transaction::TxKey::of(m);
            // The branch is unguessable; still, an answer must come from where the
            // request went: for a stream, the same connection; for a datagram, the
            // same IP address *and port*. Another program on the callee's host, or
            // another phone behind the same NAT, shares the IP but is not the callee.
            // A phone answers from the flow it registered from (the one the request
            // went to; RFC 5626's flow, and symmetric RFC 3581 signalling), and a
            // server sends its responses from the port it listens on (RFC 3261
            // §18.2.2 with §18.1.2: responses come back to the port in our Via), so a
            // well-behaved peer is never refused. A peer that answers from another
            // port is dropped (`wrong_source`).
            if let Some(k) = &key
                && let Some(dest) = c.table.destination_of(k.branch(), k.method())
            {
                let same = match source.transport {
                    // A hop's answer comes back on the internal socket from the node's
                    // published address (the only source that socket reads).
                    TransportKind::Udp | TransportKind::Hop => {
                        dest.transport == source.transport
                            && dest.remote.ip() == source.remote.ip()
                            && dest.remote.port() == source.remote.port()
                    }
                    TransportKind::Tcp | TransportKind::Tls => dest.same_peer(source),
                };
                if !same {
                    Metrics::inc(&self.metrics.responses_dropped[Dropped::WrongSource.index()]);
                    return Err(Dropped::WrongSource);
                }
            }
            match c.table.on_response(m, now) {
                Ok(o) => o,
                Err(u) => {
                    let d = Dropped::Unmatched(u);
                    Metrics::inc(&self.metrics.responses_dropped[d.index()]);
                    return Err(d);
                }
            }
        };
        Ok(self.run_outputs(outputs, now))
    }

    /// Runs every transaction timer due at `now`: client retransmissions and timeouts
    /// (for their owners), server retransmissions, and the keys of sipward's own 2xx
    /// answers that were never acknowledged.
    pub fn on_deadline(&self, now: Instant) -> (Vec<Delivery>, Vec<TxKey>) {
        let outputs = self.client().table.on_deadline(now);
        let deliveries = self.run_outputs(outputs, now);
        let server = self.server().on_deadline(now);
        let mut unacknowledged = Vec::new();
        for o in server {
            match o {
                ServerOutput::Send { to, bytes } => {
                    let _ = self.write(to, bytes);
                }
                ServerOutput::Unacknowledged { key, success: true } => unacknowledged.push(key),
                ServerOutput::Unacknowledged { .. } => {}
            }
        }
        (deliveries, unacknowledged)
    }

    /// Live client transactions (for metrics and tests).
    pub fn client_transactions(&self) -> usize {
        self.client().live.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dialog::{Kind, NewDialog, Party, Phase, Who};
    use crate::flow::ConnId;
    use crate::registrar::{Contacts, RegisterRequest, RegistrarConfig};
    use policy::clock::ManualClock;
    use std::net::SocketAddr;

    /// Records what reaches the wire (shared with the proxy's and B2BUA's tests).
    #[derive(Debug, Default)]
    pub(crate) struct Recorder {
        sent: Mutex<Vec<(Flow, Vec<u8>)>>,
        pub(crate) dead: Mutex<Vec<Flow>>,
    }

    impl Wire for Recorder {
        fn send(&self, m: Cleared) -> Result<(), Undeliverable> {
            if self.dead.lock().expect("lock").contains(m.flow()) {
                return Err(Undeliverable);
            }
            self.sent
                .lock()
                .expect("lock")
                .push((*m.flow(), m.bytes().to_vec()));
            Ok(())
        }
    }

    impl Recorder {
        pub(crate) fn take(&self) -> Vec<(Flow, Vec<u8>)> {
            std::mem::take(&mut *self.sent.lock().expect("lock"))
        }
    }

    const T0: i64 = 1_800_000_000;

    /// An egress rule on a recorder, with extension 1001 registered from
    /// 192.0.2.1:5062 and the trunks of `crate::trunk::tests::trunks`.
    impl Rig {
        /// The signalling the proxy and the B2BUA are built on.
        pub(crate) fn signalling(&self) -> Arc<crate::signalling::Signalling> {
            Arc::new(crate::signalling::Signalling::new(
                self.egress.clone(),
                self.dialogs.clone(),
                self.metrics.clone(),
                self.clock.clone(),
                (addr("192.0.2.100:5060"), Some(addr("192.0.2.100:5061"))),
                [5; 32],
            ))
        }
    }

    pub(crate) struct Rig {
        pub(crate) egress: Arc<Egress>,
        pub(crate) wire: Arc<Recorder>,
        pub(crate) metrics: Arc<Metrics>,
        pub(crate) registrar: Arc<Registrar>,
        pub(crate) dialogs: Arc<Dialogs>,
        pub(crate) clock: Arc<ManualClock>,
    }

    pub(crate) fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    pub(crate) fn rig() -> Rig {
        let metrics = Arc::new(Metrics::default());
        let registrar = Arc::new(Registrar::new(RegistrarConfig::default()));
        let dialogs = Arc::new(Dialogs::default());
        let trunks = Arc::new(crate::trunk::tests::trunks());
        let clock = Arc::new(ManualClock::new(T0, Instant::now()));
        let egress = Arc::new(Egress::new(
            dialogs.clone(),
            registrar.clone(),
            trunks,
            metrics.clone(),
            clock.clone(),
        ));
        let wire = Arc::new(Recorder::default());
        egress.connect(wire.clone());
        // 1001 is registered from 192.0.2.1:5062 (its Contact names another place).
        registrar
            .register(
                "1001",
                &RegisterRequest {
                    call_id: "r1".into(),
                    cseq: 1,
                    contacts: Contacts::List(vec![("sip:1001@198.51.100.9:7000".into(), None)]),
                    expires_header: Some(3600),
                    flow: Flow::udp(addr("192.0.2.1:5062")),
                    generation: 1,
                },
                T0,
            )
            .expect("registered");
        Rig {
            egress,
            wire,
            metrics,
            registrar,
            dialogs,
            clock,
        }
    }

    fn denied(r: &Rig, d: Denial) -> u64 {
        r.metrics.egress_denied[d.index()].load(std::sync::atomic::Ordering::Relaxed)
    }

    fn request(method: &str, branch: &str, extra: &str) -> Vec<u8> {
        format!(
            "{method} sip:1001@198.51.100.9:7000 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.100:5060;branch={branch}\r\n\
             From: <sip:sipward@pbx>;tag=ours\r\nTo: <sip:1001@pbx>{extra}\r\nCall-ID: c1\r\n\
             CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn response_to(req: &[u8], code: u16) -> Vec<u8> {
        let m = msg::parse(req).expect("parse");
        sip::response::ResponseBuilder::new(&m, code, "X", addr("192.0.2.1:5062"), "t")
            .expect("routable")
            .finish()
    }

    #[test]
    fn a_response_goes_only_to_the_flow_of_the_request_it_answers() {
        let r = rig();
        let phone = Flow::udp(addr("192.0.2.1:5062"));
        let req = request("OPTIONS", "z9hG4bKreq1", "");
        let m = msg::parse(&req).expect("parse");
        let key = TxKey::of(&m).expect("key");
        assert_eq!(
            r.egress.arrived(&key, phone, r.clock.instant()),
            Arrival::New
        );
        r.egress
            .respond(&key, response_to(&req, 200))
            .expect("permitted");
        assert_eq!(r.wire.take()[0].0, phone);
        // A second final answer, an answer to a request never received, one that
        // names another request's branch, and bytes that are no response: denied, each
        // with its reason.
        assert_eq!(
            r.egress.respond(&key, response_to(&req, 500)),
            Err(Denial::Answered)
        );
        let stranger = request("OPTIONS", "z9hG4bKnever", "");
        let stranger_key = TxKey::of(&msg::parse(&stranger).expect("parse")).expect("key");
        assert_eq!(
            r.egress.respond(&stranger_key, response_to(&stranger, 200)),
            Err(Denial::NoServerTransaction)
        );
        assert_eq!(
            r.egress.respond(&key, response_to(&stranger, 200)),
            Err(Denial::NoServerTransaction)
        );
        assert_eq!(r.egress.respond(&key, req.clone()), Err(Denial::Malformed));
        assert!(r.wire.take().is_empty());
        assert_eq!(denied(&r, Denial::Answered), 1);
        assert_eq!(denied(&r, Denial::NoServerTransaction), 2);
        assert_eq!(denied(&r, Denial::Malformed), 1);
        // A retransmitted request is answered again, to the first request's flow.
        assert_eq!(
            r.egress
                .arrived(&key, Flow::udp(addr("192.0.2.99:5060")), r.clock.instant()),
            Arrival::Retransmission
        );
        assert_eq!(r.wire.take()[0].0, phone);
    }

    #[test]
    fn a_call_branch_goes_only_to_a_registration_of_the_callee() {
        let r = rig();
        let registered = Flow::udp(addr("192.0.2.1:5062"));
        let contact = Flow::udp(addr("198.51.100.9:7000"));
        let invite = request("INVITE", "z9hG4bKinv1", "");
        let callee = Purpose::Callee {
            number: "1001",
            hops: Hops::Any,
        };
        // Where the Contact points: never.
        assert_eq!(
            r.egress
                .start(invite.clone(), contact, callee, Owner::Proxy)
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotARegistration))
        );
        // Another extension's registration: no.
        assert_eq!(
            r.egress
                .start(
                    invite.clone(),
                    registered,
                    Purpose::Callee {
                        number: "1002",
                        hops: Hops::Any,
                    },
                    Owner::Proxy
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotARegistration))
        );
        // Its own flow: yes, and every retransmission goes there too (b).
        let tx = r
            .egress
            .start(invite, registered, callee, Owner::Proxy)
            .expect("started");
        assert_eq!(r.wire.take().len(), 1);
        let (deliveries, _) = r
            .egress
            .on_deadline(r.clock.instant() + std::time::Duration::from_millis(500));
        assert!(deliveries.is_empty());
        assert_eq!(r.wire.take()[0].0, registered);
        assert_eq!(r.egress.state(tx), Some(State::Calling));
        assert_eq!(denied(&r, Denial::NotARegistration), 2);
        // A registration that expired takes the permit with it.
        r.registrar.sweep(T0 + 4000);
        let again = request("INVITE", "z9hG4bKinv2", "");
        assert!(matches!(
            r.egress.start(again, registered, callee, Owner::Proxy),
            Err(NotStarted::Denied(Denial::NotARegistration))
        ));
    }

    #[test]
    fn a_call_that_arrived_as_sips_is_held_to_tls_though_its_forwarded_uri_is_sip() {
        let r = rig();
        let tls = Flow::stream(TransportKind::Tls, addr("192.0.2.1:40000"), ConnId(7));
        r.registrar
            .register(
                "1001",
                &RegisterRequest {
                    call_id: "r2".into(),
                    cseq: 1,
                    contacts: Contacts::List(vec![("sip:1001@198.51.100.9:7001".into(), None)]),
                    expires_header: Some(3600),
                    flow: tls,
                    generation: 1,
                },
                T0,
            )
            .expect("registered");
        let udp = Flow::udp(addr("192.0.2.1:5062"));
        let secure = Purpose::Callee {
            number: "1001",
            hops: Hops::Tls,
        };
        // The forwarded INVITE's own URI is the sip: Contact: only the purpose knows.
        assert_eq!(
            r.egress
                .start(
                    request("INVITE", "z9hG4bKh1", ""),
                    udp,
                    secure,
                    Owner::Proxy
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::SipsOverClear)),
        );
        assert!(
            r.egress
                .start(
                    request("INVITE", "z9hG4bKh2", ""),
                    tls,
                    secure,
                    Owner::Proxy
                )
                .is_ok(),
            "the TLS binding takes it"
        );
        // Control: a call that arrived as sip: goes to the UDP binding.
        let any = Purpose::Callee {
            number: "1001",
            hops: Hops::Any,
        };
        assert!(
            r.egress
                .start(request("INVITE", "z9hG4bKh3", ""), udp, any, Owner::Proxy)
                .is_ok()
        );
        assert_eq!(Hops::of("SIPS:1001@example.com"), Hops::Tls);
        assert_eq!(Hops::of("sip:1001@example.com"), Hops::Any);
        assert_eq!(Hops::of("sip"), Hops::Any);
    }

    #[test]
    fn a_sips_request_uri_leaves_only_over_tls() {
        let r = rig();
        // 1001 registers a sips: Contact over TLS as well as its UDP binding.
        let tls = Flow::stream(TransportKind::Tls, addr("192.0.2.1:40000"), ConnId(7));
        r.registrar
            .register(
                "1001",
                &RegisterRequest {
                    call_id: "r2".into(),
                    cseq: 1,
                    contacts: Contacts::List(vec![("sips:1001@198.51.100.9:7001".into(), None)]),
                    expires_header: Some(3600),
                    flow: tls,
                    generation: 1,
                },
                T0,
            )
            .expect("registered");
        let sips = |branch: &str| {
            String::from_utf8(request("NOTIFY", branch, ""))
                .expect("utf8")
                .replacen("NOTIFY sip:", "NOTIFY SIPS:", 1)
                .into_bytes()
        };
        let purpose = Purpose::Registration { number: "1001" };
        let udp = Flow::udp(addr("192.0.2.1:5062"));
        assert_eq!(
            r.egress
                .start(sips("z9hG4bKs1"), udp, purpose, Owner::Notify)
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::SipsOverClear)),
            "a registered UDP flow does not carry a sips: request"
        );
        assert_eq!(denied(&r, Denial::SipsOverClear), 1);
        assert!(
            r.egress
                .start(sips("z9hG4bKs2"), tls, purpose, Owner::Notify)
                .is_ok(),
            "the TLS flow does"
        );
        // The control: the same request as sip: goes out on UDP.
        assert!(
            r.egress
                .start(
                    request("NOTIFY", "z9hG4bKs3", ""),
                    udp,
                    purpose,
                    Owner::Notify
                )
                .is_ok()
        );
    }

    #[test]
    fn notify_and_register_need_a_registration_and_a_provider() {
        let r = rig();
        let registered = Flow::udp(addr("192.0.2.1:5062"));
        let purpose = Purpose::Registration { number: "1001" };
        assert!(
            r.egress
                .start(
                    request("NOTIFY", "z9hG4bKn1", ""),
                    registered,
                    purpose,
                    Owner::Notify
                )
                .is_ok()
        );
        assert_eq!(
            r.egress
                .start(
                    request("INVITE", "z9hG4bKn2", ""),
                    registered,
                    purpose,
                    Owner::Notify
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::WrongMethod)),
            "(d) covers NOTIFY and OPTIONS only"
        );
        let provider = Flow::udp(addr("192.0.2.8:5060"));
        assert!(
            r.egress
                .start(
                    request("REGISTER", "z9hG4bKr1", ""),
                    provider,
                    Purpose::Provider,
                    Owner::Provider
                )
                .is_ok()
        );
        assert_eq!(
            r.egress
                .start(
                    request("REGISTER", "z9hG4bKr2", ""),
                    Flow::udp(addr("192.0.2.66:5060")),
                    Purpose::Provider,
                    Owner::Provider
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotAProvider))
        );
        // A trunk call goes to the trunk's address (or where its gateway registered).
        let trunk = Purpose::Trunk {
            label: "gateway:pstn",
            hops: Hops::Any,
        };
        assert!(
            r.egress
                .start(
                    request("INVITE", "z9hG4bKt1", ""),
                    Flow::udp(addr("192.0.2.7:5060")),
                    trunk,
                    Owner::B2bua
                )
                .is_ok()
        );
        assert_eq!(
            r.egress
                .start(
                    request("INVITE", "z9hG4bKt2", ""),
                    Flow::udp(addr("192.0.2.66:5060")),
                    trunk,
                    Owner::B2bua
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotATrunk))
        );
        assert_eq!(denied(&r, Denial::NotATrunk), 1);
    }

    #[test]
    fn in_dialog_requests_go_only_between_the_parties() {
        let r = rig();
        let (a, b, target) = (
            Flow::udp(addr("192.0.2.1:5062")),
            Flow::udp(addr("192.0.2.2:5062")),
            Flow::udp(addr("192.0.2.66:5060")),
        );
        let id = r
            .dialogs
            .create(
                NewDialog {
                    call_id: "c1".into(),
                    caller: Party {
                        who: Who::Extension("1001".into()),
                        tag: "ours".into(),
                        flow: Some(a),
                    },
                    callee: Party {
                        who: Who::Extension("1002".into()),
                        tag: "theirs".into(),
                        flow: Some(b),
                    },
                    phase: Phase::Confirmed,
                    kind: Kind::Proxied,
                    class: None,
                    class_of_service: None,
                    e164: None,
                },
                r.clock.instant(),
            )
            .expect("room");
        let bye = request("BYE", "z9hG4bKb1", ";tag=theirs");
        let relay = Purpose::InDialog { from: Some(&a) };
        assert_eq!(
            r.egress
                .start(bye.clone(), target, relay, Owner::Proxy)
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotToTheOtherParty))
        );
        assert_eq!(
            r.egress
                .start(
                    bye.clone(),
                    b,
                    Purpose::InDialog {
                        from: Some(&target)
                    },
                    Owner::Proxy
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotFromAParty))
        );
        let ack = request("ACK", "z9hG4bKa1", ";tag=theirs");
        assert_eq!(
            r.egress.ack(ack.clone(), Some(&a), target),
            Err(Denial::NotToTheOtherParty)
        );
        assert_eq!(r.egress.ack(ack.clone(), Some(&a), b), Ok(()));
        let no_tag = request("BYE", "z9hG4bKb2", "");
        assert_eq!(
            r.egress.start(no_tag, b, relay, Owner::Proxy).map(|_| ()),
            Err(NotStarted::Denied(Denial::NoDialog))
        );
        assert!(r.egress.start(bye.clone(), b, relay, Owner::Proxy).is_ok());
        r.dialogs.end(id, r.clock.instant());
        assert_eq!(
            r.egress
                .start(
                    request("BYE", "z9hG4bKb3", ";tag=theirs"),
                    b,
                    relay,
                    Owner::Proxy
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::DialogEnded))
        );
        assert_eq!(r.egress.ack(ack, Some(&a), b), Err(Denial::DialogEnded));
        assert_eq!(denied(&r, Denial::DialogEnded), 2);
    }

    #[test]
    fn responses_reach_a_transaction_from_where_it_went_or_are_dropped() {
        let r = rig();
        let registered = Flow::udp(addr("192.0.2.1:5062"));
        let invite = request("INVITE", "z9hG4bKinv1", "");
        let tx = r
            .egress
            .start(
                invite.clone(),
                registered,
                Purpose::Callee {
                    number: "1001",
                    hops: Hops::Any,
                },
                Owner::Proxy,
            )
            .expect("started");
        let ringing = response_to(&invite, 180);
        let m = msg::parse(&ringing).expect("parse");
        // The same answer from another host: dropped.
        assert_eq!(
            r.egress
                .on_response(&m, &Flow::udp(addr("192.0.2.66:5062")), r.clock.instant()),
            Err(Dropped::WrongSource)
        );
        // From the same host but another port (another program, another phone behind
        // the same NAT): dropped too.
        assert_eq!(
            r.egress
                .on_response(&m, &Flow::udp(addr("192.0.2.1:5070")), r.clock.instant()),
            Err(Dropped::WrongSource)
        );
        let got = r
            .egress
            .on_response(&m, &registered, r.clock.instant())
            .expect("matched");
        assert_eq!(got[0].tx, tx);
        assert_eq!(got[0].owner, Owner::Proxy);
        let stranger = response_to(&request("INVITE", "z9hG4bKforged", ""), 200);
        assert_eq!(
            r.egress.on_response(
                &msg::parse(&stranger).expect("parse"),
                &registered,
                r.clock.instant()
            ),
            Err(Dropped::Unmatched(Unmatched::NoTransaction))
        );
        // A failure is ACKed to where the INVITE went, by the transaction.
        let busy = response_to(&invite, 486);
        r.wire.take();
        let got = r
            .egress
            .on_response(
                &msg::parse(&busy).expect("parse"),
                &registered,
                r.clock.instant(),
            )
            .expect("matched");
        assert!(
            got.iter()
                .any(|d| d.action == Action::Deliver(sip::transaction::ResponseClass::Failure))
        );
        let sent = r.wire.take();
        assert_eq!(sent.len(), 1);
        assert!(sent[0].1.starts_with(b"ACK "));
        assert_eq!(sent[0].0, registered);
    }

    #[test]
    fn a_send_of_no_live_transaction_or_to_another_destination_is_denied() {
        let r = rig();
        let registered = Flow::udp(addr("192.0.2.1:5062"));
        let tx = r
            .egress
            .start(
                request("NOTIFY", "z9hG4bKn1", ""),
                registered,
                Purpose::Registration { number: "1001" },
                Owner::Notify,
            )
            .expect("started");
        r.wire.take();
        let send = |to: Flow| Output {
            tx,
            action: Action::Send {
                to,
                bytes: Arc::from(&b"NOTIFY sip:x SIP/2.0\r\n\r\n"[..]),
            },
        };
        // To another destination than the one chosen at creation.
        r.egress.carry_out(
            vec![send(Flow::udp(addr("192.0.2.66:5060")))],
            r.clock.instant(),
        );
        assert!(r.wire.take().is_empty());
        assert_eq!(denied(&r, Denial::NoClientTransaction), 1);
        // For a transaction that is no longer live.
        r.egress.forget(tx);
        r.egress
            .carry_out(vec![send(registered)], r.clock.instant());
        assert!(r.wire.take().is_empty());
        assert_eq!(denied(&r, Denial::NoClientTransaction), 2);
    }

    #[test]
    fn a_hop_goes_only_to_a_live_node_that_holds_the_extension() {
        let r = rig();
        let node_a = addr("10.0.0.1:5070");
        let hop = Purpose::Hop { number: "1001" };
        let invite = request("INVITE", "z9hG4bKhop1", "");
        // No hop targets: nowhere, not even a registered phone's flow.
        assert_eq!(
            r.egress
                .start(invite.clone(), Flow::hop(node_a), hop, Owner::Proxy)
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotAHop))
        );
        assert_eq!(
            r.egress
                .start(
                    invite.clone(),
                    Flow::udp(addr("192.0.2.1:5062")),
                    hop,
                    Owner::Proxy
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotAHop))
        );
        r.egress
            .hop_targets()
            .replace([("1001".to_owned(), vec![node_a])]);
        // Another extension's node, or another address: no.
        assert_eq!(
            r.egress
                .start(
                    invite.clone(),
                    Flow::hop(node_a),
                    Purpose::Hop { number: "1002" },
                    Owner::Proxy
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotAHop))
        );
        assert_eq!(
            r.egress
                .start(
                    invite.clone(),
                    Flow::hop(addr("10.0.0.9:5070")),
                    hop,
                    Owner::Proxy
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotAHop))
        );
        // Only on the internal socket: the node's address on the public one is no hop.
        assert_eq!(
            r.egress
                .start(invite.clone(), Flow::udp(node_a), hop, Owner::Proxy)
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotAHop))
        );
        // And a hop flow is nothing else's: no binding is one.
        assert_eq!(
            r.egress
                .start(
                    invite.clone(),
                    Flow::hop(node_a),
                    Purpose::Callee {
                        number: "1001",
                        hops: Hops::Any
                    },
                    Owner::Proxy
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::NotARegistration))
        );
        // Only an INVITE.
        assert_eq!(
            r.egress
                .start(
                    request("OPTIONS", "z9hG4bKhop2", ""),
                    Flow::hop(node_a),
                    hop,
                    Owner::Proxy
                )
                .map(|_| ()),
            Err(NotStarted::Denied(Denial::WrongMethod))
        );
        // Control: the node that holds 1001 takes it.
        assert!(
            r.egress
                .start(invite, Flow::hop(node_a), hop, Owner::Proxy)
                .is_ok()
        );
        assert_eq!(r.wire.take()[0].0, Flow::hop(node_a));
        assert_eq!(denied(&r, Denial::NotAHop), 5);
    }

    #[test]
    fn every_denial_has_its_own_label() {
        let labels: std::collections::HashSet<&str> =
            Denial::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(labels.len(), Denial::ALL.len());
        assert_eq!(Denial::NotATrunk.as_str(), "not_a_trunk");
        assert_eq!(Dropped::WrongSource.as_str(), "wrong_source");
        let text = Metrics::default().render();
        for d in Denial::ALL {
            assert!(
                text.contains(&format!(
                    "sipward_egress_denied_total{{reason=\"{}\"}} 0",
                    d.as_str()
                )),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_closed_connection_fails_the_transaction() {
        let r = rig();
        let tcp = Flow::tcp(addr("192.0.2.1:40000"), crate::flow::ConnId(3));
        r.registrar
            .register(
                "1001",
                &RegisterRequest {
                    call_id: "r2".into(),
                    cseq: 1,
                    contacts: Contacts::List(vec![(
                        "sip:1001@192.0.2.1;transport=tcp".into(),
                        None,
                    )]),
                    expires_header: Some(3600),
                    flow: tcp,
                    generation: 1,
                },
                T0,
            )
            .expect("registered");
        r.wire.dead.lock().expect("lock").push(tcp);
        assert_eq!(
            r.egress
                .start(
                    request("NOTIFY", "z9hG4bKn1", ""),
                    tcp,
                    Purpose::Registration { number: "1001" },
                    Owner::Notify
                )
                .map(|_| ()),
            Err(NotStarted::Undeliverable(Undeliverable))
        );
        assert_eq!(r.egress.client_transactions(), 0);
    }
}
