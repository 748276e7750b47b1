//! One client transaction, sans IO: RFC 3261 §17.1 with RFC 6026's corrections.
//!
//! The caller gives every input with the time it happened (`start`, `on_response`,
//! `on_deadline`, `on_transport_error`) and gets back a few [`Action`]s: bytes to send,
//! always to the destination chosen when the transaction started (the transaction never
//! looks at a Via to decide where to send), a response to hand to the transaction user
//! (TU), a timeout, the end. [`ClientTransaction::deadline`] says when to call
//! `on_deadline` next, so a driver sleeps exactly until then and tests move time.
//!
//! INVITE (§17.1.1, RFC 6026 §7.2):
//! - Calling: Timer A retransmits (T1, doubling; not on reliable transports); Timer B
//!   (64·T1) gives up, but only while no provisional answer has arrived.
//! - Proceeding: no retransmission and no Timer B. Ringing is limited by the TU, which
//!   sends a CANCEL; from then on the transaction waits 64·T1 for the final answer
//!   (§9.1) before it gives up.
//! - Completed (300-699): the transaction sends the ACK itself (same branch, §17.1.1.3)
//!   and sends it again for every retransmitted final answer, until Timer D (32 s; 0 on
//!   reliable transports).
//! - Accepted (2xx): every 2xx, first, retransmitted or from another fork, goes to the
//!   TU, which ACKs each; nothing is sent by the transaction. Timer M = 64·T1.
//! - Abandoned (not in the RFC): after Timer B, the CANCEL wait or a transport error
//!   the TU has been told `TimedOut`/`TransportFailed`, but for another 64·T1 a 2xx is
//!   still reported, as [`Action::LateSuccess`], so that the TU can ACK it and end the
//!   call it never wanted with a BYE. A 2xx that arrives in Completed (another fork
//!   answered after a failure) is reported the same way. Later than that a 2xx
//!   matches nothing, and the table reports it as unmatched.
//!
//! Non-INVITE (§17.1.2): Trying (Timer E from T1, doubling up to T2), Proceeding
//! (Timer E every T2), Completed (Timer K = T4; 0 on reliable transports), Timer F
//! (64·T1) gives up in Trying and Proceeding.
//!
//! `Terminated` is always the last action of a transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::branch::MAGIC_COOKIE;
use crate::header::cseq::CSeq;
use crate::header::is_token;
use crate::header::via::Via;
use crate::msg::{self, Message, Name, StartLine};
use crate::request;

use super::timer::{Reliability, Timers};

/// The class of a response, as the TU needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseClass {
    /// 100-199.
    Provisional,
    /// 200-299.
    Success,
    /// 300-699.
    Failure,
}

impl ResponseClass {
    pub fn of(code: u16) -> Self {
        match code {
            0..=199 => ResponseClass::Provisional,
            200..=299 => ResponseClass::Success,
            _ => ResponseClass::Failure,
        }
    }
}

/// What the caller must do after an input. `D` is the destination the TU chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<D> {
    /// Send these bytes to `to`: the request, a retransmission, or the ACK of a non-2xx.
    Send { to: D, bytes: Arc<[u8]> },
    /// Hand the response just given to the TU.
    Deliver(ResponseClass),
    /// The response just given is a 2xx to an INVITE that had already failed or been
    /// given up: the TU must ACK it (the peer has a dialog) and should end it with BYE.
    LateSuccess,
    /// No final answer in time (Timer B, Timer F, or 64·T1 after a CANCEL).
    TimedOut,
    /// The transport reported that the request could not be delivered.
    TransportFailed,
    /// The transaction is over; nothing more will come from it.
    Terminated,
}

/// Transaction states (RFC 3261 Figures 5 and 6, RFC 6026 Figure 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// INVITE, nothing received yet.
    Calling,
    /// Non-INVITE, nothing received yet.
    Trying,
    Proceeding,
    Completed,
    /// INVITE after a 2xx (RFC 6026).
    Accepted,
    /// INVITE after a timeout or transport error, waiting for a late 2xx.
    Abandoned,
    Terminated,
}

