//! The stateful proxy for calls to extensions (RFC 3261 §16): calls between extensions,
//! and calls from trunks put through by DID.
//!
//! An admitted INVITE is forked to every flow the called extension is registered from
//! (never to its Contact's host), each branch an INVITE client transaction of
//! `sip::transaction` run by the egress rule. Answers go upstream through the caller's
//! server transaction, rebuilt with the caller's own Via headers (nothing is forwarded
//! because of a Via a peer wrote). A tagged provisional answer makes an early dialog, a
//! 2xx confirms it (and the other branches are cancelled); when every branch has failed
//! the best answer goes upstream. A 3xx whose target is outside goes upstream only when
//! the redirecting extension's class may call that target (then the caller's call to it
//! is the callee's); otherwise the caller gets 480. No 3xx goes back to a trunk.
//!
//! sipward Record-Routes, so that requests within the dialog come back through it. Those
//! are relayed only by the dialog table's word: from one party's flow to the other's,
//! each in a client transaction of its own (ACKs of 2xx, which have none, through the
//! egress rule's dialog permit). The Request-URI is carried as the sender wrote it and
//! Route headers are dropped: neither ever decides where a request goes.
//!
//! When an extension's credentials are revoked, its calls end ([`Proxy::end_calls_of`]):
//! a ringing call has its branches cancelled (the caller gets their 487), and an
//! answered one gets a BYE to each party in the other's name, built from what the
//! dialog table recorded at the 2xx (each party's URI and Contact) and since (the
//! highest CSeq each party sent). Emergency calls are never ended so.

use sip::header::addr::{NameAddr, SipUri};
use sip::header::cseq::CSeq;
use sip::header::split_list;
use sip::header::via::Via;
use sip::msg::{Message, Name, StartLine};
use sip::request::{DialogState, RequestBuilder, TopVia};
use sip::response::{ResponseBuilder, top_via_with_source};
use sip::transaction::{Action, ResponseClass, TxId, TxKey};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::dialog::{
    Dialog, DialogId, Dialogs, Ends, Kind, MAX_EARLY_PER_BRANCH, NewDialog, Party, PartyState,
    Phase, Side, Who,
};
use crate::egress::{Delivery, Egress, Hops, Owner, Purpose};
use crate::flow::{Flow, TransportKind, our_uri};
use crate::metrics::Metrics;
use crate::signalling::Signalling;
use crate::transfer::{Transfers, Verdict};

/// Calls the proxy holds at once (bounded like every table); more are answered 503. An
/// answered call stays until its branch's INVITE transaction ends, 32 s after the 2xx
/// (RFC 6026 Timer M, to pass on retransmitted 2xx): 3,000 calls/s hold about 96,000.
pub const MAX_CALLS: usize = 131_072;

/// A call to an extension, admitted by the endpoint.
#[derive(Debug)]
pub struct Placed<'a> {
    /// The caller's INVITE as it arrived.
    pub request: &'a [u8],
    /// Its server transaction.
    pub key: TxKey,
    /// The flow it came on.
    pub source: Flow,
    /// Who calls: an extension, or a trunk (a DID call).
    pub caller: Who,
    /// The called extension's number.
    pub callee: &'a str,
    /// Where it is registered from: (Contact URI, flow); or, with no binding here, the
    /// other nodes that hold one: (`sip:EXT@internal`, a hop flow).
    pub contacts: Vec<(String, Flow)>,
    /// Auto-answer hints may pass (the caller's class allows intercom).
    pub intercom: bool,
    /// How long the callee may ring before the branches are cancelled (RFC 3261 §16.6's
    /// Timer C; the caller's class's ring time).
    pub ring: std::time::Duration,
    /// The call's class and the caller's class of service (None from a trunk):
    /// recorded in the dialog.
    pub class: Option<policy::dialplan::CallClass>,
    pub class_of_service: Option<policy::dialplan::ClassOfService>,
}

#[derive(Debug)]
struct Branch {
    tx: TxId,
    flow: Flow,
    /// A final answer came, or the branch timed out or failed.
    done: bool,
    /// The early dialogs its tagged provisional answers made, by the callee's tag.
    dialogs: Vec<(String, DialogId)>,
}

#[derive(Debug)]
struct Call {
    request: Vec<u8>,
    key: TxKey,
    source: Flow,
    caller: Who,
    /// The caller's From tag.
    caller_tag: String,
    call_id: String,
    callee: String,
    class: Option<policy::dialplan::CallClass>,
    class_of_service: Option<policy::dialplan::ClassOfService>,
    branches: Vec<Branch>,
    /// The best failure so far, rebuilt for upstream (status, bytes).
    best: Option<(u16, Vec<u8>)>,
    answered: bool,
    final_sent: bool,
    cancelled: bool,
    /// When the branches are cancelled if nobody answered (Timer C).
    ring_until: Instant,
    /// When the callee's voicemail takes the call if nobody answered (its
    /// `voicemail_after_secs`); None when it has no voicemail.
    voicemail_at: Option<Instant>,
    /// The branches were cancelled for the voicemail: it answers once they are done.
    to_voicemail: bool,
}

/// A request relayed within a dialog, waiting for its answer.
#[derive(Debug)]
struct Relay {
    request: Vec<u8>,
    key: TxKey,
    source: Flow,
    dialog: DialogId,
    method: String,
}

#[derive(Debug)]
enum Forward {
    Branch {
        call: TxKey,
        index: usize,
    },
    Relay(Relay),
    /// A BYE of sipward's own to one party of a dialog it closes; `done` once answered
    /// or timed out.
    Close {
        dialog: DialogId,
        done: bool,
    },
}

#[derive(Debug, Default)]
struct State {
    calls: HashMap<TxKey, Call>,
    by_tx: HashMap<TxId, Forward>,
    /// Relayed re-INVITEs by their upstream key (for CANCEL).
    relays_by_key: HashMap<TxKey, TxId>,
    /// Dialogs sipward closes, with how many of its BYEs still wait for an answer.
    closing: HashMap<DialogId, usize>,
}

/// The proxy's state; see the module documentation.
#[derive(Debug)]
pub struct Proxy {
    sig: Arc<Signalling>,
    egress: Arc<Egress>,
    dialogs: Arc<Dialogs>,
    transfers: Arc<Transfers>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Where a call goes that the callee's phones leave unanswered or busy.
    voicemail: std::sync::OnceLock<Arc<crate::voicemail::Voicemail>>,
    /// This node's hop proof (issue 21), set when hops are on: without it nothing is
    /// sent to another node.
    hop: std::sync::OnceLock<HopSender>,
}

/// What a node stamps its hops with: the install's hop key and its own node name (both
/// under the MAC, so a hop names the node that sent it).
#[derive(Debug)]
pub struct HopSender {
    pub key: crate::hop::HopKey,
    pub node: String,
}

/// The order in which failures are passed upstream (RFC 3261 §16.7 step 6: 6xx first,
/// then the lowest class, with 401/407/415/420/484 preferred within 4xx).
fn rank(code: u16) -> (u8, u16) {
    match code {
        600..=699 => (0, code),
        401 | 407 | 415 | 420 | 484 => (1, code),
        300..=399 => (2, code),
        400..=499 => (3, code),
        500..=599 => (4, code),
        _ => (5, code),
    }
}

/// Reasons from a peer go into what we send: printable and short.
pub(crate) fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect()
}

