//! The stateful proxy between extensions (RFC 3261 §16), over UDP.
//!
//! An admitted INVITE to an extension is answered `100 Trying` and forked to every UDP
//! contact the extension is registered with: each branch is an INVITE client
//! transaction (Timer A retransmission until a provisional answer, Timer B after 32 s).
//! Provisional and 2xx answers go upstream at once (a 2xx cancels the other branches);
//! a non-2xx answer is ACKed downstream hop by hop, and the best one goes upstream when
//! every branch is done, retransmitted (Timer G) until the caller's ACK. CANCEL is
//! answered and passed to every pending branch.
//!
//! sipward records the route with a token bound to the dialog's Call-ID, and relays
//! in-dialog requests (ACK for 2xx, BYE, re-INVITE, UPDATE, INFO) only when their top
//! Route carries a valid token: nobody can use the proxy to reach an arbitrary address.
//! Those requests and all responses not matched to a call are forwarded statelessly
//! (§16.11) by their Via.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sip::header::addr::{NameAddr, SipUri};
use sip::header::split_list;
use sip::header::via::Via;
use sip::msg::{Message, Name, StartLine};
use sip::response::{datagram_target, top_via_with_source};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const TIMER_B: Duration = Duration::from_secs(32);
/// Our branches start with this (after the RFC 3261 magic cookie).
pub const BRANCH_PREFIX: &str = "z9hG4bKswp";
/// How long an answered call is remembered (to pass 2xx retransmissions statefully).
const ANSWERED_KEPT: Duration = Duration::from_secs(2);
/// Calls tracked at once (bounded like every table); more are answered 503.
pub const MAX_CALLS: usize = 65_536;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub bytes: Vec<u8>,
    pub target: SocketAddr,
}

#[derive(Debug)]
struct Branch {
    branch: String,
    target: SocketAddr,
    request_uri: String,
    invite: Vec<u8>,
    /// 0: nothing yet; 1xx; final code.
    status: u16,
    next_retransmit: Instant,
    interval: Duration,
    started: Instant,
}

#[derive(Debug)]
struct Call {
    /// Where answers for the caller go.
    upstream: SocketAddr,
    /// The caller's INVITE headers needed to build CANCEL/ACK downstream.
    call_id: String,
    from: String,
    to: String,
    cseq: u32,
    /// The caller's Via lines (top one with received/rport), for answers we make.
    upstream_vias: Vec<String>,
    branches: Vec<Branch>,
    /// The best non-2xx final answer so far (already without our Via).
    best: Option<(u16, Vec<u8>)>,
    answered: bool,
    answered_at: Option<Instant>,
    /// A non-2xx final answer sent upstream, retransmitted until ACKed.
    upstream_final: Option<Vec<u8>>,
    next_final: Instant,
    final_interval: Duration,
    final_since: Instant,
    acked: bool,
    created: Instant,
}

/// The proxy's state: calls by the caller's branch, and our branches back to them.
#[derive(Debug)]
pub struct Proxy {
    key: [u8; 32],
    counter: AtomicU64,
    bound: OnceLock<SocketAddr>,
    calls: Mutex<HashMap<String, Call>>,
    by_branch: Mutex<HashMap<String, String>>,
}

/// What to do with an in-dialog request.
#[derive(Debug, PartialEq, Eq)]
pub enum Relay {
    Forward(Send),
    /// Answer it with this status (bad token, no route, too many hops).
    Refuse(u16, &'static str),
}

/// A message from its start line, headers (as given, Content-Length included) and body.
pub(crate) fn render(
    start: &str,
    headers: impl IntoIterator<Item = (String, String)>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = String::with_capacity(1024);
    out.push_str(start);
    out.push_str("\r\n");
    for (n, v) in headers {
        out.push_str(&n);
        out.push_str(": ");
        out.push_str(&v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The address a SIP URI names, when its host is an IP literal.
fn uri_target(uri: &str) -> Option<SocketAddr> {
    let u = SipUri::parse(uri)?;
    let ip: IpAddr = u.host.parse().ok()?;
    Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
}

/// The URI inside a `<...>` name-addr (or the bare value).
fn uri_of(value: &str) -> Option<&str> {
    NameAddr::parse(value).map(|a| a.uri)
}

impl Proxy {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key,
            counter: AtomicU64::new(0),
            bound: OnceLock::new(),
            calls: Mutex::new(HashMap::new()),
            by_branch: Mutex::new(HashMap::new()),
        }
    }

    /// The address the UDP socket is bound to (set once it is).
    pub fn set_bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }

    /// The address a peer sees the proxy at.
    pub(crate) fn local_to(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.bound.get().map(|b| crate::notify::local_for(*b, peer))
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for p in parts {
            m.update(p);
            m.update(b"\x00");
        }
        hex::encode(&m.finalize().into_bytes()[..12])
    }

    fn new_branch(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{BRANCH_PREFIX}{}",
            self.mac(&[b"branch", &n.to_be_bytes()])
        )
    }

