//! Dialogs (RFC 3261 §12) bound to their parties: the table that says which in-dialog
//! requests sipward carries, from whom, and to whom.
//!
//! A dialog is made by an INVITE that was authorised and admitted (early at a tagged
//! provisional answer, confirmed at the 2xx), and is keyed by its Call-ID and both tags.
//! It holds both parties: who they are (an extension, a trunk, or sipward itself on a
//! back-to-back leg) and the flow each is reached on. An in-dialog request is carried
//! only when it comes from one party's flow, and only to the other party's flow: the
//! Request-URI and Route headers a peer writes are carried along but never decide where
//! anything goes. A dialog ends at BYE, a final failure, a timeout or its maximum
//! duration; an ended dialog is remembered for [`ENDED_KEPT`] so that anything that
//! refers to it gets 481, and the table is bounded ([`MAX_DIALOGS`]).
//!
//! Nothing here is a credential: Call-IDs and tags only find a dialog; the flow a
//! request came on is what is checked.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use policy::dialplan::{CallClass, ClassOfService};
use sha2::Sha256;

use crate::flow::Flow;

/// Dialogs at once (early, confirmed and recently ended).
pub const MAX_DIALOGS: usize = 65_536;
/// How long an ended dialog is remembered (64·T1: longer than any retransmission of
/// the requests that ended it).
pub const ENDED_KEPT: Duration = Duration::from_secs(32);
/// An early dialog that no 2xx confirmed within this is over (longer than any ring time).
pub const EARLY_MAX: Duration = Duration::from_secs(15 * 60);
/// Early dialogs one branch of a call may make (one per To tag of its tagged
/// provisional answers). A phone or a forking server downstream makes one or two; a
/// callee sending a new tag with every 180 must not fill the table. Further tags make
/// no dialog: their provisional is still passed on (RFC 3261 §16.7), and a 2xx with
/// such a tag still makes its dialog when it comes (one per answer).
pub const MAX_EARLY_PER_BRANCH: usize = 4;
/// A confirmed dialog older than this is over: phones that vanish without a BYE must not
/// fill the table (longer than the longest maximum call duration a class may have).
pub const CONFIRMED_MAX: Duration = Duration::from_secs(25 * 3600);

/// Unguessable tokens (tags, Call-IDs, cnonces) from a key drawn from the OS CSPRNG
/// and a counter.
#[derive(Debug)]
pub struct Tokens {
    key: [u8; 32],
    counter: AtomicU64,
}

impl Tokens {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key,
            counter: AtomicU64::new(0),
        }
    }

    /// 24 hex digits, distinct for every call, never predictable without the key.
    pub fn next(&self, label: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(label.as_bytes());
        m.update(&n.to_be_bytes());
        hex::encode(&m.finalize().into_bytes()[..12])
    }
}

/// A dialog's handle, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialogId(u64);

/// Who a party of a dialog is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// An extension, by number.
    Extension(String),
    /// A trunk (`gateway:NAME`, `provider:NAME`).
    Trunk(String),
    /// sipward itself: one end of a back-to-back agent's leg.
    Sipward,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Party {
    pub who: Who,
    /// The tag this party puts in its From (and gets in its To).
    pub tag: String,
    /// Where this party is reached; None for sipward itself.
    pub flow: Option<Flow>,
}

/// Where a dialog is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A tagged provisional answer, no 2xx yet.
    Early,
    Confirmed,
    /// A BYE is on its way (a party's, or sipward's own): nothing but that BYE and
    /// ACKs are carried any more.
    Terminating,
    /// Over; kept a while so that requests referring to it get 481.
    Ended,
}

/// Which leg of a back-to-back call a dialog is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leg {
    /// Between the phone and sipward.
    A,
    /// Between sipward and the trunk.
    B,
}

/// What made the dialog, and so who handles its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A call the proxy forwarded: requests pass between the two parties.
    Proxied,
    /// One leg of a back-to-back call (its id in the B2BUA).
    Trunk { call: u64, leg: Leg },
    /// A caller and sipward's voicemail (the call's id in `crate::voicemail`).
    Voicemail { call: u64 },
}

