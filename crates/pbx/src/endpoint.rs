//! The SIP endpoint: every received message passes through here, in order: parse,
//! required headers, the transaction table, then the method's handler (REGISTER goes
//! through authentication, then the registrar). It returns the bytes to send back;
//! transports do the IO. The anti-hacking guard (issue #4) will sit first in this chain.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sip::header::addr::{NameAddr, SipUri};
use sip::header::cseq::CSeq;
use sip::header::split_list;
use sip::header::via::Via;
use sip::msg::{self, Message, Name, StartLine};
use sip::response::{ResponseBuilder, datagram_target};
use sip::transaction::{Seen, ServerTransactions, TxKey};

use crate::admission::{Decision, Outbound};
use crate::authenticator::{Authenticator, Outcome};
use crate::b2bua::{B2bua, InDialog, Placed};
use crate::directory::{Account, Directory, DirectoryCache};
use crate::guard::{Event, Guard};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::proxy::{Proxy, Relay};
use crate::registrar::{Contacts, RegisterError, RegisterRequest, Registrar, TransportKind};
use crate::trunk::{Routed, Trunks};
use policy::clock::Clock;
use policy::dialplan::CallClass;

/// Methods sipward knows but does not serve (yet): answered 405 with `Allow`.
const KNOWN_METHODS: &[&str] = &[
    "BYE",
    "CANCEL",
    "SUBSCRIBE",
    "NOTIFY",
    "MESSAGE",
    "INFO",
    "PRACK",
    "UPDATE",
    "REFER",
    "PUBLISH",
];
const ALLOW: &str = "REGISTER, OPTIONS";

/// Where a reply goes: for datagrams an address, for streams back on the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// For UDP: the target address (RFC 3261 §18.2.2 / RFC 3581).
    pub target: SocketAddr,
}

/// An answer to a request: for the transport to send, or sent already (the proxy must
/// order it before what it forwards).
enum Answer {
    Reply(Vec<u8>),
    Sent(Vec<u8>),
}

/// What authentication of a request came to.
enum Authn {
    Account(Arc<Account>),
    /// Answer with these challenges (401 or 407).
    Challenge(Vec<String>),
    /// No answer at all (a decoy banned its source).
    Silent,
}

/// Server transactions remembered at once (bounded like every table).
pub const TRANSACTION_CAPACITY: usize = 65_536;

#[derive(Debug)]
pub struct Endpoint {
    pub directory: Arc<DirectoryCache>,
    /// Consulted by the transports before a packet is parsed.
    pub guard: Arc<Guard>,
    pub auth: Authenticator,
    pub registrar: Arc<Registrar>,
    pub metrics: Arc<Metrics>,
    /// NOTIFYs to phones (check-sync) and the matching of their answers.
    pub notifier: Notifier,
    /// Classes of service, fraud limits and suspensions of outbound calls.
    pub outbound: Arc<Outbound>,
    /// Calls between extensions, and from trunks to extensions.
    pub proxy: Proxy,
    /// Calls to trunks (sipward as a back-to-back user agent).
    pub b2bua: B2bua,
    /// Gateways, providers, routes, DIDs; provider registrations.
    pub trunks: Trunks,
    socket: std::sync::OnceLock<Arc<tokio::net::UdpSocket>>,
    /// Extensions whose grace window the new password ended; the server deletes their
    /// store rows.
    graces_ended: Mutex<Vec<String>>,
    clock: Arc<dyn Clock>,
    transactions: Mutex<ServerTransactions<SocketAddr>>,
    tag_hasher: RandomState,
}