    /// The token our Record-Route carries for a dialog.
    fn dialog_token(&self, call_id: &str) -> String {
        self.mac(&[b"dialog", call_id.as_bytes()])
    }

    fn our_via(&self, branch: &str, peer: SocketAddr) -> Option<String> {
        let l = self.local_to(peer)?;
        Some(format!("SIP/2.0/UDP {l};branch={branch};rport"))
    }

    pub fn call_count(&self) -> usize {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether this request already passed through us (a loop): one of its Vias is
    /// ours (our port, our branch prefix).
    fn looped(&self, m: &Message<'_>) -> bool {
        let Some(b) = self.bound.get() else {
            return false;
        };
        m.headers_named(Name::Via).flat_map(split_list).any(|v| {
            Via::parse(v).is_some_and(|v| {
                v.port.unwrap_or(5060) == b.port()
                    && v.branch.is_some_and(|br| br.starts_with(BRANCH_PREFIX))
            })
        })
    }

    /// The headers of `m` as they go downstream: our Via on top, the sender's top Via
    /// with `received`/`rport`, Max-Forwards decremented, our credentials removed,
    /// `drop_top_route` removing our own Route entry, and `record_route` added.
    #[allow(clippy::too_many_arguments)]
    fn forward_headers(
        &self,
        m: &Message<'_>,
        source: SocketAddr,
        target: SocketAddr,
        branch: &str,
        record_route: Option<&str>,
        drop_top_route: bool,
    ) -> Option<Vec<(String, String)>> {
        let mut out = vec![("Via".to_owned(), self.our_via(branch, target)?)];
        let mut first_via = true;
        let mut route_dropped = !drop_top_route;
        let mut max_forwards_seen = false;
        for h in &m.headers {
            match h.name {
                Name::Via if first_via => {
                    first_via = false;
                    let mut entries = split_list(&h.value);
                    let top = entries.next()?;
                    let via = Via::parse(top)?;
                    let mut v = top_via_with_source(top, &via, source);
                    for rest in entries {
                        v.push_str(", ");
                        v.push_str(rest);
                    }
                    out.push(("Via".into(), v));
                    if let Some(rr) = record_route {
                        out.push(("Record-Route".into(), rr.to_owned()));
                    }
                }
                Name::MaxForwards => {
                    max_forwards_seen = true;
                    let n: u32 = h.value.trim().parse().ok()?;
                    out.push(("Max-Forwards".into(), n.checked_sub(1)?.to_string()));
                }
                Name::ProxyAuthorization => {}
                Name::Route if !route_dropped => {
                    route_dropped = true;
                    let rest: Vec<&str> = split_list(&h.value).skip(1).collect();
                    if !rest.is_empty() {
                        out.push(("Route".into(), rest.join(", ")));
                    }
                }
                _ => out.push((h.raw_name.to_owned(), h.value.to_string())),
            }
        }
        if !max_forwards_seen {
            out.push(("Max-Forwards".into(), "69".into()));
        }
        Some(out)
    }

    /// Starts a call: forks the admitted INVITE `m` (from `source`, answered upstream at
    /// `upstream`) to `contacts` (contact URI, address). Returns what to send downstream;
    /// the caller answers `100 Trying`. `Err` carries the status to answer instead.
    pub fn start(
        &self,
        m: &Message<'_>,
        source: SocketAddr,
        upstream: SocketAddr,
        contacts: &[(String, SocketAddr)],
        now: Instant,
    ) -> Result<Vec<Send>, (u16, &'static str)> {
        if self.looped(m) {
            return Err((482, "Loop Detected"));
        }
        if m.header(Name::MaxForwards)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .is_some_and(|n| n == 0)
        {
            return Err((483, "Too Many Hops"));
        }
        let top = m
            .header(Name::Via)
            .and_then(Via::parse_top)
            .and_then(|v| v.branch)
            .ok_or((400, "Bad Request"))?
            .to_owned();
        let call_id = m
            .header(Name::CallId)
            .ok_or((400, "Bad Request"))?
            .to_owned();
        let from = m.header(Name::From).ok_or((400, "Bad Request"))?.to_owned();
        let cseq: u32 = m
            .header(Name::CSeq)
            .and_then(|c| c.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or((400, "Bad Request"))?;
        let local = self
            .local_to(source)
            .ok_or((500, "Server Internal Error"))?;
        let rr = format!("<sip:{local};lr;sw={}>", self.dialog_token(&call_id));
        let to = m.header(Name::To).ok_or((400, "Bad Request"))?.to_owned();
        let mut upstream_vias: Vec<String> =
            m.headers_named(Name::Via).map(str::to_owned).collect();
        if let Some(first) = upstream_vias.first_mut() {
            let mut entries = split_list(first);
            let top = entries.next().ok_or((400, "Bad Request"))?;
            let via = Via::parse(top).ok_or((400, "Bad Request"))?;
            let mut v = top_via_with_source(top, &via, source);
            for rest in entries {
                v.push_str(", ");
                v.push_str(rest);
            }
            *first = v;
        }
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if calls.contains_key(&top) {
            return Ok(Vec::new()); // a retransmission: the 100 is sent again
        }
        if calls.len() >= MAX_CALLS {
            return Err((503, "Service Unavailable"));
        }
        let mut sends = Vec::new();
        let mut branches = Vec::new();
        for (contact, target) in contacts {
            let branch = self.new_branch();
            let headers = self
                .forward_headers(m, source, *target, &branch, Some(&rr), false)
                .ok_or((400, "Bad Request"))?;
            let bytes = render(&format!("INVITE {contact} SIP/2.0"), headers, m.body);
            sends.push(Send {
                bytes: bytes.clone(),
                target: *target,
            });
            branches.push(Branch {
                branch,
                target: *target,
                request_uri: contact.clone(),
                invite: bytes,
                status: 0,
                next_retransmit: now + T1,
                interval: T1,
                started: now,
            });
        }
        let mut by_branch = self.by_branch.lock().unwrap_or_else(|p| p.into_inner());
        for b in &branches {
            by_branch.insert(b.branch.clone(), top.clone());
        }
        calls.insert(
            top,
            Call {
                upstream,
                call_id,
                from,
                to,
                cseq,
                upstream_vias,
                branches,
                best: None,
                answered: false,
                answered_at: None,
                upstream_final: None,
                next_final: now,
                final_interval: T1,
                final_since: now,
                acked: false,
                created: now,
            },
        );
        Ok(sends)
    }

    /// CANCEL from the caller: true when it matched a call (answer it 200), with the
    /// CANCELs to send downstream.
    pub fn cancel(&self, m: &Message<'_>) -> Option<Vec<Send>> {
        let top = m.header(Name::Via).and_then(Via::parse_top)?.branch?;
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let call = calls.get(top)?;
        Some(
            call.branches
                .iter()
                .filter(|b| b.status < 200)
                .filter_map(|b| self.cancel_for(call, b))
                .collect(),
        )
    }

    fn cancel_for(&self, call: &Call, b: &Branch) -> Option<Send> {
        let headers = vec![
            ("Via".to_owned(), self.our_via(&b.branch, b.target)?),
            ("Max-Forwards".to_owned(), "70".to_owned()),
            ("From".to_owned(), call.from.clone()),
            ("To".to_owned(), call.to.clone()),
            ("Call-ID".to_owned(), call.call_id.clone()),
            ("CSeq".to_owned(), format!("{} CANCEL", call.cseq)),
            ("Content-Length".to_owned(), "0".to_owned()),
        ];
        Some(Send {
            bytes: render(&format!("CANCEL {} SIP/2.0", b.request_uri), headers, b""),
            target: b.target,
        })
    }

    /// The ACK for a non-2xx final answer on one of our branches (hop by hop).
    fn ack_for(&self, call: &Call, b: &Branch, response: &Message<'_>) -> Option<Send> {
        let headers = vec![
            ("Via".to_owned(), self.our_via(&b.branch, b.target)?),
            ("Max-Forwards".to_owned(), "70".to_owned()),
            ("From".to_owned(), call.from.clone()),
            ("To".to_owned(), response.header(Name::To)?.to_owned()),
            ("Call-ID".to_owned(), call.call_id.clone()),
            ("CSeq".to_owned(), format!("{} ACK", call.cseq)),
            ("Content-Length".to_owned(), "0".to_owned()),
        ];
        Some(Send {
            bytes: render(&format!("ACK {} SIP/2.0", b.request_uri), headers, b""),
            target: b.target,
        })
    }

    /// The caller ACKed our non-2xx answer (same branch as its INVITE).
    pub fn ack_upstream_final(&self, m: &Message<'_>) -> bool {
        let Some(top) = m
            .header(Name::Via)
            .and_then(Via::parse_top)
            .and_then(|v| v.branch)
        else {
            return false;
        };
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        match calls.get_mut(top) {
            Some(c) if c.upstream_final.is_some() => {
                c.acked = true;
                true
            }
            _ => false,
        }
    }

    /// A response whose top Via is ours: what to send (upstream, and ACK/CANCEL
    /// downstream). Responses to in-dialog requests we relayed statelessly go to the
    /// next Via.
    pub fn response(&self, m: &Message<'_>) -> Vec<Send> {
        let StartLine::Response { code, .. } = m.start else {
            return Vec::new();
        };
        let Some(branch) = m
            .header(Name::Via)
            .and_then(Via::parse_top)
            .and_then(|v| v.branch)
        else {
            return Vec::new();
        };
        if !branch.starts_with(BRANCH_PREFIX) {
            return Vec::new();
        }
        let Some(stripped) = strip_top_via(m) else {
            return Vec::new();
        };
        let server_key = self
            .by_branch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(branch)
            .cloned();
        let invite = m
            .header(Name::CSeq)
            .and_then(|c| c.split_whitespace().nth(1))
            .is_some_and(|meth| meth.eq_ignore_ascii_case("INVITE"));
        if server_key.is_some() && !invite {
            // The answer to our own CANCEL (hop by hop): nothing goes upstream.
            return Vec::new();
        }
        let Some(server_key) = server_key else {
            // Stateless: the next Via says where it goes.
            return next_hop(m)
                .map(|target| Send {
                    bytes: stripped,
                    target,
                })
                .into_iter()
                .collect();
        };
        let mut out = Vec::new();
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let Some(call) = calls.get_mut(&server_key) else {
            return out;
        };
        let Some(i) = call.branches.iter().position(|b| b.branch == branch) else {
            return out;
        };
        let upstream = call.upstream;
        if code < 200 {
            call.branches[i].status = call.branches[i].status.max(code);
            if code > 100 && !call.answered && call.upstream_final.is_none() {
                out.push(Send {
                    bytes: stripped,
                    target: upstream,
                });
            }
            return out;
        }
        if (200..300).contains(&code) {
            // 2xx (and their retransmissions) go upstream; the other branches are cancelled.
            call.branches[i].status = code;
            let first = !call.answered;
            call.answered = true;
            call.answered_at.get_or_insert_with(Instant::now);
            out.push(Send {
                bytes: stripped,
                target: upstream,
            });
            if first {
                let cancels: Vec<Send> = call
                    .branches
                    .iter()
                    .filter(|b| b.status < 200)
                    .filter_map(|b| self.cancel_for(call, b))
                    .collect();
                out.extend(cancels);
            }
            return out;
        }
        // Non-2xx: ACK it downstream; keep the best; answer upstream when all are done.
        if let Some(ack) = self.ack_for(call, &call.branches[i], m) {
            out.push(ack);
        }
        if call.branches[i].status >= 200 {
            return out; // a retransmission, ACKed again
        }
        call.branches[i].status = code;
        let better = match &call.best {
            None => true,
            // RFC 3261 §16.7: a 6xx wins, else the lowest code.
            Some((best, _)) => *best < 600 && (code >= 600 || code < *best),
        };
        if better {
            call.best = Some((code, stripped));
        }
        out.extend(finish_if_done(call, Instant::now()));
        out
    }

    /// An in-dialog request (To tag present): relayed when its top Route is ours with
    /// a valid token for its Call-ID.
    /// `allowed` says whether an address may be relayed to (one a registered phone is
    /// at): a party to a call cannot steer it anywhere else.
    pub fn relay(
        &self,
        m: &Message<'_>,
        method: &str,
        uri: &str,
        source: SocketAddr,
        allowed: impl Fn(IpAddr) -> bool,
    ) -> Relay {
        let Some(bound) = self.bound.get().copied() else {
            return Relay::Refuse(500, "Server Internal Error");
        };
        let call_id = m.header(Name::CallId).unwrap_or("");
        let route = m
            .header(Name::Route)
            .and_then(|v| split_list(v).next())
            .and_then(uri_of);
        let ours = route
            .and_then(SipUri::parse)
            .is_some_and(|u| u.port.unwrap_or(5060) == bound.port());
        let token_ok = route.is_some_and(|r| {
            sip::header::param(r, "sw").flatten().is_some_and(|t| {
                subtle::ConstantTimeEq::ct_eq(t.as_bytes(), self.dialog_token(call_id).as_bytes())
                    .into()
            })
        });
        if !ours {
            return Relay::Refuse(481, "Call/Transaction Does Not Exist");
        }
        if !token_ok {
            return Relay::Refuse(403, "Forbidden");
        }
        if self.looped(m) {
            return Relay::Refuse(482, "Loop Detected");
        }
        if m.header(Name::MaxForwards)
            .and_then(|v| v.trim().parse::<u32>().ok())
            == Some(0)
        {
            return Relay::Refuse(483, "Too Many Hops");
        }
        // The branch follows from the sender's, so retransmissions take the same one.
        let their = m
            .header(Name::Via)
            .and_then(Via::parse_top)
            .and_then(|v| v.branch)
            .unwrap_or("");
        let branch = format!(
            "{BRANCH_PREFIX}{}",
            self.mac(&[b"relay", their.as_bytes(), method.as_bytes()])
        );
        // Loose routing: the next Route if any, else the Request-URI.
        let next = m
            .header(Name::Route)
            .and_then(|v| split_list(v).nth(1))
            .and_then(uri_of)
            .or_else(|| {
                m.headers_named(Name::Route)
                    .nth(1)
                    .and_then(|v| split_list(v).next())
                    .and_then(uri_of)
            })
            .unwrap_or(uri);
        let Some(target) = uri_target(next) else {
            return Relay::Refuse(404, "Not Found");
        };
        if !allowed(target.ip()) {
            return Relay::Refuse(403, "Forbidden");
        }
        let Some(headers) = self.forward_headers(m, source, target, &branch, None, true) else {
            return Relay::Refuse(400, "Bad Request");
        };
        Relay::Forward(Send {
            bytes: render(&format!("{method} {uri} SIP/2.0"), headers, m.body),
            target,
        })
    }

    /// Retransmissions and timeouts (run every ~100 ms): INVITE branches until a
    /// provisional answer (Timer A, B), non-2xx answers upstream until ACKed (Timer G,
    /// H); calls are forgotten 32 s after they ended.
    pub fn tick(&self, now: Instant) -> Vec<Send> {
        let mut out = Vec::new();
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = Vec::new();
        for (key, call) in calls.iter_mut() {
            let mut timed_out = false;
            for b in call.branches.iter_mut() {
                if b.status == 0 && now >= b.next_retransmit {
                    if now.duration_since(b.started) >= TIMER_B {
                        b.status = 408;
                        timed_out = true;
                    } else {
                        out.push(Send {
                            bytes: b.invite.clone(),
                            target: b.target,
                        });
                        b.interval *= 2;
                        b.next_retransmit = now + b.interval;
                    }
                }
            }
            if timed_out && call.best.is_none() {
                call.best = Some((408, timeout_response(call)));
            }
            out.extend(finish_if_done(call, now));
            if let Some(f) = &call.upstream_final
                && !call.acked
                && now >= call.next_final
                && now.duration_since(call.final_since) < TIMER_B
            {
                out.push(Send {
                    bytes: f.clone(),
                    target: call.upstream,
                });
                call.final_interval = (call.final_interval * 2).min(T2);
                call.next_final = now + call.final_interval;
            }
            // Answered calls need no state (2xx retransmissions and in-dialog requests
            // are relayed by their Via and Route); a non-2xx answer is kept until
            // ACKed or Timer H; anything else until twice Timer B.
            let answered = call
                .answered_at
                .is_some_and(|t| now.duration_since(t) >= ANSWERED_KEPT);
            let finished = call.upstream_final.is_some()
                && (call.acked || now.duration_since(call.final_since) >= TIMER_B);
            if answered || finished || now.duration_since(call.created) >= TIMER_B * 2 {
                gone.push(key.clone());
            }
        }
        let mut by_branch = self.by_branch.lock().unwrap_or_else(|p| p.into_inner());
        for key in gone {
            if let Some(call) = calls.remove(&key) {
                for b in call.branches {
                    by_branch.remove(&b.branch);
                }
            }
        }
        out
    }
}

/// When every branch has a final answer and none was a 2xx: the best one goes
/// upstream (once; then Timer G repeats it until the caller's ACK).
fn finish_if_done(call: &mut Call, now: Instant) -> Option<Send> {
    let all_done = call.branches.iter().all(|b| b.status >= 200);
    if !all_done || call.answered || call.upstream_final.is_some() {
        return None;
    }
    let (_, best) = call.best.take()?;
    call.upstream_final = Some(best.clone());
    call.next_final = now + T1;
    call.final_since = now;
    Some(Send {
        bytes: best,
        target: call.upstream,
    })
}

/// `408 Request Timeout` for the caller when no branch answered in time.
fn timeout_response(call: &Call) -> Vec<u8> {
    let mut headers: Vec<(String, String)> = call
        .upstream_vias
        .iter()
        .map(|v| ("Via".to_owned(), v.clone()))
        .collect();
    headers.push(("From".into(), call.from.clone()));
    headers.push(("To".into(), format!("{};tag=sw408", call.to)));
    headers.push(("Call-ID".into(), call.call_id.clone()));
    headers.push(("CSeq".into(), format!("{} INVITE", call.cseq)));
    headers.push(("Content-Length".into(), "0".into()));
    render("SIP/2.0 408 Request Timeout", headers, b"")
}

/// The response without its top Via entry (ours).
fn strip_top_via(m: &Message<'_>) -> Option<Vec<u8>> {
    let StartLine::Response { code, reason } = m.start else {
        return None;
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    let mut first = true;
    for h in &m.headers {
        if h.name == Name::Via && first {
            first = false;
            let rest: Vec<&str> = split_list(&h.value).skip(1).collect();
            if !rest.is_empty() {
                headers.push(("Via".to_owned(), rest.join(", ")));
            }
            continue;
        }
        headers.push((h.raw_name.to_owned(), h.value.to_string()));
    }
    Some(render(&format!("SIP/2.0 {code} {reason}"), headers, m.body))
}

/// Where a response goes after our Via is removed: the next Via's `received`/`rport`
/// (which we filled in when forwarding), else its sent-by.
fn next_hop(m: &Message<'_>) -> Option<SocketAddr> {
    let mut entries = m.headers_named(Name::Via).flat_map(split_list);
    entries.next()?;
    let v = Via::parse(entries.next()?)?;
    let received = sip::header::param(v.params, "received")
        .flatten()
        .and_then(|r| r.parse::<IpAddr>().ok());
    let ip = received.or_else(|| v.host.parse().ok())?;
    let sent_by = SocketAddr::new(ip, v.port.unwrap_or(5060));
    Some(match v.rport {
        Some(Some(p)) => SocketAddr::new(ip, p),
        _ => datagram_target(&v, sent_by),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:1002@127.0.0.1 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKcaller1;rport\r\n\
        From: <sip:1001@pbx>;tag=f1\r\nTo: <sip:1002@pbx>\r\nCall-ID: c1\r\nCSeq: 2 INVITE\r\n\
        Proxy-Authorization: Digest username=\"x\"\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    const CALLER: &str = "10.0.0.1:5062";

    fn proxy() -> Proxy {
        let p = Proxy::new([9; 32]);
        p.set_bound("127.0.0.1:5060".parse().expect("addr"));
        p
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn start(p: &Proxy, contacts: &[&str], now: Instant) -> Vec<Send> {
        let m = sip::msg::parse(INVITE.as_bytes()).expect("parse");
        let contacts: Vec<(String, SocketAddr)> = contacts
            .iter()
            .map(|c| (format!("sip:1002@{c}"), addr(c)))
            .collect();
        p.start(&m, addr(CALLER), addr(CALLER), &contacts, now)
            .expect("started")
    }

    fn branch_of(bytes: &[u8]) -> String {
        let m = sip::msg::parse(bytes).expect("parse");
        m.header(Name::Via)
            .and_then(Via::parse_top)
            .and_then(|v| v.branch)
            .expect("branch")
            .to_owned()
    }

    fn answer(to_request: &[u8], code: u16) -> Vec<u8> {
        let m = sip::msg::parse(to_request).expect("parse");
        let vias: Vec<String> = m
            .headers_named(Name::Via)
            .map(|v| format!("Via: {v}\r\n"))
            .collect();
        format!(
            "SIP/2.0 {code} X\r\n{}From: <sip:1001@pbx>;tag=f1\r\nTo: <sip:1002@pbx>;tag=callee\r\n\
             Call-ID: c1\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n",
            vias.concat()
        )
        .into_bytes()
    }

    fn respond(p: &Proxy, bytes: &[u8]) -> Vec<Send> {
        p.response(&sip::msg::parse(bytes).expect("parse"))
    }

    #[test]
    fn the_forwarded_invite_carries_our_via_record_route_and_no_credentials() {
        let p = proxy();
        let sends = start(&p, &["10.0.0.2:5070"], Instant::now());
        assert_eq!(sends.len(), 1);
        let text = String::from_utf8(sends[0].bytes.clone()).expect("utf8");
        assert!(text.starts_with("INVITE sip:1002@10.0.0.2:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKswp"));
        assert!(text.contains("branch=z9hG4bKcaller1;received=10.0.0.1;rport=5062"));
        assert!(text.contains("Record-Route: <sip:127.0.0.1:5060;lr;sw="));
        assert!(text.contains("Max-Forwards: 69\r\n"));
        assert!(!text.contains("Proxy-Authorization"));
        assert_eq!(sends[0].target, addr("10.0.0.2:5070"));
        // Its own INVITE coming back is a loop.
        let m = sip::msg::parse(&sends[0].bytes).expect("parse");
        assert_eq!(
            p.start(&m, addr(CALLER), addr(CALLER), &[], Instant::now()),
            Err((482, "Loop Detected"))
        );
    }

    #[test]
    fn a_busy_callee_is_acked_here_and_the_answer_repeated_until_the_caller_acks() {
        let p = proxy();
        let t0 = Instant::now();
        let sends = start(&p, &["10.0.0.2:5070"], t0);
        let out = respond(&p, &answer(&sends[0].bytes, 486));
        assert_eq!(out.len(), 2, "ACK downstream, 486 upstream");
        assert!(
            out[0]
                .bytes
                .starts_with(b"ACK sip:1002@10.0.0.2:5070 SIP/2.0")
        );
        assert_eq!(out[0].target, addr("10.0.0.2:5070"));
        assert!(out[1].bytes.starts_with(b"SIP/2.0 486"));
        assert_eq!(out[1].target, addr(CALLER));
        let up = String::from_utf8(out[1].bytes.clone()).expect("utf8");
        assert!(!up.contains("z9hG4bKswp"), "our Via is gone: {up}");
        // Timer G until the ACK.
        assert_eq!(p.tick(t0 + Duration::from_millis(600)).len(), 1);
        let ack = INVITE
            .replace("INVITE sip", "ACK sip")
            .replace("2 INVITE", "2 ACK");
        assert!(p.ack_upstream_final(&sip::msg::parse(ack.as_bytes()).expect("parse")));
        assert!(p.tick(t0 + Duration::from_secs(3)).is_empty());
        assert_eq!(p.call_count(), 0, "forgotten once ACKed");
    }

    #[test]
    fn in_dialog_requests_need_our_token_and_a_known_target() {
        let p = proxy();
        let sends = start(&p, &["10.0.0.2:5070"], Instant::now());
        let text = String::from_utf8(sends[0].bytes.clone()).expect("utf8");
        let rr = text
            .lines()
            .find_map(|l| l.strip_prefix("Record-Route: "))
            .expect("record-route")
            .to_owned();
        let bye = |route: &str, uri: &str| {
            format!(
                "BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKbye1;rport\r\n\
                 From: <sip:1001@pbx>;tag=f1\r\nTo: <sip:1002@pbx>;tag=callee\r\nCall-ID: c1\r\n\
                 CSeq: 3 BYE\r\nRoute: {route}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let relay = |text: String, allowed: bool| {
            let m = sip::msg::parse(text.as_bytes()).expect("parse");
            let StartLine::Request { method, uri, .. } = m.start else {
                panic!("request")
            };
            p.relay(&m, method, uri, addr(CALLER), |_| allowed)
        };
        match relay(bye(&rr, "sip:1002@10.0.0.2:5070"), true) {
            Relay::Forward(s) => {
                assert_eq!(s.target, addr("10.0.0.2:5070"));
                let t = String::from_utf8(s.bytes).expect("utf8");
                assert!(!t.contains("Route:"), "our Route entry is consumed: {t}");
                assert!(t.contains("Max-Forwards: 69"));
            }
            other => panic!("not relayed: {other:?}"),
        }
        // To an address no registered phone is at: refused.
        assert_eq!(
            relay(bye(&rr, "sip:00252612345678@192.0.2.99"), false),
            Relay::Refuse(403, "Forbidden")
        );
        // Another dialog's token does not fit this Call-ID.
        let other = bye(&rr, "sip:1002@10.0.0.2:5070").replace("Call-ID: c1", "Call-ID: c2");
        assert_eq!(relay(other, true), Relay::Refuse(403, "Forbidden"));
    }

    #[test]
    fn forks_cancel_the_losers_and_silence_times_out_with_408() {
        let p = proxy();
        let t0 = Instant::now();
        let sends = start(&p, &["10.0.0.2:5070", "10.0.0.3:5070"], t0);
        assert_eq!(sends.len(), 2);
        assert_ne!(branch_of(&sends[0].bytes), branch_of(&sends[1].bytes));
        let out = respond(&p, &answer(&sends[1].bytes, 200));
        assert!(out[0].bytes.starts_with(b"SIP/2.0 200"));
        assert!(out[1].bytes.starts_with(b"CANCEL sip:1002@10.0.0.2:5070"));
        assert_eq!(branch_of(&out[1].bytes), branch_of(&sends[0].bytes));

        let p = proxy();
        let sends = start(&p, &["10.0.0.2:5070"], t0);
        // Timer A: retransmitted at 0.5 s, 1.5 s, ...
        assert_eq!(
            p.tick(t0 + Duration::from_millis(510)),
            vec![Send {
                bytes: sends[0].bytes.clone(),
                target: addr("10.0.0.2:5070"),
            }]
        );
        let out = p.tick(t0 + Duration::from_secs(33));
        assert!(
            out.iter()
                .any(|s| s.bytes.starts_with(b"SIP/2.0 408") && s.target == addr(CALLER))
        );
        // Forgotten later.
        p.tick(t0 + Duration::from_secs(70));
        assert_eq!(p.call_count(), 0);
    }
}
