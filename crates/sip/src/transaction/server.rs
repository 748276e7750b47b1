//! Server transactions (RFC 3261 §17.2 with RFC 6026's corrections), sans IO, as one
//! bounded table: every request sipward answers is entered here with the destination
//! its answers go to (`D`, chosen when the request arrived: the source, RFC 3581), and
//! every response sipward sends is recorded here first. So the table is what says
//! whether a response may leave and where to: a response that answers no request in it
//! goes nowhere.
//!
//! Non-INVITE (§17.2.2): a retransmitted request is absorbed while the TU works on it
//! and answered with the last response once there is one; the entry lingers for
//! Timer J (64·T1; 0 on reliable transports) after the final response.
//!
//! INVITE (§17.2.1, RFC 6026 §7.1):
//! - Proceeding: a retransmitted INVITE gets the last provisional answer again.
//! - Completed (300-699): the final answer is retransmitted (Timer G, from T1 doubling
//!   to T2; not on reliable transports) until the hop-by-hop ACK arrives (then Timer I,
//!   T4, absorbs stray ACKs) or Timer H (64·T1) gives up and reports it.
//! - Accepted (2xx): retransmitted INVITEs are absorbed and further 2xx (a proxy passes
//!   on the callee's retransmissions) may still be sent, for Timer L (64·T1). A 2xx of
//!   sipward's own (a UAS core, §13.3.1.4) is retransmitted by the table until the TU
//!   says its ACK arrived, and reported when it never does.
//!
//! Bounds: non-INVITE entries are evicted oldest first when the table is full (their
//! answers are sent at once, so the oldest are long answered); INVITE entries have a
//! capacity of their own, so a flood of REGISTERs cannot take a ringing call's answer
//! away. When the INVITE part is full, a new INVITE takes the place of the oldest one
//! already answered 300-699 (Completed or Confirmed: it only waits for its ACK or Timer
//! H, and losing it only means a retransmitted INVITE is handled again), so INVITEs
//! answered with a failure and never ACKed (forged sources) cannot fill it. Pending and
//! 2xx-answered INVITEs are not evicted, except by an urgent one (an emergency call, see
//! [`ServerTransactions::on_urgent_request`]), which takes the place of the oldest
//! pending INVITE that is not urgent itself. A pending INVITE is forgotten after
//! [`INVITE_PENDING_MAX`] whatever the TU does. Only requests with an RFC 3261 branch
//! (`z9hG4bK`) are matched.

use std::collections::hash_map::Entry as Slot;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::branch::MAGIC_COOKIE;
use crate::header::cseq::CSeq;
use crate::header::via::Via;
use crate::msg::{Message, Name, StartLine};

use super::timer::{Reliability, Timers};

/// Timer J for UDP (64·T1 with the RFC's T1).
pub const TIMER_J: Duration = Duration::from_secs(32);

/// The longest an INVITE may wait for its final answer before the table forgets it.
/// Longer than any ring time sipward allows (ten minutes at most).
pub const INVITE_PENDING_MAX: Duration = Duration::from_secs(15 * 60);

/// What matches a request, its retransmissions and its responses to one server
/// transaction (§17.2.3): the top Via's branch and sent-by, and the method (an ACK's
/// is its INVITE's).
///
/// One shared text (`branch`, `sent-by`, method, each field's end recorded): the table
/// keeps a key in its map and in its expiry queue, and hashes it on every request, so a
/// clone is a reference count and a hash one pass over one string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxKey {
    text: Arc<str>,
    branch_end: usize,
    sent_by_end: usize,
}

impl TxKey {
    /// The key of a request (§17.2.3), or `None` for pre-RFC 3261 branches.
    pub fn new(
        branch: &str,
        sent_by_host: &str,
        sent_by_port: Option<u16>,
        method: &str,
    ) -> Option<Self> {
        if !branch.starts_with(MAGIC_COOKIE) {
            return None;
        }
        // ACK matches the INVITE's transaction; it never creates a non-INVITE one.
        let method = if method == "ACK" { "INVITE" } else { method };
        let mut text = String::with_capacity(branch.len() + sent_by_host.len() + method.len() + 8);
        text.push_str(branch);
        let branch_end = text.len();
        text.extend(sent_by_host.chars().map(|c| c.to_ascii_lowercase()));
        let _ = write!(text, ":{}", sent_by_port.unwrap_or(5060));
        let sent_by_end = text.len();
        text.push_str(method);
        Some(Self {
            text: text.into(),
            branch_end,
            sent_by_end,
        })
    }

    /// The key of a request or of a response: its top Via and its CSeq method (for a
    /// request, the CSeq method must be the request's own).
    pub fn of(m: &Message<'_>) -> Option<Self> {
        let via = m.header(Name::Via).and_then(Via::parse_top)?;
        let cseq = m.header(Name::CSeq).and_then(CSeq::parse)?;
        if let StartLine::Request { method, .. } = m.start
            && method != cseq.method
        {
            return None;
        }
        Self::new(via.branch?, via.host, via.port, cseq.method)
    }

    pub fn branch(&self) -> &str {
        self.text.get(..self.branch_end).unwrap_or_default()
    }

    /// `host:port` of the top Via's sent-by (the host in lower case).
    pub fn sent_by(&self) -> &str {
        self.text
            .get(self.branch_end..self.sent_by_end)
            .unwrap_or_default()
    }

    /// The method of the transaction (INVITE for an ACK).
    pub fn method(&self) -> &str {
        self.text.get(self.sent_by_end..).unwrap_or_default()
    }

    pub fn is_invite(&self) -> bool {
        self.method() == "INVITE"
    }
}

