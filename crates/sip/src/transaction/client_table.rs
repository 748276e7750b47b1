//! The bounded table of client transactions: every request sipward originates or
//! forwards runs in one, and every response either reaches one or is reported as
//! unmatched (the caller drops and counts it: nothing is ever forwarded by its Via).
//!
//! Transactions are keyed by top Via branch and CSeq method (RFC 3261 §17.1.3), so the
//! CANCEL of an INVITE is its own transaction on the INVITE's branch. A full table
//! refuses new transactions; it never evicts a live one. Deadlines are kept in order,
//! so [`ClientTransactions::next_deadline`] is the one time a driver sleeps until.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use crate::msg::{self, Message};
use crate::request;

use super::client::{
    Action, CancelError, ClientTransaction, StartError, State, Unmatched, response_key,
};
use super::timer::{Reliability, Timers};

/// A transaction's handle, unique for the life of the table (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(u64);

/// An action of one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output<D> {
    pub tx: TxId,
    pub action: Action<D>,
}

#[derive(Debug)]
struct Entry<D> {
    tx: ClientTransaction<D>,
    /// The deadline as filed in `ClientTransactions::deadlines`.
    deadline: Option<Instant>,
    /// A CANCEL asked for while the INVITE was still Calling: it goes out with the
    /// first provisional answer (§9.1), under this id.
    pending_cancel: Option<TxId>,
}

/// Client transactions by id, by branch, and by deadline. `D` is whatever names a
/// destination for the caller (an address, a flow).
#[derive(Debug)]
pub struct ClientTransactions<D> {
    timers: Timers,
    capacity: usize,
    next_id: u64,
    entries: HashMap<TxId, Entry<D>>,
    by_branch: HashMap<Box<str>, Vec<TxId>>,
    deadlines: BTreeSet<(Instant, TxId)>,
    /// Slots promised to pending CANCELs, so that one can always start.
    reserved: usize,
}

impl<D: Clone> ClientTransactions<D> {
    /// A table of at most `capacity` transactions (at least one).
    pub fn new(capacity: usize, timers: Timers) -> Self {
        Self {
            timers,
            capacity: capacity.max(1),
            next_id: 0,
            entries: HashMap::new(),
            by_branch: HashMap::new(),
            deadlines: BTreeSet::new(),
            reserved: 0,
        }
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn timers(&self) -> Timers {
        self.timers
    }

    pub fn get(&self, tx: TxId) -> Option<&ClientTransaction<D>> {
        self.entries.get(&tx).map(|e| &e.tx)
    }

    /// The destination chosen when the live transaction of `branch` and `method`
    /// started (an ACK is sent by its INVITE's transaction, a CANCEL runs in its own).
    /// What a runtime checks every message it sends for a transaction against.
    pub fn destination_of(&self, branch: &str, method: &str) -> Option<&D> {
        let method = if method == "ACK" { "INVITE" } else { method };
        let id = self.lookup(branch, method)?;
        self.entries.get(&id).map(|e| e.tx.destination())
    }

    /// When [`Self::on_deadline`] must be called next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    fn has_room(&self) -> bool {
        self.entries.len() + self.reserved < self.capacity
    }

    fn next_id(&mut self) -> TxId {
        self.next_id += 1;
        TxId(self.next_id)
    }

    /// Starts a client transaction for `request` (see [`ClientTransaction::start`]),
    /// to be sent to `to`; the first output sends it.
    pub fn start(
        &mut self,
        request: Vec<u8>,
        to: D,
        reliability: Reliability,
        now: Instant,
    ) -> Result<(TxId, Vec<Output<D>>), StartError> {
        if !self.has_room() {
            return Err(StartError::Full);
        }
        let (tx, actions) = ClientTransaction::start(request, to, reliability, self.timers, now)?;
        let id = self.next_id();
        self.insert(id, tx)?;
        Ok((id, wrap(id, actions)))
    }