/// Whether a header is an auto-answer hint (or which entries of it are): `Call-Info`
/// with `answer-after`, the `Alert-Info` auto-answer and intercom variants phones honour,
/// and RFC 5373's `Answer-Mode`/`Priv-Answer-Mode`. Returns the value to keep (None:
/// drop the header) and whether anything was removed.
fn without_auto_answer(raw_name: &str, value: &str) -> (Option<String>, bool) {
    let name = raw_name.to_ascii_lowercase();
    if name == "answer-mode" || name == "priv-answer-mode" {
        return (None, true);
    }
    let hint = |entry: &str| {
        let e = entry.to_ascii_lowercase();
        match name.as_str() {
            "call-info" => e.contains("answer-after"),
            "alert-info" => [
                "autoanswer",
                "auto-answer",
                "auto answer",
                "ring answer",
                "intercom",
            ]
            .iter()
            .any(|h| e.contains(h)),
            _ => false,
        }
    };
    if !matches!(name.as_str(), "call-info" | "alert-info") {
        return (Some(value.to_owned()), false);
    }
    let entries: Vec<&str> = split_list(value).collect();
    let kept: Vec<&str> = entries.iter().copied().filter(|e| !hint(e)).collect();
    let removed = kept.len() != entries.len();
    if kept.is_empty() {
        (None, removed)
    } else {
        (Some(kept.join(", ")), removed)
    }
}

fn cseq_of(m: &Message<'_>) -> Option<u32> {
    m.header(Name::CSeq).and_then(CSeq::parse).map(|c| c.seq)
}

/// Both parties' state in the dialog the callee's 2xx `answer` to the caller's
/// `request` confirms: their URIs, their Contacts (the URI, if a peer sent none: the
/// flow decides where a request goes, the target only fills the Request-URI) and the
/// INVITE's CSeq, the caller's first.
fn ends_of(request: &[u8], answer: &Message<'_>) -> Option<Ends> {
    let invite = sip::msg::parse(request).ok()?;
    let party = |m: &Message<'_>, name: Name, cseq: Option<u32>| -> Option<PartyState> {
        let uri = NameAddr::parse(m.header(name)?)?.uri.to_owned();
        let target = m
            .header(Name::Contact)
            .and_then(|c| split_list(c).next())
            .and_then(NameAddr::parse)
            .map_or_else(|| uri.clone(), |a| a.uri.to_owned());
        Some(PartyState { uri, target, cseq })
    };
    Some(Ends {
        caller: party(&invite, Name::From, cseq_of(&invite))?,
        callee: party(answer, Name::To, None)?,
    })
}