/// What to do with an incoming request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen<D> {
    /// A new request: handle it, then answer it through [`ServerTransactions::respond`].
    New,
    /// A retransmission of a request still being handled (or an INVITE already
    /// answered 2xx): drop it.
    Absorb,
    /// A retransmission of an answered request: send this response again.
    Resend { to: D, bytes: Arc<[u8]> },
    /// The table has no room for another transaction of this kind: drop the request
    /// (it cannot be answered, since an answer needs an entry).
    Full,
}

/// What a deadline brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerOutput<D> {
    /// Send a final answer again (Timer G, or sipward's own 2xx).
    Send { to: D, bytes: Arc<[u8]> },
    /// A final answer was never acknowledged (Timer H for a non-2xx, Timer L for a
    /// 2xx of sipward's own): the TU may want to end the call it made.
    Unacknowledged { key: TxKey, success: bool },
}

/// Why a response was not recorded (the caller drops it and counts the reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unanswerable {
    #[error("the response has no RFC 3261 top Via or no CSeq")]
    NoKey,
    #[error("no request in the table is answered by this response")]
    NoTransaction,
    #[error("the request has had its final answer")]
    Answered,
    #[error("the bytes are not a response with a valid status code")]
    NotAResponse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No final answer yet.
    Pending,
    /// Non-INVITE answered finally; INVITE answered 300-699 and waiting for its ACK.
    Completed,
    /// INVITE answered 300-699 and ACKed (Timer I).
    Confirmed,
    /// INVITE answered 2xx (Timer L).
    Accepted,
}

/// Which answers the table repeats by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    /// A 300-699 answer to an INVITE, until its ACK (Timer G).
    UntilAck,
    /// Nothing (answers to requests nobody authenticated).
    Never,
    /// A 2xx of our own, until the TU reports its ACK.
    Own2xx,
}

#[derive(Clone, Copy, Debug)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

#[derive(Debug)]
struct Entry<D> {
    to: D,
    invite: bool,
    reliability: Reliability,
    phase: Phase,
    /// The last response sent.
    response: Option<Arc<[u8]>>,
    /// Timer G, or the repetition of a 2xx of our own.
    retransmit: Option<Retransmit>,
    /// A 2xx of our own, repeated until the TU reports its ACK.
    own_2xx: bool,
    /// When the entry goes (Timer H, I, J, L or the pending limit).
    expires: Instant,
    /// The deadline as filed (INVITE entries only).
    filed: Option<Instant>,
    /// An INVITE entered by [`ServerTransactions::on_urgent_request`].
    urgent: bool,
}

impl<D> Entry<D> {
    fn deadline(&self) -> Instant {
        match self.retransmit {
            Some(r) if r.at < self.expires => r.at,
            _ => self.expires,
        }
    }
}

/// The server transactions of one endpoint; see the module documentation.
#[derive(Debug)]
pub struct ServerTransactions<D> {
    timers: Timers,
    entries: HashMap<TxKey, Entry<D>>,
    /// Non-INVITE keys, oldest first (expiry is lazy: a key whose entry is gone or has
    /// moved on is skipped).
    order: VecDeque<(Instant, TxKey)>,
    /// INVITE deadlines.
    deadlines: BTreeSet<(Instant, TxKey)>,
    capacity: usize,
    invite_capacity: usize,
    invites: usize,
    /// INVITE keys whose work is done (answered 300-699, or a relayed 2xx), oldest
    /// first: the ones to evict when the INVITE part is full (lazy: a key whose entry is
    /// gone or moved on is skipped).
    failed: VecDeque<TxKey>,
}

/// The status code of a response's bytes (`SIP/2.0 NNN ...`).
fn status_of(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"SIP/2.0 ")?;
    let code = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    (100..=699).contains(&code).then_some(code)
}

impl<D: Clone> ServerTransactions<D> {
    /// A table of at most `capacity` non-INVITE and `invite_capacity` INVITE
    /// transactions (at least one each).
    pub fn new(capacity: usize, invite_capacity: usize, timers: Timers) -> Self {
        Self {
            timers,
            entries: HashMap::new(),
            order: VecDeque::new(),
            deadlines: BTreeSet::new(),
            capacity: capacity.max(1),
            invite_capacity: invite_capacity.max(1),
            invites: 0,
            failed: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// INVITE transactions in the table.
    pub fn invites(&self) -> usize {
        self.invites
    }

    /// Where the answers of the request `key` go, while it is in the table.
    pub fn destination(&self, key: &TxKey) -> Option<&D> {
        self.entries.get(key).map(|e| &e.to)
    }

    /// Whether the request `key` is in the table and still waits for its final answer.
    pub fn pending(&self, key: &TxKey) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| e.phase == Phase::Pending)
    }

    /// When [`Self::on_deadline`] must be called next for INVITE timers.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Drops non-INVITE entries that are over, and the oldest ones while the table is
    /// full.
    fn expire(&mut self, now: Instant) {
        let non_invites = self.entries.len() - self.invites;
        let mut over = non_invites >= self.capacity;
        while let Some((t, _)) = self.order.front() {
            if *t > now && !over {
                break;
            }
            let Some((_, key)) = self.order.pop_front() else {
                break;
            };
            // One lookup per key, whether its entry goes or stays.
            if let Slot::Occupied(slot) = self.entries.entry(key)
                && !slot.get().invite
                && (slot.get().expires <= now || over)
            {
                slot.remove();
                over = self.entries.len() - self.invites >= self.capacity;
            }
        }
    }