    fn insert(&mut self, id: TxId, tx: ClientTransaction<D>) -> Result<(), StartError> {
        if self.lookup(tx.branch(), tx.method()).is_some() {
            return Err(StartError::Duplicate);
        }
        self.by_branch
            .entry(Box::from(tx.branch()))
            .or_default()
            .push(id);
        let deadline = tx.deadline();
        if let Some(t) = deadline {
            self.deadlines.insert((t, id));
        }
        self.entries.insert(
            id,
            Entry {
                tx,
                deadline,
                pending_cancel: None,
            },
        );
        Ok(())
    }

    fn lookup(&self, branch: &str, method: &str) -> Option<TxId> {
        self.by_branch.get(branch)?.iter().copied().find(|id| {
            self.entries
                .get(id)
                .is_some_and(|e| e.tx.method() == method)
        })
    }

    /// A response arrived: the outputs of the transaction it matches, or why it
    /// matches none. A 2xx to an INVITE that failed, timed out or could not be
    /// delivered is still matched for 64·T1 and reported as [`Action::LateSuccess`]
    /// (ACK it, then BYE it); after that it is [`Unmatched::NoTransaction`].
    pub fn on_response(
        &mut self,
        response: &Message<'_>,
        now: Instant,
    ) -> Result<Vec<Output<D>>, Unmatched> {
        let (branch, method) = response_key(response)?;
        let id = self
            .lookup(branch, method)
            .ok_or(Unmatched::NoTransaction)?;
        let entry = self.entries.get_mut(&id).ok_or(Unmatched::NoTransaction)?;
        let actions = entry.tx.on_response(response, now)?;
        let mut out = wrap(id, actions);
        self.settle(id, now, &mut out);
        Ok(out)
    }

