//! Calls to trunks, as a signalling back-to-back user agent (RFC 3261 §6 "B2BUA"): the
//! extension's INVITE (leg A) is answered by sipward, and sipward places a call of its
//! own to the gateway or provider (leg B) with its own Call-ID, tags and CSeq, its own
//! identity (the provider account, or the extension as caller ID at a gateway) and the
//! trunk's credentials when the trunk challenges (answered once). The SDP is passed
//! through, so media flows between the phone and the trunk. Nothing of the internal
//! network but the SDP reaches the trunk, and the trunk cannot steer the call anywhere
//! else (redirects are never followed, REFER is refused).
//!
//! Both legs live by the transaction rules of `sip::transaction`, driven by the
//! injected clock: the trunk's INVITE is retransmitted until its first provisional
//! answer, and Timer B stops there; ringing is then limited by the caller's class's ring
//! time. A caller who CANCELs, or hangs up in the early dialog, cancels the trunk leg.
//! A 2xx that arrives after the caller has gone (after a CANCEL, Timer B, or the ring
//! limit) is ACKed and ended with a BYE. An answered call lasts at most its class's
//! maximum duration; then sipward sends BYE to both sides. So does it when the
//! credentials of the extension a call is charged to are revoked
//! ([`B2bua::end_calls_of`]; a call still ringing is given up as at its ring limit).
//! Emergency calls are never ended so: whoever is on one keeps it.
//!
//! A call counts against every limit of the account it is charged to (the caller, or the
//! referrer of a transfer) from its INVITE until the trunk leg's final end: while any
//! transaction of leg B lives (a cancelled INVITE waits for its 487, and then 64·T1 for a
//! late 2xx) or its dialog is up.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use policy::dialplan::{CallClass, ClassOfService};
use sip::header::addr::NameAddr;
use sip::header::auth::Challenge;
use sip::header::cseq::CSeq;
use sip::header::split_list;
use sip::msg::{Message, Name, StartLine};
use sip::request::{DialogState, Party as UriParty, RequestBuilder, TopVia, ack_2xx};
use sip::response::ResponseBuilder;
use sip::transaction::{Action, ResponseClass, State, TxId, TxKey};
use store::trunks::ActiveCallRow;

use crate::dialog::{
    DialogId, Kind, Leg, MAX_EARLY_PER_BRANCH, NewDialog, Party, Phase as DialogPhase, Who,
};
use crate::egress::{Delivery, Hops, Owner, Purpose};
use crate::flow::{Flow, our_uri};
use crate::metrics::Metrics;
use crate::proxy::clean_reason;
use crate::signalling::Signalling;
use crate::trunk::Target;

/// Trunk calls at once (bounded like every table); more are answered 503.
pub const MAX_CALLS: usize = 16_384;
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO";

/// A call to a trunk, admitted and routed by the endpoint.
#[derive(Debug)]
pub struct Placed<'a> {
    /// The phone's INVITE as it arrived, its server transaction and flow.
    pub request: &'a [u8],
    pub key: TxKey,
    pub source: Flow,
    /// The calling extension.
    pub caller: String,
    /// The account the call is charged to: the caller, or a transfer's referrer.
    pub counted: String,
    /// The lease the call holds in the store while it counts (`admission::Ledger`).
    pub lease: Option<String>,
    pub dialled: String,
    /// The number as the trunk gets it (after the route's rewrite).
    pub number: String,
    /// That number in E.164.
    pub e164: Option<String>,
    pub class: CallClass,
    /// The class of service it was admitted under (the charged account's).
    pub class_of_service: ClassOfService,
    /// How long it may ring, and last once answered (None: emergency calls).
    pub ring: Duration,
    pub max: Option<Duration>,
    pub target: Target,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Calling,
    Ringing,
    Answered,
    /// The caller has gone or sipward is ending the call; leg B may still be live.
    Ending,
}

/// A request one leg sent that sipward relays to the other: what its answer goes to.
#[derive(Clone, Debug)]
struct Origin {
    leg: Leg,
    request: Vec<u8>,
    key: TxKey,
    source: Flow,
    method: String,
    cseq: u32,
}

#[derive(Clone, Debug)]
enum Role {
    /// A leg B INVITE (the first, or the one with credentials).
    Invite,
    /// A BYE sipward sent on a leg.
    Bye(Leg),
    /// A request relayed to a leg from the other.
    Relay { origin: Origin },
}

/// Leg B's dialog as its 2xx made it (owned, for the requests sipward sends in it).
#[derive(Clone, Debug)]
struct Remote {
    tag: String,
    target: String,
    route_set: Vec<String>,
    dialog: DialogId,
}

#[derive(Debug)]
struct Call {
    id: u64,
    /// What the caller's Request-URI asked of every hop (the trunk's INVITE is held
    /// to it at the egress check).
    hops: Hops,
    counted: String,
    lease: Option<String>,
    caller: String,
    dialled: String,
    e164: Option<String>,
    class: CallClass,
    class_of_service: ClassOfService,
    target: Target,
    phase: Phase,
    started_wall: i64,
    answered_wall: i64,
    ring_until: Instant,
    max: Option<Duration>,
    ends_at: Option<Instant>,
    // Leg A: the phone, sipward is its UAS.
    a_request: Vec<u8>,
    a_key: TxKey,
    a_flow: Flow,
    a_call_id: String,
    a_tag: String,
    a_remote_tag: String,
    a_local_uri: String,
    a_remote_uri: String,
    a_target: String,
    a_cseq: u32,
    a_invite_cseq: u32,
    a_final: bool,
    a_dialog: Option<DialogId>,
    // Leg B: the trunk, sipward is its UAC.
    b_call_id: String,
    b_tag: String,
    b_uri: String,
    b_from: String,
    b_invite: Option<TxId>,
    b_invite_cseq: u32,
    b_cseq: u32,
    b_auth_tried: bool,
    b_early: Vec<(String, DialogId)>,
    b_remote: Option<Remote>,
    /// The ACK sent for the 2xx (sent again for each retransmitted 2xx).
    b_ack: Option<Vec<u8>>,
    /// Leg B waits for the phone's ACK to carry its SDP (a delayed offer).
    b_ack_waits: bool,
    body: Vec<u8>,
    content_type: String,
    /// Live transactions of the call, and of leg B alone (what the limits count).
    txs: HashSet<TxId>,
    b_txs: HashSet<TxId>,
    /// Dialogs sipward made for 2xx answers it did not want (late, or another fork),
    /// ended by their BYE.
    b_hangups: Vec<DialogId>,
    /// Relayed re-INVITEs answered 2xx: the origin's ACK (its leg and CSeq) ends the
    /// origin's transaction (its key) and becomes an ACK on the other leg with our CSeq.
    reinvite_acks: Vec<ReinviteAck>,
    /// The leg B INVITE last sent (to ACK and BYE what its answers make).
    b_invite_bytes: Vec<u8>,
}

