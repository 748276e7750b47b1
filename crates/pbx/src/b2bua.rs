//! Calls to trunks, as a signalling back-to-back user agent (RFC 3261 §6 "B2BUA"): the
//! extension's INVITE (leg A) is answered by sipward, and sipward places a call of its
//! own to the gateway or provider (leg B) with its own Call-ID, tags and CSeq, its
//! own identity (the provider account, or the extension as caller ID at a gateway) and
//! the trunk's credentials when the trunk challenges (401/407, answered once per
//! challenge). The SDP is passed through unchanged, so media flows between the phone and
//! the trunk. Nothing of the internal network but the SDP reaches the trunk, and the
//! trunk cannot steer the call anywhere else.
//!
//! Both legs run over UDP with RFC 3261 timers: the INVITE to the trunk is retransmitted
//! (Timer A) until a provisional answer and given up after 32 s (Timer B); a ringing call
//! is cancelled after 3 minutes; final answers to the phone are retransmitted until its
//! ACK (Timer G/H); BYE, CANCEL and relayed in-dialog requests are non-INVITE client
//! transactions (Timer E/F). A BYE from either side is answered at once and sent on.
//! re-INVITE, UPDATE and INFO are relayed to the other leg and their answers back;
//! REFER (a transfer the trunk would carry out at the owner's cost) is refused.
//!
//! The call's lifetime is what the fraud limits count: a call is active from its INVITE
//! until its BYE (or its failure).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use policy::dialplan::CallClass;
use sip::header::addr::NameAddr;
use sip::header::auth::Challenge;
use sip::header::split_list;
use sip::header::via::Via;
use sip::msg::{Message, Name, StartLine};
use sip::response::top_via_with_source;
use store::trunks::ActiveCallRow;

use crate::notify::Tokens;
use crate::proxy::Send;
use crate::trunk::Target;

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const TIMER_B: Duration = Duration::from_secs(32);
/// A call that rings this long is cancelled (RFC 3261 §16.6's Timer C is > 3 min).
const RING_LIMIT: Duration = Duration::from_secs(180);
/// An ended call is kept this long to absorb retransmissions.
const LINGER: Duration = Duration::from_secs(32);
/// Our branches start with this.
pub const BRANCH_PREFIX: &str = "z9hG4bKswb";
/// Trunk calls at once (bounded like every table); more are answered 503.
pub const MAX_CALLS: usize = 16_384;
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    A,
    B,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Calling,
    Ringing,
    Answered,
    /// Over (failed, cancelled or hung up); kept a while for retransmissions.
    Ended,
}

/// A request one side sent us that we relayed to the other: how to answer it.
#[derive(Debug, Clone)]
struct Origin {
    leg: Leg,
    vias: Vec<String>,
    from: String,
    to: String,
    cseq: String,
}

/// A client transaction sipward runs on one leg.
#[derive(Debug)]
struct Tx {
    leg: Leg,
    method: String,
    cseq: u32,
    bytes: Vec<u8>,
    target: SocketAddr,
    next: Instant,
    interval: Duration,
    started: Instant,
    /// A provisional answer arrived (INVITE: stop retransmitting).
    proceeding: bool,
    done: bool,
    relay_of: Option<Origin>,
}

#[derive(Debug)]
struct Call {
    id: String,
    caller: String,
    dialled: String,
    trunk: String,
    class: CallClass,
    state: State,
    started: Instant,
    started_wall: i64,
    answered_wall: i64,
    ended_at: Option<Instant>,
    // Leg A: the extension, we are its UAS.
    a_addr: SocketAddr,
    a_call_id: String,
    a_from: String,
    a_to: String,
    a_tag: String,
    a_vias: Vec<String>,
    a_cseq: u32,
    a_branch: String,
    a_uri: String,
    a_local_cseq: u32,
    a_final: Option<Vec<u8>>,
    a_final_next: Instant,
    a_final_interval: Duration,
    a_final_since: Instant,
    a_acked: bool,
    // Leg B: the trunk, we are its UAC.
    target: Target,
    b_call_id: String,
    b_from: String,
    b_to: String,
    b_uri: String,
    b_remote_uri: Option<String>,
    b_routes: Vec<String>,
    b_cseq: u32,
    b_invite_branch: String,
    b_invite_cseq: u32,
    b_auth_tried: bool,
    b_ack: Option<Vec<u8>>,
    /// The SDP and its type from the phone's INVITE (sent again after a challenge).
    body: Vec<u8>,
    content_type: Option<String>,
    max_forwards: u32,
    txs: HashMap<String, Tx>,
    /// A re-INVITE relayed to the other leg and answered 2xx: the origin's ACK (by its
    /// CSeq number) becomes an ACK there with our CSeq.
    reinvite_acks: Vec<(Leg, u32, u32)>,
}

#[derive(Debug, Default)]
struct Tables {
    calls: HashMap<String, Call>,
    /// Our branches -> call.
    by_branch: HashMap<String, String>,
    /// Both legs' Call-IDs -> call.
    by_call_id: HashMap<String, String>,
    /// The phone's INVITE branch -> call (CANCEL and retransmissions).
    by_a_branch: HashMap<String, String>,
}

/// A call to a trunk, decided and routed by the endpoint.
#[derive(Debug)]
pub struct Placed {
    pub caller: String,
    pub dialled: String,
    /// The number as the trunk gets it (after the route's rewrite).
    pub number: String,
    pub class: CallClass,
    pub target: Target,
}