    /// Runs every timer that is due at `now` (each transaction once per call).
    pub fn on_deadline(&mut self, now: Instant) -> Vec<Output<D>> {
        let mut due = Vec::new();
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(e) = self.entries.get_mut(&id) {
                e.deadline = None;
            }
            due.push(id);
        }
        let mut out = Vec::new();
        for id in due {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            out.extend(wrap(id, entry.tx.on_deadline(now)));
            self.settle(id, now, &mut out);
        }
        out
    }

    /// The transport could not deliver a message of `tx`.
    pub fn on_transport_error(&mut self, tx: TxId, now: Instant) -> Vec<Output<D>> {
        let Some(entry) = self.entries.get_mut(&tx) else {
            return Vec::new();
        };
        let mut out = wrap(tx, entry.tx.on_transport_error(now));
        self.settle(tx, now, &mut out);
        out
    }

    /// Cancels the INVITE `invite` (§9.1): a CANCEL on the same branch, to the same
    /// destination, as its own transaction, whose id is returned (its outputs carry
    /// it; a 200 to the CANCEL is delivered under that id, never the INVITE's). If no
    /// provisional answer has arrived yet, the CANCEL waits for one; if a final
    /// answer comes first, the CANCEL's id gets only `Terminated`. Once the CANCEL is
    /// sent, the INVITE waits at most 64·T1 for its final answer.
    pub fn cancel(
        &mut self,
        invite: TxId,
        now: Instant,
    ) -> Result<(TxId, Vec<Output<D>>), CancelError> {
        let entry = self
            .entries
            .get(&invite)
            .ok_or(CancelError::UnknownTransaction)?;
        if !entry.tx.is_invite() {
            return Err(CancelError::NotAnInvite);
        }
        let state = entry.tx.state();
        if !matches!(state, State::Calling | State::Proceeding) {
            return Err(CancelError::Answered);
        }
        if entry.pending_cancel.is_some() || entry.tx.is_cancelled() {
            return Err(CancelError::AlreadyCancelled);
        }
        if !self.has_room() {
            return Err(CancelError::Full);
        }
        let id = self.next_id();
        let mut out = Vec::new();
        if state == State::Calling {
            self.reserved += 1;
            if let Some(e) = self.entries.get_mut(&invite) {
                e.pending_cancel = Some(id);
            }
        } else {
            self.send_cancel(invite, id, now, &mut out)?;
        }
        Ok((id, out))
    }

    fn send_cancel(
        &mut self,
        invite: TxId,
        id: TxId,
        now: Instant,
        out: &mut Vec<Output<D>>,
    ) -> Result<(), CancelError> {
        let entry = self
            .entries
            .get_mut(&invite)
            .ok_or(CancelError::UnknownTransaction)?;
        let bytes = msg::parse(entry.tx.request())
            .ok()
            .and_then(|m| request::cancel(&m).ok())
            .ok_or(CancelError::Unbuildable)?;
        let (tx, actions) = ClientTransaction::start(
            bytes,
            entry.tx.destination().clone(),
            entry.tx.reliability(),
            self.timers,
            now,
        )
        .map_err(|_| CancelError::Unbuildable)?;
        // A CANCEL the TU started by itself on this branch is already running.
        self.insert(id, tx)
            .map_err(|_| CancelError::AlreadyCancelled)?;
        let marked = self
            .entries
            .get_mut(&invite)
            .map_or(Err(CancelError::UnknownTransaction), |e| {
                e.tx.on_cancel(now)
            });
        if let Err(e) = marked {
            self.remove(id);
            return Err(e);
        }
        self.refile(invite);
        out.extend(wrap(id, actions));
        Ok(())
    }

    /// Forgets a transaction without any output (the TU has no more use for it).
    /// A CANCEL still waiting for the INVITE's first provisional answer is forgotten
    /// with it. To give up a ringing INVITE, [`Self::cancel`] it instead: a removed
    /// INVITE can no longer report a 2xx that crossed the decision, and the TU could
    /// not ACK and BYE that call.
    pub fn remove(&mut self, tx: TxId) -> bool {
        let Some(entry) = self.entries.remove(&tx) else {
            return false;
        };
        self.unfile(tx, &entry);
        true
    }

    fn unfile(&mut self, id: TxId, entry: &Entry<D>) {
        if let Some(t) = entry.deadline {
            self.deadlines.remove(&(t, id));
        }
        if entry.pending_cancel.is_some() {
            self.reserved = self.reserved.saturating_sub(1);
        }
        if let Some(ids) = self.by_branch.get_mut(entry.tx.branch()) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_branch.remove(entry.tx.branch());
            }
        }
    }

    /// Files the transaction's new deadline.
    fn refile(&mut self, id: TxId) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let new = entry.tx.deadline();
        if entry.deadline != new {
            if let Some(t) = entry.deadline {
                self.deadlines.remove(&(t, id));
            }
            if let Some(t) = new {
                self.deadlines.insert((t, id));
            }
            entry.deadline = new;
        }
    }

    /// After an input: a pending CANCEL goes out (first provisional answer) or is
    /// dropped (the INVITE ended without one); the deadline is refiled; a terminated
    /// transaction leaves the table.
    fn settle(&mut self, id: TxId, now: Instant, out: &mut Vec<Output<D>>) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let state = entry.tx.state();
        if state != State::Calling
            && let Some(cancel) = entry.pending_cancel.take()
        {
            self.reserved = self.reserved.saturating_sub(1);
            let sent = state == State::Proceeding && self.send_cancel(id, cancel, now, out).is_ok();
            if !sent {
                out.push(Output {
                    tx: cancel,
                    action: Action::Terminated,
                });
            }
        }
        self.refile(id);
        if state == State::Terminated
            && let Some(entry) = self.entries.remove(&id)
        {
            self.unfile(id, &entry);
        }
    }
}