/// Why a request cannot start a client transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("the request does not parse")]
    Unparseable,
    #[error("the message is a response, not a request")]
    NotARequest,
    #[error("an ACK is sent without a client transaction")]
    Ack,
    #[error("the top Via has no RFC 3261 branch (z9hG4bK...)")]
    NoBranch,
    #[error("the request has no valid CSeq")]
    NoCSeq,
    #[error("the CSeq method differs from the request method")]
    CSeqMismatch,
    #[error("Content-Length does not match the body")]
    BadLength,
    #[error("a transaction with this branch and method exists already")]
    Duplicate,
    #[error("the transaction table is full")]
    Full,
}

/// Why a response reached no transaction (the caller drops it and counts it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unmatched {
    #[error("not a response")]
    NotAResponse,
    #[error("no top Via with an RFC 3261 branch")]
    NoBranch,
    #[error("no valid CSeq")]
    NoCSeq,
    #[error("no transaction has this branch and method")]
    NoTransaction,
}

/// Why a CANCEL was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    #[error("no such transaction")]
    UnknownTransaction,
    #[error("only an INVITE can be cancelled")]
    NotAnInvite,
    #[error("no provisional answer yet: a CANCEL must wait for one (§9.1)")]
    NoProvisionalYet,
    #[error("the INVITE has a final answer or was given up")]
    Answered,
    #[error("the INVITE is already being cancelled")]
    AlreadyCancelled,
    #[error("the CANCEL could not be built from the INVITE")]
    Unbuildable,
    #[error("the transaction table is full")]
    Full,
}

/// The branch and CSeq method of a response: what matches it to a client transaction
/// (§17.1.3).
pub(crate) fn response_key<'m>(response: &'m Message<'_>) -> Result<(&'m str, &'m str), Unmatched> {
    if !matches!(response.start, StartLine::Response { .. }) {
        return Err(Unmatched::NotAResponse);
    }
    let branch = response
        .header(Name::Via)
        .and_then(Via::parse_top)
        .and_then(|v| v.branch)
        .filter(|b| b.starts_with(MAGIC_COOKIE))
        .ok_or(Unmatched::NoBranch)?;
    let method = response
        .header(Name::CSeq)
        .and_then(CSeq::parse)
        .ok_or(Unmatched::NoCSeq)?
        .method;
    Ok((branch, method))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

/// One client transaction. See the module documentation for the states.
#[derive(Debug)]
pub struct ClientTransaction<D> {
    branch: Box<str>,
    method: Box<str>,
    invite: bool,
    to: D,
    request: Arc<[u8]>,
    reliability: Reliability,
    timers: Timers,
    state: State,
    /// Timer A or E.
    retransmit: Option<Retransmit>,
    /// Timer B or F.
    give_up: Option<Instant>,
    /// Timer D, K or M, the end of the Abandoned wait, or (Proceeding) the wait for a
    /// final answer after a CANCEL.
    end: Option<Instant>,
    /// The ACK of the non-2xx final answer (INVITE, Completed).
    ack: Option<Arc<[u8]>>,
    cancelled: bool,
}

impl<D: Clone> ClientTransaction<D> {
    /// Starts a transaction for `request`, to be sent to `to`. The request must parse,
    /// carry an RFC 3261 branch in its top Via, a CSeq with its own method, and a
    /// Content-Length that matches its body (as the request builder writes).
    pub fn start(
        request: Vec<u8>,
        to: D,
        reliability: Reliability,
        timers: Timers,
        now: Instant,
    ) -> Result<(Self, Vec<Action<D>>), StartError> {
        let (branch, method) = {
            let m = msg::parse(&request).map_err(|_| StartError::Unparseable)?;
            let StartLine::Request { method, .. } = m.start else {
                return Err(StartError::NotARequest);
            };
            if method == "ACK" {
                return Err(StartError::Ack);
            }
            let branch = m
                .header(Name::Via)
                .and_then(Via::parse_top)
                .and_then(|v| v.branch)
                .filter(|b| b.starts_with(MAGIC_COOKIE) && is_token(b))
                .ok_or(StartError::NoBranch)?;
            let cseq = m
                .header(Name::CSeq)
                .and_then(CSeq::parse)
                .ok_or(StartError::NoCSeq)?;
            if cseq.method != method {
                return Err(StartError::CSeqMismatch);
            }
            (Box::<str>::from(branch), Box::<str>::from(method))
        };
        if msg::frame_len(&request, usize::MAX) != Ok(Some(request.len())) {
            return Err(StartError::BadLength);
        }
        let invite = &*method == "INVITE";
        let request: Arc<[u8]> = request.into();
        let tx = Self {
            branch,
            method,
            invite,
            to: to.clone(),
            request: Arc::clone(&request),
            reliability,
            timers,
            state: if invite {
                State::Calling
            } else {
                State::Trying
            },
            retransmit: (reliability == Reliability::Unreliable).then(|| Retransmit {
                at: now + timers.t1(),
                interval: timers.t1(),
            }),
            give_up: Some(now + timers.timeout()),
            end: None,
            ack: None,
            cancelled: false,
        };
        Ok((tx, vec![Action::Send { to, bytes: request }]))
    }