/// One party of a proxied dialog as sipward must name it to end the dialog itself
/// (RFC 3261 §12.2.1.1): the URI its From/To carries, the target its Contact gave (the
/// Request-URI of a request to it), and the highest CSeq it has sent in the dialog (a
/// request to the *other* party must go above it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartyState {
    pub uri: String,
    pub target: String,
    pub cseq: Option<u32>,
}

/// Both parties' [`PartyState`], recorded when a proxied dialog is confirmed. No route
/// set is kept: sipward relays in-dialog requests without Route headers, so a request
/// it sends itself carries none either.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ends {
    pub caller: PartyState,
    pub callee: PartyState,
}

impl Ends {
    pub fn of(&self, side: Side) -> &PartyState {
        match side {
            Side::Caller => &self.caller,
            Side::Callee => &self.callee,
        }
    }

    fn of_mut(&mut self, side: Side) -> &mut PartyState {
        match side {
            Side::Caller => &mut self.caller,
            Side::Callee => &mut self.callee,
        }
    }
}

/// A dialog as the table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    pub id: DialogId,
    pub call_id: String,
    /// The party that sent the INVITE.
    pub caller: Party,
    /// The party that answered it.
    pub callee: Party,
    pub phase: Phase,
    pub kind: Kind,
    /// The class the call was admitted as (internal, national, ...).
    pub class: Option<CallClass>,
    /// The class of service it was admitted under (the caller's, or a transfer's
    /// referrer's); None for calls from trunks.
    pub class_of_service: Option<ClassOfService>,
    /// For a trunk call: the number that leaves, in E.164.
    pub e164: Option<String>,
    pub started: Instant,
    pub answered: Option<Instant>,
    pub ended: Option<Instant>,
    /// For a confirmed proxied dialog: what a BYE to either party needs.
    pub ends: Option<Box<Ends>>,
    /// sipward itself is ending this proxied dialog (its parties' credentials were
    /// revoked): its own BYE to each party may go (see [`Dialogs::permits`]).
    pub closing: bool,
}

/// Which party a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Caller,
    Callee,
}

impl Dialog {
    pub fn party(&self, side: Side) -> &Party {
        match side {
            Side::Caller => &self.caller,
            Side::Callee => &self.callee,
        }
    }

    pub fn other(&self, side: Side) -> &Party {
        match side {
            Side::Caller => &self.callee,
            Side::Callee => &self.caller,
        }
    }

    /// Whether a request in it still carries anything (not Terminating or Ended).
    pub fn live(&self) -> bool {
        matches!(self.phase, Phase::Early | Phase::Confirmed)
    }
}

/// What a new dialog starts with.
#[derive(Clone, Debug)]
pub struct NewDialog {
    pub call_id: String,
    pub caller: Party,
    pub callee: Party,
    pub phase: Phase,
    pub kind: Kind,
    pub class: Option<CallClass>,
    pub class_of_service: Option<ClassOfService>,
    pub e164: Option<String>,
}

/// Why an in-dialog message may not go where it was meant to (the egress rule's
/// reason labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no dialog has this Call-ID and these tags")]
    NoDialog,
    #[error("the dialog has ended")]
    Ended,
    #[error("the message does not come from one party of the dialog")]
    NotFromAParty,
    #[error("the destination is not the other party's flow")]
    NotToTheOtherParty,
}

/// The dialog table was full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the dialog table is full")]
pub struct Full;

#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<DialogId, Dialog>,
    by_call_id: HashMap<String, Vec<DialogId>>,
    /// Ended dialogs, in the order they ended: the ones a full table drops first, in
    /// O(1) (lazy: an id already gone is skipped).
    ended: VecDeque<DialogId>,
    next: u64,
}