impl Call {
    /// Whether the call still counts against the limits: leg B has a transaction
    /// without its final answer (an INVITE that rings, is being cancelled, or was
    /// given up and may still be answered late; a BYE on its way) or a dialog that has
    /// not ended. A failure that was answered and ACKed is over, even while its
    /// transaction lingers to absorb retransmissions.
    ///
    /// A call still waiting for the trunk's final answer (calling or ringing) counts
    /// whatever its transactions say this instant: between a challenge or a 2xx
    /// reaching the transaction and this table hearing of it, no transaction of leg B
    /// is open, and a call must not stop counting for that moment (its lease would be
    /// released under it, and another node's call take its place).
    fn counts(&self, sig: &Signalling) -> bool {
        if matches!(self.phase, Phase::Calling | Phase::Ringing) {
            return true;
        }
        let open = |tx: &TxId| {
            matches!(
                sig.egress.state(*tx),
                Some(State::Calling | State::Trying | State::Proceeding | State::Abandoned)
            )
        };
        self.b_txs.iter().any(open)
            || self
                .b_remote
                .as_ref()
                .and_then(|r| sig.dialogs.get(r.dialog))
                .is_some_and(|d| d.phase != DialogPhase::Ended)
    }

    fn a_dialog_state(&self) -> DialogState<'_> {
        DialogState {
            call_id: &self.a_call_id,
            local_uri: &self.a_local_uri,
            local_tag: &self.a_tag,
            remote_uri: &self.a_remote_uri,
            remote_tag: Some(&self.a_remote_tag),
            remote_target: &self.a_target,
            route_set: Vec::new(),
        }
    }

    fn b_dialog_state(&self) -> Option<DialogState<'_>> {
        let r = self.b_remote.as_ref()?;
        Some(DialogState {
            call_id: &self.b_call_id,
            local_uri: &self.b_from,
            local_tag: &self.b_tag,
            remote_uri: &self.b_uri,
            remote_tag: Some(&r.tag),
            remote_target: &r.target,
            route_set: r.route_set.iter().map(String::as_str).collect(),
        })
    }
}

#[derive(Debug)]
struct ReinviteAck {
    leg: Leg,
    origin_cseq: u32,
    origin_key: TxKey,
    our_cseq: u32,
}

#[derive(Debug, Default)]
struct Calls {
    calls: HashMap<u64, Call>,
    next: u64,
    by_tx: HashMap<TxId, (u64, Role)>,
    by_a_key: HashMap<TxKey, u64>,
}

/// The back-to-back agent; see the module documentation.
#[derive(Debug)]
pub struct B2bua {
    sig: Arc<Signalling>,
    state: Mutex<Calls>,
}

fn cseq_of(m: &Message<'_>) -> Option<u32> {
    m.header(Name::CSeq).and_then(CSeq::parse).map(|c| c.seq)
}

fn body_of<'m>(m: &'m Message<'_>) -> Option<(&'m str, &'m [u8])> {
    let ct = m.header(Name::ContentType)?;
    (!m.body.is_empty()).then_some((ct, m.body))
}