impl Endpoint {
    pub fn new(
        directory: Arc<DirectoryCache>,
        guard: Arc<Guard>,
        auth: Authenticator,
        registrar: Arc<Registrar>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        notifier: Notifier,
    ) -> Self {
        Self {
            proxy: Proxy::new(notifier.derived_key("proxy")),
            b2bua: B2bua::new(notifier.derived_key("b2bua")),
            trunks: Trunks::new(notifier.derived_key("trunks")),
            notifier,
            outbound: Arc::new(Outbound::new(policy::dialplan::DialPlan::default())),
            socket: std::sync::OnceLock::new(),
            graces_ended: Mutex::new(Vec::new()),
            directory,
            guard,
            auth,
            registrar,
            metrics,
            clock,
            transactions: Mutex::new(ServerTransactions::new(
                TRANSACTION_CAPACITY,
                TRANSACTION_CAPACITY,
                sip::transaction::Timers::default(),
            )),
            tag_hasher: RandomState::new(),
        }
    }

    /// The server's wall clock, for records written on the endpoint's behalf.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Sends datagrams the proxy produced (on the UDP socket once the server runs).
    pub(crate) fn send_all(&self, sends: Vec<crate::proxy::Send>) {
        if let Some(socket) = self.socket.get() {
            for s in sends {
                let _ = socket.try_send_to(&s.bytes, s.target);
            }
        }
    }

    /// Connects the UDP socket the proxy sends on.
    pub fn set_socket(&self, socket: Arc<tokio::net::UdpSocket>) {
        if let Ok(addr) = socket.local_addr() {
            self.proxy.set_bound(addr);
            self.b2bua.set_bound(addr);
        }
        let _ = self.socket.set(socket);
    }

    /// The address a peer sees us at (once the UDP socket is bound).
    fn local_to(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.proxy.local_to(peer)
    }

    /// Uses `plan` for outbound calls (the default plan otherwise).
    pub fn with_dialplan(mut self, plan: policy::dialplan::DialPlan) -> Self {
        self.outbound = Arc::new(Outbound::new(plan));
        self
    }