/// What the endpoint does with an in-dialog request that belongs to a trunk call.
#[derive(Debug, PartialEq, Eq)]
pub enum InDialog {
    /// Answer it with this status, then send these.
    Answer(u16, &'static str, Vec<Send>),
    /// No answer from us (ACK, or relayed: the answer comes from the other side).
    Sent(Vec<Send>),
}

#[derive(Debug)]
pub struct B2bua {
    tokens: Tokens,
    bound: OnceLock<SocketAddr>,
    tables: Mutex<Tables>,
}

/// A message with these headers, its Content-Length (ours: we write every message on
/// this side) and body.
fn render(start: &str, mut headers: Vec<(String, String)>, body: &[u8]) -> Vec<u8> {
    headers.push(h("Content-Length", body.len().to_string()));
    crate::proxy::render(start, headers, body)
}

fn h(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

fn cseq_of(m: &Message<'_>) -> Option<(u32, String)> {
    let v = m.header(Name::CSeq)?;
    let mut it = v.split_whitespace();
    let n = it.next()?.parse().ok()?;
    Some((n, it.next()?.to_owned()))
}

/// Reasons from a peer go into our answers: printable and short.
fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect()
}

impl Call {
    fn local(&self, bound: SocketAddr, peer: SocketAddr) -> SocketAddr {
        crate::notify::local_for(bound, peer)
    }

    /// A response to the phone's INVITE.
    fn a_response(
        &self,
        bound: SocketAddr,
        code: u16,
        reason: &str,
        body: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let mut hs: Vec<(String, String)> =
            self.a_vias.iter().map(|v| h("Via", v.clone())).collect();
        hs.push(h("From", self.a_from.clone()));
        if code > 100 {
            hs.push(h("To", format!("{};tag={}", self.a_to, self.a_tag)));
        } else {
            hs.push(h("To", self.a_to.clone()));
        }
        hs.push(h("Call-ID", self.a_call_id.clone()));
        hs.push(h("CSeq", format!("{} INVITE", self.a_cseq)));
        if code > 100 && code < 300 {
            hs.push(h(
                "Contact",
                format!("<sip:{}>", self.local(bound, self.a_addr)),
            ));
            hs.push(h("Allow", ALLOW));
        }
        let (ct, bytes) = body.unwrap_or(("", b""));
        if !bytes.is_empty() {
            hs.push(h("Content-Type", ct));
        }
        render(&format!("SIP/2.0 {code} {reason}"), hs, bytes)
    }

    /// A request on leg B inside the dialog (or the INVITE itself).
    fn b_request(
        &self,
        bound: SocketAddr,
        method: &str,
        cseq: u32,
        branch: &str,
        extra: Vec<(String, String)>,
        body: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let local = self.local(bound, self.target.addr);
        let uri = self.b_remote_uri.as_deref().unwrap_or(&self.b_uri);
        let mut hs = vec![
            h("Via", format!("SIP/2.0/UDP {local};branch={branch};rport")),
            h("Max-Forwards", self.max_forwards.to_string()),
        ];
        if !self.b_routes.is_empty() {
            hs.push(h("Route", self.b_routes.join(", ")));
        }
        hs.push(h("From", self.b_from.clone()));
        hs.push(h("To", self.b_to.clone()));
        hs.push(h("Call-ID", self.b_call_id.clone()));
        hs.push(h("CSeq", format!("{cseq} {method}")));
        if method == "INVITE" {
            hs.push(h(
                "Contact",
                format!("<sip:{}@{local}>", self.target.from_user),
            ));
            hs.push(h("Allow", ALLOW));
            hs.push(h("User-Agent", "sipward"));
        }
        hs.extend(extra);
        let (ct, bytes) = body.unwrap_or(("", b""));
        if !bytes.is_empty() {
            hs.push(h("Content-Type", ct));
        }
        let start = if method == "INVITE" && self.b_remote_uri.is_none() {
            format!("INVITE {} SIP/2.0", self.b_uri)
        } else {
            format!("{method} {uri} SIP/2.0")
        };
        render(&start, hs, bytes)
    }

    /// A request on leg A inside the dialog (we are the callee there).
    fn a_request(
        &mut self,
        bound: SocketAddr,
        method: &str,
        branch: &str,
        body: Option<(&str, &[u8])>,
    ) -> (u32, Vec<u8>) {
        self.a_local_cseq += 1;
        let local = self.local(bound, self.a_addr);
        let mut hs = vec![
            h("Via", format!("SIP/2.0/UDP {local};branch={branch};rport")),
            h("Max-Forwards", "70"),
            h("From", format!("{};tag={}", self.a_to, self.a_tag)),
            h("To", self.a_from.clone()),
            h("Call-ID", self.a_call_id.clone()),
            h("CSeq", format!("{} {method}", self.a_local_cseq)),
        ];
        if method == "INVITE" {
            hs.push(h("Contact", format!("<sip:{local}>")));
        }
        let (ct, bytes) = body.unwrap_or(("", b""));
        if !bytes.is_empty() {
            hs.push(h("Content-Type", ct));
        }
        (
            self.a_local_cseq,
            render(&format!("{method} {} SIP/2.0", self.a_uri), hs, bytes),
        )
    }

    fn end(&mut self, now: Instant) {
        if self.state != State::Ended {
            self.state = State::Ended;
            self.ended_at = Some(now);
        }
    }