fn wrap<D>(tx: TxId, actions: Vec<Action<D>>) -> Vec<Output<D>> {
    actions
        .into_iter()
        .map(|action| Output { tx, action })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::msg::Name;
    use crate::transaction::client::ResponseClass;
    use crate::transaction::client::tests::{PEER, answer, ms, origin, parsed, request};

    type Table = ClientTransactions<&'static str>;

    const B1: &str = "0123456789abcdef";
    const B2: &str = "fedcba9876543210";

    fn table() -> Table {
        Table::new(16, Timers::default())
    }

    fn start(t: &mut Table, method: &str, branch: &str, now: Instant) -> (TxId, Vec<u8>) {
        let req = request(method, branch);
        let (id, out) = t
            .start(req.clone(), PEER, Reliability::Unreliable, now)
            .expect("starts");
        assert!(
            matches!(out.as_slice(), [Output { tx, action: Action::Send { .. } }] if *tx == id)
        );
        (id, req)
    }

    fn respond(
        t: &mut Table,
        req: &[u8],
        code: u16,
        now: Instant,
    ) -> Result<Vec<Output<&'static str>>, Unmatched> {
        let bytes = answer(req, code, "tt");
        t.on_response(&parsed(&bytes), now)
    }

    fn out(tx: TxId, action: Action<&'static str>) -> Output<&'static str> {
        Output { tx, action }
    }

    #[test]
    fn responses_reach_the_transaction_of_their_branch_and_method() {
        let t0 = origin();
        let mut t = table();
        let (invite, invite_req) = start(&mut t, "INVITE", B1, t0);
        let (options, _) = start(&mut t, "OPTIONS", B2, t0);
        assert_ne!(invite, options);
        // Wrong branch, wrong method: unmatched, nothing changes.
        let stranger = request("INVITE", "00000000deadbeef");
        assert_eq!(
            respond(&mut t, &stranger, 200, t0),
            Err(Unmatched::NoTransaction)
        );
        let wrong_method = request("OPTIONS", B1);
        assert_eq!(
            respond(&mut t, &wrong_method, 200, t0),
            Err(Unmatched::NoTransaction)
        );
        let no_cseq =
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK0123456789abcdef\r\n\r\n";
        assert_eq!(t.on_response(&parsed(no_cseq), t0), Err(Unmatched::NoCSeq));
        assert_eq!(
            t.on_response(&parsed(&invite_req), t0),
            Err(Unmatched::NotAResponse)
        );
        assert_eq!(
            respond(&mut t, &invite_req, 180, t0),
            Ok(vec![out(
                invite,
                Action::Deliver(ResponseClass::Provisional)
            )])
        );
        assert_eq!(t.get(invite).map(|x| x.state()), Some(State::Proceeding));
        assert_eq!(t.get(options).map(|x| x.state()), Some(State::Trying));
        // Where each was sent, as the egress rule asks it.
        let b1 = format!("z9hG4bK{B1}");
        assert_eq!(t.destination_of(&b1, "INVITE"), Some(&PEER));
        assert_eq!(
            t.destination_of(&b1, "ACK"),
            Some(&PEER),
            "the INVITE's ACK"
        );
        assert_eq!(t.destination_of(&b1, "OPTIONS"), None);
        assert_eq!(t.destination_of(B1, "INVITE"), None);
        // A transaction with the same branch and method cannot start twice.
        assert_eq!(
            t.start(request("INVITE", B1), PEER, Reliability::Unreliable, t0)
                .map(|_| ()),
            Err(StartError::Duplicate)
        );
    }

    #[test]
    fn a_cancel_is_its_own_transaction_on_the_invites_branch() {
        let t0 = origin();
        let mut t = table();
        let (invite, req) = start(&mut t, "INVITE", B1, t0);
        respond(&mut t, &req, 180, t0 + ms(100)).expect("matches");
        let (cancel, sent) = t.cancel(invite, t0 + ms(5000)).expect("cancels");
        assert_ne!(cancel, invite);
        let [
            Output {
                tx,
                action: Action::Send { to, bytes },
            },
        ] = sent.as_slice()
        else {
            panic!("{sent:?}")
        };
        assert_eq!((*tx, *to), (cancel, PEER), "to where the INVITE went");
        let c = parsed(bytes);
        assert_eq!(c.method(), Some("CANCEL"));
        assert_eq!(c.header(Name::Via), parsed(&req).header(Name::Via));
        assert_eq!(
            t.cancel(invite, t0 + ms(5000)).map(|_| ()),
            Err(CancelError::AlreadyCancelled)
        );
        // The 200 to the CANCEL reaches the CANCEL, the 487 the INVITE, which ACKs it.
        let cancel_req = bytes.to_vec();
        assert_eq!(
            respond(&mut t, &cancel_req, 200, t0 + ms(5100)),
            Ok(vec![out(cancel, Action::Deliver(ResponseClass::Success)),])
        );
        let outs = respond(&mut t, &req, 487, t0 + ms(5200)).expect("matches");
        assert!(
            matches!(outs.as_slice(), [
                Output { tx: a, action: Action::Send { .. } },
                Output { tx: b, action: Action::Deliver(ResponseClass::Failure) },
            ] if *a == invite && *b == invite),
            "{outs:?}"
        );
        assert_eq!(
            t.cancel(invite, t0 + ms(5300)).map(|_| ()),
            Err(CancelError::Answered)
        );
        assert_eq!(
            t.cancel(cancel, t0).map(|_| ()),
            Err(CancelError::NotAnInvite)
        );
        // Everything ends: the CANCEL after Timer K, the INVITE after Timer D.
        let mut ended = Vec::new();
        while let Some(d) = t.next_deadline() {
            for o in t.on_deadline(d) {
                if o.action == Action::Terminated {
                    ended.push((o.tx, d - t0));
                }
            }
        }
        assert_eq!(ended, vec![(cancel, ms(10_100)), (invite, ms(37_200))]);
        assert!(t.is_empty());
    }

    #[test]
    fn a_cancel_before_any_provisional_answer_waits_for_one() {
        let t0 = origin();
        let mut t = Table::new(2, Timers::default());
        let (invite, req) = start(&mut t, "INVITE", B1, t0);
        let (cancel, sent) = t.cancel(invite, t0 + ms(10)).expect("accepted");
        assert_eq!(sent, vec![], "not before a provisional answer (§9.1)");
        assert_eq!(
            t.start(request("OPTIONS", B2), PEER, Reliability::Unreliable, t0)
                .map(|_| ()),
            Err(StartError::Full),
            "the CANCEL's slot is reserved"
        );
        let outs = respond(&mut t, &req, 100, t0 + ms(400)).expect("matches");
        assert!(
            matches!(outs.as_slice(), [
                Output { tx: a, action: Action::Deliver(ResponseClass::Provisional) },
                Output { tx: b, action: Action::Send { .. } },
            ] if *a == invite && *b == cancel),
            "{outs:?}"
        );
        assert_eq!(t.len(), 2);
        // No 487 ever: the INVITE gives up 64·T1 after the CANCEL.
        assert_eq!(
            t.get(invite).and_then(|x| x.deadline()),
            Some(t0 + ms(32_400))
        );

        // A final answer before any provisional one: the CANCEL never goes out.
        let mut t = table();
        let (invite, req) = start(&mut t, "INVITE", B1, t0);
        let (cancel, _) = t.cancel(invite, t0).expect("accepted");
        let outs = respond(&mut t, &req, 200, t0 + ms(50)).expect("matches");
        assert_eq!(
            outs,
            vec![
                out(invite, Action::Deliver(ResponseClass::Success)),
                out(cancel, Action::Terminated),
            ]
        );
        assert_eq!(t.len(), 1);

        // Timer B before any provisional answer: the same.
        let mut t = table();
        let (invite, _) = start(&mut t, "INVITE", B1, t0);
        let (cancel, _) = t.cancel(invite, t0).expect("accepted");
        let outs = t.on_deadline(t0 + ms(32_000));
        assert_eq!(
            outs,
            vec![
                out(invite, Action::TimedOut),
                out(cancel, Action::Terminated)
            ]
        );
    }

    #[test]
    fn a_late_2xx_after_timer_b_reaches_the_tu_then_nothing_does() {
        let t0 = origin();
        let mut t = table();
        let (invite, req) = start(&mut t, "INVITE", B1, t0);
        let timeout = t.on_deadline(t0 + ms(32_000));
        assert_eq!(timeout, vec![out(invite, Action::TimedOut)]);
        assert_eq!(
            respond(&mut t, &req, 200, t0 + ms(45_000)),
            Ok(vec![out(invite, Action::LateSuccess)]),
            "so the B2BUA can ACK and BYE it"
        );
        assert_eq!(
            t.on_deadline(t0 + ms(64_000)),
            vec![out(invite, Action::Terminated)]
        );
        assert_eq!(
            respond(&mut t, &req, 200, t0 + ms(64_001)),
            Err(Unmatched::NoTransaction)
        );
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_full_table_refuses_and_never_evicts() {
        let t0 = origin();
        let mut t = Table::new(3, Timers::default());
        let ids: Vec<TxId> = ["0000000000000001", "0000000000000002", "0000000000000003"]
            .iter()
            .map(|b| start(&mut t, "OPTIONS", b, t0).0)
            .collect();
        assert_eq!(
            t.start(
                request("OPTIONS", "0000000000000004"),
                PEER,
                Reliability::Unreliable,
                t0
            )
            .map(|_| ()),
            Err(StartError::Full)
        );
        assert!(ids.iter().all(|id| t.get(*id).is_some()), "all three live");
        // One ends (reliable K = 0 does not apply here: Timer K, then room again).
        let req = request("OPTIONS", "0000000000000001");
        respond(&mut t, &req, 200, t0).expect("matches");
        assert_eq!(t.len(), 3, "Completed still absorbs retransmissions");
        t.on_deadline(t0 + ms(5000));
        assert_eq!(t.len(), 2);
        assert!(
            t.start(
                request("OPTIONS", "0000000000000004"),
                PEER,
                Reliability::Unreliable,
                t0
            )
            .is_ok()
        );
        assert!(t.remove(ids[1]));
        assert!(!t.remove(ids[1]));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn the_next_deadline_is_the_earliest_and_each_fires_once() {
        let t0 = origin();
        let mut t = table();
        let (a, _) = start(&mut t, "OPTIONS", B1, t0);
        let (b, _) = start(&mut t, "OPTIONS", B2, t0 + ms(200));
        assert_eq!(t.next_deadline(), Some(t0 + ms(500)));
        assert_eq!(t.on_deadline(t0 + ms(499)), vec![]);
        let fired = t.on_deadline(t0 + ms(700));
        assert_eq!(fired.iter().map(|o| o.tx).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(t.next_deadline(), Some(t0 + ms(1700)), "a: 700 + 1000");
        // A late driver: one retransmission per call, not a burst.
        let late = t.on_deadline(t0 + Duration::from_secs(20));
        assert_eq!(late.len(), 2);
        // Transport error on one.
        assert_eq!(
            t.on_transport_error(a, t0 + Duration::from_secs(20)),
            vec![out(a, Action::TransportFailed), out(a, Action::Terminated)]
        );
        assert!(t.get(a).is_none());
        assert_eq!(t.on_transport_error(a, t0), vec![], "unknown now");
        let end = t.on_deadline(t0 + Duration::from_secs(40));
        assert_eq!(
            end,
            vec![out(b, Action::TimedOut), out(b, Action::Terminated)]
        );
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn an_invite_left_ringing_stays_until_the_tu_removes_it() {
        let t0 = origin();
        let mut t = table();
        let (invite, req) = start(&mut t, "INVITE", B1, t0);
        respond(&mut t, &req, 183, t0).expect("matches");
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.on_deadline(t0 + Duration::from_secs(3600)), vec![]);
        assert_eq!(t.len(), 1);
        let (cancel, _) = t
            .cancel(invite, t0 + Duration::from_secs(3600))
            .expect("ok");
        assert!(t.remove(invite));
        assert!(t.get(cancel).is_some(), "the CANCEL runs on by itself");
    }
}