    /// Takes the extensions whose grace window ended since the last call.
    pub fn take_graces_ended(&self) -> Vec<String> {
        std::mem::take(&mut *self.graces_ended.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts back extensions whose grace rows could not be deleted (retried next time).
    pub fn return_graces_ended(&self, numbers: Vec<String>) {
        self.graces_ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(numbers);
    }

    /// Handles one message; returns the reply to send, if any.
    pub fn handle(
        &self,
        bytes: &[u8],
        source: SocketAddr,
        transport: TransportKind,
    ) -> Option<Reply> {
        let Ok(m) = msg::parse(bytes) else {
            Metrics::inc(&self.metrics.parse_errors);
            return None;
        };
        // A scanner's first request bans its source, and it gets no answer at all.
        if let Some(ua) = m.header(Name::UserAgent)
            && self.guard.scanner(source.ip(), ua)
        {
            return None;
        }
        let StartLine::Request { method, uri, .. } = m.start else {
            // Responses: answers to our NOTIFYs and provider REGISTERs, to trunk calls,
            // and answers the proxy passes on.
            if self.notifier.response(&m) || transport != TransportKind::Udp {
                return None;
            }
            let sends = self
                .trunks
                .response(&m, self.clock.now(), |peer| self.local_to(peer))
                .or_else(|| self.b2bua.response(&m))
                .unwrap_or_else(|| self.proxy.response(&m));
            self.send_all(sends);
            return None;
        };
        // Scanners address servers by IP; phones set up with the domain never do.
        if self.guard.policy().refuse_ip_request_uri
            && SipUri::parse(uri)
                .is_some_and(|u| policy::fields::Host::ip_literal(u.host).is_some())
            && !self.guard.allowed(source.ip())
        {
            Metrics::inc(&self.metrics.ip_uri_dropped);
            return None;
        }
        Metrics::inc(&self.metrics.requests);
        let top = m.header(Name::Via).and_then(Via::parse_top)?;
        let target = match transport {
            TransportKind::Udp => datagram_target(&top, source),
            TransportKind::Tcp => source,
        };
        let tag = self.to_tag(&m);
        let respond =
            |code: u16, reason: &str| ResponseBuilder::new(&m, code, reason, source, &tag).ok();

        // Required headers (RFC 3261 §8.1.1); a request without them is answered 400.
        let cseq = m.header(Name::CSeq).and_then(CSeq::parse);
        let cseq_ok = cseq.is_some_and(|c| c.method == method);
        let headers_ok = m.header(Name::From).and_then(NameAddr::parse).is_some()
            && m.header(Name::To).and_then(NameAddr::parse).is_some()
            && m.header(Name::CallId).is_some_and(|c| !c.is_empty());
        if !cseq_ok || !headers_ok {
            Metrics::inc(&self.metrics.bad_requests);
            let bytes = respond(400, "Bad Request")?.finish();
            return Some(Reply { bytes, target });
        }
        // In-dialog requests (a To tag) are the proxy's: relayed when they carry our
        // Route with its dialog token, refused otherwise. ACK for a non-2xx answer of
        // ours ends that answer's retransmissions.
        if method == "ACK" && self.proxy.ack_upstream_final(&m) {
            return None;
        }
        // An in-dialog OPTIONS without a Route is a keepalive for us, not for relaying.
        // REGISTER (the hot path) and CANCEL never look at the To tag here.
        let relayable = transport == TransportKind::Udp
            && !matches!(method, "REGISTER" | "CANCEL")
            && !(method == "OPTIONS" && m.header(Name::Route).is_none());
        let in_dialog = relayable
            && m.header(Name::To)
                .and_then(NameAddr::parse)
                .is_some_and(|t| t.tag().is_some());
        // Trunk calls: sipward is the far end of both legs.
        let trunk_call = in_dialog && m.header(Name::CallId).is_some_and(|c| self.b2bua.owns(c));
        if trunk_call && method == "ACK" {
            if let Some(InDialog::Sent(sends)) = self.b2bua.in_dialog(&m, method, source) {
                self.send_all(sends);
            }
            return None;
        }
        if in_dialog && !trunk_call {
            let known = |ip| self.registrar.knows_host(ip) || self.trunks.trunk_at(ip).is_some();
            match self.proxy.relay(&m, method, uri, source, known) {
                Relay::Forward(send) => {
                    Metrics::inc(&self.metrics.relayed);
                    self.send_all(vec![send]);
                    return None;
                }
                Relay::Refuse(..) if method == "ACK" => return None,
                Relay::Refuse(code, reason) => {
                    let bytes = respond(code, reason)?.finish();
                    return Some(Reply { bytes, target });
                }
            }
        }
        if method == "ACK" {
            return None;
        }

        // Retransmissions over UDP are absorbed or answered again from the table.
        let key = match transport {
            TransportKind::Udp => top
                .branch
                .and_then(|b| TxKey::new(b, top.host, top.port, method)),
            TransportKind::Tcp => None,
        };
        let now = Instant::now();
        if let Some(k) = &key {
            let mut tx = self.transactions.lock().unwrap_or_else(|p| p.into_inner());
            match tx.on_request(k, target, sip::transaction::Reliability::Unreliable, now) {
                Seen::New => {}
                Seen::Absorb => {
                    Metrics::inc(&self.metrics.retransmissions);
                    return None;
                }
                Seen::Resend { to, bytes } => {
                    Metrics::inc(&self.metrics.retransmissions);
                    return Some(Reply {
                        bytes: bytes.to_vec(),
                        target: to,
                    });
                }
                Seen::Full => return None,
            }
        }

        let answer = match method {
            _ if trunk_call => match self.b2bua.in_dialog(&m, method, source)? {
                InDialog::Answer(code, reason, sends) => {
                    self.send_first(respond(code, reason)?.finish(), target, sends)
                }
                InDialog::Sent(sends) => {
                    self.send_all(sends);
                    return None;
                }
            },
            "REGISTER" => Answer::Reply(self.register(&m, source, transport, &tag)?),
            "INVITE" => self.invite(&m, uri, source, target, transport, &tag)?,
            "OPTIONS" => {
                Metrics::inc(&self.metrics.options);
                Answer::Reply(
                    respond(200, "OK")?
                        .header("Allow", ALLOW)
                        .header("Accept", "application/sdp")
                        .finish(),
                )
            }
            "CANCEL" => match self.proxy.cancel(&m).or_else(|| self.b2bua.cancel(&m)) {
                // Answered before the CANCELs go downstream, so the caller sees this
                // 200 before the 487 that follows from them.
                Some(cancels) => self.send_first(respond(200, "OK")?.finish(), target, cancels),
                None => Answer::Reply(respond(481, "Call/Transaction Does Not Exist")?.finish()),
            },
            m if KNOWN_METHODS.contains(&m) => {
                Metrics::inc(&self.metrics.other_methods);
                Answer::Reply(
                    respond(405, "Method Not Allowed")?
                        .header("Allow", ALLOW)
                        .finish(),
                )
            }
            _ => {
                Metrics::inc(&self.metrics.other_methods);
                Answer::Reply(
                    respond(501, "Not Implemented")?
                        .header("Allow", ALLOW)
                        .finish(),
                )
            }
        };
        // Remembered for retransmitted requests, whoever sends it.
        match answer {
            Answer::Reply(bytes) => {
                self.remember(key.as_ref(), &bytes, now);
                Some(Reply { bytes, target })
            }
            Answer::Sent(bytes) => {
                self.remember(key.as_ref(), &bytes, now);
                None
            }
        }
    }

    /// Sends our own answer, then what the proxy forwards because of the request, so
    /// nothing the far end answers can overtake ours.
    fn send_first(
        &self,
        answer: Vec<u8>,
        target: SocketAddr,
        then: Vec<crate::proxy::Send>,
    ) -> Answer {
        self.send_all(vec![crate::proxy::Send {
            bytes: answer.clone(),
            target,
        }]);
        self.send_all(then);
        Answer::Sent(answer)
    }

    /// Keeps the answer of a server transaction for its retransmitted requests.
    fn remember(&self, key: Option<&TxKey>, bytes: &[u8], now: Instant) {
        if let Some(k) = key {
            self.transactions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .respond(k, bytes.into(), now)
                .ok();
        }
    }

    /// A To tag for our responses: stable for one request (so retransmitted answers
    /// match) and unpredictable across requests.
    fn to_tag(&self, m: &Message<'_>) -> String {
        let h = self.tag_hasher.hash_one((
            m.header(Name::CallId),
            m.header(Name::From),
            m.header(Name::CSeq),
        ));
        format!("{h:016x}")
    }

    /// Digest authentication with the guard's rules, shared by every method sipward
    /// challenges: weak accounts and accounts under guessing refused from untrusted
    /// sources (answered like a wrong password), failures counted, decoys banned, the
    /// grace window of a Re-Generated password honoured and ended.
    fn authenticate(
        &self,
        dir: &Directory,
        m: &Message<'_>,
        header: Name,
        method: &str,
        source: SocketAddr,
        now: i64,
    ) -> Authn {
        let now_u = u64::try_from(now).unwrap_or(0);
        let ip = source.ip();
        let mut outcome = self.auth.verify_header(dir, m, header, method, ip, now_u);
        let mut old_password = false;
        if let Outcome::Grace(a) = outcome {
            Metrics::inc(&self.metrics.grace_logins);
            old_password = true;
            outcome = Outcome::Authenticated(a);
        }
        match &outcome {
            // Right credentials from a source the guard does not let this account log
            // in from (weak password, or under distributed guessing): answered exactly
            // like wrong ones, and counted as a failure.
            Outcome::Authenticated(a) if !self.guard.may_authenticate(ip, a, now) => {
                self.guard.refused(ip, a, now);
                let failed = Some(a.auth_id.clone());
                outcome = Outcome::Challenge {
                    stale: false,
                    failed,
                };
            }
            Outcome::Challenge {
                failed: Some(auth_id),
                ..
            } => {
                // The same work as for right credentials.
                if let Some(a) = dir.account(auth_id) {
                    let _ = self.guard.may_authenticate(ip, a, now);
                }
            }
            _ => {}
        }
        match outcome {
            Outcome::Authenticated(a) | Outcome::Grace(a) => {
                self.guard.auth_success(ip, &a.auth_id, now);
                // The first login with the new password closes the old one's window.
                if !old_password && a.grace.as_ref().is_some_and(|g| g.end()) {
                    self.graces_ended
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(a.number.clone());
                }
                Authn::Account(a)
            }
            Outcome::Challenge { stale, failed } => {
                if let Some(auth_id) = failed {
                    Metrics::inc(&self.metrics.auth_failures);
                    // Counted only for answers to a nonce issued to this source; the
                    // answer itself stays the same either way. A decoy bans at once, and
                    // its answer is silence.
                    let known = dir.account(&auth_id).is_some();
                    if !known && self.guard.decoy(ip, &auth_id, now) {
                        return Authn::Silent;
                    }
                    self.guard.auth_failure(ip, &auth_id, known, now);
                }
                Authn::Challenge(self.auth.challenges(ip, now_u, stale))
            }
        }
    }

    /// An INVITE. From a trunk (a gateway's or provider's address, or a gateway that
    /// authenticated) it reaches an extension only through a DID. Anyone else
    /// authenticates first (407), and only then is the dialled number looked at: class
    /// of service, fraud limits (breaking one suspends the extension's outbound
    /// calling), emergency numbers always; then an extension (proxied) or a route to a
    /// trunk (a call of sipward's own to the trunk).
    fn invite(
        &self,
        m: &Message<'_>,
        uri: &str,
        source: SocketAddr,
        upstream: SocketAddr,
        transport: TransportKind,
        tag: &str,
    ) -> Option<Answer> {
        let builder =
            |code: u16, reason: &str| ResponseBuilder::new(m, code, reason, source, tag).ok();
        let respond =
            |code: u16, reason: &str| builder(code, reason).map(|b| Answer::Reply(b.finish()));
        let now = self.clock.now();
        let dir = self.directory.get();
        let dialled = SipUri::parse(uri).and_then(|u| u.user).unwrap_or("");
        if transport == TransportKind::Udp && self.trunks.trunk_at(source.ip()).is_some() {
            return self.inbound(m, dialled, source, upstream, &respond);
        }
        let caller =
            match self.authenticate(&dir, m, Name::ProxyAuthorization, "INVITE", source, now) {
                Authn::Account(a) => a,
                Authn::Silent => return None,
                Authn::Challenge(challenges) => {
                    Metrics::inc(&self.metrics.invite_challenged);
                    let mut b = builder(407, "Proxy Authentication Required")?;
                    for c in &challenges {
                        b = b.header("Proxy-Authenticate", c);
                    }
                    return Some(Answer::Reply(b.finish()));
                }
            };
        let forbidden = || {
            Metrics::inc(&self.metrics.calls_forbidden);
            respond(403, "Forbidden")
        };
        if caller.kind == "gateway" && transport == TransportKind::Udp {
            return self.inbound(m, dialled, source, upstream, &respond);
        }
        if caller.kind != "ext" {
            return forbidden();
        }
        let is_extension = |u: &str| dir.number_for_user(u).is_some();
        // Live trunk calls are counted only for external numbers (not on the way of
        // calls between extensions).
        let active = || self.b2bua.active_for(&caller.number);
        let class = match self
            .outbound
            .decide(&caller.number, dialled, is_extension, active, now)
        {
            Decision::Forbidden => return forbidden(),
            Decision::Suspend(breach) => {
                Metrics::inc(&self.metrics.outbound_suspensions);
                self.guard.report(Event::Suspended {
                    number: caller.number.clone(),
                    breach,
                    dialled: dialled.to_owned(),
                    source: source.ip(),
                });
                return forbidden();
            }
            Decision::Allow(class) => class,
        };
        if class == CallClass::Emergency {
            Metrics::inc(&self.metrics.emergency_calls);
            self.guard.report(Event::EmergencyCall {
                number: caller.number.clone(),
                dialled: dialled.to_owned(),
            });
        }
        if transport != TransportKind::Udp {
            // Calls are signalled over UDP only for now.
            Metrics::inc(&self.metrics.calls_unrouted);
            return respond(480, "Temporarily Unavailable");
        }
        if class == CallClass::Internal {
            let Some(callee) = dir.number_for_user(dialled) else {
                return respond(404, "Not Found");
            };
            return self.proxy_to(m, callee, source, upstream, now, &respond);
        }
        let registered = |number: &str| {
            self.registrar
                .bindings(number, now)
                .into_iter()
                .find(|b| b.transport == TransportKind::Udp)
                .map(|b| b.source)
        };
        let (target, number) = match self.trunks.route(dialled, &caller.number, registered) {
            Routed::To(target, number) => (target, number),
            Routed::NoRoute => {
                Metrics::inc(&self.metrics.calls_unrouted);
                return respond(404, "Not Found");
            }
            Routed::NoAddress => {
                Metrics::inc(&self.metrics.calls_unrouted);
                return respond(503, "Service Unavailable");
            }
        };
        let placed = Placed {
            caller: caller.number.clone(),
            dialled: dialled.to_owned(),
            number,
            class,
            target,
        };
        match self.b2bua.start(m, source, upstream, placed, now) {
            Ok(sends) => {
                if !sends.is_empty() {
                    Metrics::inc(&self.metrics.calls_trunk);
                }
                let trying = ResponseBuilder::new(m, 100, "Trying", source, "")
                    .ok()?
                    .finish();
                Some(self.send_first(trying, upstream, sends))
            }
            Err((code, reason)) => respond(code, reason),
        }
    }

    /// A call from a trunk: the DID (Request-URI user, else To user) names the
    /// extension; nothing from a trunk ever goes out to a trunk again.
    fn inbound(
        &self,
        m: &Message<'_>,
        dialled: &str,
        source: SocketAddr,
        upstream: SocketAddr,
        respond: &dyn Fn(u16, &str) -> Option<Answer>,
    ) -> Option<Answer> {
        let to_user = m
            .header(Name::To)
            .and_then(NameAddr::parse)
            .and_then(|a| SipUri::parse(a.uri))
            .and_then(|u| u.user);
        let Some(callee) = self
            .trunks
            .did(dialled)
            .or_else(|| to_user.and_then(|u| self.trunks.did(u)))
        else {
            Metrics::inc(&self.metrics.calls_unrouted);
            return respond(404, "Not Found");
        };
        Metrics::inc(&self.metrics.calls_inbound);
        self.proxy_to(m, &callee, source, upstream, self.clock.now(), respond)
    }

    /// Forks an INVITE to an extension's UDP contacts.
    fn proxy_to(
        &self,
        m: &Message<'_>,
        callee: &str,
        source: SocketAddr,
        upstream: SocketAddr,
        now: i64,
        respond: &dyn Fn(u16, &str) -> Option<Answer>,
    ) -> Option<Answer> {
        let contacts: Vec<(String, SocketAddr)> = self
            .registrar
            .bindings(callee, now)
            .into_iter()
            .filter(|b| b.transport == TransportKind::Udp)
            .map(|b| (b.contact, b.source))
            .collect();
        if contacts.is_empty() {
            Metrics::inc(&self.metrics.calls_unrouted);
            return respond(480, "Temporarily Unavailable");
        }
        match self
            .proxy
            .start(m, source, upstream, &contacts, std::time::Instant::now())
        {
            Ok(sends) => {
                if !sends.is_empty() {
                    Metrics::inc(&self.metrics.calls_proxied);
                }
                // Without a To tag: a 100 makes no dialog.
                let trying = ResponseBuilder::new(m, 100, "Trying", source, "")
                    .ok()?
                    .finish();
                Some(self.send_first(trying, upstream, sends))
            }
            Err((code, reason)) => respond(code, reason),
        }
    }

    fn register(
        &self,
        m: &Message<'_>,
        source: SocketAddr,
        transport: TransportKind,
        tag: &str,
    ) -> Option<Vec<u8>> {
        let respond =
            |code: u16, reason: &str| ResponseBuilder::new(m, code, reason, source, tag).ok();
        let now = self.clock.now();
        let dir = self.directory.get();
        let account = match self.authenticate(&dir, m, Name::Authorization, "REGISTER", source, now)
        {
            Authn::Account(a) => a,
            Authn::Silent => return None,
            Authn::Challenge(challenges) => {
                Metrics::inc(&self.metrics.register_challenged);
                let mut b = respond(401, "Unauthorized")?;
                for c in &challenges {
                    b = b.header("WWW-Authenticate", c);
                }
                return Some(b.finish());
            }
        };
        // Only an authenticated request learns anything about the address of record.
        let refused = |code: u16, reason: &str| {
            Metrics::inc(&self.metrics.register_refused);
            respond(code, reason).map(|b| b.finish())
        };
        let to = m.header(Name::To).and_then(NameAddr::parse)?;
        let user = SipUri::parse(to.uri).and_then(|u| u.user);
        let aor_number = user.and_then(|u| dir.number_for_user(u));
        if aor_number != Some(account.number.as_str()) {
            return refused(403, "Forbidden");
        }
        let Some(req) = register_request(m, source, transport) else {
            return refused(400, "Bad Request");
        };
        match self.registrar.register(&account.number, &req, now) {
            Ok(current) => {
                Metrics::inc(&self.metrics.register_ok);
                let mut b = respond(200, "OK")?;
                for c in &current {
                    b = b.header(
                        "Contact",
                        &format!("<{}>;expires={}", c.contact, c.expires_in),
                    );
                }
                Some(b.finish())
            }
            Err(RegisterError::IntervalTooBrief { min }) => {
                Metrics::inc(&self.metrics.register_refused);
                Some(
                    respond(423, "Interval Too Brief")?
                        .header("Min-Expires", &min.to_string())
                        .finish(),
                )
            }
            Err(RegisterError::BadStar) => refused(400, "Bad Request"),
            Err(RegisterError::OutOfOrder) => refused(500, "Server Internal Error"),
            Err(RegisterError::TooManyContacts) => refused(403, "Too Many Contacts"),
        }
    }
}

/// Reads the registrar's view of a REGISTER; `None` when Contact or Expires is malformed.
fn register_request(
    m: &Message<'_>,
    source: SocketAddr,
    transport: TransportKind,
) -> Option<RegisterRequest> {
    let expires_header = match m.header(Name::Expires) {
        Some(v) => Some(v.trim().parse::<u32>().ok()?),
        None => None,
    };
    let mut star = false;
    let mut list = Vec::new();
    for value in m.headers_named(Name::Contact) {
        for part in split_list(value) {
            if part == "*" {
                star = true;
                continue;
            }
            let a = NameAddr::parse(part)?;
            SipUri::parse(a.uri)?;
            let expires = match a.param("expires") {
                Some(Some(v)) => Some(v.parse::<u32>().ok()?),
                Some(None) => return None,
                None => None,
            };
            list.push((a.uri.to_owned(), expires));
        }
    }
    let contacts = match (star, list.is_empty()) {
        (false, true) => Contacts::None,
        (true, true) => Contacts::Star,
        (false, false) => Contacts::List(list),
        // `*` mixed with other contacts is a bad request (RFC 3261 §10.3 step 6).
        (true, false) => return None,
    };
    Some(RegisterRequest {
        call_id: m.header(Name::CallId)?.to_owned(),
        cseq: m.header(Name::CSeq).and_then(CSeq::parse)?.seq,
        contacts,
        expires_header,
        source,
        transport,
    })
}