    /// A response arrived. It must match this transaction (top Via branch and CSeq
    /// method, §17.1.3); otherwise nothing changes and the reason is returned.
    pub fn on_response(
        &mut self,
        response: &Message<'_>,
        now: Instant,
    ) -> Result<Vec<Action<D>>, Unmatched> {
        let (branch, method) = response_key(response)?;
        let StartLine::Response { code, .. } = response.start else {
            return Err(Unmatched::NotAResponse);
        };
        if branch != &*self.branch || method != &*self.method || self.state == State::Terminated {
            return Err(Unmatched::NoTransaction);
        }
        let class = ResponseClass::of(code);
        let mut out = Vec::new();
        if self.invite {
            self.invite_response(class, response, now, &mut out);
        } else {
            self.non_invite_response(class, now, &mut out);
        }
        Ok(out)
    }

    fn invite_response(
        &mut self,
        class: ResponseClass,
        response: &Message<'_>,
        now: Instant,
        out: &mut Vec<Action<D>>,
    ) {
        match (self.state, class) {
            (State::Calling | State::Proceeding, ResponseClass::Provisional) => {
                self.state = State::Proceeding;
                self.retransmit = None;
                self.give_up = None;
                out.push(Action::Deliver(class));
            }
            (State::Calling | State::Proceeding, ResponseClass::Success) => {
                self.state = State::Accepted;
                self.retransmit = None;
                self.give_up = None;
                self.end = Some(now + self.timers.timeout());
                out.push(Action::Deliver(class));
            }
            (State::Calling | State::Proceeding, ResponseClass::Failure) => {
                self.retransmit = None;
                self.give_up = None;
                // A hostile answer (a control character in its To) leaves us without
                // an ACK: the peer then retransmits until its own Timer H.
                self.ack = msg::parse(&self.request)
                    .ok()
                    .and_then(|invite| request::ack_non_2xx(&invite, response).ok())
                    .map(Arc::from);
                self.send_ack(out);
                out.push(Action::Deliver(class));
                self.state = State::Completed;
                self.finish_after(self.timers.timer_d(self.reliability), now, out);
            }
            (State::Completed, ResponseClass::Failure) => self.send_ack(out),
            (State::Completed | State::Abandoned, ResponseClass::Success) => {
                out.push(Action::LateSuccess);
            }
            (State::Accepted, ResponseClass::Success) => out.push(Action::Deliver(class)),
            _ => {}
        }
    }

    fn non_invite_response(
        &mut self,
        class: ResponseClass,
        now: Instant,
        out: &mut Vec<Action<D>>,
    ) {
        match (self.state, class) {
            (State::Trying | State::Proceeding, ResponseClass::Provisional) => {
                self.state = State::Proceeding;
                out.push(Action::Deliver(class));
            }
            (State::Trying | State::Proceeding, _) => {
                self.retransmit = None;
                self.give_up = None;
                out.push(Action::Deliver(class));
                self.state = State::Completed;
                self.finish_after(self.timers.timer_k(self.reliability), now, out);
            }
            _ => {}
        }
    }

    fn send_ack(&self, out: &mut Vec<Action<D>>) {
        if let Some(ack) = &self.ack {
            out.push(Action::Send {
                to: self.to.clone(),
                bytes: Arc::clone(ack),
            });
        }
    }

    /// Completed lasts `linger` (Timer D or K), or ends at once when that is zero.
    fn finish_after(&mut self, linger: Duration, now: Instant, out: &mut Vec<Action<D>>) {
        if linger.is_zero() {
            self.terminate(out);
        } else {
            self.end = Some(now + linger);
        }
    }

    fn terminate(&mut self, out: &mut Vec<Action<D>>) {
        self.state = State::Terminated;
        self.retransmit = None;
        self.give_up = None;
        self.end = None;
        out.push(Action::Terminated);
    }