    /// Puts a non-INVITE entry's expiry `at` in the queue. Places are dropped lazily, so
    /// an entry that leaves early (a reliable request with its final answer) or moves on
    /// (a new expiry) leaves a stale one behind; once the queue holds twice the table's
    /// capacity, the stale places are swept out: what stays is one place per live entry,
    /// its current expiry, in queue order. The queue then stays within twice the
    /// capacity whatever the request rate, and the sweep, linear in the queue, comes at
    /// most once per `capacity` places, so a request costs O(1) amortised.
    fn place(&mut self, at: Instant, key: &TxKey) {
        self.order.push_back((at, key.clone()));
        if self.order.len() <= 2 * self.capacity {
            return;
        }
        let entries = &self.entries;
        let mut kept: HashSet<&TxKey> = HashSet::with_capacity(entries.len());
        let mut order = std::mem::take(&mut self.order);
        order.retain(|(t, k)| {
            entries
                .get_key_value(k)
                .is_some_and(|(live, e)| !e.invite && e.expires == *t && kept.insert(live))
        });
        self.order = order;
    }

    fn file(&mut self, key: &TxKey) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        let new = e.deadline();
        if e.filed != Some(new) {
            if let Some(old) = e.filed {
                self.deadlines.remove(&(old, key.clone()));
            }
            self.deadlines.insert((new, key.clone()));
            e.filed = Some(new);
        }
    }

    fn remove(&mut self, key: &TxKey) {
        if let Some(e) = self.entries.remove(key) {
            if let Some(t) = e.filed {
                self.deadlines.remove(&(t, key.clone()));
            }
            if e.invite {
                self.invites -= 1;
            }
        }
    }

    /// The TU gives the request `key` no answer at all (it cannot build one, or it
    /// stays silent on purpose): its entry goes now, while it still waits for its
    /// first final answer, so that a request nobody answers cannot hold a place in
    /// the table until [`INVITE_PENDING_MAX`]. A retransmission is then handled as new.
    /// True when an entry went.
    pub fn abandon(&mut self, key: &TxKey) -> bool {
        let pending = self
            .entries
            .get(key)
            .is_some_and(|e| e.phase == Phase::Pending && e.response.is_none());
        if pending {
            self.remove(key);
        }
        pending
    }

    /// Whether `key` names an INVITE entry whose work is done (evictable): answered
    /// 300-699, or a 2xx it relayed (waiting only for Timer L; a 2xx of sipward's own
    /// still repeats until its ACK and is not done).
    fn failed_invite(&self, key: &TxKey) -> bool {
        self.entries.get(key).is_some_and(|e| {
            e.invite
                && (matches!(e.phase, Phase::Completed | Phase::Confirmed)
                    || (e.phase == Phase::Accepted && !e.own_2xx))
        })
    }

    /// Makes room for one INVITE by evicting the oldest one whose work is done (see
    /// [`Self::failed_invite`]): losing it only means that a late retransmission of
    /// that INVITE is handled as new. False when there is none.
    fn evict_failed(&mut self) -> bool {
        while let Some(key) = self.failed.pop_front() {
            if self.failed_invite(&key) {
                self.remove(&key);
                return true;
            }
        }
        false
    }

    /// Makes room for an urgent INVITE by evicting the oldest pending INVITE that is not
    /// urgent; returns its key, so that the TU can give its call up. Linear in the
    /// INVITE entries, but only taken when the table is full of pending and accepted
    /// INVITEs and an emergency call arrives.
    fn evict_pending(&mut self) -> Option<TxKey> {
        let victim = self
            .deadlines
            .iter()
            .map(|(_, k)| k)
            .find(|k| {
                self.entries
                    .get(*k)
                    .is_some_and(|e| e.phase == Phase::Pending && !e.urgent)
            })
            .cloned()?;
        self.remove(&victim);
        Some(victim)
    }

    /// A request arrived (not an ACK: see [`Self::on_ack`]); its answers will go to `to`.
    pub fn on_request(
        &mut self,
        key: &TxKey,
        to: D,
        reliability: Reliability,
        now: Instant,
    ) -> Seen<D> {
        self.enter(key, to, reliability, now, false).0
    }

    /// [`Self::on_request`] for an INVITE that must not be dropped for want of room (an
    /// emergency call): when the INVITE part is full even after evicting failures, it
    /// takes the place of the oldest pending INVITE that is not urgent, whose key is
    /// returned (its TU must give it up: no answer to it can be sent any more).
    pub fn on_urgent_request(
        &mut self,
        key: &TxKey,
        to: D,
        reliability: Reliability,
        now: Instant,
    ) -> (Seen<D>, Option<TxKey>) {
        self.enter(key, to, reliability, now, true)
    }

    fn enter(
        &mut self,
        key: &TxKey,
        to: D,
        reliability: Reliability,
        now: Instant,
        urgent: bool,
    ) -> (Seen<D>, Option<TxKey>) {
        self.expire(now);
        match self.entries.get(key) {
            Some(e) if !e.invite && e.expires <= now => {
                self.entries.remove(key);
            }
            Some(e) => {
                let seen = match (e.phase, &e.response) {
                    (Phase::Accepted | Phase::Confirmed, _) | (_, None) => Seen::Absorb,
                    (_, Some(r)) => Seen::Resend {
                        to: e.to.clone(),
                        bytes: Arc::clone(r),
                    },
                };
                return (seen, None);
            }
            None => {}
        }
        let invite = key.is_invite();
        let mut evicted = None;
        if invite && self.invites >= self.invite_capacity && !self.evict_failed() {
            evicted = if urgent { self.evict_pending() } else { None };
            if evicted.is_none() {
                return (Seen::Full, None);
            }
        }
        let expires = if invite {
            now + INVITE_PENDING_MAX
        } else {
            // The TU answers within its own client transaction's Timer F; twice that
            // is a generous bound for a request it forgot.
            now + self.timers.timeout() * 2
        };
        self.entries.insert(
            key.clone(),
            Entry {
                to,
                invite,
                reliability,
                phase: Phase::Pending,
                response: None,
                retransmit: None,
                own_2xx: false,
                expires,
                filed: None,
                urgent: urgent && invite,
            },
        );
        if invite {
            self.invites += 1;
            self.file(key);
        } else {
            self.place(expires, key);
        }
        (Seen::New, evicted)
    }

    /// An ACK arrived with the key of an INVITE transaction. True when it acknowledged
    /// a 300-699 answer of that transaction (the ACK ends here, hop by hop); false for
    /// anything else (the ACK of a 2xx belongs to its dialog, not to a transaction).
    pub fn on_ack(&mut self, key: &TxKey, now: Instant) -> bool {
        let timers = self.timers;
        let Some(e) = self.entries.get_mut(key) else {
            return false;
        };
        match e.phase {
            Phase::Completed if e.invite => {
                e.phase = Phase::Confirmed;
                e.retransmit = None;
                e.expires = now + timers.timer_k(e.reliability);
                self.file(key);
                true
            }
            Phase::Confirmed => true,
            _ => false,
        }
    }

    /// Records the response `bytes` to the request `key` and returns where it goes.
    /// A final answer moves the transaction on (see the module documentation); `Err`
    /// says why this response may not be sent.
    pub fn respond(
        &mut self,
        key: &TxKey,
        bytes: Arc<[u8]>,
        now: Instant,
    ) -> Result<D, Unanswerable> {
        self.record(key, bytes, Repeat::UntilAck, now)
    }

    /// [`Self::respond`], except that a 300-699 answer to an INVITE is not repeated by
    /// Timer G: it goes again only when the INVITE does. For answers to requests nobody
    /// has authenticated (a 407 challenge, a refusal): a forged source address then gets
    /// one answer per request it is sent, never ten, so sipward cannot be used to
    /// amplify a flood towards it.
    pub fn respond_once(
        &mut self,
        key: &TxKey,
        bytes: Arc<[u8]>,
        now: Instant,
    ) -> Result<D, Unanswerable> {
        self.record(key, bytes, Repeat::Never, now)
    }

    /// [`Self::respond`] for a 2xx of sipward's own to an INVITE (a UAS core): the table
    /// sends it again (T1 doubling to T2, on unreliable transports) until
    /// [`Self::acknowledged`], and reports it at Timer L if never.
    pub fn respond_until_ack(
        &mut self,
        key: &TxKey,
        bytes: Arc<[u8]>,
        now: Instant,
    ) -> Result<D, Unanswerable> {
        self.record(key, bytes, Repeat::Own2xx, now)
    }

    fn record(
        &mut self,
        key: &TxKey,
        bytes: Arc<[u8]>,
        repeat: Repeat,
        now: Instant,
    ) -> Result<D, Unanswerable> {
        let own_2xx = repeat == Repeat::Own2xx;
        let code = status_of(&bytes).ok_or(Unanswerable::NotAResponse)?;
        let timers = self.timers;
        let e = self
            .entries
            .get_mut(key)
            .ok_or(Unanswerable::NoTransaction)?;
        let to = e.to.clone();
        match (e.phase, code) {
            (Phase::Pending, 100..=199) => {
                e.response = Some(bytes);
                return Ok(to);
            }
            // More 2xx after the first: a proxy passes on every one (RFC 6026).
            (Phase::Accepted, 200..=299) if e.invite => return Ok(to),
            (Phase::Pending, _) => {}
            _ => return Err(Unanswerable::Answered),
        }
        let unreliable = e.reliability == Reliability::Unreliable;
        e.response = Some(bytes);
        if !e.invite {
            e.phase = Phase::Completed;
            let linger = match e.reliability {
                Reliability::Unreliable => timers.timeout(),
                Reliability::Reliable => Duration::ZERO,
            };
            e.expires = now + linger;
            if linger.is_zero() {
                self.entries.remove(key);
            } else {
                self.place(now + linger, key);
            }
            return Ok(to);
        }
        if (200..300).contains(&code) {
            e.phase = Phase::Accepted;
            e.own_2xx = own_2xx;
            e.retransmit = (own_2xx && unreliable).then(|| Retransmit {
                at: now + timers.t1(),
                interval: timers.t1(),
            });
        } else {
            e.phase = Phase::Completed;
            e.retransmit = (unreliable && repeat != Repeat::Never).then(|| Retransmit {
                at: now + timers.t1(),
                interval: timers.t1(),
            });
        }
        let done = e.phase == Phase::Completed || !e.own_2xx;
        e.expires = now + timers.timeout();
        self.file(key);
        if done {
            self.failed.push_back(key.clone());
            // Keys that left by their timers are skipped lazily; sweep them out before
            // they outnumber the table.
            if self.failed.len() > 2 * self.invite_capacity {
                let mut keys = std::mem::take(&mut self.failed);
                keys.retain(|k| self.failed_invite(k));
                self.failed = keys;
            }
        }
        Ok(to)
    }

    /// The TU matched the ACK of its own 2xx to the INVITE `key`: stop repeating it.
    pub fn acknowledged(&mut self, key: &TxKey) {
        if let Some(e) = self.entries.get_mut(key)
            && e.phase == Phase::Accepted
        {
            e.retransmit = None;
            e.own_2xx = false;
            self.file(key);
            self.failed.push_back(key.clone());
        }
    }

    /// Runs the INVITE timers due at `now`: retransmissions, and entries that end.
    pub fn on_deadline(&mut self, now: Instant) -> Vec<ServerOutput<D>> {
        let mut due = Vec::new();
        while let Some((t, _)) = self.deadlines.first() {
            if *t > now {
                break;
            }
            if let Some((_, key)) = self.deadlines.pop_first() {
                if let Some(e) = self.entries.get_mut(&key) {
                    e.filed = None;
                }
                due.push(key);
            }
        }
        let t2 = self.timers.t2();
        let mut out = Vec::new();
        for key in due {
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.expires <= now {
                let report = match e.phase {
                    Phase::Completed => Some(false),
                    Phase::Accepted if e.own_2xx => Some(true),
                    _ => None,
                };
                self.remove(&key);
                if let Some(success) = report {
                    out.push(ServerOutput::Unacknowledged { key, success });
                }
                continue;
            }
            if let (Some(r), Some(bytes)) = (e.retransmit, &e.response)
                && r.at <= now
            {
                let interval = (r.interval * 2).min(t2);
                e.retransmit = Some(Retransmit {
                    at: now + interval,
                    interval,
                });
                out.push(ServerOutput::Send {
                    to: e.to.clone(),
                    bytes: Arc::clone(bytes),
                });
            }
            self.file(&key);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Table = ServerTransactions<&'static str>;
    const UDP: Reliability = Reliability::Unreliable;

    fn key(b: &str, method: &str) -> TxKey {
        TxKey::new(b, "Host.Example", None, method).expect("rfc3261 branch")
    }

    fn bytes(s: &str) -> Arc<[u8]> {
        Arc::from(s.as_bytes())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(3000))]

        /// Attack: two requests share a key only when branch, sent-by (host in any
        /// case, port absent meaning 5060) and method (ACK as INVITE) are the same;
        /// the split of one text into fields can never make two keys collide.
        #[test]
        fn keys_collide_only_for_one_transaction(
            b1 in "z9hG4bK[a-z:0-9A]{0,4}", h1 in "[aA:0-9.]{1,4}", p1 in proptest::option::of(5059u16..5062),
            m1 in "(INVITE|ACK|CANCEL|REGISTER|INVITEACK|A)",
            b2 in "z9hG4bK[a-z:0-9A]{0,4}", h2 in "[aA:0-9.]{1,4}", p2 in proptest::option::of(5059u16..5062),
            m2 in "(INVITE|ACK|CANCEL|REGISTER|INVITEACK|A)",
        ) {
            let k1 = TxKey::new(&b1, &h1, p1, &m1).expect("rfc3261");
            let k2 = TxKey::new(&b2, &h2, p2, &m2).expect("rfc3261");
            let norm = |m: &str| if m == "ACK" { "INVITE".to_owned() } else { m.to_owned() };
            let same = b1 == b2
                && h1.eq_ignore_ascii_case(&h2)
                && p1.unwrap_or(5060) == p2.unwrap_or(5060)
                && norm(&m1) == norm(&m2);
            proptest::prop_assert_eq!(k1 == k2, same, "{:?} vs {:?}", k1, k2);
            if k1 == k2 {
                use std::hash::BuildHasher;
                let s = std::collections::hash_map::RandomState::new();
                proptest::prop_assert_eq!(s.hash_one(&k1), s.hash_one(&k2));
            }
            proptest::prop_assert_eq!(k1.branch(), b1.as_str());
            proptest::prop_assert_eq!(k1.method(), norm(&m1));
            proptest::prop_assert_eq!(
                k1.sent_by().to_owned(),
                format!("{}:{}", h1.to_ascii_lowercase(), p1.unwrap_or(5060))
            );
        }
    }

    /// Attack on expiry with one lookup: a transaction answered reliably is forgotten at
    /// once but its place in the expiry queue stays; the same key entered again must
    /// not be forgotten when that stale place comes up. Control: it does expire at its
    /// own time.
    #[test]
    fn a_stale_queue_place_does_not_forget_a_new_transaction() {
        let t0 = Instant::now();
        let mut t = Table::new(10, 10, Timers::default());
        let k = key("z9hG4bKre", "OPTIONS");
        assert_eq!(
            t.on_request(&k, "conn", Reliability::Reliable, t0),
            Seen::New
        );
        assert_eq!(t.respond(&k, bytes("SIP/2.0 200 OK"), t0), Ok("conn"));
        assert!(t.is_empty());
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(t.on_request(&k, "phone", UDP, t1), Seen::New);
        assert_eq!(t.respond(&k, bytes("SIP/2.0 200 OK"), t1), Ok("phone"));
        // Past the first entry's expiry, within the second's.
        let t2 = t0 + Duration::from_secs(40);
        assert_eq!(
            t.on_request(&k, "forger", UDP, t2),
            Seen::Resend {
                to: "phone",
                bytes: bytes("SIP/2.0 200 OK")
            },
            "still known, answered to where it came from, not to the forger"
        );
        assert_eq!(t.destination(&k), Some(&"phone"));
        assert_eq!(
            t.on_request(&k, "forger", UDP, t1 + Duration::from_secs(40)),
            Seen::New,
            "control: expired at its own time"
        );
    }

    /// Attack: a flood of unique keys (with different case and absent ports) keeps the
    /// table at its bound, and a pending INVITE stays.
    #[test]
    fn a_flood_of_unique_keys_stays_bounded() {
        let t0 = Instant::now();
        let mut t = Table::new(64, 8, Timers::default());
        let invite = key("z9hG4bKinv", "INVITE");
        assert_eq!(t.on_request(&invite, "phone", UDP, t0), Seen::New);
        for n in 0..20_000u32 {
            let host = if n % 2 == 0 {
                "HOST.example"
            } else {
                "host.EXAMPLE"
            };
            let port = (n % 3 == 0).then_some(5060);
            let k = TxKey::new(&format!("z9hG4bKf{n}"), host, port, "OPTIONS").expect("k");
            let _ = t.on_request(&k, "flood", UDP, t0);
            assert!(t.len() <= 64 + 8, "{} entries", t.len());
        }
        assert!(t.pending(&invite), "the INVITE stays");
        assert_eq!(t.destination(&invite), Some(&"phone"));
    }

    /// FINDING: a flood of unique requests over a reliable transport, each answered at
    /// once, leaves the table empty (each entry goes with its final answer) but every
    /// key's place in the expiry queue stays until its 64 s bound: the queue (and the
    /// key text it holds) grows with the flood rate times 64 s, not with the table's
    /// capacity. Control: the table itself stays within its capacity.
    #[test]
    fn the_expiry_queue_stays_bounded_under_a_reliable_flood() {
        let t0 = Instant::now();
        let mut t = Table::new(64, 8, Timers::default());
        for n in 0..10_000u32 {
            let k = TxKey::new(&format!("z9hG4bKr{n}"), "h", None, "OPTIONS").expect("k");
            let now = t0 + Duration::from_micros(u64::from(n));
            assert_eq!(
                t.on_request(&k, "conn", Reliability::Reliable, now),
                Seen::New
            );
            assert_eq!(t.respond(&k, bytes("SIP/2.0 200 OK"), now), Ok("conn"));
            assert!(t.len() <= 64 + 8, "control: {} entries", t.len());
        }
        assert!(
            t.order.len() <= 2 * (64 + 8),
            "{} expiry-queue places for a table of {} entries",
            t.order.len(),
            t.len()
        );
    }

    /// The sweep keeps every live entry's place: requests still pending when a reliable
    /// flood sweeps the queue expire at their own time afterwards (stranded, they would
    /// stay in the table for ever), and the answered ones stay answerable until then.
    #[test]
    fn a_sweep_of_the_expiry_queue_strands_no_live_entry() {
        let t0 = Instant::now();
        let mut t = Table::new(8, 2, Timers::default());
        let pending = key("z9hG4bKpend", "OPTIONS");
        let answered = key("z9hG4bKans", "OPTIONS");
        assert_eq!(t.on_request(&pending, "a", UDP, t0), Seen::New);
        assert_eq!(t.on_request(&answered, "b", UDP, t0), Seen::New);
        assert_eq!(t.respond(&answered, bytes("SIP/2.0 200 OK"), t0), Ok("b"));
        for n in 0..100u32 {
            let k = key(&format!("z9hG4bKf{n}"), "OPTIONS");
            assert_eq!(t.on_request(&k, "c", Reliability::Reliable, t0), Seen::New);
            assert_eq!(t.respond(&k, bytes("SIP/2.0 200 OK"), t0), Ok("c"));
        }
        assert!(t.order.len() <= 2 * 8, "{} places", t.order.len());
        assert!(t.pending(&pending));
        assert_eq!(
            t.on_request(&answered, "forger", UDP, t0 + ms(1)),
            Seen::Resend {
                to: "b",
                bytes: bytes("SIP/2.0 200 OK")
            }
        );
        let later = t0 + Timers::default().timeout() * 2 + ms(1);
        let k = key("z9hG4bKlate", "OPTIONS");
        assert_eq!(t.on_request(&k, "d", UDP, later), Seen::New);
        assert_eq!(t.len(), 1, "both earlier entries expired at their time");
    }

    #[test]
    fn retransmissions_are_absorbed_then_answered() {
        let t0 = Instant::now();
        let mut t = Table::new(10, 10, Timers::default());
        let k = key("z9hG4bK1", "REGISTER");
        assert_eq!(t.on_request(&k, "phone", UDP, t0), Seen::New);
        assert_eq!(t.on_request(&k, "phone", UDP, t0), Seen::Absorb);
        assert_eq!(t.respond(&k, bytes("SIP/2.0 200 OK"), t0), Ok("phone"));
        assert_eq!(
            t.on_request(&k, "elsewhere", UDP, t0 + Duration::from_secs(1)),
            Seen::Resend {
                to: "phone",
                bytes: bytes("SIP/2.0 200 OK")
            },
            "to where the first one came from"
        );
        assert_eq!(
            t.respond(&k, bytes("SIP/2.0 500 Again"), t0),
            Err(Unanswerable::Answered),
            "one final answer"
        );
        assert_eq!(
            t.on_request(&k, "phone", UDP, t0 + Duration::from_secs(40)),
            Seen::New,
            "expired after Timer J"
        );
        assert_eq!(TxKey::new("old-style", "h", None, "REGISTER"), None);
        assert_ne!(
            key("z9hG4bK1", "REGISTER"),
            TxKey::new("z9hG4bK1", "host.example", Some(5070), "REGISTER").expect("k")
        );
        assert_eq!(
            t.respond(&key("z9hG4bKnone", "REGISTER"), bytes("SIP/2.0 200 OK"), t0),
            Err(Unanswerable::NoTransaction)
        );
        assert_eq!(
            t.respond(&k, bytes("REGISTER sip:x SIP/2.0"), t0),
            Err(Unanswerable::NotAResponse)
        );
    }

    #[test]
    fn a_reliable_request_is_forgotten_with_its_final_answer() {
        let t0 = Instant::now();
        let mut t = Table::new(10, 10, Timers::default());
        let k = key("z9hG4bK1", "OPTIONS");
        t.on_request(&k, "conn", Reliability::Reliable, t0);
        assert_eq!(t.respond(&k, bytes("SIP/2.0 100 Trying"), t0), Ok("conn"));
        assert_eq!(t.respond(&k, bytes("SIP/2.0 200 OK"), t0), Ok("conn"));
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_invites_are_never_evicted() {
        let t0 = Instant::now();
        let mut t = Table::new(100, 2, Timers::default());
        let ringing = key("z9hG4bKinvite", "INVITE");
        assert_eq!(t.on_request(&ringing, "caller", UDP, t0), Seen::New);
        for i in 0..10_000 {
            t.on_request(&key(&format!("z9hG4bK{i}"), "REGISTER"), "bot", UDP, t0);
        }
        assert!(t.len() <= 101, "{}", t.len());
        assert_eq!(
            t.destination(&ringing),
            Some(&"caller"),
            "a REGISTER flood keeps it"
        );
        t.on_request(&key("z9hG4bKinvite2", "INVITE"), "caller", UDP, t0);
        assert_eq!(
            t.on_request(&key("z9hG4bKinvite3", "INVITE"), "caller", UDP, t0),
            Seen::Full
        );
        assert_eq!(t.invites(), 2);
    }

    #[test]
    fn a_relayed_2xx_makes_room_when_full_but_an_unacknowledged_own_2xx_does_not() {
        let t0 = Instant::now();
        let mut t = Table::new(100, 2, Timers::default());
        let relayed = key("z9hG4bKrelayed", "INVITE");
        let own = key("z9hG4bKown", "INVITE");
        assert_eq!(t.on_request(&relayed, "caller", UDP, t0), Seen::New);
        assert_eq!(t.on_request(&own, "caller", UDP, t0), Seen::New);
        assert!(t.respond(&relayed, bytes("SIP/2.0 200 OK"), t0).is_ok());
        assert!(
            t.respond_until_ack(&own, bytes("SIP/2.0 200 OK"), t0)
                .is_ok()
        );
        // Full: the relayed 2xx only waits for Timer L (32 s); it goes.
        let next = key("z9hG4bKnext", "INVITE");
        assert_eq!(t.on_request(&next, "caller", UDP, t0 + ms(1)), Seen::New);
        assert_eq!(t.destination(&relayed), None, "the relayed 2xx made room");
        // sipward's own 2xx repeats until its ACK: it stays, so the next one is refused.
        let more = key("z9hG4bKmore", "INVITE");
        assert_eq!(t.on_request(&more, "caller", UDP, t0 + ms(2)), Seen::Full);
        assert_eq!(t.destination(&own), Some(&"caller"));
        // Once acknowledged, it may go too.
        t.acknowledged(&own);
        assert_eq!(t.on_request(&more, "caller", UDP, t0 + ms(3)), Seen::New);
        assert_eq!(t.destination(&own), None);
    }

    #[test]
    fn a_new_invite_takes_the_place_of_a_failed_one_and_an_urgent_one_of_a_pending_one() {
        let t0 = Instant::now();
        let mut t = Table::new(100, 2, Timers::default());
        let ringing = key("z9hG4bKringing", "INVITE");
        let refused = key("z9hG4bKrefused", "INVITE");
        assert_eq!(t.on_request(&ringing, "phone", UDP, t0), Seen::New);
        assert_eq!(t.on_request(&refused, "forged", UDP, t0), Seen::New);
        assert!(
            t.respond_once(&refused, bytes("SIP/2.0 404 Not Found"), t0)
                .is_ok()
        );
        // Full, but the 404 only waits for an ACK that will never come.
        let next = key("z9hG4bKnext", "INVITE");
        assert_eq!(t.on_request(&next, "phone", UDP, t0 + ms(1)), Seen::New);
        assert_eq!(t.destination(&refused), None, "the failure made room");
        assert_eq!(
            t.destination(&ringing),
            Some(&"phone"),
            "the pending one stays"
        );
        assert_eq!(t.invites(), 2);
        // Full of pending INVITEs: an ordinary one is dropped, an urgent one evicts
        // the oldest pending one that is not urgent.
        let more = key("z9hG4bKmore", "INVITE");
        assert_eq!(t.on_request(&more, "phone", UDP, t0), Seen::Full);
        let sos = key("z9hG4bKsos", "INVITE");
        assert_eq!(
            t.on_urgent_request(&sos, "phone", UDP, t0 + ms(2)),
            (Seen::New, Some(ringing.clone()))
        );
        let sos2 = key("z9hG4bKsos2", "INVITE");
        assert_eq!(
            t.on_urgent_request(&sos2, "phone", UDP, t0 + ms(3)),
            (Seen::New, Some(next.clone()))
        );
        let sos3 = key("z9hG4bKsos3", "INVITE");
        assert_eq!(
            t.on_urgent_request(&sos3, "phone", UDP, t0 + ms(4)),
            (Seen::Full, None),
            "an urgent INVITE never evicts another"
        );
        assert_eq!(t.invites(), 2);
    }

    #[test]
    fn an_invite_its_tu_abandons_leaves_the_table_at_once() {
        let t0 = Instant::now();
        let mut t = Table::new(100, 1, Timers::default());
        let unanswered = key("z9hG4bKsilent", "INVITE");
        assert_eq!(t.on_request(&unanswered, "caller", UDP, t0), Seen::New);
        let next = key("z9hG4bKnext", "INVITE");
        assert_eq!(t.on_request(&next, "caller", UDP, t0), Seen::Full);
        assert!(t.abandon(&unanswered));
        assert_eq!(t.invites(), 0);
        assert_eq!(t.next_deadline(), None, "its timer went with it");
        assert_eq!(t.on_request(&next, "caller", UDP, t0), Seen::New);
        // An answered entry is not the TU's to drop: its answer must be repeatable.
        assert!(t.respond_once(&next, bytes("SIP/2.0 486 Busy"), t0).is_ok());
        assert!(!t.abandon(&next));
        assert_eq!(t.invites(), 1);
    }

    #[test]
    fn a_failure_to_an_invite_is_repeated_until_its_ack() {
        let t0 = Instant::now();
        let mut t = Table::new(10, 10, Timers::default());
        let k = key("z9hG4bKinv", "INVITE");
        t.on_request(&k, "caller", UDP, t0);
        t.respond(&k, bytes("SIP/2.0 180 Ringing"), t0)
            .expect("180");
        assert_eq!(
            t.on_request(&k, "caller", UDP, t0 + ms(100)),
            Seen::Resend {
                to: "caller",
                bytes: bytes("SIP/2.0 180 Ringing")
            },
            "§17.2.1: the last provisional answer again"
        );
        t.respond(&k, bytes("SIP/2.0 486 Busy"), t0 + ms(1000))
            .expect("486");
        // Timer G: 1.5 s, 2.5 s, 4.5 s...
        assert_eq!(t.next_deadline(), Some(t0 + ms(1500)));
        let out = t.on_deadline(t0 + ms(1500));
        assert_eq!(
            out,
            vec![ServerOutput::Send {
                to: "caller",
                bytes: bytes("SIP/2.0 486 Busy")
            }]
        );
        assert_eq!(t.next_deadline(), Some(t0 + ms(2500)));
        assert!(t.on_ack(&key("z9hG4bKinv", "ACK"), t0 + ms(2000)));
        assert!(
            t.on_deadline(t0 + ms(2500)).is_empty(),
            "no more after the ACK"
        );
        assert!(
            t.on_ack(&k, t0 + ms(2100)),
            "a stray ACK is absorbed (Timer I)"
        );
        t.on_deadline(t0 + ms(8000));
        assert!(t.is_empty(), "gone after Timer I");

        // An answer sent once is not repeated by Timer G, only for the INVITE again.
        let k = key("z9hG4bKonce", "INVITE");
        t.on_request(&k, "stranger", UDP, t0);
        t.respond_once(&k, bytes("SIP/2.0 407 Proxy Authentication Required"), t0)
            .expect("407");
        assert!(t.on_deadline(t0 + ms(600)).is_empty());
        assert!(matches!(
            t.on_request(&k, "stranger", UDP, t0 + ms(700)),
            Seen::Resend { .. }
        ));
        assert!(t.on_ack(&k, t0 + ms(800)));

        // No ACK ever: Timer H reports it.
        let k = key("z9hG4bKinv2", "INVITE");
        t.on_request(&k, "caller", UDP, t0);
        t.respond(&k, bytes("SIP/2.0 603 Decline"), t0)
            .expect("603");
        let mut reported = Vec::new();
        while let Some(d) = t.next_deadline() {
            reported.extend(
                t.on_deadline(d)
                    .into_iter()
                    .filter(|o| matches!(o, ServerOutput::Unacknowledged { .. })),
            );
        }
        assert_eq!(
            reported,
            vec![ServerOutput::Unacknowledged {
                key: k,
                success: false
            }]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn an_own_2xx_is_repeated_until_the_tu_matches_its_ack() {
        let t0 = Instant::now();
        let mut t = Table::new(10, 10, Timers::default());
        let k = key("z9hG4bKinv", "INVITE");
        t.on_request(&k, "caller", UDP, t0);
        t.respond_until_ack(&k, bytes("SIP/2.0 200 OK"), t0)
            .expect("200");
        assert_eq!(t.on_request(&k, "caller", UDP, t0), Seen::Absorb);
        assert_eq!(t.on_deadline(t0 + ms(500)).len(), 1);
        t.acknowledged(&k);
        assert!(t.on_deadline(t0 + ms(1500)).is_empty());
        assert!(
            t.on_deadline(t0 + ms(33_000)).is_empty(),
            "no report once ACKed"
        );
        assert!(t.is_empty());

        // A proxied 2xx is passed on, not repeated by the table; more 2xx may follow.
        let k = key("z9hG4bKproxied", "INVITE");
        t.on_request(&k, "caller", UDP, t0);
        t.respond(&k, bytes("SIP/2.0 200 OK"), t0).expect("200");
        assert_eq!(t.respond(&k, bytes("SIP/2.0 200 OK"), t0), Ok("caller"));
        assert_eq!(
            t.respond(&k, bytes("SIP/2.0 486 Busy"), t0),
            Err(Unanswerable::Answered)
        );
        assert!(t.on_deadline(t0 + ms(1000)).is_empty());
        assert!(!t.on_ack(&k, t0), "a 2xx's ACK is the dialog's");

        // Never ACKed: reported at Timer L.
        let k = key("z9hG4bKlost", "INVITE");
        t.on_request(&k, "caller", UDP, t0);
        t.respond_until_ack(&k, bytes("SIP/2.0 200 OK"), t0)
            .expect("200");
        let mut last = Vec::new();
        while let Some(d) = t.next_deadline() {
            last = t.on_deadline(d);
        }
        assert_eq!(
            last,
            vec![ServerOutput::Unacknowledged {
                key: k,
                success: true
            }]
        );
    }

    #[test]
    fn keys_come_from_requests_and_responses_alike() {
        let req = crate::msg::parse(
            b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP A.example:5062;branch=z9hG4bKk1;rport\r\n\
              CSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("parse");
        let resp = crate::msg::parse(
            b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP a.example:5062;branch=z9hG4bKk1;received=192.0.2.1;rport=7\r\n\
              CSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("parse");
        assert_eq!(TxKey::of(&req), TxKey::of(&resp));
        assert!(TxKey::of(&req).is_some_and(|k| k.is_invite()));
        let mismatch = crate::msg::parse(
            b"BYE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP a:5062;branch=z9hG4bKk1\r\n\
              CSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("parse");
        assert_eq!(TxKey::of(&mismatch), None);
    }
}