    /// Sends a final answer to the phone (retransmitted until its ACK).
    fn a_final(&mut self, bytes: Vec<u8>, now: Instant) -> Send {
        self.a_final = Some(bytes.clone());
        self.a_final_next = now + T1;
        self.a_final_interval = T1;
        self.a_final_since = now;
        Send {
            bytes,
            target: self.a_addr,
        }
    }
}

impl B2bua {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            tokens: Tokens::new(key),
            bound: OnceLock::new(),
            tables: Mutex::new(Tables::default()),
        }
    }

    pub fn set_bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }

    fn branch(&self) -> String {
        format!("{BRANCH_PREFIX}{}", self.tokens.next("b2b-branch"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Trunk calls of `caller` not ended yet (the concurrent-calls limit counts these).
    pub fn active_for(&self, caller: &str) -> u32 {
        let n = self
            .lock()
            .calls
            .values()
            .filter(|c| c.caller == caller && c.state != State::Ended)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether a Call-ID belongs to a trunk call (one hash lookup).
    pub fn owns(&self, call_id: &str) -> bool {
        self.lock().by_call_id.contains_key(call_id)
    }

    /// Starts a trunk call for the phone's INVITE `m` from `source` (answers go to
    /// `upstream`). Returns what to send to the trunk; the caller answers 100 first.
    pub fn start(
        &self,
        m: &Message<'_>,
        source: SocketAddr,
        upstream: SocketAddr,
        placed: Placed,
        wall_now: i64,
    ) -> Result<Vec<Send>, (u16, &'static str)> {
        let bound = *self.bound.get().ok_or((500, "Server Internal Error"))?;
        let bad = (400, "Bad Request");
        let a_branch = m
            .header(Name::Via)
            .and_then(Via::parse_top)
            .and_then(|v| v.branch)
            .ok_or(bad)?
            .to_owned();
        let max_forwards = match m.header(Name::MaxForwards) {
            Some(v) => v.trim().parse::<u32>().map_err(|_| bad)?,
            None => 70,
        };
        if max_forwards == 0 {
            return Err((483, "Too Many Hops"));
        }
        let a_call_id = m.header(Name::CallId).ok_or(bad)?.to_owned();
        let a_from = m.header(Name::From).ok_or(bad)?.to_owned();
        let a_to = m.header(Name::To).ok_or(bad)?.to_owned();
        let (a_cseq, _) = cseq_of(m).ok_or(bad)?;
        let a_uri = m
            .header(Name::Contact)
            .and_then(|c| split_list(c).next())
            .and_then(NameAddr::parse)
            .map(|a| a.uri.to_owned())
            .ok_or(bad)?;
        if a_uri.chars().any(char::is_control) {
            return Err(bad);
        }
        let mut a_vias: Vec<String> = m.headers_named(Name::Via).map(str::to_owned).collect();
        if let Some(first) = a_vias.first_mut() {
            let mut entries = split_list(first);
            let top = entries.next().ok_or(bad)?;
            let via = Via::parse(top).ok_or(bad)?;
            let mut v = top_via_with_source(top, &via, source);
            for rest in entries {
                v.push_str(", ");
                v.push_str(rest);
            }
            *first = v;
        }
        let mut t = self.lock();
        if t.by_a_branch.contains_key(&a_branch) {
            return Ok(Vec::new()); // a retransmission: the 100 goes again
        }
        if t.calls.len() >= MAX_CALLS {
            return Err((503, "Service Unavailable"));
        }
        let now = Instant::now();
        let id = self.tokens.next("b2b-call");
        let domain = placed.target.domain.clone();
        let b_call_id = format!("{}@sipward", self.tokens.next("b2b-call-id"));
        let b_uri = format!("sip:{}@{domain}", placed.number);
        let mut call = Call {
            id: id.clone(),
            caller: placed.caller,
            dialled: placed.dialled,
            trunk: placed.target.label.clone(),
            class: placed.class,
            state: State::Calling,
            started: now,
            started_wall: wall_now,
            answered_wall: 0,
            ended_at: None,
            a_addr: upstream,
            a_call_id: a_call_id.clone(),
            a_from,
            a_to,
            a_tag: self.tokens.next("b2b-tag"),
            a_vias,
            a_cseq,
            a_branch: a_branch.clone(),
            a_uri,
            a_local_cseq: 0,
            a_final: None,
            a_final_next: now,
            a_final_interval: T1,
            a_final_since: now,
            a_acked: false,
            b_from: format!(
                "<sip:{}@{domain}>;tag={}",
                placed.target.from_user,
                self.tokens.next("b2b-tag")
            ),
            b_to: format!("<{b_uri}>"),
            b_uri,
            b_remote_uri: None,
            b_routes: Vec::new(),
            b_cseq: 1,
            b_invite_branch: String::new(),
            b_invite_cseq: 1,
            b_auth_tried: false,
            b_ack: None,
            body: m.body.to_vec(),
            content_type: m.header(Name::ContentType).map(str::to_owned),
            max_forwards: max_forwards - 1,
            b_call_id: b_call_id.clone(),
            target: placed.target,
            txs: HashMap::new(),
            reinvite_acks: Vec::new(),
        };
        let send = self.send_invite(&mut call, bound, None, now);
        t.by_branch.insert(call.b_invite_branch.clone(), id.clone());
        t.by_a_branch.insert(a_branch, id.clone());
        t.by_call_id.insert(a_call_id, id.clone());
        t.by_call_id.insert(b_call_id, id.clone());
        t.calls.insert(id, call);
        Ok(vec![send])
    }

    /// (Re)sends the INVITE on leg B, with credentials when given.
    fn send_invite(
        &self,
        call: &mut Call,
        bound: SocketAddr,
        auth: Option<(String, String)>,
        now: Instant,
    ) -> Send {
        let branch = self.branch();
        let body = call.content_type.clone().map(|ct| (ct, call.body.clone()));
        let bytes = call.b_request(
            bound,
            "INVITE",
            call.b_cseq,
            &branch,
            auth.into_iter().collect(),
            body.as_ref().map(|(ct, b)| (ct.as_str(), b.as_slice())),
        );
        call.b_invite_branch = branch.clone();
        call.b_invite_cseq = call.b_cseq;
        call.txs.insert(
            branch,
            Tx {
                leg: Leg::B,
                method: "INVITE".into(),
                cseq: call.b_cseq,
                bytes: bytes.clone(),
                target: call.target.addr,
                next: now + T1,
                interval: T1,
                started: now,
                proceeding: false,
                done: false,
                relay_of: None,
            },
        );
        Send {
            bytes,
            target: call.target.addr,
        }
    }

    /// Starts a non-INVITE (or relayed) client transaction on a leg.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        t: &mut Tables,
        id: &str,
        leg: Leg,
        method: &str,
        body: Option<(&str, &[u8])>,
        relay_of: Option<Origin>,
        now: Instant,
    ) -> Option<Send> {
        let bound = *self.bound.get()?;
        let call = t.calls.get_mut(id)?;
        let branch = self.branch();
        let (cseq, bytes, target) = match leg {
            Leg::A => {
                let (cseq, bytes) = call.a_request(bound, method, &branch, body);
                (cseq, bytes, call.a_addr)
            }
            Leg::B => {
                call.b_cseq += 1;
                let bytes = call.b_request(bound, method, call.b_cseq, &branch, Vec::new(), body);
                (call.b_cseq, bytes, call.target.addr)
            }
        };
        call.txs.insert(
            branch.clone(),
            Tx {
                leg,
                method: method.to_owned(),
                cseq,
                bytes: bytes.clone(),
                target,
                next: now + T1,
                interval: T1,
                started: now,
                proceeding: false,
                done: false,
                relay_of,
            },
        );
        t.by_branch.insert(branch, id.to_owned());
        Some(Send { bytes, target })
    }

    /// CANCEL of the INVITE on leg B (same branch and CSeq number as the INVITE).
    fn cancel_b(call: &Call, bound: SocketAddr) -> Option<Send> {
        let tx = call.txs.get(&call.b_invite_branch)?;
        if tx.done {
            return None;
        }
        let local = call.local(bound, call.target.addr);
        let hs = vec![
            h(
                "Via",
                format!("SIP/2.0/UDP {local};branch={};rport", call.b_invite_branch),
            ),
            h("Max-Forwards", "70"),
            h("From", call.b_from.clone()),
            h("To", format!("<{}>", call.b_uri)),
            h("Call-ID", call.b_call_id.clone()),
            h("CSeq", format!("{} CANCEL", call.b_invite_cseq)),
        ];
        Some(Send {
            bytes: render(&format!("CANCEL {} SIP/2.0", call.b_uri), hs, b""),
            target: call.target.addr,
        })
    }

    /// The ACK on leg B for a final answer to our INVITE (hop by hop for non-2xx:
    /// same branch; for 2xx: a new one, sent to the remote target).
    fn ack_b(
        &self,
        call: &Call,
        bound: SocketAddr,
        response_to: &str,
        branch: &str,
        cseq: u32,
        body: Option<(&str, &[u8])>,
    ) -> Send {
        let local = call.local(bound, call.target.addr);
        let mut hs = vec![
            h("Via", format!("SIP/2.0/UDP {local};branch={branch};rport")),
            h("Max-Forwards", "70"),
        ];
        if !call.b_routes.is_empty() {
            hs.push(h("Route", call.b_routes.join(", ")));
        }
        hs.push(h("From", call.b_from.clone()));
        hs.push(h("To", response_to.to_owned()));
        hs.push(h("Call-ID", call.b_call_id.clone()));
        hs.push(h("CSeq", format!("{cseq} ACK")));
        let (ct, bytes) = body.unwrap_or(("", b""));
        if !bytes.is_empty() {
            hs.push(h("Content-Type", ct));
        }
        let uri = call.b_remote_uri.as_deref().unwrap_or(&call.b_uri);
        Send {
            bytes: render(&format!("ACK {uri} SIP/2.0"), hs, bytes),
            target: call.target.addr,
        }
    }

    /// CANCEL from the phone for its INVITE: Some when it matched (answer it 200), with
    /// the CANCEL to the trunk and the 487 to the phone.
    pub fn cancel(&self, m: &Message<'_>) -> Option<Vec<Send>> {
        let branch = m.header(Name::Via).and_then(Via::parse_top)?.branch?;
        let bound = *self.bound.get()?;
        let mut t = self.lock();
        let id = t.by_a_branch.get(branch)?.clone();
        let call = t.calls.get_mut(&id)?;
        let mut out = Vec::new();
        if matches!(call.state, State::Calling | State::Ringing) {
            out.extend(Self::cancel_b(call, bound));
            let now = Instant::now();
            let bytes = call.a_response(bound, 487, "Request Terminated", None);
            out.push(call.a_final(bytes, now));
            call.end(now);
        }
        Some(out)
    }

    /// A response whose top Via branch is ours.
    pub fn response(&self, m: &Message<'_>) -> Option<Vec<Send>> {
        let StartLine::Response { code, reason } = m.start else {
            return None;
        };
        let branch = m.header(Name::Via).and_then(Via::parse_top)?.branch?;
        if !branch.starts_with(BRANCH_PREFIX) {
            return None;
        }
        let bound = *self.bound.get()?;
        let mut t = self.lock();
        let Some(id) = t.by_branch.get(branch).cloned() else {
            return Some(Vec::new());
        };
        let now = Instant::now();
        let (_, method) = cseq_of(m)?;
        let mut out = Vec::new();
        let call = t.calls.get_mut(&id)?;
        let tx = call.txs.get_mut(branch)?;
        if method == "CANCEL" {
            return Some(out); // the answer to our CANCEL: the INVITE's answer follows
        }
        let is_b_invite = tx.leg == Leg::B && tx.method == "INVITE" && tx.relay_of.is_none();
        if is_b_invite {
            let reason = clean_reason(reason);
            if code < 200 {
                tx.proceeding = true;
                if code > 100 && call.state == State::Calling {
                    call.state = State::Ringing;
                }
                if code > 100 && call.a_final.is_none() {
                    let body = m.header(Name::ContentType).map(|ct| (ct, m.body));
                    out.push(Send {
                        bytes: call.a_response(
                            bound,
                            code,
                            &reason,
                            body.filter(|(_, b)| !b.is_empty()),
                        ),
                        target: call.a_addr,
                    });
                }
                return Some(out);
            }
            let first = !tx.done;
            tx.done = true;
            let to = m.header(Name::To).unwrap_or_default().to_owned();
            if (200..300).contains(&code) {
                if !first {
                    // A retransmitted 2xx: our ACK got lost.
                    out.extend(call.b_ack.clone().map(|bytes| Send {
                        bytes,
                        target: call.target.addr,
                    }));
                    return Some(out);
                }
                call.b_to = to.clone();
                call.b_remote_uri = m
                    .header(Name::Contact)
                    .and_then(|c| split_list(c).next())
                    .and_then(NameAddr::parse)
                    .map(|a| a.uri.to_owned())
                    .filter(|u| !u.chars().any(char::is_control));
                let mut routes: Vec<String> = m
                    .headers_named(Name::RecordRoute)
                    .flat_map(split_list)
                    .map(str::to_owned)
                    .filter(|r| !r.chars().any(char::is_control))
                    .collect();
                routes.reverse();
                call.b_routes = routes;
                if call.state == State::Ended {
                    // Answered after the phone gave up: ACK and hang up at once.
                    let ack_branch = self.branch();
                    let ack = self.ack_b(call, bound, &to, &ack_branch, call.b_invite_cseq, None);
                    call.b_ack = Some(ack.bytes.clone());
                    out.push(ack);
                    out.extend(self.request(&mut t, &id, Leg::B, "BYE", None, None, now));
                    return Some(out);
                }
                call.state = State::Answered;
                call.answered_wall = call.started_wall
                    + i64::try_from(now.duration_since(call.started).as_secs()).unwrap_or(0);
                let body = m.header(Name::ContentType).map(|ct| (ct, m.body));
                let bytes =
                    call.a_response(bound, code, &reason, body.filter(|(_, b)| !b.is_empty()));
                out.push(call.a_final(bytes, now));
                return Some(out);
            }
            // Non-2xx: ACK it on the same branch.
            out.push(self.ack_b(call, bound, &to, branch, tx_cseq(call, branch), None));
            if !first || call.a_final.is_some() {
                return Some(out);
            }
            if matches!(code, 401 | 407) && !call.b_auth_tried {
                let (header, answer) = if code == 401 {
                    (Name::WwwAuthenticate, "Authorization")
                } else {
                    (Name::ProxyAuthenticate, "Proxy-Authorization")
                };
                let value = m
                    .header(header)
                    .and_then(|v| Challenge::parse(v).ok())
                    .and_then(|ch| {
                        ch.answer(
                            "INVITE",
                            &call.b_uri,
                            &call.target.auth_id,
                            call.target.password.expose(),
                            &self.tokens.next("cnonce"),
                        )
                    });
                if let Some(value) = value {
                    call.b_auth_tried = true;
                    call.b_cseq += 1;
                    let send = self.send_invite(call, bound, Some((answer.to_owned(), value)), now);
                    let b = call.b_invite_branch.clone();
                    t.by_branch.insert(b, id);
                    out.push(send);
                    return Some(out);
                }
            }
            // The phone gets the trunk's answer, except: credentials refused (a trunk
            // problem, not the phone's) and redirects (never followed: a trunk must not
            // steer calls).
            let (code, reason) = match code {
                401 | 407 => (503, "Service Unavailable".to_owned()),
                300..=399 => (480, "Temporarily Unavailable".to_owned()),
                c => (c, reason),
            };
            let bytes = call.a_response(bound, code, &reason, None);
            out.push(call.a_final(bytes, now));
            call.end(now);
            return Some(out);
        }
        // Answers to BYE and relayed requests.
        if code < 200 {
            tx.proceeding = true;
            return Some(out);
        }
        if tx.done {
            return Some(out);
        }
        tx.done = true;
        let leg = tx.leg;
        let our_cseq = tx.cseq;
        let relayed_invite = tx.method == "INVITE";
        let Some(origin) = tx.relay_of.clone() else {
            return Some(out);
        };
        if relayed_invite && code >= 300 {
            // Our re-INVITE failed: ACK it hop by hop (the origin ACKs us).
            let to = m.header(Name::To).unwrap_or_default().to_owned();
            match leg {
                Leg::B => out.push(self.ack_b(call, bound, &to, branch, our_cseq, None)),
                Leg::A => out.extend(ack_a(call, bound, branch, our_cseq)),
            }
        }
        if relayed_invite && (200..300).contains(&code) {
            let origin_cseq = origin
                .cseq
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            call.reinvite_acks.push((leg, origin_cseq, our_cseq));
        }
        let mut hs: Vec<(String, String)> =
            origin.vias.iter().map(|v| h("Via", v.clone())).collect();
        hs.push(h("From", origin.from.clone()));
        hs.push(h("To", origin.to.clone()));
        hs.push(h(
            "Call-ID",
            match origin.leg {
                Leg::A => call.a_call_id.clone(),
                Leg::B => call.b_call_id.clone(),
            },
        ));
        hs.push(h("CSeq", origin.cseq.clone()));
        if relayed_invite && (200..300).contains(&code) {
            let peer = match origin.leg {
                Leg::A => call.a_addr,
                Leg::B => call.target.addr,
            };
            hs.push(h("Contact", format!("<sip:{}>", call.local(bound, peer))));
        }
        let body = m.header(Name::ContentType).filter(|_| !m.body.is_empty());
        if let Some(ct) = body {
            hs.push(h("Content-Type", ct));
        }
        let bytes = render(
            &format!("SIP/2.0 {code} {}", clean_reason(reason)),
            hs,
            if body.is_some() { m.body } else { b"" },
        );
        out.push(Send {
            bytes,
            target: match origin.leg {
                Leg::A => call.a_addr,
                Leg::B => call.target.addr,
            },
        });
        Some(out)
    }

    /// An in-dialog request (or ACK) whose Call-ID is a trunk call's. None when it is not
    /// ours (or comes from an address that is not the leg's).
    pub fn in_dialog(&self, m: &Message<'_>, method: &str, source: SocketAddr) -> Option<InDialog> {
        let call_id = m.header(Name::CallId)?;
        let bound = *self.bound.get()?;
        let mut t = self.lock();
        let id = t.by_call_id.get(call_id)?.clone();
        let now = Instant::now();
        let call = t.calls.get_mut(&id)?;
        let leg = if call_id == call.a_call_id {
            Leg::A
        } else {
            Leg::B
        };
        let expected = match leg {
            Leg::A => call.a_addr.ip(),
            Leg::B => call.target.addr.ip(),
        };
        if source.ip() != expected {
            return Some(InDialog::Answer(
                481,
                "Call/Transaction Does Not Exist",
                Vec::new(),
            ));
        }
        let (cseq, _) = cseq_of(m)?;
        let mut out = Vec::new();
        if method == "ACK" {
            if leg == Leg::A && cseq == call.a_cseq {
                call.a_acked = true;
                if call.state == State::Answered && call.b_ack.is_none() {
                    let body = m.header(Name::ContentType).filter(|_| !m.body.is_empty());
                    let ack_branch = self.branch();
                    let b_to = call.b_to.clone();
                    let ack = self.ack_b(
                        call,
                        bound,
                        &b_to,
                        &ack_branch,
                        call.b_invite_cseq,
                        body.map(|ct| (ct, m.body)),
                    );
                    call.b_ack = Some(ack.bytes.clone());
                    out.push(ack);
                }
            } else if let Some(i) = call
                .reinvite_acks
                .iter()
                .position(|(l, origin, _)| *l != leg && *origin == cseq)
            {
                let (other, _, ours) = call.reinvite_acks.remove(i);
                let branch = self.branch();
                match other {
                    Leg::B => {
                        let b_to = call.b_to.clone();
                        out.push(self.ack_b(call, bound, &b_to, &branch, ours, None));
                    }
                    Leg::A => out.extend(ack_a(call, bound, &branch, ours)),
                }
            }
            return Some(InDialog::Sent(out));
        }
        let other = match leg {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        };
        match method {
            "BYE" => {
                let answered = call.state == State::Answered;
                if call.state != State::Ended {
                    if answered {
                        out.extend(self.request(&mut t, &id, other, "BYE", None, None, now));
                    } else if leg == Leg::B {
                        // The trunk gave up before answering.
                        let call = t.calls.get_mut(&id)?;
                        let bytes = call.a_response(bound, 480, "Temporarily Unavailable", None);
                        out.push(call.a_final(bytes, now));
                    }
                }
                if let Some(call) = t.calls.get_mut(&id) {
                    call.end(now);
                }
                Some(InDialog::Answer(200, "OK", out))
            }
            "INVITE" | "UPDATE" | "INFO" if call.state == State::Answered => {
                let origin = Origin {
                    leg,
                    vias: m.headers_named(Name::Via).map(str::to_owned).collect(),
                    from: m.header(Name::From)?.to_owned(),
                    to: m.header(Name::To)?.to_owned(),
                    cseq: m.header(Name::CSeq)?.to_owned(),
                };
                if origin
                    .vias
                    .iter()
                    .chain([&origin.from, &origin.to, &origin.cseq])
                    .any(|v| v.chars().any(char::is_control))
                {
                    return Some(InDialog::Answer(400, "Bad Request", out));
                }
                let ct = m.header(Name::ContentType).filter(|_| !m.body.is_empty());
                let body = ct.map(|ct| (ct, m.body));
                match self.request(&mut t, &id, other, method, body, Some(origin), now) {
                    Some(s) => Some(InDialog::Sent(vec![s])),
                    None => Some(InDialog::Answer(500, "Server Internal Error", out)),
                }
            }
            "INVITE" | "UPDATE" | "INFO" => Some(InDialog::Answer(491, "Request Pending", out)),
            "REFER" => Some(InDialog::Answer(403, "Forbidden", out)),
            "OPTIONS" => Some(InDialog::Answer(200, "OK", out)),
            _ => Some(InDialog::Answer(501, "Not Implemented", out)),
        }
    }

    /// Retransmissions and timeouts (every ~100 ms).
    pub fn tick(&self, now: Instant) -> Vec<Send> {
        let Some(bound) = self.bound.get().copied() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut t = self.lock();
        let mut byes = Vec::new();
        let mut gone = Vec::new();
        for (id, call) in t.calls.iter_mut() {
            let invite_branch = call.b_invite_branch.clone();
            let mut invite_timed_out = false;
            let mut relays_timed_out = Vec::new();
            for (branch, tx) in call.txs.iter_mut() {
                if tx.done || now < tx.next {
                    continue;
                }
                let invite = tx.method == "INVITE";
                if now.duration_since(tx.started) >= TIMER_B {
                    tx.done = true;
                    if *branch == invite_branch {
                        invite_timed_out = true;
                    } else if let Some(o) = tx.relay_of.clone() {
                        relays_timed_out.push(o);
                    }
                    continue;
                }
                if invite && tx.proceeding {
                    continue;
                }
                let interval = if invite {
                    tx.interval * 2
                } else if tx.proceeding {
                    T2
                } else {
                    (tx.interval * 2).min(T2)
                };
                tx.interval = interval;
                tx.next = now + interval;
                out.push(Send {
                    bytes: tx.bytes.clone(),
                    target: tx.target,
                });
            }
            if invite_timed_out && call.a_final.is_none() {
                let bytes = call.a_response(bound, 408, "Request Timeout", None);
                out.push(call.a_final(bytes, now));
                call.end(now);
            }
            for o in relays_timed_out {
                let mut hs: Vec<(String, String)> =
                    o.vias.iter().map(|v| h("Via", v.clone())).collect();
                hs.push(h("From", o.from));
                hs.push(h("To", o.to));
                hs.push(h(
                    "Call-ID",
                    match o.leg {
                        Leg::A => call.a_call_id.clone(),
                        Leg::B => call.b_call_id.clone(),
                    },
                ));
                hs.push(h("CSeq", o.cseq));
                out.push(Send {
                    bytes: render("SIP/2.0 408 Request Timeout", hs, b""),
                    target: match o.leg {
                        Leg::A => call.a_addr,
                        Leg::B => call.target.addr,
                    },
                });
            }
            if matches!(call.state, State::Calling | State::Ringing)
                && now.duration_since(call.started) >= RING_LIMIT
            {
                out.extend(Self::cancel_b(call, bound));
                let bytes = call.a_response(bound, 480, "Temporarily Unavailable", None);
                out.push(call.a_final(bytes, now));
                call.end(now);
            }
            if let Some(bytes) = &call.a_final
                && !call.a_acked
                && now >= call.a_final_next
            {
                if now.duration_since(call.a_final_since) >= TIMER_B {
                    // The phone never ACKed: for an answered call, hang up the trunk.
                    call.a_acked = true;
                    if call.state == State::Answered {
                        byes.push(id.clone());
                        call.end(now);
                    }
                } else {
                    out.push(Send {
                        bytes: bytes.clone(),
                        target: call.a_addr,
                    });
                    call.a_final_interval = (call.a_final_interval * 2).min(T2);
                    call.a_final_next = now + call.a_final_interval;
                }
            }
            if let Some(ended) = call.ended_at
                && now.duration_since(ended) >= LINGER
                && call.txs.values().all(|tx| tx.done)
            {
                gone.push(id.clone());
            }
        }
        for id in byes {
            out.extend(self.request(&mut t, &id, Leg::B, "BYE", None, None, now));
        }
        for id in gone {
            if let Some(call) = t.calls.remove(&id) {
                t.by_call_id.remove(&call.a_call_id);
                t.by_call_id.remove(&call.b_call_id);
                t.by_a_branch.remove(&call.a_branch);
                for b in call.txs.keys() {
                    t.by_branch.remove(b);
                }
            }
        }
        out
    }

    /// The trunk calls not ended, for `sipward calls`.
    pub fn snapshot(&self) -> Vec<ActiveCallRow> {
        self.lock()
            .calls
            .values()
            .filter(|c| c.state != State::Ended)
            .map(|c| ActiveCallRow {
                id: c.id.clone(),
                caller: c.caller.clone(),
                callee: c.dialled.clone(),
                kind: if c.class == CallClass::Emergency {
                    "emergency".into()
                } else {
                    "outbound".into()
                },
                trunk: c.trunk.clone(),
                state: match c.state {
                    State::Calling => "setup",
                    State::Ringing => "ringing",
                    _ => "answered",
                }
                .into(),
                started_at: c.started_wall,
                answered_at: c.answered_wall,
            })
            .collect()
    }
}

/// The CSeq number of one of our transactions.
fn tx_cseq(call: &Call, branch: &str) -> u32 {
    call.txs.get(branch).map_or(call.b_invite_cseq, |t| t.cseq)
}

/// The ACK on leg A for a re-INVITE we sent there.
fn ack_a(call: &Call, bound: SocketAddr, branch: &str, cseq: u32) -> Option<Send> {
    let local = call.local(bound, call.a_addr);
    let hs = vec![
        h("Via", format!("SIP/2.0/UDP {local};branch={branch};rport")),
        h("Max-Forwards", "70"),
        h("From", format!("{};tag={}", call.a_to, call.a_tag)),
        h("To", call.a_from.clone()),
        h("Call-ID", call.a_call_id.clone()),
        h("CSeq", format!("{cseq} ACK")),
    ];
    Some(Send {
        bytes: render(&format!("ACK {} SIP/2.0", call.a_uri), hs, b""),
        target: call.a_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::secret::Secret;

    const PHONE: &str = "127.0.0.2:5062";
    const TRUNK: &str = "127.0.0.7:5070";

    fn b2bua() -> B2bua {
        let b = B2bua::new([3; 32]);
        b.set_bound("127.0.0.1:5060".parse().expect("addr"));
        b
    }

    fn invite() -> String {
        format!(
            "INVITE sip:0301234567@pbx SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bKphone1\r\n\
             From: <sip:5001@pbx>;tag=p1\r\nTo: <sip:0301234567@pbx>\r\nCall-ID: phone-call-1\r\n\
             CSeq: 2 INVITE\r\nContact: <sip:5001@{PHONE}>\r\nMax-Forwards: 70\r\n\
             Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\nv=0"
        )
    }

    fn placed() -> Placed {
        Placed {
            caller: "5001".into(),
            dialled: "0301234567".into(),
            number: "0301234567".into(),
            class: CallClass::National,
            target: Target {
                label: "gateway:pstn".into(),
                addr: TRUNK.parse().expect("addr"),
                domain: "127.0.0.7".into(),
                from_user: "5001".into(),
                auth_id: "gw-pstn-7".into(),
                password: Secret::new("Gw7-secret"),
            },
        }
    }

    fn text(s: &Send) -> String {
        String::from_utf8(s.bytes.clone()).expect("utf8")
    }

    fn header<'a>(msg: &'a str, name: &str) -> &'a str {
        msg.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or("")
    }

    /// The trunk's answer to one of our requests, echoing its Via, From, Call-ID, CSeq.
    fn answer(req: &str, status: &str, extra: &str, body: &str) -> String {
        format!(
            "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=t1\r\nCall-ID: {}\r\nCSeq: {}\r\n\
             {extra}Content-Length: {}\r\n\r\n{body}",
            header(req, "Via"),
            header(req, "From"),
            header(req, "To"),
            header(req, "Call-ID"),
            header(req, "CSeq"),
            body.len()
        )
    }

    fn feed(b: &B2bua, msg: &str) -> Vec<Send> {
        b.response(&sip::msg::parse(msg.as_bytes()).expect("parses"))
            .expect("ours")
    }

    #[test]
    fn a_challenged_call_is_answered_with_the_trunks_credentials_and_hung_up_across() {
        let b = b2bua();
        let inv = invite();
        let m = sip::msg::parse(inv.as_bytes()).expect("parses");
        let phone: SocketAddr = PHONE.parse().expect("addr");
        let sent = b.start(&m, phone, phone, placed(), 1000).expect("started");
        let first = text(&sent[0]);
        assert!(first.starts_with("INVITE sip:0301234567@127.0.0.7 SIP/2.0"));
        assert!(!first.contains("phone-call-1"), "our own Call-ID");
        assert!(!first.contains("Authorization"));
        assert!(first.ends_with("v=0"), "the SDP passes through");
        assert_eq!(b.active_for("5001"), 1);

        // 407 from the trunk: ACKed, and the INVITE again with CSeq + 1 and credentials.
        let out = feed(
            &b,
            &answer(
                &first,
                "407 Proxy Authentication Required",
                "Proxy-Authenticate: Digest realm=\"gw\", nonce=\"n1\"\r\n",
                "",
            ),
        );
        assert!(text(&out[0]).starts_with("ACK "));
        let second = text(&out[1]);
        assert!(second.contains("CSeq: 2 INVITE"), "{second}");
        let auth = header(&second, "Proxy-Authorization");
        let creds = sip::header::auth::DigestCredentials::parse(auth).expect("credentials");
        assert_eq!(creds.username, "gw-pstn-7");
        let ha1 = sip::digest::ha1(sip::digest::Algorithm::Md5, "gw-pstn-7", "gw", "Gw7-secret");
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
        let again = feed(
            &b,
            &answer(
                &second,
                "407 Proxy Authentication Required",
                "Proxy-Authenticate: Digest realm=\"gw\", nonce=\"n2\"\r\n",
                "",
            ),
        );
        assert_eq!(again.len(), 2, "ACK to the trunk, final to the phone");
        let final_answer = text(&again[1]);
        assert!(final_answer.starts_with("SIP/2.0 503"), "{final_answer}");
        assert!(final_answer.contains("Call-ID: phone-call-1"));
        assert_eq!(b.active_for("5001"), 0, "a failed call is not active");
    }

    #[test]
    fn an_answered_call_maps_ack_and_bye_between_the_legs() {
        let b = b2bua();
        let inv = invite();
        let m = sip::msg::parse(inv.as_bytes()).expect("parses");
        let phone: SocketAddr = PHONE.parse().expect("addr");
        let trunk: SocketAddr = TRUNK.parse().expect("addr");
        let sent = b.start(&m, phone, phone, placed(), 1000).expect("started");
        let out_invite = text(&sent[0]);
        let ok = feed(
            &b,
            &answer(
                &out_invite,
                "200 OK",
                &format!("Contact: <sip:{TRUNK}>\r\nContent-Type: application/sdp\r\n"),
                "v=1",
            ),
        );
        let to_phone = text(&ok[0]);
        assert!(to_phone.starts_with("SIP/2.0 200 OK"));
        assert!(to_phone.contains("Call-ID: phone-call-1") && to_phone.ends_with("v=1"));
        let tag = header(&to_phone, "To")
            .split(";tag=")
            .nth(1)
            .expect("our tag");
        assert_eq!(b.snapshot()[0].state, "answered");

        // The phone's ACK becomes the trunk's ACK (same CSeq as its INVITE).
        let ack = format!(
            "ACK sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bKack\r\n\
             From: <sip:5001@pbx>;tag=p1\r\nTo: <sip:0301234567@pbx>;tag={tag}\r\n\
             Call-ID: phone-call-1\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        let m = sip::msg::parse(ack.as_bytes()).expect("parses");
        let Some(InDialog::Sent(sends)) = b.in_dialog(&m, "ACK", phone) else {
            panic!("ACK handled");
        };
        let trunk_ack = text(&sends[0]);
        assert!(
            trunk_ack.starts_with(&format!("ACK sip:{TRUNK} SIP/2.0")),
            "{trunk_ack}"
        );
        assert!(trunk_ack.contains("CSeq: 1 ACK"));
        assert_eq!(sends[0].target, trunk);

        // The same BYE from another address is refused; from the phone it is answered
        // and carried to the trunk.
        let bye = ack
            .replace("ACK", "BYE")
            .replace("CSeq: 2 BYE", "CSeq: 3 BYE");
        let m = sip::msg::parse(bye.as_bytes()).expect("parses");
        let stranger: SocketAddr = "127.0.0.9:5060".parse().expect("addr");
        assert_eq!(
            b.in_dialog(&m, "BYE", stranger),
            Some(InDialog::Answer(
                481,
                "Call/Transaction Does Not Exist",
                Vec::new()
            ))
        );
        let Some(InDialog::Answer(200, _, sends)) = b.in_dialog(&m, "BYE", phone) else {
            panic!("BYE answered");
        };
        assert!(text(&sends[0]).starts_with(&format!("BYE sip:{TRUNK} SIP/2.0")));
        assert_eq!(b.active_for("5001"), 0);
        assert!(b.snapshot().is_empty());
    }

    #[test]
    fn a_trunks_redirect_is_never_followed() {
        let b = b2bua();
        let inv = invite();
        let m = sip::msg::parse(inv.as_bytes()).expect("parses");
        let phone: SocketAddr = PHONE.parse().expect("addr");
        let sent = b.start(&m, phone, phone, placed(), 1000).expect("started");
        let out = feed(
            &b,
            &answer(
                &text(&sent[0]),
                "302 Moved Temporarily",
                "Contact: <sip:0900123@198.51.100.1>\r\n",
                "",
            ),
        );
        assert!(text(&out[0]).starts_with("ACK "));
        assert!(text(&out[1]).starts_with("SIP/2.0 480"), "not followed");
        assert!(out.iter().all(|s| !text(s).contains("198.51.100.1")));
    }
}