    /// The INVITE was given up: wait 64·T1 more for a 2xx the TU must clean up.
    fn abandon(&mut self, now: Instant) {
        self.state = State::Abandoned;
        self.retransmit = None;
        self.give_up = None;
        self.end = Some(now + self.timers.timeout());
    }

    /// Time has come for [`Self::deadline`] (calling earlier, or again, is harmless).
    pub fn on_deadline(&mut self, now: Instant) -> Vec<Action<D>> {
        let mut out = Vec::new();
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        match self.state {
            State::Calling | State::Trying | State::Proceeding if due(self.give_up) => {
                out.push(Action::TimedOut);
                if self.invite {
                    self.abandon(now);
                } else {
                    self.terminate(&mut out);
                }
            }
            State::Proceeding if self.invite && due(self.end) => {
                // No final answer 64·T1 after our CANCEL (§9.1).
                out.push(Action::TimedOut);
                self.abandon(now);
            }
            State::Calling | State::Trying | State::Proceeding => {
                if let Some(r) = self.retransmit.filter(|r| r.at <= now) {
                    let interval = match self.state {
                        State::Calling => r.interval * 2,
                        State::Trying => (r.interval * 2).min(self.timers.t2()),
                        _ => self.timers.t2(),
                    };
                    self.retransmit = Some(Retransmit {
                        at: now + interval,
                        interval,
                    });
                    out.push(Action::Send {
                        to: self.to.clone(),
                        bytes: Arc::clone(&self.request),
                    });
                }
            }
            State::Completed | State::Accepted | State::Abandoned if due(self.end) => {
                self.terminate(&mut out);
            }
            _ => {}
        }
        out
    }

    /// The transport could not deliver the request (ICMP error, connection refused or
    /// lost). Before a final answer the TU is told; afterwards it changes nothing.
    pub fn on_transport_error(&mut self, now: Instant) -> Vec<Action<D>> {
        let mut out = Vec::new();
        match self.state {
            State::Calling | State::Proceeding if self.invite => {
                out.push(Action::TransportFailed);
                self.abandon(now);
            }
            State::Trying | State::Proceeding => {
                out.push(Action::TransportFailed);
                self.terminate(&mut out);
            }
            _ => {}
        }
        out
    }

    /// The TU sent a CANCEL for this INVITE: the final answer (487, or a 2xx that
    /// crossed the CANCEL) is waited for at most 64·T1 more (§9.1). A CANCEL may only
    /// be sent once a provisional answer has arrived.
    pub fn on_cancel(&mut self, now: Instant) -> Result<(), CancelError> {
        if !self.invite {
            return Err(CancelError::NotAnInvite);
        }
        match self.state {
            State::Calling => Err(CancelError::NoProvisionalYet),
            State::Proceeding if self.cancelled => Err(CancelError::AlreadyCancelled),
            State::Proceeding => {
                self.cancelled = true;
                self.end = Some(now + self.timers.timeout());
                Ok(())
            }
            _ => Err(CancelError::Answered),
        }
    }

    /// When [`Self::on_deadline`] must be called next, if ever. `None` in Proceeding
    /// of an INVITE that was not cancelled: only the TU can end that.
    pub fn deadline(&self) -> Option<Instant> {
        [self.retransmit.map(|r| r.at), self.give_up, self.end]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_invite(&self) -> bool {
        self.invite
    }

    /// Whether a CANCEL was sent for this INVITE.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// Where every message of this transaction goes.
    pub fn destination(&self) -> &D {
        &self.to
    }

    pub fn reliability(&self) -> Reliability {
        self.reliability
    }

    /// The request as sent.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    pub fn method(&self) -> &str {
        &self.method
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::branch::Branch;
    use crate::request::{Party, RequestBuilder, TopVia};

    pub(crate) const PEER: &str = "192.0.2.9:5060";

    /// The origin of test time; everything after it is moved by hand.
    pub(crate) fn origin() -> Instant {
        Instant::now()
    }

    pub(crate) fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    pub(crate) fn request(method: &str, branch: &str) -> Vec<u8> {
        let branch = Branch::new(branch).expect("branch");
        let local = "192.0.2.1:5060".parse().expect("addr");
        RequestBuilder::new(method, "sip:1002@192.0.2.9")
            .via(TopVia::new("UDP", local, &branch))
            .from(Party::new("sip:1001@pbx.example.com").tag("f1"))
            .to(Party::new("sip:1002@pbx.example.com"))
            .call_id("c1@pbx")
            .cseq(7)
            .route("sip:edge.example.com;lr")
            .build()
            .expect("builds")
    }

    /// An answer to `req` as its peer would send it.
    pub(crate) fn answer(req: &[u8], code: u16, to_tag: &str) -> Vec<u8> {
        let m = msg::parse(req).expect("request parses");
        let h = |n| m.header(n).expect("header");
        format!(
            "SIP/2.0 {code} Whatever\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag={to_tag}\r\n\
             Call-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
            h(Name::Via),
            h(Name::From),
            h(Name::To),
            h(Name::CallId),
            h(Name::CSeq)
        )
        .into_bytes()
    }

    pub(crate) fn parsed(bytes: &[u8]) -> Message<'_> {
        msg::parse(bytes).expect("parses")
    }