impl Table {
    fn find(&self, call_id: &str, from_tag: &str, to_tag: &str) -> Option<(DialogId, Side)> {
        self.by_call_id.get(call_id)?.iter().find_map(|id| {
            let d = self.by_id.get(id)?;
            if d.caller.tag == from_tag && d.callee.tag == to_tag {
                Some((*id, Side::Caller))
            } else if d.callee.tag == from_tag && d.caller.tag == to_tag {
                Some((*id, Side::Callee))
            } else {
                None
            }
        })
    }

    fn remove(&mut self, id: DialogId) -> Option<Dialog> {
        let d = self.by_id.remove(&id)?;
        if let Some(ids) = self.by_call_id.get_mut(&d.call_id) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_call_id.remove(&d.call_id);
            }
        }
        Some(d)
    }
}

/// Every dialog sipward carries. Short internal locks; nothing is called back while one
/// is held.
#[derive(Debug)]
pub struct Dialogs {
    table: Mutex<Table>,
    capacity: usize,
}

impl Default for Dialogs {
    fn default() -> Self {
        Self::new(MAX_DIALOGS)
    }
}

impl Dialogs {
    pub fn new(capacity: usize) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// The sizes of the table's indexes, for `/metrics` (each must stay flat under
    /// steady load: the soak suite watches them).
    pub fn table_sizes(&self) -> [(&'static str, usize); 3] {
        let t = self.lock();
        [
            ("dialogs", t.by_id.len()),
            ("dialogs_by_call_id", t.by_call_id.len()),
            ("dialogs_ended", t.ended.len()),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts a dialog. A full table refuses, after dropping the dialog that ended
    /// first, if any: O(1), whatever the table holds, so that a flood of dialogs
    /// cannot make every creation scan the table under the lock.
    pub fn create(&self, d: NewDialog, now: Instant) -> Result<DialogId, Full> {
        let mut t = self.lock();
        while t.by_id.len() >= self.capacity {
            let Some(old) = t.ended.pop_front() else {
                return Err(Full);
            };
            if t.by_id.get(&old).is_some_and(|d| d.phase == Phase::Ended) {
                t.remove(old);
            }
        }
        t.next += 1;
        let id = DialogId(t.next);
        let answered = (d.phase == Phase::Confirmed).then_some(now);
        t.by_call_id.entry(d.call_id.clone()).or_default().push(id);
        t.by_id.insert(
            id,
            Dialog {
                id,
                call_id: d.call_id,
                caller: d.caller,
                callee: d.callee,
                phase: d.phase,
                kind: d.kind,
                class: d.class,
                class_of_service: d.class_of_service,
                e164: d.e164,
                started: now,
                answered,
                ended: (d.phase == Phase::Ended).then_some(now),
                ends: None,
                closing: false,
            },
        );
        if d.phase == Phase::Ended {
            t.ended.push_back(id);
        }
        Ok(id)
    }

    /// The dialog a message with this Call-ID, From tag and To tag belongs to, and
    /// which party its From names.
    pub fn find(&self, call_id: &str, from_tag: &str, to_tag: &str) -> Option<(Dialog, Side)> {
        let t = self.lock();
        let (id, side) = t.find(call_id, from_tag, to_tag)?;
        t.by_id.get(&id).map(|d| (d.clone(), side))
    }

    pub fn get(&self, id: DialogId) -> Option<Dialog> {
        self.lock().by_id.get(&id).cloned()
    }

    /// The 2xx arrived: the dialog is confirmed (and answered now).
    pub fn confirm(&self, id: DialogId, now: Instant) {
        if let Some(d) = self.lock().by_id.get_mut(&id)
            && d.phase == Phase::Early
        {
            d.phase = Phase::Confirmed;
            d.answered = Some(now);
        }
    }

    /// Records what sipward needs to end a confirmed proxied dialog itself.
    pub fn record_ends(&self, id: DialogId, ends: Ends) {
        if let Some(d) = self.lock().by_id.get_mut(&id) {
            d.ends = Some(Box::new(ends));
        }
    }

    /// A request with CSeq `cseq` from `side` passed: the BYE sipward may send to the
    /// other party must go above it.
    pub fn saw_cseq(&self, id: DialogId, side: Side, cseq: u32) {
        if let Some(d) = self.lock().by_id.get_mut(&id)
            && let Some(ends) = d.ends.as_mut()
        {
            let seen = &mut ends.of_mut(side).cseq;
            *seen = Some(seen.map_or(cseq, |s| s.max(cseq)));
        }
    }

    /// sipward ends the confirmed proxied dialog `id` itself: it becomes Terminating
    /// and sipward's own BYEs to its parties are permitted. Returns the dialog as it
    /// was to build them from; None when it is not a confirmed proxied dialog with its
    /// ends recorded (anything else is ending already, or is no call of the proxy's).
    pub fn close(&self, id: DialogId) -> Option<Dialog> {
        let mut t = self.lock();
        let d = t.by_id.get_mut(&id)?;
        if d.kind != Kind::Proxied || d.phase != Phase::Confirmed || d.ends.is_none() {
            return None;
        }
        let was = d.clone();
        d.phase = Phase::Terminating;
        d.closing = true;
        Some(was)
    }

    /// A BYE is on its way: from now on only it (and ACKs) are carried.
    pub fn terminating(&self, id: DialogId) {
        if let Some(d) = self.lock().by_id.get_mut(&id)
            && d.phase != Phase::Ended
        {
            d.phase = Phase::Terminating;
        }
    }

    /// The dialog is over.
    pub fn end(&self, id: DialogId, now: Instant) {
        let mut t = self.lock();
        if let Some(d) = t.by_id.get_mut(&id)
            && d.phase != Phase::Ended
        {
            d.phase = Phase::Ended;
            d.ended = Some(now);
            t.ended.push_back(id);
        }
    }

    /// Forgets dialogs ended [`ENDED_KEPT`] ago or more, and ends early dialogs older
    /// than [`EARLY_MAX`] and confirmed ones older than [`CONFIRMED_MAX`].
    pub fn sweep(&self, now: Instant) {
        let mut t = self.lock();
        let mut stale_ids = Vec::new();
        for d in t.by_id.values_mut() {
            let age = now.saturating_duration_since(d.started);
            let stale = match d.phase {
                Phase::Early => age >= EARLY_MAX,
                Phase::Confirmed | Phase::Terminating => age >= CONFIRMED_MAX,
                Phase::Ended => false,
            };
            if stale {
                d.phase = Phase::Ended;
                d.ended = Some(now);
                stale_ids.push(d.id);
            }
        }
        t.ended.extend(stale_ids);
        let gone: Vec<DialogId> = t
            .by_id
            .values()
            .filter(|d| {
                d.ended
                    .is_some_and(|e| now.saturating_duration_since(e) >= ENDED_KEPT)
            })
            .map(|d| d.id)
            .collect();
        for id in gone {
            t.remove(id);
        }
        // Ids of dialogs already gone, oldest first, go from the eviction queue too.
        while let Some(id) = t.ended.front() {
            if t.by_id.contains_key(id) {
                break;
            }
            t.ended.pop_front();
        }
    }

    /// The dialogs one party is in that are not over (for ending an extension's calls).
    pub fn of(&self, who: &Who) -> Vec<DialogId> {
        self.lock()
            .by_id
            .values()
            .filter(|d| d.phase != Phase::Ended && (&d.caller.who == who || &d.callee.who == who))
            .map(|d| d.id)
            .collect()
    }

    /// The egress rule for a request within a dialog: the dialog named by `call_id`
    /// and the tags exists and has not ended; the To tag's party is reached on `to`;
    /// the From tag's party is the sender, on `from` (a message carried for a peer), or
    /// sipward itself (`None`: a message of sipward's own leg). While the dialog ends,
    /// only `BYE` and `ACK` still go. One more case for `None`: a BYE sipward sends
    /// in a party's name to the other party of a proxied dialog it is closing
    /// ([`Dialogs::close`], when credentials are revoked), and nothing else in its name.
    pub fn permits(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        method: &str,
        from: Option<&Flow>,
        to: &Flow,
    ) -> Result<(), Refusal> {
        let t = self.lock();
        let (id, side) = t.find(call_id, from_tag, to_tag).ok_or(Refusal::NoDialog)?;
        let d = t.by_id.get(&id).ok_or(Refusal::NoDialog)?;
        match d.phase {
            Phase::Ended => return Err(Refusal::Ended),
            Phase::Terminating if !matches!(method, "BYE" | "ACK") => {
                return Err(Refusal::Ended);
            }
            _ => {}
        }
        let sender = d.party(side);
        let recipient = d.other(side);
        let sender_ok = match (from, &sender.flow) {
            (Some(f), Some(own)) => own.same_peer(f),
            (None, None) => sender.who == Who::Sipward,
            (None, Some(_)) => d.closing && d.kind == Kind::Proxied && method == "BYE",
            _ => false,
        };
        if !sender_ok {
            return Err(Refusal::NotFromAParty);
        }
        if !recipient.flow.is_some_and(|f| f.same_peer(to)) {
            return Err(Refusal::NotToTheOtherParty);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(s: &str) -> Flow {
        Flow::udp(s.parse().expect("addr"))
    }

    fn ext(number: &str, tag: &str, at: &str) -> Party {
        Party {
            who: Who::Extension(number.into()),
            tag: tag.into(),
            flow: Some(flow(at)),
        }
    }

    fn call(d: &Dialogs, now: Instant) -> DialogId {
        d.create(
            NewDialog {
                call_id: "c1".into(),
                caller: ext("1001", "ta", "192.0.2.1:5060"),
                callee: ext("1002", "tb", "192.0.2.2:5060"),
                phase: Phase::Early,
                kind: Kind::Proxied,
                class: Some(CallClass::Internal),
                class_of_service: Some(ClassOfService::National),
                e164: None,
            },
            now,
        )
        .expect("room")
    }

    #[test]
    fn requests_go_only_from_one_party_to_the_other() {
        let t0 = Instant::now();
        let d = Dialogs::default();
        let id = call(&d, t0);
        let (a, b, third) = (
            flow("192.0.2.1:5060"),
            flow("192.0.2.2:5060"),
            flow("192.0.2.66:5060"),
        );
        // Found by Call-ID and tags, in either direction.
        assert_eq!(d.find("c1", "ta", "tb").map(|x| x.1), Some(Side::Caller));
        assert_eq!(d.find("c1", "tb", "ta").map(|x| x.1), Some(Side::Callee));
        assert!(d.find("c1", "ta", "tx").is_none());
        assert!(d.find("c2", "ta", "tb").is_none());
        // Each party to the other.
        assert_eq!(d.permits("c1", "ta", "tb", "BYE", Some(&a), &b), Ok(()));
        assert_eq!(d.permits("c1", "tb", "ta", "INFO", Some(&b), &a), Ok(()));
        // A third address, as sender or as destination.
        assert_eq!(
            d.permits("c1", "ta", "tb", "INVITE", Some(&third), &b),
            Err(Refusal::NotFromAParty)
        );
        assert_eq!(
            d.permits("c1", "ta", "tb", "INVITE", Some(&a), &third),
            Err(Refusal::NotToTheOtherParty)
        );
        // The other party's address, in the caller's name.
        assert_eq!(
            d.permits("c1", "ta", "tb", "REFER", Some(&b), &b),
            Err(Refusal::NotFromAParty)
        );
        // The same address over another transport is another flow.
        let tcp = Flow::tcp(a.remote, crate::flow::ConnId(9));
        assert_eq!(
            d.permits("c1", "ta", "tb", "BYE", Some(&tcp), &b),
            Err(Refusal::NotFromAParty)
        );
        // sipward is no party of a proxied dialog.
        assert_eq!(
            d.permits("c1", "ta", "tb", "BYE", None, &b),
            Err(Refusal::NotFromAParty)
        );
        assert_eq!(
            d.permits("c1", "ta", "tx", "BYE", Some(&a), &b),
            Err(Refusal::NoDialog)
        );
        // Ending: the BYE goes, nothing else; ended: nothing, then forgotten.
        d.confirm(id, t0);
        d.terminating(id);
        assert_eq!(d.permits("c1", "ta", "tb", "BYE", Some(&a), &b), Ok(()));
        assert_eq!(
            d.permits("c1", "ta", "tb", "INVITE", Some(&a), &b),
            Err(Refusal::Ended)
        );
        d.end(id, t0 + Duration::from_secs(1));
        assert_eq!(
            d.permits("c1", "ta", "tb", "BYE", Some(&a), &b),
            Err(Refusal::Ended)
        );
        d.sweep(t0 + Duration::from_secs(10));
        assert_eq!(d.len(), 1, "remembered a while");
        d.sweep(t0 + Duration::from_secs(34));
        assert!(d.is_empty());
        assert_eq!(
            d.permits("c1", "ta", "tb", "BYE", Some(&a), &b),
            Err(Refusal::NoDialog)
        );
    }

    #[test]
    fn sipward_sends_only_a_bye_and_only_in_a_proxied_dialog_it_closes() {
        let t0 = Instant::now();
        let d = Dialogs::default();
        let id = call(&d, t0);
        let (a, b, third) = (
            flow("192.0.2.1:5060"),
            flow("192.0.2.2:5060"),
            flow("192.0.2.66:5060"),
        );
        // Early, or confirmed without its ends recorded: nothing to close.
        assert!(d.close(id).is_none());
        d.confirm(id, t0);
        assert!(d.close(id).is_none());
        let ends = Ends {
            caller: PartyState {
                uri: "sip:1001@pbx".into(),
                target: "sip:1001@192.0.2.1".into(),
                cseq: Some(2),
            },
            callee: PartyState {
                uri: "sip:1002@pbx".into(),
                target: "sip:1002@192.0.2.2".into(),
                cseq: None,
            },
        };
        d.record_ends(id, ends);
        d.saw_cseq(id, Side::Callee, 7);
        d.saw_cseq(id, Side::Caller, 1);
        // Denied while the dialog is not closing: sipward is no party of it.
        assert_eq!(
            d.permits("c1", "ta", "tb", "BYE", None, &b),
            Err(Refusal::NotFromAParty)
        );
        let was = d.close(id).expect("closes");
        let seen = was.ends.expect("ends");
        assert_eq!((seen.caller.cseq, seen.callee.cseq), (Some(2), Some(7)));
        assert_eq!(d.get(id).map(|x| x.phase), Some(Phase::Terminating));
        assert!(d.close(id).is_none(), "closed once");
        // A BYE in either party's name, to the other party's flow...
        assert_eq!(d.permits("c1", "ta", "tb", "BYE", None, &b), Ok(()));
        assert_eq!(d.permits("c1", "tb", "ta", "BYE", None, &a), Ok(()));
        // ...and nothing else: no other method, no other destination, no ACK.
        for method in ["INVITE", "INFO", "REFER", "ACK"] {
            assert!(
                d.permits("c1", "ta", "tb", method, None, &b).is_err(),
                "{method}"
            );
        }
        assert_eq!(
            d.permits("c1", "ta", "tb", "BYE", None, &third),
            Err(Refusal::NotToTheOtherParty)
        );
        assert_eq!(
            d.permits("c1", "ta", "tb", "BYE", None, &a),
            Err(Refusal::NotToTheOtherParty)
        );
        // Once ended, not even that.
        d.end(id, t0);
        assert_eq!(
            d.permits("c1", "ta", "tb", "BYE", None, &b),
            Err(Refusal::Ended)
        );
    }

    #[test]
    fn dialogs_nobody_ends_are_ended_in_time() {
        let t0 = Instant::now();
        let d = Dialogs::default();
        let early = call(&d, t0);
        let confirmed = call(&d, t0);
        d.confirm(confirmed, t0);
        d.sweep(t0 + EARLY_MAX);
        assert_eq!(d.get(early).map(|x| x.phase), Some(Phase::Ended));
        assert_eq!(d.get(confirmed).map(|x| x.phase), Some(Phase::Confirmed));
        d.sweep(t0 + CONFIRMED_MAX);
        assert_eq!(d.get(confirmed).map(|x| x.phase), Some(Phase::Ended));
        d.sweep(t0 + CONFIRMED_MAX + ENDED_KEPT);
        assert!(d.is_empty());
    }

    #[test]
    fn a_back_to_back_leg_has_sipward_as_a_party() {
        let t0 = Instant::now();
        let d = Dialogs::default();
        let trunk = flow("192.0.2.7:5060");
        d.create(
            NewDialog {
                call_id: "leg-b".into(),
                caller: Party {
                    who: Who::Sipward,
                    tag: "ours".into(),
                    flow: None,
                },
                callee: Party {
                    who: Who::Trunk("gateway:pstn".into()),
                    tag: "theirs".into(),
                    flow: Some(trunk),
                },
                phase: Phase::Confirmed,
                kind: Kind::Trunk {
                    call: 1,
                    leg: Leg::B,
                },
                class: Some(CallClass::National),
                class_of_service: Some(ClassOfService::National),
                e164: Some("+12125550123".into()),
            },
            t0,
        )
        .expect("room");
        assert_eq!(
            d.permits("leg-b", "ours", "theirs", "BYE", None, &trunk),
            Ok(())
        );
        assert_eq!(
            d.permits("leg-b", "theirs", "ours", "BYE", Some(&trunk), &trunk),
            Err(Refusal::NotToTheOtherParty),
            "sipward is reached by no flow"
        );
        assert_eq!(d.of(&Who::Trunk("gateway:pstn".into())).len(), 1);
        assert!(d.of(&Who::Extension("1001".into())).is_empty());
    }

    #[test]
    fn a_full_table_drops_the_dialog_that_ended_first_and_sweeps_its_queue() {
        let t0 = Instant::now();
        let d = Dialogs::new(3);
        let a = call(&d, t0);
        let b = call(&d, t0);
        let c = call(&d, t0);
        d.end(b, t0);
        d.end(a, t0);
        assert!(call_result(&d, t0).is_ok(), "b ended first and goes");
        assert!(d.get(b).is_none());
        assert!(d.get(a).is_some());
        d.sweep(t0 + ENDED_KEPT);
        assert!(d.get(a).is_none(), "swept");
        assert!(
            d.lock().ended.is_empty(),
            "the queue holds no id of a gone dialog"
        );
        assert!(call_result(&d, t0).is_ok());
        assert!(call_result(&d, t0).is_err(), "nothing ended: full");
        assert!(d.get(c).is_some());
    }

    #[test]
    fn the_table_is_bounded_and_makes_room_from_ended_dialogs() {
        let t0 = Instant::now();
        let d = Dialogs::new(2);
        let first = call(&d, t0);
        call(&d, t0);
        assert!(call_result(&d, t0).is_err());
        d.end(first, t0);
        assert!(call_result(&d, t0).is_ok());
    }

    fn call_result(d: &Dialogs, now: Instant) -> Result<DialogId, Full> {
        d.create(
            NewDialog {
                call_id: "c9".into(),
                caller: ext("1001", "x", "192.0.2.1:5060"),
                callee: ext("1002", "y", "192.0.2.2:5060"),
                phase: Phase::Early,
                kind: Kind::Proxied,
                class: None,
                class_of_service: None,
                e164: None,
            },
            now,
        )
    }

    #[test]
    fn tokens_are_distinct() {
        let t = Tokens::new([1; 32]);
        assert_ne!(t.next("tag"), t.next("tag"));
        assert_eq!(t.next("x").len(), 24);
    }
}