/// A message from its start line, headers and body; Content-Length is ours.
fn render(start: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(1024);
    out.push_str(start);
    out.push_str("\r\n");
    for (n, v) in headers {
        out.push_str(n);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The sender's Via headers with its top entry stamped with where it came from
/// (`received`, `rport`: RFC 3581).
fn upstream_vias(m: &Message<'_>, source: SocketAddr) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for (i, value) in m.headers_named(Name::Via).enumerate() {
        if i == 0 {
            let mut entries = split_list(value);
            let top = entries.next()?;
            let via = Via::parse(top)?;
            let mut v = top_via_with_source(top, &via, source);
            for rest in entries {
                v.push_str(", ");
                v.push_str(rest);
            }
            out.push(v);
        } else {
            out.push(value.to_owned());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The response `m` (from downstream) as it goes upstream to the request `request`
/// from `source`: the upstream request's own Vias in place of whatever Vias `m` has.
fn upstream_response(request: &[u8], source: &Flow, m: &Message<'_>) -> Option<Vec<u8>> {
    let StartLine::Response { code, reason } = m.start else {
        return None;
    };
    let up = sip::msg::parse(request).ok()?;
    let vias = upstream_vias(&up, source.remote)?;
    let mut headers: Vec<(String, String)> = Vec::with_capacity(m.headers.len() + 2);
    let mut placed = false;
    for h in &m.headers {
        match h.name {
            Name::Via => {
                if !placed {
                    headers.extend(vias.iter().map(|v| ("Via".to_owned(), v.clone())));
                    placed = true;
                }
            }
            Name::ContentLength => {}
            _ => headers.push((h.raw_name.to_owned(), h.value.to_string())),
        }
    }
    if !placed {
        let mut with_vias: Vec<(String, String)> =
            vias.into_iter().map(|v| ("Via".to_owned(), v)).collect();
        with_vias.extend(headers);
        headers = with_vias;
    }
    Some(render(
        &format!("SIP/2.0 {code} {}", clean_reason(reason)),
        &headers,
        m.body,
    ))
}

impl Proxy {
    pub fn new(sig: Arc<Signalling>, transfers: Arc<Transfers>) -> Self {
        Self {
            egress: sig.egress.clone(),
            dialogs: sig.dialogs.clone(),
            metrics: sig.metrics.clone(),
            sig,
            transfers,
            state: Mutex::new(State::default()),
            voicemail: std::sync::OnceLock::new(),
            hop: std::sync::OnceLock::new(),
        }
    }

    /// Turns hops on: requests to another node's internal address carry this node's
    /// proof (set once, by the server, when `[cluster] internal` is set).
    pub fn attach_hop(&self, sender: HopSender) {
        let _ = self.hop.set(sender);
    }

    /// Whether hops are on (this node sends calls to the node that holds the callee).
    pub fn hops_on(&self) -> bool {
        self.hop.get().is_some()
    }

    /// The proof a request `m` to `request_uri` carries to another node now; None when
    /// hops are off or the request lacks what the MAC covers (then it is not sent).
    fn hop_stamp(&self, m: &Message<'_>, request_uri: &str) -> Option<String> {
        let StartLine::Request { method, .. } = m.start else {
            return None;
        };
        let sender = self.hop.get()?;
        let fields = crate::hop::HopFields {
            method,
            extension: SipUri::parse(request_uri)
                .and_then(|u| u.user)
                .unwrap_or(""),
            call_id: m.header(Name::CallId)?,
            cseq: cseq_of(m)?,
            from_tag: m.header(Name::From).and_then(NameAddr::parse)?.tag()?,
            node: &sender.node,
        };
        Some(crate::hop::stamp(
            &sender.key,
            &fields,
            self.sig.clock.now(),
        ))
    }

    /// Calls to an extension whose phones are busy or do not answer within its ring
    /// time go to this voicemail (set once, by the endpoint).
    pub fn attach_voicemail(&self, voicemail: Arc<crate::voicemail::Voicemail>) {
        let _ = self.voicemail.set(voicemail);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the INVITE `key` (its server transaction) is a call or a relayed
    /// re-INVITE of ours (for CANCEL).
    pub fn owns(&self, key: &TxKey) -> bool {
        let st = self.lock();
        st.calls.contains_key(key) || st.relays_by_key.contains_key(key)
    }

    /// Calls being set up (for metrics and tests).
    pub fn call_count(&self) -> usize {
        self.lock().calls.len()
    }

    /// The sizes of the proxy's tables, for `/metrics`.
    pub fn table_sizes(&self) -> [(&'static str, usize); 4] {
        let st = self.lock();
        [
            ("proxy_calls", st.calls.len()),
            ("proxy_forwards", st.by_tx.len()),
            ("proxy_relays", st.relays_by_key.len()),
            ("proxy_closing", st.closing.len()),
        ]
    }

    /// Our Via for a request to `to`.
    fn via(&self, to: &Flow, branch: &str) -> String {
        let local = self.sig.local(to);
        format!(
            "SIP/2.0/{} {local};branch={branch};rport",
            to.transport.via_token()
        )
    }

    /// `m` as it goes to `to`: our Via on top of the sender's (stamped with where it
    /// came from), Max-Forwards one less, no Route (the dialog or the registration
    /// decides where it goes), no credentials meant for us, and `record_route` added.
    /// A hop proof that came in is never passed on (it was for this node, or forged);
    /// a request to another node's internal address carries this node's own.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        m: &Message<'_>,
        source: &Flow,
        to: &Flow,
        request_uri: &str,
        branch: &str,
        record_route: &[String],
        strip_hints: bool,
    ) -> Option<(Vec<u8>, bool)> {
        let StartLine::Request { method, .. } = m.start else {
            return None;
        };
        let mut headers: Vec<(String, String)> = vec![("Via".into(), self.via(to, branch))];
        headers.extend(
            upstream_vias(m, source.remote)?
                .into_iter()
                .map(|v| ("Via".to_owned(), v)),
        );
        headers.extend(
            record_route
                .iter()
                .map(|r| ("Record-Route".to_owned(), r.clone())),
        );
        if to.transport == TransportKind::Hop {
            headers.push((
                crate::hop::HEADER.to_owned(),
                self.hop_stamp(m, request_uri)?,
            ));
        }
        let mut hops = None;
        let mut removed = false;
        for h in &m.headers {
            match h.name {
                Name::Via | Name::Route | Name::ProxyAuthorization | Name::ContentLength => {}
                _ if h.raw_name.trim().eq_ignore_ascii_case(crate::hop::HEADER) => {}
                Name::MaxForwards => hops = Some(h.value.trim().parse::<u32>().ok()?),
                _ if strip_hints => {
                    let (kept, gone) = without_auto_answer(h.raw_name, &h.value);
                    removed |= gone;
                    if let Some(v) = kept {
                        headers.push((h.raw_name.to_owned(), v));
                    }
                }
                _ => headers.push((h.raw_name.to_owned(), h.value.to_string())),
            }
        }
        let hops = hops.unwrap_or(70).checked_sub(1)?;
        headers.push(("Max-Forwards".into(), hops.to_string()));
        if request_uri.chars().any(|c| c.is_control() || c == ' ') {
            return None;
        }
        Some((
            render(&format!("{method} {request_uri} SIP/2.0"), &headers, m.body),
            removed,
        ))
    }

    /// Our Record-Route entries for a call between `caller` and `callee` flows: one,
    /// or two when the transports differ (RFC 5658), each reachable on its side.
    fn record_route(&self, caller: &Flow, callee: &Flow) -> Vec<String> {
        let towards_callee = format!("<{};lr>", our_uri(self.sig.bound_for(callee), callee, None));
        if caller.transport == callee.transport {
            vec![towards_callee]
        } else {
            vec![
                towards_callee,
                format!("<{};lr>", our_uri(self.sig.bound_for(caller), caller, None)),
            ]
        }
    }

    /// Forks the admitted INVITE to the callee's registered flows. `Err` carries the
    /// status to answer instead (the endpoint has sent 100 Trying already).
    pub fn invite(&self, p: Placed<'_>) -> Result<(), (u16, &'static str)> {
        let m = sip::msg::parse(p.request).map_err(|_| (400, "Bad Request"))?;
        if m.header(Name::MaxForwards)
            .and_then(|v| v.trim().parse::<u32>().ok())
            == Some(0)
        {
            return Err((483, "Too Many Hops"));
        }
        let caller_tag = m
            .header(Name::From)
            .and_then(NameAddr::parse)
            .and_then(|a| a.tag())
            .ok_or((400, "Bad Request"))?
            .to_owned();
        let call_id = m
            .header(Name::CallId)
            .ok_or((400, "Bad Request"))?
            .to_owned();
        // A sips: call is forked only to the callee's TLS bindings; none is a 480, as
        // with no binding at all. The egress check holds each branch to the same rule.
        let StartLine::Request { uri, .. } = m.start else {
            return Err((400, "Bad Request"));
        };
        let hops = Hops::of(uri);
        let contacts: Vec<&(String, Flow)> =
            p.contacts.iter().filter(|(_, f)| hops.allows(f)).collect();
        if contacts.is_empty() {
            return Err((480, "Temporarily Unavailable"));
        }
        // The table is held until the call is in it: a callee that answers at once must
        // find its branch (another thread handles that answer).
        let mut st = self.lock();
        if st.calls.contains_key(&p.key) {
            return Ok(()); // a retransmission the table did not absorb
        }
        if st.calls.len() >= MAX_CALLS {
            return Err((503, "Service Unavailable"));
        }
        let mut branches = Vec::new();
        let mut hints_removed = false;
        for (contact, flow) in contacts {
            let branch = self.sig.branch();
            let rr = self.record_route(&p.source, flow);
            let Some((bytes, removed)) = self.forward(
                &m,
                &p.source,
                flow,
                contact,
                branch.as_str(),
                &rr,
                !p.intercom,
            ) else {
                continue;
            };
            hints_removed |= removed;
            // A branch to another node's internal address is a hop (the egress rule
            // holds it to a live node that holds the callee); any other, a binding.
            let purpose = if flow.transport == TransportKind::Hop {
                Purpose::Hop { number: p.callee }
            } else {
                Purpose::Callee {
                    number: p.callee,
                    hops,
                }
            };
            if let Ok(tx) = self.egress.start(bytes, *flow, purpose, Owner::Proxy) {
                st.by_tx.insert(
                    tx,
                    Forward::Branch {
                        call: p.key.clone(),
                        index: branches.len(),
                    },
                );
                branches.push(Branch {
                    tx,
                    flow: *flow,
                    done: false,
                    dialogs: Vec::new(),
                });
            }
        }
        if branches.is_empty() {
            return Err((480, "Temporarily Unavailable"));
        }
        if hints_removed {
            Metrics::inc(&self.metrics.auto_answer_removed);
        }
        st.calls.insert(
            p.key.clone(),
            Call {
                request: p.request.to_vec(),
                key: p.key,
                source: p.source,
                caller: p.caller,
                caller_tag,
                call_id,
                callee: p.callee.to_owned(),
                class: p.class,
                class_of_service: p.class_of_service,
                branches,
                best: None,
                answered: false,
                final_sent: false,
                cancelled: false,
                ring_until: self.sig.clock.instant() + p.ring,
                // A call another node hopped here never goes to this node's box: the
                // sending node's voicemail takes it when this answers 480/408.
                voicemail_at: self
                    .voicemail
                    .get()
                    .filter(|_| p.source.transport != TransportKind::Hop)
                    .and_then(|v| v.ring_time(p.callee))
                    .map(|d| self.sig.clock.instant() + d),
                to_voicemail: false,
            },
        );
        Ok(())
    }

    /// Timer C (RFC 3261 §16.6): a call still ringing at its ring time has its branches
    /// cancelled; their 487s (or, after 64·T1 without one, our own) go to the caller.
    pub fn tick(&self, now: Instant) {
        let pending: Vec<TxId> = {
            let mut st = self.lock();
            st.calls
                .values_mut()
                .filter(|c| {
                    let due = now >= c.ring_until || c.voicemail_at.is_some_and(|t| now >= t);
                    !c.answered && !c.final_sent && !c.cancelled && due
                })
                .flat_map(|c| {
                    // Unanswered within the callee's voicemail time (before its class's
                    // ring time): the branches go, the voicemail answers.
                    c.to_voicemail = c.voicemail_at.is_some_and(|t| now >= t);
                    c.cancelled = true;
                    c.branches.iter().filter(|b| !b.done).map(|b| b.tx)
                })
                .collect()
        };
        for tx in pending {
            let _ = self.egress.cancel(tx);
        }
    }

    /// A CANCEL for the INVITE `invite` (its key): true when it is one of ours (the
    /// endpoint has answered the CANCEL 200); every pending branch is cancelled, and
    /// their 487s go upstream as usual.
    pub fn cancel(&self, invite: &TxKey) -> bool {
        let pending: Vec<TxId> = {
            let mut st = self.lock();
            if let Some(call) = st.calls.get_mut(invite) {
                if call.final_sent || call.answered {
                    return true;
                }
                call.cancelled = true;
                call.branches
                    .iter()
                    .filter(|b| !b.done)
                    .map(|b| b.tx)
                    .collect()
            } else if let Some(tx) = st.relays_by_key.get(invite) {
                vec![*tx]
            } else {
                return false;
            }
        };
        for tx in pending {
            let _ = self.egress.cancel(tx);
        }
        true
    }

    /// An in-dialog request `m` from `source`, which the endpoint found to be `side` of
    /// the proxied dialog `d` (and, for REFER, judged). `Err` carries the status to
    /// answer instead.
    pub fn relay(
        &self,
        m: &Message<'_>,
        bytes: &[u8],
        key: Option<&TxKey>,
        source: &Flow,
        d: &Dialog,
        side: Side,
    ) -> Result<(), (u16, &'static str)> {
        let StartLine::Request { method, uri } = m.start else {
            return Err((400, "Bad Request"));
        };
        let to = d
            .other(side)
            .flow
            .ok_or((481, "Call/Transaction Does Not Exist"))?;
        // What the party has sent: a BYE sipward sends the other party in its name must
        // go above it.
        if let Some(cseq) = cseq_of(m) {
            self.dialogs.saw_cseq(d.id, side, cseq);
        }
        let branch = self.sig.branch();
        let (out, _) = self
            .forward(m, source, &to, uri, branch.as_str(), &[], false)
            .ok_or((483, "Too Many Hops"))?;
        if method == "ACK" {
            self.egress
                .ack(out, Some(source), to)
                .map_err(|_| (481, "Call/Transaction Does Not Exist"))?;
            Metrics::inc(&self.metrics.relayed);
            return Ok(());
        }
        let key = key.ok_or((400, "Bad Request"))?;
        // Held until the relay is recorded: its answer may come at once, on another
        // thread.
        let mut st = self.lock();
        let tx = self
            .egress
            .start(
                out,
                to,
                Purpose::InDialog { from: Some(source) },
                Owner::Proxy,
            )
            .map_err(|_| (481, "Call/Transaction Does Not Exist"))?;
        Metrics::inc(&self.metrics.relayed);
        if method == "BYE" {
            self.dialogs.terminating(d.id);
        }
        if method == "INVITE" {
            st.relays_by_key.insert(key.clone(), tx);
        }
        st.by_tx.insert(
            tx,
            Forward::Relay(Relay {
                request: bytes.to_vec(),
                key: key.clone(),
                source: *source,
                dialog: d.id,
                method: method.to_owned(),
            }),
        );
        Ok(())
    }

    /// Our own answer upstream (408, 480, 487...) to the call's INVITE.
    fn answer(&self, request: &[u8], key: &TxKey, source: &Flow, code: u16, reason: &str) {
        let Ok(m) = sip::msg::parse(request) else {
            return;
        };
        let tag = self.sig.token("tag");
        if let Ok(b) = ResponseBuilder::new(&m, code, reason, source.remote, &tag) {
            let _ = self.egress.respond(key, b.finish());
        }
    }

    /// An output of one of our client transactions (`m`: the response, for deliveries).
    pub fn on_delivery(&self, d: &Delivery, m: Option<&Message<'_>>, now: Instant) {
        let forward = {
            let mut st = self.lock();
            if d.action == Action::Terminated {
                match st.by_tx.remove(&d.tx) {
                    Some(Forward::Relay(r)) => {
                        st.relays_by_key.remove(&r.key);
                    }
                    Some(Forward::Close {
                        dialog,
                        done: false,
                    }) => self.bye_over(&mut st, dialog, now),
                    Some(Forward::Branch { call, .. }) => {
                        let gone = st.calls.get(&call).is_some_and(|c| {
                            c.branches.iter().all(|b| !st.by_tx.contains_key(&b.tx))
                        });
                        if gone {
                            st.calls.remove(&call);
                        }
                    }
                    Some(Forward::Close { done: true, .. }) | None => {}
                }
                return;
            }
            match st.by_tx.get_mut(&d.tx) {
                Some(Forward::Branch { call, index }) => Some((call.clone(), *index)),
                Some(Forward::Relay(_)) => None,
                Some(Forward::Close { dialog, done }) => {
                    let over = matches!(
                        d.action,
                        Action::Deliver(ResponseClass::Success | ResponseClass::Failure)
                            | Action::TimedOut
                            | Action::TransportFailed
                    );
                    if over && !*done {
                        *done = true;
                        let dialog = *dialog;
                        self.bye_over(&mut st, dialog, now);
                    }
                    return;
                }
                None => return,
            }
        };
        match forward {
            Some((call, index)) => self.branch_event(&call, index, &d.action, m, now),
            None => self.relay_event(d, m, now),
        }
    }

    /// One of sipward's own BYEs of the closing `dialog` has its answer (or none will
    /// come): when it was the last, the dialog is over.
    fn bye_over(&self, st: &mut State, dialog: DialogId, now: Instant) {
        let left = st.closing.get_mut(&dialog).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            st.closing.remove(&dialog);
            self.dialogs.end(dialog, now);
        }
    }

    /// Ends every call `who` is a party of, but emergency calls (the extension's
    /// credentials were revoked). A call still ringing has its branches cancelled (the
    /// caller gets the 487s, or ours); an answered one is closed with a BYE of
    /// sipward's own to each party, in the other's name, and ends when both are
    /// answered or time out. Returns how many calls it ended.
    pub fn end_calls_of(&self, who: &Who, now: Instant) -> usize {
        let is_emergency = |class: Option<policy::dialplan::CallClass>| {
            class == Some(policy::dialplan::CallClass::Emergency)
        };
        let callee = match who {
            Who::Extension(n) => Some(n.as_str()),
            _ => None,
        };
        let mut ended = 0;
        // The table is held while the BYEs start: their answers may come at once.
        let mut st = self.lock();
        let mut pending = Vec::new();
        for c in st.calls.values_mut() {
            let involved = c.caller == *who || callee == Some(c.callee.as_str());
            if involved && !is_emergency(c.class) && !c.answered && !c.final_sent && !c.cancelled {
                c.cancelled = true;
                ended += 1;
                pending.extend(c.branches.iter().filter(|b| !b.done).map(|b| b.tx));
            }
        }
        for tx in pending {
            let _ = self.egress.cancel(tx);
        }
        for id in self.dialogs.of(who) {
            if self
                .dialogs
                .get(id)
                .is_none_or(|d| d.kind != Kind::Proxied || is_emergency(d.class))
            {
                continue;
            }
            let Some(d) = self.dialogs.close(id) else {
                continue;
            };
            ended += 1;
            let mut started = 0;
            for side in [Side::Caller, Side::Callee] {
                if let Some(tx) = self.bye_to(&d, side) {
                    st.by_tx.insert(
                        tx,
                        Forward::Close {
                            dialog: id,
                            done: false,
                        },
                    );
                    started += 1;
                }
            }
            if started == 0 {
                self.dialogs.end(id, now);
            } else {
                st.closing.insert(id, started);
            }
        }
        ended
    }

    /// sipward's BYE to the `side` party of the dialog `d` it closes, in the other
    /// party's name: that party's URI and tag in From, a CSeq above the last request
    /// the other party sent, the recipient's Contact as Request-URI, on its flow.
    fn bye_to(&self, d: &Dialog, side: Side) -> Option<TxId> {
        let ends = d.ends.as_deref()?;
        let other_side = match side {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        };
        let (to, from) = (d.party(side), d.party(other_side));
        let (to_state, from_state) = (ends.of(side), ends.of(other_side));
        let flow = to.flow?;
        let cseq = from_state.cseq.map_or(1, |c| c.saturating_add(1));
        let ds = DialogState {
            call_id: &d.call_id,
            local_uri: &from_state.uri,
            local_tag: &from.tag,
            remote_uri: &to_state.uri,
            remote_tag: Some(&to.tag),
            remote_target: &to_state.target,
            route_set: Vec::new(),
        };
        let branch = self.sig.branch();
        let bytes = RequestBuilder::in_dialog(&ds, "BYE", cseq)
            .via(TopVia::new(
                flow.transport.via_token(),
                self.sig.local(&flow),
                &branch,
            ))
            .build()
            .ok()?;
        self.egress
            .start(bytes, flow, Purpose::InDialog { from: None }, Owner::Proxy)
            .ok()
    }

    fn relay_event(&self, d: &Delivery, m: Option<&Message<'_>>, now: Instant) {
        let st = self.lock();
        let Some(Forward::Relay(r)) = st.by_tx.get(&d.tx) else {
            return;
        };
        let (request, key, source, dialog, method) = (
            r.request.clone(),
            r.key.clone(),
            r.source,
            r.dialog,
            r.method.clone(),
        );
        drop(st);
        let final_answer = match (&d.action, m) {
            (Action::Deliver(class), Some(m)) => {
                if let Some(bytes) = upstream_response(&request, &source, m) {
                    let _ = self.egress.respond(&key, bytes);
                }
                *class != ResponseClass::Provisional
            }
            (Action::TimedOut | Action::TransportFailed, _) => {
                self.answer(&request, &key, &source, 408, "Request Timeout");
                true
            }
            _ => false,
        };
        if final_answer && method == "BYE" {
            self.dialogs.end(dialog, now);
        }
    }

    fn branch_event(
        &self,
        call_key: &TxKey,
        index: usize,
        action: &Action<crate::flow::Flow>,
        m: Option<&Message<'_>>,
        now: Instant,
    ) {
        let code = m
            .and_then(|m| match m.start {
                StartLine::Response { code, .. } => Some(code),
                _ => None,
            })
            .unwrap_or(0);
        let to_tag = m
            .and_then(|m| m.header(Name::To))
            .and_then(NameAddr::parse)
            .and_then(|a| a.tag())
            .map(str::to_owned);
        let mut st = self.lock();
        let Some(call) = st.calls.get_mut(call_key) else {
            return;
        };
        let Some(branch) = call.branches.get(index) else {
            return;
        };
        let branch_flow = branch.flow;
        let (request, key, source) = (call.request.clone(), call.key.clone(), call.source);
        match action {
            Action::Deliver(ResponseClass::Provisional) => {
                let Some(m) = m else { return };
                if code > 100
                    && let Some(tag) = &to_tag
                    && !call.final_sent
                    && call.branches[index].dialogs.len() < MAX_EARLY_PER_BRANCH
                    && !call.branches[index].dialogs.iter().any(|(t, _)| t == tag)
                    && let Ok(id) = self
                        .dialogs
                        .create(self.new_dialog(call, tag, branch_flow, Phase::Early), now)
                {
                    call.branches[index].dialogs.push((tag.clone(), id));
                }
                let up = (code > 100 && !call.final_sent)
                    .then(|| upstream_response(&request, &source, m))
                    .flatten();
                drop(st);
                if let Some(bytes) = up {
                    let _ = self.egress.respond(&key, bytes);
                }
            }
            Action::Deliver(ResponseClass::Success) => {
                let Some(m) = m else { return };
                let first = !call.answered;
                call.answered = true;
                call.branches[index].done = true;
                if let Some(tag) = &to_tag {
                    let existing = call.branches[index]
                        .dialogs
                        .iter()
                        .find(|(t, _)| t == tag)
                        .map(|(_, id)| *id);
                    let confirmed = match existing {
                        Some(id) => {
                            self.dialogs.confirm(id, now);
                            Some(id)
                        }
                        None => self
                            .dialogs
                            .create(
                                self.new_dialog(call, tag, branch_flow, Phase::Confirmed),
                                now,
                            )
                            .ok()
                            .inspect(|id| call.branches[index].dialogs.push((tag.clone(), *id))),
                    };
                    if let Some(id) = confirmed
                        && let Some(ends) = ends_of(&request, m)
                    {
                        self.dialogs.record_ends(id, ends);
                    }
                }
                // The other branches and the early dialogs that did not answer end.
                let mut cancel = Vec::new();
                if first {
                    for (i, b) in call.branches.iter().enumerate() {
                        for (t, id) in &b.dialogs {
                            if i != index || Some(t) != to_tag.as_ref() {
                                self.dialogs.end(*id, now);
                            }
                        }
                        if i != index && !b.done {
                            cancel.push(b.tx);
                        }
                    }
                }
                call.final_sent = true;
                let up = upstream_response(&request, &source, m);
                drop(st);
                if let Some(bytes) = up {
                    let _ = self.egress.respond(&key, bytes);
                }
                for tx in cancel {
                    let _ = self.egress.cancel(tx);
                }
            }
            Action::Deliver(ResponseClass::Failure) => {
                let Some(m) = m else { return };
                call.branches[index].done = true;
                for (_, id) in &call.branches[index].dialogs {
                    self.dialogs.end(*id, now);
                }
                let mut up = upstream_response(&request, &source, m).map(|b| (code, b));
                if (300..400).contains(&code) && !self.redirect_allowed(call, m) {
                    Metrics::inc(&self.metrics.transfers_refused);
                    up = None;
                    let tag = self.sig.token("tag");
                    let refused = sip::msg::parse(&request).ok().and_then(|rm| {
                        ResponseBuilder::new(
                            &rm,
                            480,
                            "Temporarily Unavailable",
                            source.remote,
                            &tag,
                        )
                        .ok()
                        .map(|b| (480, b.finish()))
                    });
                    if let Some(r) = refused {
                        up = Some(r);
                    }
                }
                if let Some((code, bytes)) = up
                    && call
                        .best
                        .as_ref()
                        .is_none_or(|(c, _)| rank(code) < rank(*c))
                {
                    call.best = Some((code, bytes));
                }
                self.finish_if_done(&mut st, call_key);
            }
            Action::TimedOut | Action::TransportFailed => {
                // A hop that times out got no final answer from the node: a datagram
                // to a dead node's closed port fails silently (UDP reports nothing to
                // an unconnected socket), so this is the only place that sees it.
                if branch_flow.transport == TransportKind::Hop {
                    Metrics::inc(&self.metrics.hops_unanswered);
                }
                call.branches[index].done = true;
                for (_, id) in &call.branches[index].dialogs {
                    self.dialogs.end(*id, now);
                }
                self.finish_if_done(&mut st, call_key);
            }
            // A 2xx after this branch failed or gave up: the caller has its final
            // answer already; the callee's phone ends the call when no ACK comes.
            Action::LateSuccess | Action::Send { .. } | Action::Terminated => {}
        }
    }

    /// When every branch is done and none answered: the best failure goes upstream
    /// (487 after a CANCEL, 408 when nothing came at all).
    fn finish_if_done(&self, st: &mut std::sync::MutexGuard<'_, State>, call_key: &TxKey) {
        let Some(call) = st.calls.get_mut(call_key) else {
            return;
        };
        if call.final_sent || call.answered || !call.branches.iter().all(|b| b.done) {
            return;
        }
        call.final_sent = true;
        let best = call.best.take();
        let (request, key, source, cancelled) = (
            call.request.clone(),
            call.key.clone(),
            call.source,
            call.cancelled,
        );
        // Busy, declined, unavailable or unanswered: the callee's voicemail takes the
        // call (never a caller's own CANCEL).
        let busy = best
            .as_ref()
            .is_none_or(|(code, _)| matches!(code, 408 | 480 | 486 | 600 | 603));
        let to_box = call.voicemail_at.is_some() && (call.to_voicemail || (!cancelled && busy));
        if to_box
            && let Some(vm) = self.voicemail.get()
            && let Ok(m) = sip::msg::parse(&request)
        {
            let (caller, callee) = (call.caller.clone(), call.callee.clone());
            // Without voicemail the caller would have had the best failure; a call the
            // box cannot take gets it still (after a CANCEL for the box: 480).
            let fallback = best.filter(|_| !call.to_voicemail).map(|(_, bytes)| bytes);
            vm.deposit(&m, &request, &key, &source, caller, &callee, fallback);
            return;
        }
        match best {
            Some((_, bytes)) => {
                let _ = self.egress.respond(&key, bytes);
            }
            None if cancelled => self.answer(&request, &key, &source, 487, "Request Terminated"),
            None => self.answer(&request, &key, &source, 408, "Request Timeout"),
        }
    }

    fn new_dialog(
        &self,
        call: &Call,
        callee_tag: &str,
        callee_flow: Flow,
        phase: Phase,
    ) -> NewDialog {
        NewDialog {
            call_id: call.call_id.clone(),
            caller: Party {
                who: call.caller.clone(),
                tag: call.caller_tag.clone(),
                flow: Some(call.source),
            },
            callee: Party {
                who: Who::Extension(call.callee.clone()),
                tag: callee_tag.to_owned(),
                flow: Some(callee_flow),
            },
            phase,
            kind: Kind::Proxied,
            class: call.class,
            class_of_service: call.class_of_service,
            e164: None,
        }
    }

    /// A 3xx from the callee: every target outside must be one the callee (the
    /// referrer) may call; a granted one is then the callee's call when the caller
    /// places it.
    fn redirect_allowed(&self, call: &Call, m: &Message<'_>) -> bool {
        // A trunk that follows a redirect dials the target at the owner's cost: no
        // redirect goes back to a trunk.
        let transferee = match &call.caller {
            Who::Extension(n) => Some(n.as_str()),
            _ => return false,
        };
        let targets: Vec<&str> = m
            .headers_named(Name::Contact)
            .flat_map(split_list)
            .collect();
        let now = self.sig.clock.now();
        !targets.is_empty()
            && targets.iter().all(|t| {
                self.transfers.judge(Some(&call.callee), transferee, t, now) != Verdict::Refused
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::tests::{Rig, addr, rig};
    use policy::clock::Clock;

    const INVITE: &str = "INVITE sip:1001@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKcaller1;rport\r\n\
        From: <sip:1002@pbx>;tag=f1\r\nTo: <sip:1001@pbx>\r\nCall-ID: c1\r\nCSeq: 2 INVITE\r\n\
        Proxy-Authorization: Digest username=\"x\"\r\nCall-Info: <sip:pbx>;answer-after=0\r\n\
        Route: <sip:192.0.2.100;lr>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

    fn caller() -> Flow {
        Flow::udp(addr("192.0.2.9:5060"))
    }

    fn callee() -> Flow {
        Flow::udp(addr("192.0.2.1:5062"))
    }

    fn proxy(r: &Rig) -> Proxy {
        proxy_on(r.signalling())
    }

    fn proxy_on(sig: Arc<Signalling>) -> Proxy {
        let transfers = Arc::new(Transfers::new(
            Arc::new(crate::admission::Outbound::new(
                policy::dialplan::DialPlan::default(),
            )),
            Arc::new(crate::trunk::tests::trunks()),
            Arc::new(crate::directory::DirectoryCache::default()),
        ));
        Proxy::new(sig, transfers)
    }

    const NODE_A: &str = "10.0.0.1:5070";

    /// A proxy on node "b" with hops on (its internal address 10.0.0.2:5070) and 1001
    /// held by node A; the caller's INVITE (with a forged proof on it) hopped there.
    fn hopped(r: &Rig, key: &crate::hop::HopKey) -> (Proxy, String) {
        let mut sig = Arc::into_inner(r.signalling()).expect("one signalling");
        sig.internal = Some(addr("10.0.0.2:5070"));
        let p = proxy_on(Arc::new(sig));
        p.attach_hop(HopSender {
            key: key.clone(),
            node: "b".to_owned(),
        });
        let node_a = Flow::hop(addr(NODE_A));
        r.egress
            .hop_targets()
            .replace([("1001".to_owned(), vec![node_a.remote])]);
        let forged = INVITE.replace(
            "Max-Forwards: 70",
            "x-sipward-hop: t=1;mac=00\r\nMax-Forwards: 70",
        );
        let m = sip::msg::parse(forged.as_bytes()).expect("parse");
        let key = TxKey::of(&m).expect("key");
        r.egress.arrived(&key, caller(), r.clock.instant());
        p.invite(Placed {
            request: forged.as_bytes(),
            key,
            source: caller(),
            caller: Who::Extension("1002".into()),
            callee: "1001",
            contacts: vec![(format!("sip:1001@{NODE_A}"), node_a)],
            intercom: false,
            ring: std::time::Duration::from_secs(180),
            class: Some(policy::dialplan::CallClass::Internal),
            class_of_service: Some(policy::dialplan::ClassOfService::Internal),
        })
        .expect("hopped");
        let sent = r.wire.take();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, node_a, "to the node's internal address");
        (p, String::from_utf8(sent[0].1.clone()).expect("utf8"))
    }

    /// The caller's INVITE to 1001, arrived and forked; what went downstream.
    fn invite(r: &Rig, p: &Proxy) -> (TxKey, String) {
        let m = sip::msg::parse(INVITE.as_bytes()).expect("parse");
        let key = TxKey::of(&m).expect("key");
        r.egress.arrived(&key, caller(), r.clock.instant());
        p.invite(Placed {
            request: INVITE.as_bytes(),
            key: key.clone(),
            source: caller(),
            caller: Who::Extension("1002".into()),
            callee: "1001",
            contacts: r.registrar.flows("1001", 1_800_000_000),
            intercom: false,
            ring: std::time::Duration::from_secs(180),
            class: Some(policy::dialplan::CallClass::Internal),
            class_of_service: Some(policy::dialplan::ClassOfService::Internal),
        })
        .expect("forked");
        let sent = r.wire.take();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, callee(), "to the flow it registered from");
        (key, String::from_utf8(sent[0].1.clone()).expect("utf8"))
    }

    /// The callee's answer to `req`, through the egress rule and back to the proxy.
    fn answer(r: &Rig, p: &Proxy, req: &str, code: u16, from: Flow) {
        answer_tagged(r, p, req, code, from, "callee");
    }

    fn answer_tagged(r: &Rig, p: &Proxy, req: &str, code: u16, from: Flow, tag: &str) {
        let m = sip::msg::parse(req.as_bytes()).expect("parse");
        let vias: String = m
            .headers_named(Name::Via)
            .map(|v| format!("Via: {v}\r\n"))
            .collect();
        let text = format!(
            "SIP/2.0 {code} X\r\n{vias}From: <sip:1002@pbx>;tag=f1\r\nTo: <sip:1001@pbx>;tag={tag}\r\n\
             Call-ID: c1\r\nCSeq: 2 INVITE\r\nContact: <sip:1001@198.51.100.9>\r\nContent-Length: 0\r\n\r\n"
        );
        let m = sip::msg::parse(text.as_bytes()).expect("parse");
        let now = r.clock.instant();
        if let Ok(ds) = r.egress.on_response(&m, &from, now) {
            for d in ds {
                p.on_delivery(&d, Some(&m), now);
            }
        }
    }

    #[test]
    fn the_forwarded_invite_carries_our_via_and_record_route_and_nothing_of_the_callers() {
        let r = rig();
        let p = proxy(&r);
        let (_, sent) = invite(&r, &p);
        assert!(sent.starts_with("INVITE sip:1001@198.51.100.9:7000 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bK"), "{sent}");
        assert!(sent.contains("branch=z9hG4bKcaller1;received=192.0.2.9;rport=5060"));
        assert!(sent.contains("Record-Route: <sip:192.0.2.100:5060;lr>"));
        assert!(sent.contains("Max-Forwards: 69\r\n"));
        assert!(
            !sent.contains("Proxy-Authorization"),
            "our credentials stay here"
        );
        assert!(!sent.contains("\r\nRoute:"), "no Route goes on");
        assert!(
            !sent.contains("answer-after"),
            "no auto-answer hint without intercom"
        );
    }

    #[test]
    fn a_hop_names_only_the_extension_and_carries_this_nodes_proof_not_the_callers() {
        let r = rig();
        let key = crate::hop::HopKey::new([9; 32]);
        let (_, sent) = hopped(&r, &key);
        assert!(
            sent.starts_with(
                "INVITE sip:1001@10.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bK"
            ),
            "{sent}"
        );
        // Requests in the dialog come back to each side's own socket.
        assert!(sent.contains("Record-Route: <sip:10.0.0.2:5070;lr>\r\nRecord-Route: <sip:192.0.2.100:5060;lr>\r\n"), "{sent}");
        let proofs: Vec<&str> = sent
            .lines()
            .filter_map(|l| l.strip_prefix("X-Sipward-Hop: "))
            .collect();
        assert_eq!(proofs.len(), 1, "{sent}");
        assert!(
            !sent.contains("t=1;mac=00"),
            "the caller's forged proof is gone"
        );
        let fields = crate::hop::HopFields {
            method: "INVITE",
            extension: "1001",
            call_id: "c1",
            cseq: 2,
            from_tag: "f1",
            node: "b",
        };
        let mut replays = crate::hop::Replays::default();
        assert_eq!(
            crate::hop::check(&key, &fields, Some(proofs[0]), r.clock.now(), &mut replays),
            Ok(()),
            "node A takes it"
        );
        let other = crate::hop::HopKey::new([8; 32]);
        assert_eq!(
            crate::hop::check(
                &other,
                &fields,
                Some(proofs[0]),
                r.clock.now(),
                &mut replays
            ),
            Err(crate::hop::Refused::BadMac)
        );
    }

    #[test]
    fn a_hops_answer_comes_only_from_the_node_on_the_internal_socket_and_goes_to_the_caller() {
        let r = rig();
        let (p, sent) = hopped(&r, &crate::hop::HopKey::new([9; 32]));
        // The node's public socket, or another node, is not where the hop went.
        answer(&r, &p, &sent, 200, Flow::udp(addr(NODE_A)));
        answer(&r, &p, &sent, 200, Flow::hop(addr("10.0.0.3:5070")));
        assert!(r.wire.take().is_empty());
        answer(&r, &p, &sent, 200, Flow::hop(addr(NODE_A)));
        let out = r.wire.take();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, caller());
        assert!(out[0].1.starts_with(b"SIP/2.0 200"));
        let (d, _) = r.dialogs.find("c1", "callee", "f1").expect("dialog");
        assert_eq!(d.phase, crate::dialog::Phase::Confirmed);
    }

    /// A hop no node answers (a dead node's closed port: UDP reports nothing) ends in
    /// the caller's 408 when Timer B fires, and is counted; an answered one is not.
    #[test]
    fn a_hop_that_no_node_answers_is_counted_when_it_times_out() {
        let r = rig();
        let (p, _) = hopped(&r, &crate::hop::HopKey::new([9; 32]));
        let now = r.clock.instant() + std::time::Duration::from_secs(33);
        let (deliveries, _) = r.egress.on_deadline(now);
        assert!(
            deliveries.iter().any(|d| d.action == Action::TimedOut),
            "{deliveries:?}"
        );
        for d in &deliveries {
            p.on_delivery(d, None, now);
        }
        assert_eq!(
            p.metrics
                .hops_unanswered
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let up: Vec<_> = r
            .wire
            .take()
            .into_iter()
            .filter(|(f, _)| *f == caller())
            .collect();
        assert_eq!(up.len(), 1, "{up:?}");
        assert!(up[0].1.starts_with(b"SIP/2.0 408"));

        // Control: an answered hop counts nothing.
        let r = rig();
        let (p, sent) = hopped(&r, &crate::hop::HopKey::new([9; 32]));
        answer(&r, &p, &sent, 486, Flow::hop(addr(NODE_A)));
        let (deliveries, _) = r.egress.on_deadline(now);
        for d in &deliveries {
            p.on_delivery(d, None, now);
        }
        assert_eq!(
            p.metrics
                .hops_unanswered
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn without_hops_on_nothing_goes_to_a_node_and_a_proof_never_reaches_a_phone() {
        let r = rig();
        let p = proxy(&r);
        let node_a = Flow::hop(addr(NODE_A));
        r.egress
            .hop_targets()
            .replace([("1001".to_owned(), vec![node_a.remote])]);
        let m = sip::msg::parse(INVITE.as_bytes()).expect("parse");
        let key = TxKey::of(&m).expect("key");
        let placed = |contacts| Placed {
            request: INVITE.as_bytes(),
            key: key.clone(),
            source: caller(),
            caller: Who::Extension("1002".into()),
            callee: "1001",
            contacts,
            intercom: false,
            ring: std::time::Duration::from_secs(180),
            class: Some(policy::dialplan::CallClass::Internal),
            class_of_service: Some(policy::dialplan::ClassOfService::Internal),
        };
        assert_eq!(
            p.invite(placed(vec![(format!("sip:1001@{NODE_A}"), node_a)])),
            Err((480, "Temporarily Unavailable")),
            "no proof to stamp: no hop"
        );
        assert!(r.wire.take().is_empty());
        // A proof on a call to a local phone is stripped.
        let forged = INVITE.replace(
            "Max-Forwards: 70",
            "X-Sipward-Hop: t=1;mac=00\r\nMax-Forwards: 70",
        );
        let m = sip::msg::parse(forged.as_bytes()).expect("parse");
        let key = TxKey::of(&m).expect("key");
        r.egress.arrived(&key, caller(), r.clock.instant());
        p.invite(Placed {
            request: forged.as_bytes(),
            key,
            ..placed(r.registrar.flows("1001", 1_800_000_000))
        })
        .expect("forked");
        let sent = r.wire.take();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, callee());
        let text = String::from_utf8(sent[0].1.clone()).expect("utf8");
        assert!(
            !text.to_ascii_lowercase().contains("x-sipward-hop"),
            "{text}"
        );
    }

    #[test]
    fn a_failure_is_acked_downstream_and_goes_upstream_to_the_caller_only() {
        let r = rig();
        let p = proxy(&r);
        let (_, sent) = invite(&r, &p);
        // The same 486 from a third address reaches nothing.
        answer(&r, &p, &sent, 486, Flow::udp(addr("192.0.2.66:5062")));
        assert!(r.wire.take().is_empty());
        answer(&r, &p, &sent, 486, callee());
        let out = r.wire.take();
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].1.starts_with(b"ACK sip:1001@198.51.100.9:7000"));
        assert_eq!(out[0].0, callee());
        assert!(out[1].1.starts_with(b"SIP/2.0 486"));
        assert_eq!(out[1].0, caller());
        assert_eq!(p.call_count(), 1, "until the branch's transaction ends");
    }

    #[test]
    fn a_callee_that_rings_too_long_is_cancelled() {
        let r = rig();
        let p = proxy(&r);
        let (_, sent) = invite(&r, &p);
        answer(&r, &p, &sent, 180, callee());
        r.wire.take();
        p.tick(r.clock.instant() + std::time::Duration::from_secs(179));
        assert!(r.wire.take().is_empty());
        p.tick(r.clock.instant() + std::time::Duration::from_secs(180));
        let out = r.wire.take();
        assert_eq!(out.len(), 1);
        assert!(out[0].1.starts_with(b"CANCEL sip:1001@198.51.100.9:7000"));
        assert_eq!(out[0].0, callee());
    }

    #[test]
    fn a_branch_makes_few_early_dialogs_however_many_tags_it_rings_with() {
        let r = rig();
        let p = proxy(&r);
        let (_, sent) = invite(&r, &p);
        for n in 0..50 {
            answer_tagged(&r, &p, &sent, 180, callee(), &format!("t{n}"));
        }
        assert_eq!(r.dialogs.len(), MAX_EARLY_PER_BRANCH);
        let up = r.wire.take();
        assert_eq!(up.len(), 50, "every provisional still goes upstream");
        assert!(up.iter().all(|(f, _)| *f == caller()));
        // A 2xx with a tag beyond the bound still makes its dialog.
        answer_tagged(&r, &p, &sent, 200, callee(), "t49");
        let (d, _) = r.dialogs.find("c1", "t49", "f1").expect("dialog");
        assert_eq!(d.phase, crate::dialog::Phase::Confirmed);
    }

    #[test]
    fn a_2xx_confirms_the_dialog_of_the_two_parties() {
        let r = rig();
        let p = proxy(&r);
        let (_, sent) = invite(&r, &p);
        answer(&r, &p, &sent, 180, callee());
        let (d, _) = r.dialogs.find("c1", "f1", "callee").expect("early dialog");
        assert_eq!(d.phase, crate::dialog::Phase::Early);
        answer(&r, &p, &sent, 200, callee());
        let (d, side) = r.dialogs.find("c1", "callee", "f1").expect("dialog");
        assert_eq!(side, Side::Callee);
        assert_eq!(d.phase, crate::dialog::Phase::Confirmed);
        assert_eq!(d.caller.flow, Some(caller()));
        assert_eq!(d.callee.flow, Some(callee()));
        let out = r.wire.take();
        assert!(
            out.iter().all(|(f, _)| *f == caller()),
            "both answers go upstream"
        );
        assert!(out.iter().any(|(_, m)| m.starts_with(b"SIP/2.0 200")));
    }

    #[test]
    fn a_closed_call_gets_our_bye_to_each_party_and_nothing_else_goes_in_our_name() {
        let r = rig();
        let p = proxy(&r);
        let (_, sent) = invite(&r, &p);
        answer(&r, &p, &sent, 200, callee());
        r.wire.take();
        let (d, _) = r.dialogs.find("c1", "f1", "callee").expect("dialog");
        // Denied: sipward's own request in a party's name, while the dialog is not
        // one it closes.
        let bye = |to: &str, from_tag: &str, to_tag: &str| {
            format!(
                "BYE sip:x@{to} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bKown1\r\n\
                 From: <sip:a@pbx>;tag={from_tag}\r\nTo: <sip:b@pbx>;tag={to_tag}\r\nCall-ID: c1\r\n\
                 CSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes()
        };
        let own = Purpose::InDialog { from: None };
        assert_eq!(
            r.egress
                .start(
                    bye("192.0.2.1", "f1", "callee"),
                    callee(),
                    own,
                    Owner::Proxy
                )
                .err(),
            Some(crate::egress::NotStarted::Denied(
                crate::egress::Denial::NotFromAParty
            ))
        );
        assert!(r.wire.take().is_empty());
        // Closing: one BYE each way, in the other's name.
        assert_eq!(
            p.end_calls_of(&Who::Extension("1002".into()), r.clock.instant()),
            1
        );
        let out = r.wire.take();
        assert_eq!(out.len(), 2, "{out:?}");
        let to_caller = out.iter().find(|(f, _)| *f == caller()).expect("to caller");
        let to_callee = out.iter().find(|(f, _)| *f == callee()).expect("to callee");
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("utf8");
        let (to_caller, to_callee) = (text(&to_caller.1), text(&to_callee.1));
        assert!(
            to_callee.starts_with("BYE sip:1001@198.51.100.9 SIP/2.0"),
            "{to_callee}"
        );
        assert!(
            to_callee.contains("From: <sip:1002@pbx>;tag=f1\r\n"),
            "{to_callee}"
        );
        assert!(
            to_callee.contains("To: <sip:1001@pbx>;tag=callee\r\n"),
            "{to_callee}"
        );
        assert!(
            to_callee.contains("CSeq: 3 BYE"),
            "above the INVITE's 2: {to_callee}"
        );
        assert!(
            to_caller.contains("From: <sip:1001@pbx>;tag=callee\r\n"),
            "{to_caller}"
        );
        assert!(
            to_caller.contains("To: <sip:1002@pbx>;tag=f1\r\n"),
            "{to_caller}"
        );
        assert!(to_caller.contains("CSeq: 1 BYE"), "{to_caller}");
        assert_eq!(d.kind, Kind::Proxied);
        // Still nothing but a BYE in a party's name, and not to a third address.
        let info = String::from_utf8(bye("192.0.2.1", "f1", "callee"))
            .expect("utf8")
            .replace("BYE", "INFO")
            .into_bytes();
        assert!(r.egress.start(info, callee(), own, Owner::Proxy).is_err());
        let third = Flow::udp(addr("192.0.2.66:5060"));
        assert!(
            r.egress
                .start(bye("192.0.2.66", "f1", "callee"), third, own, Owner::Proxy)
                .is_err()
        );
        // Nothing more to end.
        assert_eq!(
            p.end_calls_of(&Who::Extension("1002".into()), r.clock.instant()),
            0
        );
    }

    #[test]
    fn auto_answer_hints_are_taken_out_entry_by_entry() {
        let cases = [
            ("Call-Info", "<sip:127.0.0.1>;answer-after=0", None),
            ("call-info", "<sip:127.0.0.1>;Answer-After=0", None),
            ("Call-Info", ";answer-after=0", None),
            (
                "Call-Info",
                "<http://127.0.0.1/photo.jpg>;purpose=icon, <sip:127.0.0.1>;answer-after=0",
                Some("<http://127.0.0.1/photo.jpg>;purpose=icon"),
            ),
            (
                "Alert-Info",
                "<http://www.notused.com>;info=alert-autoanswer;delay=0",
                None,
            ),
            ("Alert-Info", "info=alert-autoanswer", None),
            ("Alert-Info", "Auto Answer", None),
            ("Alert-Info", "Ring Answer", None),
            ("Alert-Info", "<http://127.0.0.1>;info=intercom", None),
            (
                "Alert-Info",
                "<http://127.0.0.1/ring.wav>, <http://www.notused.com>;info=alert-autoanswer",
                Some("<http://127.0.0.1/ring.wav>"),
            ),
            ("Answer-Mode", "Auto", None),
            ("Priv-Answer-Mode", "Auto", None),
        ];
        for (name, value, kept) in cases {
            let (got, removed) = without_auto_answer(name, value);
            assert_eq!(got.as_deref(), kept, "{name}: {value}");
            assert!(removed, "{name}: {value}");
        }
        // Control: what is no hint stays as it is.
        assert_eq!(
            without_auto_answer("Call-Info", "<http://x/photo.jpg>;purpose=icon"),
            (Some("<http://x/photo.jpg>;purpose=icon".to_owned()), false)
        );
        assert_eq!(
            without_auto_answer("Alert-Info", "<http://x/ring.wav>"),
            (Some("<http://x/ring.wav>".to_owned()), false)
        );
        assert_eq!(
            without_auto_answer("Subject", "auto answer"),
            (Some("auto answer".to_owned()), false)
        );
    }

    #[test]
    fn failures_rank_as_the_rfc_says() {
        let mut codes = vec![486, 603, 408, 302, 407, 500];
        codes.sort_by_key(|c| rank(*c));
        assert_eq!(codes, vec![603, 407, 302, 408, 486, 500]);
    }

    #[test]
    fn a_response_goes_upstream_with_the_callers_own_vias() {
        let request = b"INVITE sip:1002@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKcaller;rport\r\n\
            From: <sip:1001@pbx>;tag=f\r\nTo: <sip:1002@pbx>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        // The callee answers with a forged second Via naming a victim.
        let answer = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKours\r\n\
            Via: SIP/2.0/UDP 192.0.2.66:5060;branch=z9hG4bKvictim\r\nFrom: <sip:1001@pbx>;tag=f\r\n\
            To: <sip:1002@pbx>;tag=t\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 2\r\n\r\nab";
        let m = sip::msg::parse(answer).expect("parse");
        let source = Flow::udp("10.0.0.1:5062".parse().expect("addr"));
        let up = upstream_response(request, &source, &m).expect("built");
        let text = String::from_utf8(up.clone()).expect("utf8");
        assert!(
            !text.contains("victim") && !text.contains("z9hG4bKours"),
            "{text}"
        );
        assert!(text.contains("branch=z9hG4bKcaller;received=10.0.0.1;rport=5062"));
        let parsed = sip::msg::parse(&up).expect("parses");
        assert_eq!(parsed.body, b"ab");
        assert_eq!(parsed.header(Name::To), Some("<sip:1002@pbx>;tag=t"));
    }
}