    type Tx = ClientTransaction<&'static str>;

    fn start(method: &str, reliability: Reliability, t0: Instant) -> (Tx, Vec<u8>) {
        let req = request(method, "0123456789abcdef");
        let (tx, out) =
            Tx::start(req.clone(), PEER, reliability, Timers::default(), t0).expect("starts");
        assert_eq!(
            out,
            vec![Action::Send {
                to: PEER,
                bytes: Arc::from(req.clone())
            }]
        );
        (tx, req)
    }

    fn respond(tx: &mut Tx, req: &[u8], code: u16, now: Instant) -> Vec<Action<&'static str>> {
        let bytes = answer(req, code, "t1");
        tx.on_response(&parsed(&bytes), now).expect("matches")
    }

    /// Times (after t0) at which `on_deadline`, called at each deadline, sends.
    fn sends_until(tx: &mut Tx, t0: Instant, end: Duration) -> Vec<Duration> {
        let mut sent = Vec::new();
        while let Some(d) = tx.deadline() {
            if d > t0 + end {
                break;
            }
            for a in tx.on_deadline(d) {
                if matches!(a, Action::Send { .. }) {
                    sent.push(d - t0);
                }
            }
        }
        sent
    }

    #[test]
    fn timer_a_doubles_from_t1_and_timer_b_gives_up_at_64_t1() {
        let t0 = origin();
        let (mut tx, _) = start("INVITE", Reliability::Unreliable, t0);
        assert_eq!(tx.state(), State::Calling);
        assert_eq!(tx.on_deadline(t0 + ms(499)), vec![], "not yet");
        let sent = sends_until(&mut tx, t0, ms(31_999));
        assert_eq!(
            sent,
            [500, 1500, 3500, 7500, 15_500, 31_500].map(ms).to_vec(),
            "intervals 0.5, 1, 2, 4, 8, 16 s"
        );
        assert_eq!(tx.deadline(), Some(t0 + ms(32_000)), "Timer B");
        assert_eq!(tx.on_deadline(t0 + ms(32_000)), vec![Action::TimedOut]);
        assert_eq!(tx.state(), State::Abandoned);
        assert_eq!(tx.deadline(), Some(t0 + ms(64_000)));
        assert_eq!(tx.on_deadline(t0 + ms(64_000)), vec![Action::Terminated]);
        assert_eq!(tx.state(), State::Terminated);
        assert_eq!(tx.deadline(), None);
    }

    #[test]
    fn timer_b_does_not_fire_after_a_provisional_answer() {
        let t0 = origin();
        let (mut tx, req) = start("INVITE", Reliability::Unreliable, t0);
        assert_eq!(
            respond(&mut tx, &req, 180, t0 + ms(700)),
            vec![Action::Deliver(ResponseClass::Provisional)]
        );
        assert_eq!(tx.state(), State::Proceeding);
        assert_eq!(tx.deadline(), None, "no Timer A, no Timer B");
        for s in [1, 32, 33, 600, 3600] {
            assert_eq!(tx.on_deadline(t0 + Duration::from_secs(s)), vec![]);
        }
        assert_eq!(
            tx.state(),
            State::Proceeding,
            "ringing is the TU's to limit"
        );
        assert_eq!(
            respond(&mut tx, &req, 180, t0 + ms(4_000_000)),
            vec![Action::Deliver(ResponseClass::Provisional)]
        );
        assert_eq!(
            respond(&mut tx, &req, 200, t0 + ms(4_000_000)),
            vec![Action::Deliver(ResponseClass::Success)]
        );
    }

    #[test]
    fn reliable_transports_never_retransmit() {
        let t0 = origin();
        for method in ["INVITE", "OPTIONS"] {
            let (mut tx, _) = start(method, Reliability::Reliable, t0);
            assert_eq!(tx.deadline(), Some(t0 + ms(32_000)), "only Timer B or F");
            assert_eq!(sends_until(&mut tx, t0, ms(40_000)), vec![], "{method}");
            assert_ne!(tx.state(), State::Calling);
        }
    }

    #[test]
    fn a_failure_is_acked_on_the_same_branch_and_again_for_each_retransmission() {
        let t0 = origin();
        let (mut tx, req) = start("INVITE", Reliability::Unreliable, t0);
        respond(&mut tx, &req, 100, t0 + ms(100));
        let out = respond(&mut tx, &req, 486, t0 + ms(2000));
        let [
            Action::Send { to, bytes: ack },
            Action::Deliver(ResponseClass::Failure),
        ] = out.as_slice()
        else {
            panic!("{out:?}")
        };
        assert_eq!(*to, PEER);
        let (ack_msg, inv) = (parsed(ack), parsed(&req));
        assert_eq!(ack_msg.method(), Some("ACK"));
        assert_eq!(
            ack_msg.start,
            StartLine::Request {
                method: "ACK",
                uri: "sip:1002@192.0.2.9"
            }
        );
        assert_eq!(
            ack_msg.header(Name::Via),
            inv.header(Name::Via),
            "same branch"
        );
        assert_eq!(ack_msg.header(Name::CSeq), Some("7 ACK"));
        assert_eq!(
            ack_msg.header(Name::To),
            Some("<sip:1002@pbx.example.com>;tag=t1")
        );
        assert_eq!(
            ack_msg.header(Name::Route),
            Some("<sip:edge.example.com;lr>")
        );
        assert_eq!(tx.state(), State::Completed);
        // A retransmitted final answer gets the very same ACK, and is not delivered.
        let again = respond(&mut tx, &req, 486, t0 + ms(2500));
        assert_eq!(
            again,
            vec![Action::Send {
                to: PEER,
                bytes: Arc::clone(ack)
            }]
        );
        assert_eq!(respond(&mut tx, &req, 180, t0 + ms(2600)), vec![]);
        assert_eq!(tx.deadline(), Some(t0 + ms(34_000)), "Timer D = 32 s");
        assert_eq!(tx.on_deadline(t0 + ms(33_999)), vec![]);
        assert_eq!(tx.on_deadline(t0 + ms(34_000)), vec![Action::Terminated]);
        // Reliable: Timer D is zero.
        let (mut tx, req) = start("INVITE", Reliability::Reliable, t0);
        let out = respond(&mut tx, &req, 603, t0);
        assert!(matches!(
            out.as_slice(),
            [
                Action::Send { .. },
                Action::Deliver(ResponseClass::Failure),
                Action::Terminated
            ]
        ));
    }

    #[test]
    fn every_2xx_goes_to_the_tu_in_accepted_until_timer_m() {
        let t0 = origin();
        let (mut tx, req) = start("INVITE", Reliability::Unreliable, t0);
        let ok = respond(&mut tx, &req, 200, t0 + ms(300));
        assert_eq!(
            ok,
            vec![Action::Deliver(ResponseClass::Success)],
            "no ACK from the transaction"
        );
        assert_eq!(tx.state(), State::Accepted);
        assert_eq!(tx.deadline(), Some(t0 + ms(32_300)), "Timer M = 64·T1");
        assert_eq!(
            sends_until(&mut tx, t0, ms(32_000)),
            vec![],
            "no retransmission"
        );
        assert_eq!(
            respond(&mut tx, &req, 200, t0 + ms(1300)),
            vec![Action::Deliver(ResponseClass::Success)],
            "a retransmitted 2xx goes to the TU, which ACKs it again"
        );
        let fork = answer(&req, 200, "other-fork");
        assert_eq!(
            tx.on_response(&parsed(&fork), t0 + ms(1400)),
            Ok(vec![Action::Deliver(ResponseClass::Success)])
        );
        assert_eq!(respond(&mut tx, &req, 486, t0 + ms(1500)), vec![]);
        assert_eq!(tx.on_deadline(t0 + ms(32_300)), vec![Action::Terminated]);
        assert_eq!(
            tx.on_response(&parsed(&answer(&req, 200, "t1")), t0 + ms(40_000)),
            Err(Unmatched::NoTransaction)
        );
    }

    #[test]
    fn a_2xx_after_timer_b_or_after_a_failure_is_a_late_success() {
        let t0 = origin();
        let (mut tx, req) = start("INVITE", Reliability::Unreliable, t0);
        assert_eq!(tx.on_deadline(t0 + ms(32_000)), vec![Action::TimedOut]);
        assert_eq!(respond(&mut tx, &req, 180, t0 + ms(33_000)), vec![]);
        assert_eq!(respond(&mut tx, &req, 404, t0 + ms(33_000)), vec![]);
        assert_eq!(
            respond(&mut tx, &req, 200, t0 + ms(40_000)),
            vec![Action::LateSuccess],
            "the TU must ACK and BYE it"
        );
        assert_eq!(tx.on_deadline(t0 + ms(64_000)), vec![Action::Terminated]);

        let (mut tx, req) = start("INVITE", Reliability::Unreliable, t0);
        respond(&mut tx, &req, 480, t0);
        assert_eq!(
            respond(&mut tx, &req, 200, t0 + ms(10)),
            vec![Action::LateSuccess]
        );
    }

    #[test]
    fn non_invite_timer_e_is_capped_at_t2_and_timer_f_gives_up() {
        let t0 = origin();
        let (mut tx, _) = start("NOTIFY", Reliability::Unreliable, t0);
        assert_eq!(tx.state(), State::Trying);
        let sent = sends_until(&mut tx, t0, ms(31_999));
        assert_eq!(
            sent,
            [
                500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500
            ]
            .map(ms)
            .to_vec(),
            "0.5, 1, 2, 4, then T2 = 4 s"
        );
        assert_eq!(
            tx.on_deadline(t0 + ms(32_000)),
            vec![Action::TimedOut, Action::Terminated],
            "Timer F"
        );
    }

    #[test]
    fn non_invite_proceeding_retransmits_every_t2_and_completed_waits_timer_k() {
        let t0 = origin();
        let (mut tx, req) = start("REGISTER", Reliability::Unreliable, t0);
        assert_eq!(
            respond(&mut tx, &req, 100, t0 + ms(100)),
            vec![Action::Deliver(ResponseClass::Provisional)]
        );
        assert_eq!(tx.state(), State::Proceeding);
        let sent = sends_until(&mut tx, t0, ms(9_000));
        assert_eq!(sent, [500, 4500, 8500].map(ms).to_vec());
        assert_eq!(
            respond(&mut tx, &req, 401, t0 + ms(9_000)),
            vec![Action::Deliver(ResponseClass::Failure)]
        );
        assert_eq!(tx.state(), State::Completed);
        assert_eq!(
            respond(&mut tx, &req, 401, t0 + ms(9_100)),
            vec![],
            "absorbed"
        );
        assert_eq!(tx.deadline(), Some(t0 + ms(14_000)), "Timer K = T4");
        assert_eq!(tx.on_deadline(t0 + ms(14_000)), vec![Action::Terminated]);
        // Reliable: K = 0.
        let (mut tx, req) = start("REGISTER", Reliability::Reliable, t0);
        assert_eq!(
            respond(&mut tx, &req, 200, t0),
            vec![Action::Deliver(ResponseClass::Success), Action::Terminated]
        );
    }

    #[test]
    fn transport_errors_end_the_attempt() {
        let t0 = origin();
        let (mut tx, _) = start("OPTIONS", Reliability::Reliable, t0);
        assert_eq!(
            tx.on_transport_error(t0),
            vec![Action::TransportFailed, Action::Terminated]
        );
        let (mut tx, req) = start("INVITE", Reliability::Reliable, t0);
        assert_eq!(tx.on_transport_error(t0), vec![Action::TransportFailed]);
        assert_eq!(tx.state(), State::Abandoned, "a 2xx may still come");
        assert_eq!(
            respond(&mut tx, &req, 200, t0 + ms(5)),
            vec![Action::LateSuccess]
        );
        assert_eq!(tx.on_transport_error(t0), vec![], "nothing left to fail");
    }

    #[test]
    fn responses_match_on_branch_and_cseq_method_only() {
        let t0 = origin();
        let (mut tx, req) = start("INVITE", Reliability::Unreliable, t0);
        let other_branch = answer(&request("INVITE", "fedcba9876543210"), 200, "x");
        assert_eq!(
            tx.on_response(&parsed(&other_branch), t0),
            Err(Unmatched::NoTransaction)
        );
        let cancel_answer = answer(&request("CANCEL", "0123456789abcdef"), 200, "x");
        assert_eq!(
            tx.on_response(&parsed(&cancel_answer), t0),
            Err(Unmatched::NoTransaction),
            "same branch, other method"
        );
        assert_eq!(
            tx.on_response(&parsed(&req), t0),
            Err(Unmatched::NotAResponse)
        );
        let no_via = b"SIP/2.0 200 OK\r\nCSeq: 7 INVITE\r\n\r\n";
        assert_eq!(
            tx.on_response(&parsed(no_via), t0),
            Err(Unmatched::NoBranch)
        );
        let old = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=0123456789abcdef\r\nCSeq: 7 INVITE\r\n\r\n";
        assert_eq!(tx.on_response(&parsed(old), t0), Err(Unmatched::NoBranch));
        let no_cseq =
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK0123456789abcdef\r\n\r\n";
        assert_eq!(tx.on_response(&parsed(no_cseq), t0), Err(Unmatched::NoCSeq));
        assert_eq!(tx.state(), State::Calling, "nothing changed");
    }

    #[test]
    fn a_cancelled_invite_waits_64_t1_for_its_final_answer() {
        let t0 = origin();
        let (mut tx, req) = start("INVITE", Reliability::Unreliable, t0);
        assert_eq!(tx.on_cancel(t0), Err(CancelError::NoProvisionalYet));
        respond(&mut tx, &req, 180, t0 + ms(100));
        assert_eq!(tx.on_cancel(t0 + ms(60_000)), Ok(()));
        assert_eq!(
            tx.on_cancel(t0 + ms(60_000)),
            Err(CancelError::AlreadyCancelled)
        );
        assert_eq!(tx.deadline(), Some(t0 + ms(92_000)));
        assert_eq!(tx.on_deadline(t0 + ms(92_000)), vec![Action::TimedOut]);
        assert_eq!(tx.state(), State::Abandoned);
        assert_eq!(tx.on_cancel(t0 + ms(92_000)), Err(CancelError::Answered));
        let (mut tx, _) = start("BYE", Reliability::Unreliable, t0);
        assert_eq!(tx.on_cancel(t0), Err(CancelError::NotAnInvite));
    }

    #[test]
    fn requests_that_cannot_start_a_transaction() {
        let t0 = origin();
        let start = |bytes: &[u8]| {
            Tx::start(
                bytes.to_vec(),
                PEER,
                Reliability::Unreliable,
                Timers::default(),
                t0,
            )
            .map(|_| ())
        };
        let good = request("INVITE", "0123456789abcdef");
        assert_eq!(start(&good), Ok(()));
        assert_eq!(start(b"garbage"), Err(StartError::Unparseable));
        assert_eq!(
            start(&answer(&good, 200, "x")),
            Err(StartError::NotARequest)
        );
        assert_eq!(
            start(&request("ACK", "0123456789abcdef")),
            Err(StartError::Ack)
        );
        let text = String::from_utf8(good.clone()).expect("utf8");
        let cases = [
            (
                text.replace("branch=z9hG4bK", "branch=x"),
                StartError::NoBranch,
            ),
            (
                text.replace("CSeq: 7 INVITE", "CSeq: x INVITE"),
                StartError::NoCSeq,
            ),
            (
                text.replace("CSeq: 7 INVITE", "CSeq: 7 BYE"),
                StartError::CSeqMismatch,
            ),
            (format!("{text}extra"), StartError::BadLength),
            (
                text.replace("Content-Length: 0\r\n", ""),
                StartError::BadLength,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(start(bytes.as_bytes()), Err(want), "{bytes}");
        }
    }

    #[test]
    fn an_answer_whose_to_cannot_be_copied_is_not_acked_but_still_delivered() {
        let t0 = origin();
        let (mut tx, req) = start("INVITE", Reliability::Unreliable, t0);
        let bytes = answer(&req, 486, "t1");
        let mut m = parsed(&bytes);
        for h in m.headers.iter_mut().filter(|h| h.name == Name::To) {
            h.value = "<sip:x>;tag=a\r\nX-Injected: 1".into();
        }
        assert_eq!(
            tx.on_response(&m, t0),
            Ok(vec![Action::Deliver(ResponseClass::Failure)])
        );
        assert_eq!(tx.state(), State::Completed);
    }
}