impl B2bua {
    pub fn new(sig: Arc<Signalling>) -> Self {
        Self {
            sig,
            state: Mutex::new(Calls::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Trunk calls charged to `account` that still count (the concurrent-calls limit).
    pub fn active_for(&self, account: &str) -> u32 {
        let st = self.lock();
        let n = st
            .calls
            .values()
            .filter(|c| c.counted == account && c.counts(&self.sig))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The leases of the calls that still count (the others' are released).
    pub fn live_leases(&self) -> HashSet<String> {
        let st = self.lock();
        st.calls
            .values()
            .filter(|c| c.counts(&self.sig))
            .filter_map(|c| c.lease.clone())
            .collect()
    }

    /// Emergency calls up now: of `caller`, and in all.
    pub fn emergencies(&self, caller: &str) -> (u32, u32) {
        let st = self.lock();
        let live: Vec<&Call> = st
            .calls
            .values()
            .filter(|c| c.class == CallClass::Emergency && c.counts(&self.sig))
            .collect();
        let mine = live.iter().filter(|c| c.caller == caller).count();
        (
            u32::try_from(mine).unwrap_or(u32::MAX),
            u32::try_from(live.len()).unwrap_or(u32::MAX),
        )
    }

    /// Whether the phone's INVITE `key` is one of our calls (for CANCEL).
    pub fn owns(&self, key: &TxKey) -> bool {
        self.lock().by_a_key.contains_key(key)
    }

    /// Starts a trunk call for the phone's INVITE (the endpoint has sent 100 Trying).
    /// `Err` carries the status to answer instead.
    pub fn start(&self, p: Placed<'_>) -> Result<(), (u16, &'static str)> {
        let bad = (400, "Bad Request");
        let m = sip::msg::parse(p.request).map_err(|_| bad)?;
        let max_forwards = match m.header(Name::MaxForwards) {
            Some(v) => v.trim().parse::<u32>().map_err(|_| bad)?,
            None => 70,
        };
        if max_forwards == 0 {
            return Err((483, "Too Many Hops"));
        }
        let from = m.header(Name::From).and_then(NameAddr::parse).ok_or(bad)?;
        let to = m.header(Name::To).and_then(NameAddr::parse).ok_or(bad)?;
        let a_target = m
            .header(Name::Contact)
            .and_then(|c| split_list(c).next())
            .and_then(NameAddr::parse)
            .map(|a| a.uri.to_owned())
            .ok_or(bad)?;
        let a_call_id = m.header(Name::CallId).ok_or(bad)?.to_owned();
        let a_invite_cseq = cseq_of(&m).ok_or(bad)?;
        // A sips: call may leave only over TLS, and trunks are reached in the clear: it
        // is refused here, where the trunk is chosen (and the egress check would too).
        let StartLine::Request { uri, .. } = m.start else {
            return Err(bad);
        };
        let hops = Hops::of(uri);
        if !hops.allows(&p.target.flow) {
            return Err((480, "Temporarily Unavailable"));
        }
        // The table is held until the call is in it: the trunk's first answer may come
        // at once, on another thread.
        let mut st = self.lock();
        if st.by_a_key.contains_key(&p.key) {
            return Ok(());
        }
        if st.calls.len() >= MAX_CALLS {
            return Err((503, "Service Unavailable"));
        }
        let now = self.sig.clock.instant();
        let t = &p.target;
        let b_uri = format!("sip:{}@{}", p.number, t.domain);
        let b_from = format!("sip:{}@{}", t.from_user, t.domain);
        let (content_type, body) = body_of(&m)
            .map(|(ct, b)| (ct.to_owned(), b.to_vec()))
            .unwrap_or_default();
        let mut call = Call {
            id: 0,
            hops,
            counted: p.counted,
            lease: p.lease,
            caller: p.caller,
            dialled: p.dialled,
            e164: p.e164,
            class: p.class,
            class_of_service: p.class_of_service,
            target: p.target.clone(),
            phase: Phase::Calling,
            started_wall: self.sig.clock.now(),
            answered_wall: 0,
            ring_until: now + p.ring,
            max: p.max,
            ends_at: None,
            a_request: p.request.to_vec(),
            a_key: p.key.clone(),
            a_flow: p.source,
            a_call_id,
            a_tag: self.sig.token("b2b-tag"),
            a_remote_tag: from.tag().unwrap_or_default().to_owned(),
            a_local_uri: to.uri.to_owned(),
            a_remote_uri: from.uri.to_owned(),
            a_target,
            a_cseq: 0,
            a_invite_cseq,
            a_final: false,
            a_dialog: None,
            b_call_id: format!("{}@sipward", self.sig.token("b2b-call-id")),
            b_tag: self.sig.token("b2b-tag"),
            b_uri,
            b_from,
            b_invite: None,
            b_invite_cseq: 1,
            b_cseq: 1,
            b_auth_tried: false,
            b_early: Vec::new(),
            b_remote: None,
            b_ack: None,
            b_ack_waits: body.is_empty(),
            body,
            content_type,
            txs: HashSet::new(),
            b_txs: HashSet::new(),
            b_hangups: Vec::new(),
            reinvite_acks: Vec::new(),
            b_invite_bytes: Vec::new(),
        };
        st.next += 1;
        call.id = st.next;
        let tx = self
            .send_invite(&mut call, None)
            .ok_or((503, "Service Unavailable"))?;
        st.by_tx.insert(tx, (call.id, Role::Invite));
        st.by_a_key.insert(call.a_key.clone(), call.id);
        st.calls.insert(call.id, call);
        Ok(())
    }

    /// Sends leg B's INVITE (CSeq `b_cseq`), with credentials when given.
    fn send_invite(&self, call: &mut Call, auth: Option<(&str, &str)>) -> Option<TxId> {
        let branch = self.sig.branch();
        let flow = call.target.flow;
        let local = self.sig.local(&flow);
        let contact = our_uri(
            self.sig.bound_for(&flow),
            &flow,
            Some(&call.target.from_user),
        );
        let mut b = RequestBuilder::new("INVITE", &call.b_uri)
            .via(TopVia::new(flow.transport.via_token(), local, &branch))
            .from(UriParty::new(&call.b_from).tag(&call.b_tag))
            .to(UriParty::new(&call.b_uri))
            .call_id(&call.b_call_id)
            .cseq(call.b_cseq)
            .contact(&contact)
            .header("Allow", ALLOW)
            .header("User-Agent", "sipward");
        if let Some((name, value)) = auth {
            b = b.header(name, value);
        }
        if !call.body.is_empty() {
            b = b.body(&call.content_type, &call.body);
        }
        let bytes = b.build().ok()?;
        call.b_invite_bytes = bytes.clone();
        let tx = self
            .sig
            .egress
            .start(
                bytes,
                flow,
                Purpose::Trunk {
                    label: &call.target.label,
                    hops: call.hops,
                },
                Owner::B2bua,
            )
            .ok()?;
        call.b_invite = Some(tx);
        call.b_invite_cseq = call.b_cseq;
        call.txs.insert(tx);
        call.b_txs.insert(tx);
        Some(tx)
    }

    /// A response of ours to the phone's INVITE.
    fn respond_a(&self, call: &mut Call, code: u16, reason: &str, body: Option<(&str, &[u8])>) {
        let Ok(m) = sip::msg::parse(&call.a_request) else {
            return;
        };
        let tag = if code > 100 { call.a_tag.as_str() } else { "" };
        let Ok(mut b) = ResponseBuilder::new(&m, code, reason, call.a_flow.remote, tag) else {
            return;
        };
        if (101..300).contains(&code) {
            b = b.header(
                "Contact",
                &format!(
                    "<{}>",
                    our_uri(self.sig.bound_for(&call.a_flow), &call.a_flow, None)
                ),
            );
        }
        if (200..300).contains(&code) {
            b = b.header("Allow", ALLOW);
        }
        let bytes = match body {
            Some((ct, body)) => b.finish_with_body(ct, body),
            None => b.finish(),
        };
        if (200..300).contains(&code) {
            let _ = self.sig.egress.respond_until_ack(&call.a_key, bytes);
        } else {
            let _ = self.sig.egress.respond(&call.a_key, bytes);
        }
        if code >= 200 {
            call.a_final = true;
        }
    }

    /// A leg A dialog for our tagged answer (early at 1xx, confirmed at 2xx).
    fn a_dialog(&self, call: &mut Call, phase: DialogPhase, now: Instant) {
        match call.a_dialog {
            Some(id) if phase == DialogPhase::Confirmed => self.sig.dialogs.confirm(id, now),
            Some(_) => {}
            None => {
                call.a_dialog = self
                    .sig
                    .dialogs
                    .create(
                        NewDialog {
                            call_id: call.a_call_id.clone(),
                            caller: Party {
                                who: Who::Extension(call.caller.clone()),
                                tag: call.a_remote_tag.clone(),
                                flow: Some(call.a_flow),
                            },
                            callee: Party {
                                who: Who::Sipward,
                                tag: call.a_tag.clone(),
                                flow: None,
                            },
                            phase,
                            kind: Kind::Trunk {
                                call: call.id,
                                leg: Leg::A,
                            },
                            class: Some(call.class),
                            class_of_service: Some(call.class_of_service),
                            e164: call.e164.clone(),
                        },
                        now,
                    )
                    .ok();
            }
        }
    }

    /// A leg B dialog with the trunk's tag.
    fn b_dialog(
        &self,
        call: &Call,
        tag: &str,
        phase: DialogPhase,
        now: Instant,
    ) -> Option<DialogId> {
        self.sig
            .dialogs
            .create(
                NewDialog {
                    call_id: call.b_call_id.clone(),
                    caller: Party {
                        who: Who::Sipward,
                        tag: call.b_tag.clone(),
                        flow: None,
                    },
                    callee: Party {
                        who: Who::Trunk(call.target.label.clone()),
                        tag: tag.to_owned(),
                        flow: Some(call.target.flow),
                    },
                    phase,
                    kind: Kind::Trunk {
                        call: call.id,
                        leg: Leg::B,
                    },
                    class: Some(call.class),
                    class_of_service: Some(call.class_of_service),
                    e164: call.e164.clone(),
                },
                now,
            )
            .ok()
    }

    /// A request of ours within the dialog of `leg` (CSeq moves on).
    fn leg_request(
        &self,
        call: &mut Call,
        leg: Leg,
        method: &str,
        body: Option<(&str, &[u8])>,
    ) -> Option<(Vec<u8>, Flow, u32)> {
        let branch = self.sig.branch();
        let (flow, cseq) = match leg {
            Leg::A => {
                call.a_cseq += 1;
                (call.a_flow, call.a_cseq)
            }
            Leg::B => {
                call.b_cseq += 1;
                (call.target.flow, call.b_cseq)
            }
        };
        let local = self.sig.local(&flow);
        let contact = our_uri(self.sig.bound_for(&flow), &flow, None);
        let ds = match leg {
            Leg::A => call.a_dialog_state(),
            Leg::B => call.b_dialog_state()?,
        };
        let mut b = RequestBuilder::in_dialog(&ds, method, cseq).via(TopVia::new(
            flow.transport.via_token(),
            local,
            &branch,
        ));
        if method == "INVITE" {
            b = b.contact(&contact);
        }
        if let Some((ct, body)) = body {
            b = b.body(ct, body);
        }
        Some((b.build().ok()?, flow, cseq))
    }

    /// Sends a BYE of ours on `leg` (the dialog ends when it is answered or times out).
    fn bye(&self, st: &mut Calls, id: u64, leg: Leg) {
        let Some(call) = st.calls.get_mut(&id) else {
            return;
        };
        let dialog = match leg {
            Leg::A => call.a_dialog,
            Leg::B => call.b_remote.as_ref().map(|r| r.dialog),
        };
        let Some(dialog) = dialog else { return };
        if !self
            .sig
            .dialogs
            .get(dialog)
            .is_some_and(|d| d.phase == DialogPhase::Confirmed)
        {
            return;
        }
        self.sig.dialogs.terminating(dialog);
        let Some((bytes, flow, _)) = self.leg_request(call, leg, "BYE", None) else {
            self.sig.dialogs.end(dialog, self.sig.clock.instant());
            return;
        };
        match self
            .sig
            .egress
            .start(bytes, flow, Purpose::InDialog { from: None }, Owner::B2bua)
        {
            Ok(tx) => {
                call.txs.insert(tx);
                if leg == Leg::B {
                    call.b_txs.insert(tx);
                }
                st.by_tx.insert(tx, (id, Role::Bye(leg)));
            }
            Err(_) => self.sig.dialogs.end(dialog, self.sig.clock.instant()),
        }
    }

    /// Gives up leg B's INVITE (CANCEL); the call still counts until it is over.
    fn cancel_b(&self, call: &Call) {
        if let Some(tx) = call.b_invite
            && self.sig.egress.cancel(tx).is_ok()
        {
            Metrics::inc(&self.sig.metrics.trunk_legs_cancelled);
        }
    }

    /// The caller has gone before an answer: 487 (or `code`) to the phone, leg B
    /// cancelled.
    fn give_up(&self, call: &mut Call, code: u16, reason: &str, now: Instant) {
        if !call.a_final {
            self.respond_a(call, code, reason, None);
        }
        if let Some(id) = call.a_dialog {
            self.sig.dialogs.end(id, now);
        }
        call.phase = Phase::Ending;
        self.cancel_b(call);
    }

    /// The phone CANCELs its INVITE `key` (the endpoint has answered the CANCEL 200).
    pub fn cancel(&self, key: &TxKey) -> bool {
        let now = self.sig.clock.instant();
        let mut st = self.lock();
        let Some(id) = st.by_a_key.get(key).copied() else {
            return false;
        };
        if let Some(call) = st.calls.get_mut(&id)
            && matches!(call.phase, Phase::Calling | Phase::Ringing)
        {
            self.give_up(call, 487, "Request Terminated", now);
        }
        true
    }

    /// A 2xx on leg B that nobody wants (the caller has gone, or another fork already
    /// answered): ACK it and end it with BYE (RFC 3261 §15, and the late-answer attack).
    fn hang_up_answer(&self, st: &mut Calls, id: u64, m: &Message<'_>, now: Instant) {
        let Some(call) = st.calls.get_mut(&id) else {
            return;
        };
        let invite = call.b_invite_bytes.clone();
        let Ok(invite_m) = sip::msg::parse(&invite) else {
            return;
        };
        let Ok(ds) = DialogState::from_answer(&invite_m, m) else {
            return;
        };
        let Some(tag) = ds.remote_tag else { return };
        let Some(dialog) = self.b_dialog(call, tag, DialogPhase::Terminating, now) else {
            return;
        };
        call.b_hangups.push(dialog);
        let flow = call.target.flow;
        let local = self.sig.local(&flow);
        // The ACK carries the CSeq of the INVITE the 2xx answers (an earlier attempt's,
        // for a late answer to the INVITE before the credentials).
        let invite_cseq = cseq_of(m).unwrap_or(call.b_invite_cseq);
        let branch = self.sig.branch();
        if let Ok(ack) = ack_2xx(
            &ds,
            invite_cseq,
            TopVia::new(flow.transport.via_token(), local, &branch),
        )
        .build()
        {
            let _ = self.sig.egress.ack(ack, None, flow);
        }
        call.b_cseq += 1;
        let branch = self.sig.branch();
        let bye = RequestBuilder::in_dialog(&ds, "BYE", call.b_cseq)
            .via(TopVia::new(flow.transport.via_token(), local, &branch))
            .build();
        Metrics::inc(&self.sig.metrics.late_answers_ended);
        match bye.ok().and_then(|b| {
            self.sig
                .egress
                .start(b, flow, Purpose::InDialog { from: None }, Owner::B2bua)
                .ok()
        }) {
            Some(tx) => {
                call.txs.insert(tx);
                call.b_txs.insert(tx);
                st.by_tx.insert(tx, (id, Role::Bye(Leg::B)));
            }
            None => self.sig.dialogs.end(dialog, now),
        }
    }

    /// The trunk answered 2xx.
    fn answered(&self, st: &mut Calls, id: u64, m: &Message<'_>, now: Instant) {
        let to_tag = m
            .header(Name::To)
            .and_then(NameAddr::parse)
            .and_then(|a| a.tag())
            .unwrap_or("");
        let Some(call) = st.calls.get_mut(&id) else {
            return;
        };
        if let Some(r) = &call.b_remote {
            if r.tag == to_tag {
                // A retransmitted 2xx: our ACK was lost.
                if let Some(ack) = call.b_ack.clone() {
                    let _ = self.sig.egress.ack(ack, None, call.target.flow);
                }
                return;
            }
            return self.hang_up_answer(st, id, m, now);
        }
        if call.phase == Phase::Ending || call.a_final {
            return self.hang_up_answer(st, id, m, now);
        }
        let invite = call.b_invite_bytes.clone();
        let Ok(invite_m) = sip::msg::parse(&invite) else {
            return;
        };
        let Ok(ds) = DialogState::from_answer(&invite_m, m) else {
            // An answer that makes no dialog we could ACK: nothing can be done with it.
            return;
        };
        let early = call
            .b_early
            .iter()
            .find(|(t, _)| t == to_tag)
            .map(|(_, d)| *d);
        let dialog = match early {
            Some(d) => {
                self.sig.dialogs.confirm(d, now);
                Some(d)
            }
            None => self.b_dialog(call, to_tag, DialogPhase::Confirmed, now),
        };
        for (t, d) in &call.b_early {
            if t != to_tag {
                self.sig.dialogs.end(*d, now);
            }
        }
        let Some(dialog) = dialog else {
            return self.hang_up_answer(st, id, m, now);
        };
        call.b_remote = Some(Remote {
            tag: to_tag.to_owned(),
            target: ds.remote_target.to_owned(),
            route_set: ds.route_set.iter().map(|r| (*r).to_owned()).collect(),
            dialog,
        });
        call.phase = Phase::Answered;
        call.answered_wall = self.sig.clock.now();
        call.ends_at = call.max.map(|d| now + d);
        if !call.b_ack_waits {
            self.ack_b(call, None);
        }
        let reason = match m.start {
            StartLine::Response { reason, .. } => clean_reason(reason),
            _ => "OK".into(),
        };
        let code = match m.start {
            StartLine::Response { code, .. } => code,
            _ => 200,
        };
        self.respond_a(call, code, &reason, body_of(m));
        self.a_dialog(call, DialogPhase::Confirmed, now);
    }

    /// ACKs leg B's 2xx (with the phone's SDP answer for a delayed offer).
    fn ack_b(&self, call: &mut Call, body: Option<(&str, &[u8])>) {
        let flow = call.target.flow;
        let local = self.sig.local(&flow);
        let branch = self.sig.branch();
        let Some(ds) = call.b_dialog_state() else {
            return;
        };
        let mut b = ack_2xx(
            &ds,
            call.b_invite_cseq,
            TopVia::new(flow.transport.via_token(), local, &branch),
        );
        if let Some((ct, body)) = body {
            b = b.body(ct, body);
        }
        if let Ok(ack) = b.build() {
            let _ = self.sig.egress.ack(ack.clone(), None, flow);
            call.b_ack = Some(ack);
            call.b_ack_waits = false;
        }
    }

    /// An output of one of our client transactions.
    pub fn on_delivery(&self, d: &Delivery, m: Option<&Message<'_>>, now: Instant) {
        let mut st = self.lock();
        let Some((id, role)) = st.by_tx.get(&d.tx).cloned() else {
            return;
        };
        if d.action == Action::Terminated {
            st.by_tx.remove(&d.tx);
            if let Some(call) = st.calls.get_mut(&id) {
                call.txs.remove(&d.tx);
                call.b_txs.remove(&d.tx);
            }
            return;
        }
        let code = m
            .and_then(|m| match m.start {
                StartLine::Response { code, .. } => Some(code),
                _ => None,
            })
            .unwrap_or(0);
        match role {
            Role::Invite => self.invite_event(&mut st, id, d, m, code, now),
            Role::Bye(leg) => {
                if matches!(
                    d.action,
                    Action::Deliver(ResponseClass::Success | ResponseClass::Failure)
                        | Action::TimedOut
                        | Action::TransportFailed
                ) && let Some(call) = st.calls.get(&id)
                {
                    let dialog = match leg {
                        Leg::A => call.a_dialog,
                        Leg::B => call.b_remote.as_ref().map(|r| r.dialog),
                    };
                    if let Some(dialog) = dialog {
                        self.sig.dialogs.end(dialog, now);
                    }
                    // The BYE that ended an unwanted answer.
                    for h in &call.b_hangups {
                        if self
                            .sig
                            .dialogs
                            .get(*h)
                            .is_some_and(|d| d.phase == DialogPhase::Terminating)
                        {
                            self.sig.dialogs.end(*h, now);
                        }
                    }
                }
            }
            Role::Relay { origin } => {
                self.relay_event(&mut st, id, &origin, d, m, code);
            }
        }
    }

    fn invite_event(
        &self,
        st: &mut Calls,
        id: u64,
        d: &Delivery,
        m: Option<&Message<'_>>,
        code: u16,
        now: Instant,
    ) {
        let current = st.calls.get(&id).and_then(|c| c.b_invite) == Some(d.tx);
        match (&d.action, m) {
            (Action::Deliver(ResponseClass::Provisional), Some(m)) if current => {
                let Some(call) = st.calls.get_mut(&id) else {
                    return;
                };
                if code <= 100 || call.phase != Phase::Calling && call.phase != Phase::Ringing {
                    return;
                }
                call.phase = Phase::Ringing;
                if let Some(tag) = m
                    .header(Name::To)
                    .and_then(NameAddr::parse)
                    .and_then(|a| a.tag())
                    && call.b_early.len() < MAX_EARLY_PER_BRANCH
                    && !call.b_early.iter().any(|(t, _)| t == tag)
                    && let Some(dialog) = self.b_dialog(call, tag, DialogPhase::Early, now)
                {
                    call.b_early.push((tag.to_owned(), dialog));
                }
                let reason = match m.start {
                    StartLine::Response { reason, .. } => clean_reason(reason),
                    _ => String::new(),
                };
                self.respond_a(call, code, &reason, body_of(m));
                self.a_dialog(call, DialogPhase::Early, now);
            }
            (Action::Deliver(ResponseClass::Success), Some(m)) => self.answered(st, id, m, now),
            (Action::LateSuccess, Some(m)) => self.hang_up_answer(st, id, m, now),
            (Action::Deliver(ResponseClass::Failure), Some(m)) if current => {
                let Some(call) = st.calls.get_mut(&id) else {
                    return;
                };
                for (_, dialog) in &call.b_early {
                    self.sig.dialogs.end(*dialog, now);
                }
                let waiting = matches!(call.phase, Phase::Calling | Phase::Ringing);
                if matches!(code, 401 | 407) && waiting && !call.b_auth_tried {
                    let (header, answer) = if code == 401 {
                        (Name::WwwAuthenticate, "Authorization")
                    } else {
                        (Name::ProxyAuthenticate, "Proxy-Authorization")
                    };
                    let cnonce = self.sig.token("cnonce");
                    let value = m
                        .header(header)
                        .and_then(|v| Challenge::parse(v).ok())
                        .and_then(|ch| {
                            ch.answer(
                                "INVITE",
                                &call.b_uri,
                                &call.target.auth_id,
                                call.target.password.expose(),
                                &cnonce,
                            )
                        });
                    if let Some(value) = value {
                        call.b_auth_tried = true;
                        call.b_cseq += 1;
                        if let Some(tx) = self.send_invite(call, Some((answer, &value))) {
                            st.by_tx.insert(tx, (id, Role::Invite));
                            return;
                        }
                    }
                }
                if waiting {
                    // The phone gets the trunk's answer, except: credentials refused (a
                    // trunk problem, not the phone's) and redirects (never followed: a
                    // trunk must not steer calls).
                    let (code, reason) = match code {
                        401 | 407 => (503, "Service Unavailable".to_owned()),
                        300..=399 => (480, "Temporarily Unavailable".to_owned()),
                        c => (
                            c,
                            match m.start {
                                StartLine::Response { reason, .. } => clean_reason(reason),
                                _ => String::new(),
                            },
                        ),
                    };
                    self.respond_a(call, code, &reason, None);
                    if let Some(dialog) = call.a_dialog {
                        self.sig.dialogs.end(dialog, now);
                    }
                    call.phase = Phase::Ending;
                }
            }
            (Action::TimedOut | Action::TransportFailed, _) if current => {
                let Some(call) = st.calls.get_mut(&id) else {
                    return;
                };
                for (_, dialog) in &call.b_early {
                    self.sig.dialogs.end(*dialog, now);
                }
                if matches!(call.phase, Phase::Calling | Phase::Ringing) {
                    let (code, reason) = if d.action == Action::TimedOut {
                        (408, "Request Timeout")
                    } else {
                        (503, "Service Unavailable")
                    };
                    self.respond_a(call, code, reason, None);
                    if let Some(dialog) = call.a_dialog {
                        self.sig.dialogs.end(dialog, now);
                    }
                    call.phase = Phase::Ending;
                }
            }
            _ => {}
        }
    }

    fn relay_event(
        &self,
        st: &mut Calls,
        id: u64,
        origin: &Origin,
        d: &Delivery,
        m: Option<&Message<'_>>,
        code: u16,
    ) {
        let Some(call) = st.calls.get_mut(&id) else {
            return;
        };
        let Ok(om) = sip::msg::parse(&origin.request) else {
            return;
        };
        let (code, reason) = match (&d.action, m) {
            (Action::Deliver(_), Some(m)) => (
                code,
                match m.start {
                    StartLine::Response { reason, .. } => clean_reason(reason),
                    _ => String::new(),
                },
            ),
            (Action::TimedOut | Action::TransportFailed, _) => (408, "Request Timeout".into()),
            _ => return,
        };
        if code <= 100 {
            return;
        }
        let Ok(mut b) = ResponseBuilder::new(&om, code, &reason, origin.source.remote, "") else {
            return;
        };
        let reinvite_ok = origin.method == "INVITE" && (200..300).contains(&code);
        if reinvite_ok {
            b = b.header(
                "Contact",
                &format!(
                    "<{}>",
                    our_uri(self.sig.bound_for(&origin.source), &origin.source, None)
                ),
            );
            if let Some(our_cseq) = m.and_then(cseq_of) {
                call.reinvite_acks.push(ReinviteAck {
                    leg: origin.leg,
                    origin_cseq: origin.cseq,
                    origin_key: origin.key.clone(),
                    our_cseq,
                });
            }
        }
        let bytes = match m.and_then(body_of) {
            Some((ct, body)) => b.finish_with_body(ct, body),
            None => b.finish(),
        };
        if reinvite_ok {
            let _ = self.sig.egress.respond_until_ack(&origin.key, bytes);
        } else {
            let _ = self.sig.egress.respond(&origin.key, bytes);
        }
    }

    /// Answers a request of a leg ourselves.
    fn answer(&self, m: &Message<'_>, key: &TxKey, source: &Flow, code: u16, reason: &str) {
        if let Ok(b) = ResponseBuilder::new(m, code, reason, source.remote, "") {
            let _ = self.sig.egress.respond(key, b.finish());
        }
    }

    /// An in-dialog request from a party of one of our legs (the endpoint found the
    /// dialog and checked the flow). It is answered or carried to the other leg here.
    pub fn in_dialog(
        &self,
        m: &Message<'_>,
        bytes: &[u8],
        key: Option<&TxKey>,
        source: &Flow,
        call_id: u64,
        leg: Leg,
    ) {
        let now = self.sig.clock.instant();
        let Some(method) = m.method() else { return };
        let cseq = cseq_of(m).unwrap_or(0);
        let mut st = self.lock();
        let Some(call) = st.calls.get_mut(&call_id) else {
            if let Some(key) = key {
                self.answer(m, key, source, 481, "Call/Transaction Does Not Exist");
            }
            return;
        };
        let other = match leg {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        };
        if method == "ACK" {
            if leg == Leg::A && cseq == call.a_invite_cseq {
                self.sig.egress.acknowledged(&call.a_key);
                if call.phase == Phase::Answered && call.b_ack_waits {
                    let body = body_of(m).map(|(ct, b)| (ct.to_owned(), b.to_vec()));
                    self.ack_b(
                        call,
                        body.as_ref().map(|(ct, b)| (ct.as_str(), b.as_slice())),
                    );
                }
            } else if let Some(i) = call
                .reinvite_acks
                .iter()
                .position(|a| a.leg == leg && a.origin_cseq == cseq)
            {
                let a = call.reinvite_acks.remove(i);
                self.sig.egress.acknowledged(&a.origin_key);
                self.ack_other(call, other, a.our_cseq, body_of(m));
            }
            return;
        }
        let Some(key) = key else { return };
        match method {
            "BYE" => {
                self.answer(m, key, source, 200, "OK");
                match call.phase {
                    Phase::Calling | Phase::Ringing if leg == Leg::A => {
                        // Hung up in the early dialog: the trunk leg is cancelled.
                        self.give_up(call, 487, "Request Terminated", now);
                    }
                    Phase::Answered => {
                        let mine = match leg {
                            Leg::A => call.a_dialog,
                            Leg::B => call.b_remote.as_ref().map(|r| r.dialog),
                        };
                        if let Some(d) = mine {
                            self.sig.dialogs.end(d, now);
                        }
                        call.phase = Phase::Ending;
                        self.bye(&mut st, call_id, other);
                    }
                    Phase::Calling | Phase::Ringing => {
                        // The trunk ended its early dialog: the call is over, and its
                        // INVITE (which may never get a final answer now) is cancelled.
                        for (_, d) in &call.b_early {
                            self.sig.dialogs.end(*d, now);
                        }
                        self.give_up(call, 480, "Temporarily Unavailable", now);
                    }
                    Phase::Ending => {}
                }
            }
            "INVITE" | "UPDATE" | "INFO" if call.phase == Phase::Answered => {
                let origin = Origin {
                    leg,
                    request: bytes.to_vec(),
                    key: key.clone(),
                    source: *source,
                    method: method.to_owned(),
                    cseq,
                };
                let body = body_of(m);
                let Some((out, flow, _)) = self.leg_request(call, other, method, body) else {
                    self.answer(m, key, source, 500, "Server Internal Error");
                    return;
                };
                match self.sig.egress.start(
                    out,
                    flow,
                    Purpose::InDialog { from: None },
                    Owner::B2bua,
                ) {
                    Ok(tx) => {
                        call.txs.insert(tx);
                        if other == Leg::B {
                            call.b_txs.insert(tx);
                        }
                        st.by_tx.insert(tx, (call_id, Role::Relay { origin }));
                    }
                    Err(_) => self.answer(m, key, source, 500, "Server Internal Error"),
                }
            }
            "INVITE" | "UPDATE" | "INFO" => {
                self.answer(m, key, source, 491, "Request Pending");
            }
            // A transfer the trunk would carry out at the owner's cost, or one sipward
            // would place for the phone: refused on trunk calls.
            "REFER" => {
                Metrics::inc(&self.sig.metrics.transfers_refused);
                self.answer(m, key, source, 403, "Forbidden");
            }
            "OPTIONS" => self.answer(m, key, source, 200, "OK"),
            _ => self.answer(m, key, source, 501, "Not Implemented"),
        }
    }

    /// The ACK on `leg` for our re-INVITE with CSeq `cseq` that was answered 2xx.
    fn ack_other(&self, call: &mut Call, leg: Leg, cseq: u32, body: Option<(&str, &[u8])>) {
        let (flow, ds) = match leg {
            Leg::A => (call.a_flow, Some(call.a_dialog_state())),
            Leg::B => (call.target.flow, call.b_dialog_state()),
        };
        let Some(ds) = ds else { return };
        let local = self.sig.local(&flow);
        let branch = self.sig.branch();
        let mut b = ack_2xx(
            &ds,
            cseq,
            TopVia::new(flow.transport.via_token(), local, &branch),
        );
        if let Some((ct, body)) = body {
            b = b.body(ct, body);
        }
        if let Ok(ack) = b.build() {
            let _ = self.sig.egress.ack(ack, None, flow);
        }
    }

    /// Ends every call `number` places or is charged for, but emergency calls (the
    /// extension's credentials were revoked): an answered call gets BYE on both legs,
    /// one still ringing is given up (CANCEL to the trunk, 480 to the phone). Returns
    /// how many calls it ended; each stays in the table, and in `sipward calls`, until
    /// its trunk leg is over.
    pub fn end_calls_of(&self, number: &str, now: Instant) -> usize {
        self.end_calls_where(|c| c.caller == number || c.counted == number, now)
    }

    /// Ends every call through the trunk `label` (the operator removed it or moved it
    /// to another host), but emergency calls, as [`Self::end_calls_of`] does.
    pub fn end_calls_via(&self, label: &str, now: Instant) -> usize {
        self.end_calls_where(|c| c.target.label == label, now)
    }

    /// Ends the call that holds `lease` (its lease lapsed and the concurrent limit is
    /// full again: it would go on uncounted), as [`Self::end_calls_of`] does.
    pub fn end_call_holding(&self, lease: &str, now: Instant) -> usize {
        self.end_calls_where(|c| c.lease.as_deref() == Some(lease), now)
    }

    fn end_calls_where(&self, involved: impl Fn(&Call) -> bool, now: Instant) -> usize {
        let mut st = self.lock();
        let ids: Vec<u64> = st
            .calls
            .values()
            .filter(|c| involved(c) && c.class != CallClass::Emergency && c.phase != Phase::Ending)
            .map(|c| c.id)
            .collect();
        for id in &ids {
            let Some(call) = st.calls.get_mut(id) else {
                continue;
            };
            match call.phase {
                Phase::Calling | Phase::Ringing => {
                    self.give_up(call, 480, "Temporarily Unavailable", now);
                }
                Phase::Answered => {
                    call.phase = Phase::Ending;
                    self.bye(&mut st, *id, Leg::A);
                    self.bye(&mut st, *id, Leg::B);
                }
                Phase::Ending => {}
            }
        }
        ids.len()
    }

    /// sipward's own 2xx to the phone was never ACKed: the call is ended both ways.
    pub fn unacknowledged(&self, key: &TxKey) {
        let now = self.sig.clock.instant();
        let mut st = self.lock();
        let Some(id) = st.by_a_key.get(key).copied() else {
            return;
        };
        let Some(call) = st.calls.get_mut(&id) else {
            return;
        };
        if call.phase != Phase::Answered {
            return;
        }
        call.phase = Phase::Ending;
        if let Some(d) = call.a_dialog {
            self.sig.dialogs.end(d, now);
        }
        self.bye(&mut st, id, Leg::B);
    }

    /// Time-driven work (every tick of the server's timer, with the injected clock's
    /// monotonic reading): the ring limit, the maximum duration, and forgetting calls
    /// that are over.
    pub fn tick(&self, now: Instant) {
        let mut st = self.lock();
        let ids: Vec<u64> = st.calls.keys().copied().collect();
        for id in ids {
            let Some(call) = st.calls.get_mut(&id) else {
                continue;
            };
            match call.phase {
                Phase::Calling | Phase::Ringing if now >= call.ring_until => {
                    self.give_up(call, 480, "Temporarily Unavailable", now);
                }
                Phase::Answered if call.ends_at.is_some_and(|t| now >= t) => {
                    Metrics::inc(&self.sig.metrics.calls_ended_max_duration);
                    call.phase = Phase::Ending;
                    self.bye(&mut st, id, Leg::A);
                    self.bye(&mut st, id, Leg::B);
                }
                // Both legs' dialogs are over (the dialog table ended them: nobody sent
                // a BYE for a day): so is the call.
                Phase::Answered
                    if [call.a_dialog, call.b_remote.as_ref().map(|r| r.dialog)]
                        .iter()
                        .all(|d| {
                            d.and_then(|d| self.sig.dialogs.get(d))
                                .is_none_or(|d| d.phase == DialogPhase::Ended)
                        }) =>
                {
                    call.phase = Phase::Ending;
                }
                _ => {}
            }
        }
        let dialogs = &self.sig.dialogs;
        let over: Vec<u64> = st
            .calls
            .values()
            .filter(|c| {
                c.phase == Phase::Ending
                    && c.txs.is_empty()
                    && !c.counts(&self.sig)
                    && c.a_dialog
                        .and_then(|d| dialogs.get(d))
                        .is_none_or(|d| d.phase == DialogPhase::Ended)
            })
            .map(|c| c.id)
            .collect();
        for id in over {
            if let Some(call) = st.calls.remove(&id) {
                st.by_a_key.remove(&call.a_key);
            }
        }
    }

    /// The trunk calls that count now, for `sipward calls`.
    pub fn snapshot(&self) -> Vec<ActiveCallRow> {
        let st = self.lock();
        let mut rows: Vec<ActiveCallRow> = st
            .calls
            .values()
            .filter(|c| c.counts(&self.sig))
            .map(|c| ActiveCallRow {
                id: format!("{:x}", c.id),
                caller: c.caller.clone(),
                callee: c.dialled.clone(),
                kind: if c.class == CallClass::Emergency {
                    "emergency".into()
                } else {
                    "outbound".into()
                },
                trunk: c.target.label.clone(),
                state: match c.phase {
                    Phase::Calling => "setup",
                    Phase::Ringing => "ringing",
                    Phase::Answered => "answered",
                    Phase::Ending => "ending",
                }
                .into(),
                started_at: c.started_wall,
                answered_at: c.answered_wall,
            })
            .collect();
        rows.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        rows
    }

    /// Calls in the table (for tests).
    pub fn call_count(&self) -> usize {
        self.lock().calls.len()
    }

    /// The sizes of the B2BUA's tables, for `/metrics`.
    pub fn table_sizes(&self) -> [(&'static str, usize); 3] {
        let st = self.lock();
        [
            ("trunk_calls", st.calls.len()),
            ("trunk_call_transactions", st.by_tx.len()),
            ("trunk_call_keys", st.by_a_key.len()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::tests::{Rig, addr, rig};
    use crate::trunk::Routed;
    use policy::clock::Clock;

    const INVITE: &str = "INVITE sip:12125550123@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKphone1;rport\r\n\
        From: <sip:1001@pbx>;tag=p1\r\nTo: <sip:12125550123@pbx>\r\nCall-ID: phone-call-1\r\n\
        CSeq: 2 INVITE\r\nContact: <sip:1001@192.0.2.1:5062>\r\nMax-Forwards: 70\r\n\
        Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0";

    fn phone() -> Flow {
        Flow::udp(addr("192.0.2.1:5062"))
    }

    fn trunk() -> Flow {
        Flow::udp(addr("192.0.2.7:5060"))
    }

    /// A B2BUA on the rig with the phone's INVITE placed towards the gateway.
    fn placed(r: &Rig) -> B2bua {
        let b = B2bua::new(r.signalling());
        let m = sip::msg::parse(INVITE.as_bytes()).expect("parse");
        let key = TxKey::of(&m).expect("key");
        r.egress.arrived(&key, phone(), r.clock.instant());
        let trunks = crate::trunk::tests::trunks();
        let Routed::To(target, number) = trunks.route("12125550123", "1001", |_| None) else {
            panic!("routed")
        };
        b.start(Placed {
            request: INVITE.as_bytes(),
            key,
            source: phone(),
            caller: "1001".into(),
            counted: "1001".into(),
            lease: None,
            dialled: "12125550123".into(),
            number,
            e164: Some("+12125550123".into()),
            class: CallClass::National,
            class_of_service: ClassOfService::National,
            ring: Duration::from_secs(180),
            max: Some(Duration::from_secs(7200)),
            target,
        })
        .expect("started");
        b
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).expect("utf8")
    }

    fn header<'a>(msg: &'a str, name: &str) -> &'a str {
        msg.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or("")
    }

    /// The trunk's answer to `req`, through the egress rule and back to the B2BUA.
    fn feed(r: &Rig, b: &B2bua, req: &str, status: &str, extra: &str) {
        let answer = format!(
            "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=t1\r\nCall-ID: {}\r\nCSeq: {}\r\n\
             {extra}Content-Length: 0\r\n\r\n",
            header(req, "Via"),
            header(req, "From"),
            header(req, "To"),
            header(req, "Call-ID"),
            header(req, "CSeq"),
        );
        let m = sip::msg::parse(answer.as_bytes()).expect("parse");
        let now = r.clock.instant();
        for d in r.egress.on_response(&m, &trunk(), now).expect("matched") {
            b.on_delivery(&d, Some(&m), now);
        }
    }

    #[test]
    fn a_sips_call_is_refused_before_anything_goes_to_a_clear_text_trunk() {
        let r = rig();
        let b = B2bua::new(r.signalling());
        let invite = INVITE.replacen("INVITE sip:", "INVITE sips:", 1);
        let m = sip::msg::parse(invite.as_bytes()).expect("parse");
        let key = TxKey::of(&m).expect("key");
        r.egress.arrived(&key, phone(), r.clock.instant());
        let trunks = crate::trunk::tests::trunks();
        let Routed::To(target, number) = trunks.route("12125550123", "1001", |_| None) else {
            panic!("routed")
        };
        let started = b.start(Placed {
            request: invite.as_bytes(),
            key,
            source: phone(),
            caller: "1001".into(),
            counted: "1001".into(),
            lease: None,
            dialled: "12125550123".into(),
            number,
            e164: Some("+12125550123".into()),
            class: CallClass::National,
            class_of_service: ClassOfService::National,
            ring: Duration::from_secs(180),
            max: Some(Duration::from_secs(7200)),
            target,
        });
        assert_eq!(started, Err((480, "Temporarily Unavailable")));
        assert!(r.wire.take().is_empty(), "nothing went to the trunk");
        assert_eq!(b.call_count(), 0);
    }

    #[test]
    fn a_challenged_call_is_answered_with_the_trunks_credentials_once() {
        let r = rig();
        let b = placed(&r);
        let sent = r.wire.take();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, trunk(), "to the route's trunk");
        let first = text(&sent[0].1);
        assert!(
            first.starts_with("INVITE sip:12125550123@192.0.2.7 SIP/2.0"),
            "{first}"
        );
        assert!(!first.contains("phone-call-1"), "its own Call-ID");
        assert!(first.ends_with("v=0"), "the SDP passes through");
        assert_eq!(b.active_for("1001"), 1);
        // A 407: the transaction ACKs it, and the INVITE goes again with credentials.
        feed(
            &r,
            &b,
            &first,
            "407 Proxy Authentication Required",
            "Proxy-Authenticate: Digest realm=\"gw\", nonce=\"n1\"\r\n",
        );
        let sent = r.wire.take();
        assert!(text(&sent[0].1).starts_with("ACK "), "{sent:?}");
        let second = text(&sent[1].1);
        assert!(second.contains("CSeq: 2 INVITE"), "{second}");
        let creds =
            sip::header::auth::DigestCredentials::parse(header(&second, "Proxy-Authorization"))
                .expect("credentials");
        assert_eq!(creds.username, "gw");
        let ha1 = sip::digest::ha1(sip::digest::Algorithm::Md5, "gw", "gw", "Gw7-secret");
        let input = sip::digest::ResponseInput {
            method: "INVITE",
            uri: &creds.uri,
            nonce: "n1",
            qop_auth: None,
        };
        assert!(sip::digest::verify_response(
            sip::digest::Algorithm::Md5,
            &ha1,
            &input,
            &creds.response
        ));
        // A second challenge is not answered again: the phone gets 503.
        feed(
            &r,
            &b,
            &second,
            "407 Proxy Authentication Required",
            "Proxy-Authenticate: Digest realm=\"gw\", nonce=\"n2\"\r\n",
        );
        let sent = r.wire.take();
        assert_eq!(sent.len(), 2, "ACK to the trunk, final to the phone");
        assert_eq!(sent[1].0, phone());
        let final_answer = text(&sent[1].1);
        assert!(final_answer.starts_with("SIP/2.0 503"), "{final_answer}");
        assert!(final_answer.contains("Call-ID: phone-call-1"));
        assert_eq!(b.active_for("1001"), 0, "a failed and ACKed call is over");
    }

    #[test]
    fn a_trunks_redirect_is_never_followed() {
        let r = rig();
        let b = placed(&r);
        let first = text(&r.wire.take()[0].1);
        feed(
            &r,
            &b,
            &first,
            "302 Moved Temporarily",
            "Contact: <sip:0900123@198.51.100.1>\r\n",
        );
        let sent = r.wire.take();
        assert!(text(&sent[0].1).starts_with("ACK "));
        assert!(text(&sent[1].1).starts_with("SIP/2.0 480"), "not followed");
        assert!(
            sent.iter()
                .all(|(f, bytes)| f.remote.ip().to_string() != "198.51.100.1"
                    && !text(bytes).starts_with("INVITE"))
        );
    }

    #[test]
    fn an_answered_call_maps_bye_across_the_legs() {
        let r = rig();
        let b = placed(&r);
        let first = text(&r.wire.take()[0].1);
        feed(
            &r,
            &b,
            &first,
            "200 OK",
            "Contact: <sip:gw@192.0.2.7:5060>\r\n",
        );
        let sent = r.wire.take();
        // The trunk's 2xx is ACKed at once (the phone's INVITE carried the offer) and
        // the phone gets its own 200 with sipward's tag.
        let ack = sent
            .iter()
            .find(|(_, m)| m.starts_with(b"ACK "))
            .expect("ACK");
        assert_eq!(ack.0, trunk());
        let ok = sent
            .iter()
            .find(|(f, m)| *f == phone() && m.starts_with(b"SIP/2.0 200"))
            .expect("200 to the phone");
        let ok = text(&ok.1);
        let our_tag = header(&ok, "To")
            .split(";tag=")
            .nth(1)
            .expect("tag")
            .to_owned();
        assert_eq!(b.snapshot()[0].state, "answered");
        // The leg A dialog: the phone and sipward.
        let (d, side) = r
            .dialogs
            .find("phone-call-1", "p1", &our_tag)
            .expect("leg A dialog");
        assert_eq!(side, crate::dialog::Side::Caller);
        let crate::dialog::Kind::Trunk { call, leg } = d.kind else {
            panic!("a trunk leg")
        };
        assert_eq!(leg, Leg::A);
        // The phone hangs up: answered 200, BYE to the trunk.
        let bye = format!(
            "BYE sip:x@192.0.2.100 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKbye1;rport\r\n\
             From: <sip:1001@pbx>;tag=p1\r\nTo: <sip:12125550123@pbx>;tag={our_tag}\r\n\
             Call-ID: phone-call-1\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        let m = sip::msg::parse(bye.as_bytes()).expect("parse");
        let key = TxKey::of(&m).expect("key");
        r.egress.arrived(&key, phone(), r.clock.instant());
        b.in_dialog(&m, bye.as_bytes(), Some(&key), &phone(), call, leg);
        let sent = r.wire.take();
        assert!(
            sent.iter()
                .any(|(f, m)| *f == phone() && m.starts_with(b"SIP/2.0 200"))
        );
        let to_trunk = sent
            .iter()
            .find(|(_, m)| m.starts_with(b"BYE "))
            .expect("BYE on leg B");
        assert_eq!(to_trunk.0, trunk());
        assert!(text(&to_trunk.1).starts_with("BYE sip:gw@192.0.2.7:5060 SIP/2.0"));
    }
}
