//! The SIP endpoint: every received message passes through here, in order: parse, the
//! scanner check, then for a response the client transaction it answers (or nothing:
//! it is dropped and counted), and for a request the server transaction table (a
//! retransmission is answered again or absorbed), the required headers, the dialog
//! table for in-dialog requests (carried only between the parties of a live dialog),
//! and the method's handler: REGISTER through authentication to the registrar, INVITE
//! through authentication and admission to the proxy (extensions) or the B2BUA
//! (trunks). Nothing here writes to a socket: every answer and request goes through the
//! egress rule (`crate::egress`).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use policy::clock::Clock;
use policy::dialplan::{CallClass, ClassOfService, Dialled};
use sip::header::addr::{NameAddr, SipUri};
use sip::header::cseq::CSeq;
use sip::header::split_list;
use sip::header::via::Via;
use sip::msg::{self, Message, Name, StartLine};
use sip::response::{ResponseBuilder, datagram_target};
use sip::transaction::TxKey;

use crate::admission::{Admitted, Counting, Decision, Outbound, Step};
use crate::authenticator::{Authenticator, Outcome};
use crate::b2bua::{self, B2bua};
use crate::dialog::{Dialog, Dialogs, Kind, Side, Who};
use crate::directory::{Account, Directory, DirectoryCache};
use crate::egress::{Arrival, Delivery, Egress, Owner};
use crate::flow::{Flow, TransportKind};
use crate::guard::{Admission, Event, Guard};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::provider::ProviderRegistrations;
use crate::proxy::{self, Proxy};
use crate::registrar::{Contacts, Durable, RegisterError, RegisterRequest, Registrar};
use crate::signalling::Signalling;
use crate::transfer::{Transfers, Verdict};
use crate::transport::{ConnectionEnd, Inbound, MessageLimits};
use crate::trunk::{Routed, Trunks};
use crate::voicemail::Voicemail;
use accounts::background::{self, Task};
use policy::ban::Proof;

/// Methods sipward knows but does not serve outside a dialog: answered 405 with `Allow`.
const KNOWN_METHODS: &[&str] = &[
    "BYE",
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

/// How long a REGISTER's answer waits for the write of the binding it reports; past
/// that the phone is told to try again (`500` with `Retry-After`), never told `200`
/// for a binding the store does not hold.
pub const HOLD_AT_MOST: std::time::Duration = std::time::Duration::from_secs(4);

/// What authentication of a request came to.
enum Authn {
    Account(Arc<Account>),
    /// Answer with these challenges (401 or 407).
    Challenge(Vec<String>),
    /// No answer at all (a decoy banned its source).
    Silent,
}

/// What the endpoint is made of (see `crate::server::bind`).
#[derive(Debug)]
pub struct Parts {
    pub directory: Arc<DirectoryCache>,
    pub guard: Arc<Guard>,
    pub auth: Authenticator,
    pub registrar: Arc<Registrar>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub outbound: Arc<Outbound>,
    pub trunks: Arc<Trunks>,
    /// The address the SIP sockets are bound to.
    pub bound: SocketAddr,
    /// The address the TLS listener is bound to, if there is one.
    pub tls_bound: Option<SocketAddr>,
    /// The internal hop socket's address (`[cluster] internal`), if hops are on.
    pub internal: Option<SocketAddr>,
    /// Keys branches, tags and Call-IDs (from the OS CSPRNG, through the binary).
    pub key: [u8; 32],
    /// The largest message taken per transport.
    pub messages: MessageLimits,
}

#[derive(Debug)]
pub struct Endpoint {
    pub directory: Arc<DirectoryCache>,
    /// Consulted by the transports before a packet is parsed.
    pub guard: Arc<Guard>,
    pub auth: Authenticator,
    pub registrar: Arc<Registrar>,
    pub metrics: Arc<Metrics>,
    /// The egress rule, with the transaction tables it consults.
    pub egress: Arc<Egress>,
    pub dialogs: Arc<Dialogs>,
    /// Classes of service, fraud limits, suspensions and transfer grants.
    pub outbound: Arc<Outbound>,
    /// Gateways, providers, routes, DIDs.
    pub trunks: Arc<Trunks>,
    /// Calls to extensions.
    pub proxy: Proxy,
    /// Calls to trunks (sipward as a back-to-back user agent).
    pub b2bua: B2bua,
    /// Check-sync NOTIFYs.
    pub notifier: Notifier,
    /// Calls sipward answers itself for an extension's voicemail box (off until the
    /// server attaches its store and RTP ports).
    pub voicemail: Arc<Voicemail>,
    /// sipward's registrations at providers.
    pub providers: ProviderRegistrations,
    transfers: Arc<Transfers>,
    /// Extensions whose grace window the new password ended; the server deletes their
    /// store rows.
    graces_ended: Mutex<Vec<String>>,
    clock: Arc<dyn Clock>,
    tag_hasher: RandomState,
    messages: MessageLimits,
    /// What checks a hop taken from another node (issue 21), set when hops are on.
    hop: std::sync::OnceLock<HopTaker>,
    /// The endpoint itself, for work that continues after an await (an external call
    /// waits for its counts in the store); dangling for an endpoint not made by
    /// [`Endpoint::shared`], which then admits no external call.
    me: Weak<Endpoint>,
}

/// What a node checks a hop from another node with: the install's hop key, and the
/// Call-IDs and CSeqs of hops taken lately (replays refused).
#[derive(Debug)]
struct HopTaker {
    key: crate::hop::HopKey,
    replays: Mutex<crate::hop::Replays>,
}

/// The Call-ID and both tags of a request.
fn dialog_ids<'m>(m: &'m Message<'_>) -> Option<(&'m str, &'m str, &'m str)> {
    let call_id = m.header(Name::CallId)?;
    let from = NameAddr::parse(m.header(Name::From)?)?.tag()?;
    let to = NameAddr::parse(m.header(Name::To)?)?.tag()?;
    Some((call_id, from, to))
}

impl Endpoint {
    pub fn new(p: Parts) -> Self {
        Self::build(p, Weak::new())
    }

    /// An endpoint that can continue its own work after an await (what the server
    /// runs).
    pub fn shared(p: Parts) -> Arc<Self> {
        Arc::new_cyclic(|me| Self::build(p, me.clone()))
    }

    fn build(p: Parts, me: Weak<Endpoint>) -> Self {
        let dialogs = Arc::new(Dialogs::default());
        let egress = Arc::new(Egress::new(
            dialogs.clone(),
            p.registrar.clone(),
            p.trunks.clone(),
            p.metrics.clone(),
            p.clock.clone(),
        ));
        let mut sig = Signalling::new(
            egress.clone(),
            dialogs.clone(),
            p.metrics.clone(),
            p.clock.clone(),
            (p.bound, p.tls_bound),
            p.key,
        );
        sig.internal = p.internal;
        let sig = Arc::new(sig);
        let transfers = Arc::new(Transfers::new(
            p.outbound.clone(),
            p.trunks.clone(),
            p.directory.clone(),
        ));
        let voicemail = Arc::new(Voicemail::new(sig.clone(), p.directory.clone()));
        let proxy = Proxy::new(sig.clone(), transfers.clone());
        proxy.attach_voicemail(voicemail.clone());
        Self {
            proxy,
            b2bua: B2bua::new(sig.clone()),
            notifier: Notifier::new(sig.clone()),
            voicemail,
            providers: ProviderRegistrations::new(sig),
            transfers,
            egress,
            dialogs,
            directory: p.directory,
            guard: p.guard,
            auth: p.auth,
            registrar: p.registrar,
            metrics: p.metrics,
            outbound: p.outbound,
            trunks: p.trunks,
            graces_ended: Mutex::new(Vec::new()),
            clock: p.clock,
            tag_hasher: RandomState::new(),
            messages: p.messages,
            hop: std::sync::OnceLock::new(),
            me,
        }
    }

    /// Turns hops on (issue 21; the server, when `[cluster] internal` is set): calls
    /// for phones registered on another live node go there with this node's proof, and
    /// hops from other nodes are taken once checked against `key`.
    pub fn attach_hop(&self, key: crate::hop::HopKey, node: &str) {
        let _ = self.hop.set(HopTaker {
            key: key.clone(),
            replays: Mutex::new(crate::hop::Replays::default()),
        });
        self.proxy.attach_hop(proxy::HopSender {
            key,
            node: node.to_owned(),
        });
    }

    /// The server's wall clock, for records written on the endpoint's behalf.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The size of every bounded table the SIP side holds, for `/metrics`.
    pub fn table_sizes(&self) -> Vec<(&'static str, usize)> {
        let mut v = Vec::with_capacity(48);
        v.extend(self.egress.table_sizes());
        v.extend(self.dialogs.table_sizes());
        v.extend(self.proxy.table_sizes());
        v.extend(self.b2bua.table_sizes());
        v.extend(self.registrar.table_sizes());
        v.push(("nonce_nc_tracked", self.auth.nc_tracked()));
        v.push(("notify_pending", self.notifier.pending_count()));
        v.push(("voicemail_calls", self.voicemail.call_count()));
        v.push((
            "voicemail_subscriptions",
            self.voicemail.subscription_count(),
        ));
        v.extend(self.outbound.table_sizes());
        v.extend(self.guard.table_sizes());
        let (hop_targets, hop_nodes) = self.egress.hop_targets().sizes();
        v.push(("hop_targets", hop_targets));
        v.push(("hop_nodes", hop_nodes));
        v.push((
            "hop_replays",
            self.hop.get().map_or(0, |t| {
                t.replays.lock().unwrap_or_else(|p| p.into_inner()).len()
            }),
        ));
        v.push((
            "graces_ended",
            self.graces_ended
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
        ));
        v
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

    /// Ends every call of the extension `number` whose credentials were revoked, on
    /// every leg (proxied calls and trunk calls alike), but its emergency calls: one
    /// made before the change goes on. Returns how many calls it ended, also counted
    /// in `sipward_calls_ended_revoked_total`.
    pub fn end_calls_of(&self, number: &str) -> usize {
        let now = self.clock.instant();
        self.count_ended(
            self.proxy
                .end_calls_of(&Who::Extension(number.to_owned()), now)
                + self.b2bua.end_calls_of(number, now),
        )
    }

    /// Ends every call through the trunk `label` (`gateway:NAME`, `provider:NAME`) the
    /// operator removed or moved, on every leg, but emergency calls (their media does
    /// not pass here and goes on). Counted in `sipward_calls_ended_revoked_total` too.
    pub fn end_calls_via(&self, label: &str) -> usize {
        let now = self.clock.instant();
        self.count_ended(
            self.proxy.end_calls_of(&Who::Trunk(label.to_owned()), now)
                + self.b2bua.end_calls_via(label, now),
        )
    }

    fn count_ended(&self, ended: usize) -> usize {
        self.metrics
            .calls_ended_revoked
            .fetch_add(ended as u64, std::sync::atomic::Ordering::Relaxed);
        ended
    }

    /// Runs every timer due now (the server calls this every few tens of ms; tests
    /// move the injected clock and wait for the next call): transaction
    /// retransmissions and timeouts, ring limits, maximum call durations, provider
    /// refreshes, forgetting ended dialogs.
    pub fn tick(&self) {
        let now = self.clock.instant();
        let (deliveries, unacknowledged) = self.egress.on_deadline(now);
        self.dispatch(&deliveries, None, now);
        for key in unacknowledged {
            self.b2bua.unacknowledged(&key);
        }
        self.proxy.tick(now);
        self.b2bua.tick(now);
        self.providers.tick(now);
        self.dialogs.sweep(now);
    }

    /// Sends a REGISTER's `200` once the binding it reports is in the store (the
    /// registrar's group commit), or `retry` if that takes longer than
    /// [`HOLD_AT_MOST`]. The receiver goes on meanwhile; retransmissions of the
    /// REGISTER are absorbed by its server transaction.
    fn answer_when_durable(
        &self,
        key: TxKey,
        answer: Vec<u8>,
        retry: Option<Vec<u8>>,
        durable: Durable,
    ) {
        let egress = self.egress.clone();
        let wait = async move {
            let written = tokio::time::timeout(HOLD_AT_MOST, durable.wait())
                .await
                .unwrap_or(false);
            match (written, retry) {
                (true, _) => {
                    let _ = egress.respond_once(&key, answer);
                }
                (false, Some(retry)) => {
                    let _ = egress.respond_once(&key, retry);
                }
                (false, None) => {}
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(wait);
            }
            // Every transport runs on the runtime; without one nothing could commit
            // the write either, so nothing is claimed.
            Err(_) => Metrics::inc(&self.metrics.register_refused),
        }
    }

    /// Hands client transaction outputs to their owners.
    fn dispatch(&self, deliveries: &[Delivery], m: Option<&Message<'_>>, now: Instant) {
        for d in deliveries {
            match d.owner {
                Owner::Proxy => self.proxy.on_delivery(d, m, now),
                Owner::B2bua => self.b2bua.on_delivery(d, m, now),
                Owner::Notify => self.notifier.on_delivery(d),
                Owner::Voicemail => self.voicemail.on_delivery(d),
                Owner::Provider => self.providers.on_delivery(d, m),
            }
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

    /// Answers the request `m` (server transaction `key`, from `source`).
    fn respond(
        &self,
        m: &Message<'_>,
        key: &TxKey,
        source: SocketAddr,
        code: u16,
        reason: &str,
        headers: &[(&str, &str)],
    ) {
        let tag = if code > 100 {
            self.to_tag(m)
        } else {
            String::new()
        };
        let Ok(mut b) = ResponseBuilder::new(m, code, reason, source, &tag) else {
            // No answer can ever be built: the entry must not wait for one.
            self.egress.abandon(key);
            return;
        };
        for (name, value) in headers {
            b = b.header(name, value);
        }
        let _ = self.egress.respond_once(key, b.finish());
    }

    /// Handles one message, as it came on `flow`.
    /// Handles one message; false when it did not parse (a stream carrying it is closed).
    pub fn handle(&self, bytes: &[u8], flow: Flow) -> bool {
        if bytes.len() > self.messages.of(flow.transport) {
            self.oversized(bytes, flow);
            return true;
        }
        let Ok(m) = msg::parse(bytes) else {
            Metrics::inc(&self.metrics.parse_errors);
            return false;
        };
        self.handle_message(m, bytes, flow);
        true
    }

    /// A datagram the internal hop socket read from a live node's published address
    /// (`transport::serve_internal` checked the source). An answer goes to the hop
    /// transaction it belongs to (the egress rule holds it to the node the hop went
    /// to); a request is a hop ([`Endpoint::take_hop`]), a CANCEL of one, or a request
    /// in one of its dialogs (the dialog table's: only from the party's flow). False
    /// when it was not read.
    pub fn hop_received(&self, bytes: &[u8], flow: Flow) -> bool {
        if flow.transport != TransportKind::Hop || bytes.len() > self.messages.of(flow.transport) {
            return false;
        }
        match msg::parse(bytes) {
            Ok(m) => {
                self.handle_message(m, bytes, flow);
                true
            }
            Err(_) => {
                Metrics::inc(&self.metrics.parse_errors);
                false
            }
        }
    }

    /// A message over its transport's limit: a request whose head lies within the limit
    /// and parses is answered `513 Message Too Large` (RFC 3261 §21.5.14) through the
    /// server transaction table (so a retransmission is answered again, not re-read);
    /// anything else is dropped. Only the head is read, never the body. The answer is
    /// far smaller than the request, so a forged source gains nothing by it.
    fn oversized(&self, bytes: &[u8], flow: Flow) {
        let limit = self.messages.of(flow.transport);
        let within = bytes.get(..limit).unwrap_or(bytes);
        let answered = msg::head_end(within)
            .and_then(|end| within.get(..end))
            .and_then(|head| msg::parse_head(head).ok())
            .is_some_and(|m| self.too_large(&m, flow));
        Metrics::inc(if answered {
            &self.metrics.too_large_answered
        } else {
            &self.metrics.too_large_dropped
        });
    }

    /// Answers 513 to the request whose head is `m`; false when it cannot be answered
    /// (a response, an ACK, no transaction to answer).
    fn too_large(&self, m: &Message<'_>, flow: Flow) -> bool {
        let StartLine::Request { method, .. } = m.start else {
            return false;
        };
        if method == "ACK" || !sip::response::answerable(m) {
            return false;
        }
        let Some(top) = m.header(Name::Via).and_then(Via::parse_top) else {
            return false;
        };
        let Some(key) = top
            .branch
            .and_then(|b| TxKey::new(b, top.host, top.port, method))
        else {
            return false;
        };
        let reply_to = match flow.transport {
            TransportKind::Udp => Flow::udp(datagram_target(&top, flow.remote)),
            // A node is answered at the address it was read from (a live node's
            // published one), never where its Via says.
            TransportKind::Tcp | TransportKind::Tls | TransportKind::Hop => flow,
        };
        match self.egress.arrived(&key, reply_to, self.clock.instant()) {
            Arrival::New => {
                self.respond(m, &key, flow.remote, 513, "Message Too Large", &[]);
                true
            }
            Arrival::Retransmission => true,
            Arrival::Full => false,
        }
    }

    fn handle_message(&self, m: Message<'_>, bytes: &[u8], flow: Flow) {
        // A scanner's first request bans its source, and it gets no answer at all.
        // Over TCP the handshake proved the source; a datagram proves nothing.
        let proof = match flow.transport {
            TransportKind::Udp | TransportKind::Hop => Proof::Spoofable,
            TransportKind::Tcp | TransportKind::Tls => Proof::Handshake,
        };
        // A hop carries the caller's User-Agent; the sending node judged it, and a
        // node's address is never banned for what it carries.
        let from_node = flow.transport == TransportKind::Hop;
        if !from_node
            && let Some(ua) = m.header(Name::UserAgent)
            && self.guard.scanner(flow.remote.ip(), ua, proof)
        {
            return;
        }
        let StartLine::Request { method, uri } = m.start else {
            // A response: it reaches a client transaction of ours, or nothing.
            let now = self.clock.instant();
            if let Ok(deliveries) = self.egress.on_response(&m, &flow, now) {
                self.dispatch(&deliveries, Some(&m), now);
            }
            return;
        };
        let source = flow.remote;
        // Scanners address servers by IP; phones set up with the domain never do.
        // A hop's Request-URI names the node's internal address by design.
        if !from_node
            && self.guard.policy().refuse_ip_request_uri
            && SipUri::parse(uri)
                .is_some_and(|u| policy::fields::Host::ip_literal(u.host).is_some())
            && !self.guard.allowed(source.ip())
        {
            Metrics::inc(&self.metrics.ip_uri_dropped);
            return;
        }
        Metrics::inc(&self.metrics.requests);
        let Some(top) = m.header(Name::Via).and_then(Via::parse_top) else {
            return;
        };
        let reply_to = match flow.transport {
            TransportKind::Udp => Flow::udp(datagram_target(&top, source)),
            // A node is answered at the address it was read from (a live node's
            // published one), never where its Via says.
            TransportKind::Tcp | TransportKind::Tls | TransportKind::Hop => flow,
        };
        // Only requests with an RFC 3261 branch have a transaction, and only a
        // transaction can be answered.
        let Some(key) = top
            .branch
            .and_then(|b| TxKey::new(b, top.host, top.port, method))
        else {
            return;
        };
        // A request sipward cannot answer never takes a place in the transaction
        // table: the INVITE part of it is small and not evicted, so such requests
        // would otherwise hold it until the pending limit.
        if !sip::response::answerable(&m) {
            Metrics::inc(&self.metrics.unanswerable);
            return;
        }
        let now = self.clock.instant();
        if method == "ACK" {
            // The ACK of a failure of ours ends here (hop by hop); the ACK of a 2xx
            // belongs to its dialog.
            if !self.egress.ack_arrived(&key, now) {
                self.in_dialog(&m, bytes, None, &flow);
            }
            return;
        }
        // An emergency call from a source where a phone is registered or an account
        // authenticated is never the one dropped for want of room (issue 14): it takes
        // the place of the oldest pending INVITE that is not an emergency call.
        let urgent = method == "INVITE"
            && SipUri::parse(uri).and_then(|u| u.user).is_some_and(|user| {
                self.outbound.plan().dialled(user, |_| false) == Dialled::Emergency
            })
            && self.guard.standing(source.ip(), self.clock.now()).is_some();
        let arrival = if urgent {
            let (arrival, evicted) = self.egress.arrived_urgent(&key, reply_to, now);
            if let Some(k) = evicted
                && !self.proxy.cancel(&k)
            {
                self.b2bua.cancel(&k);
            }
            arrival
        } else {
            self.egress.arrived(&key, reply_to, now)
        };
        match arrival {
            Arrival::New => {}
            Arrival::Retransmission => {
                Metrics::inc(&self.metrics.retransmissions);
                return;
            }
            Arrival::Full => return,
        }
        // Required headers (RFC 3261 §8.1.1); a request without them is answered 400.
        let cseq = m.header(Name::CSeq).and_then(CSeq::parse);
        let cseq_ok = cseq.is_some_and(|c| c.method == method);
        let to = m.header(Name::To).and_then(NameAddr::parse);
        let headers_ok = m.header(Name::From).and_then(NameAddr::parse).is_some()
            && to.is_some()
            && m.header(Name::CallId).is_some_and(|c| !c.is_empty());
        if !cseq_ok || !headers_ok {
            Metrics::inc(&self.metrics.bad_requests);
            self.respond(&m, &key, source, 400, "Bad Request", &[]);
            return;
        }
        // RFC 3261 §8.2.2.1: only SIP URIs are served. A tel: URI (RFC 3966) is refused
        // too: nothing here routes one (a DID, an extension and a dialled number are
        // all the user part of a SIP URI), so a trunk must send sip: Request-URIs.
        if !sip_scheme(uri) {
            Metrics::inc(&self.metrics.unsupported_scheme);
            self.respond(&m, &key, source, 416, "Unsupported URI Scheme", &[]);
            return;
        }
        // Requests within a dialog (a To tag) are the dialog table's. REGISTER (the hot
        // path) and CANCEL never look at the To tag.
        let in_dialog =
            !matches!(method, "REGISTER" | "CANCEL") && to.and_then(|t| t.tag()).is_some();
        if in_dialog {
            self.in_dialog(&m, bytes, Some(&key), &flow);
            return;
        }
        // From another node, besides its dialogs' requests and CANCELs of its hops,
        // only a hop (an INVITE) is taken: nothing registers, subscribes or asks here.
        if from_node && method != "CANCEL" {
            if method == "INVITE" {
                self.take_hop(&m, uri, bytes, &key, &flow);
            } else {
                self.respond(&m, &key, source, 405, "Method Not Allowed", &[]);
            }
            return;
        }
        match method {
            "REGISTER" => {
                let tag = self.to_tag(&m);
                match self.register(&m, &flow, &tag) {
                    Some((answer, None)) => {
                        let _ = self.egress.respond_once(&key, answer);
                    }
                    Some((answer, Some(durable))) => {
                        let retry =
                            ResponseBuilder::new(&m, 500, "Server Internal Error", source, &tag)
                                .map(|b| b.header("Retry-After", "5").finish());
                        self.answer_when_durable(key, answer, retry.ok(), durable);
                    }
                    None => {}
                }
            }
            "INVITE" => self.invite(&m, uri, bytes, &key, &flow),
            "SUBSCRIBE" if self.voicemail.enabled() => self.subscribe(&m, uri, &key, &flow),
            "OPTIONS" => {
                Metrics::inc(&self.metrics.options);
                self.respond(
                    &m,
                    &key,
                    source,
                    200,
                    "OK",
                    &[("Allow", ALLOW), ("Accept", "application/sdp")],
                );
            }
            "CANCEL" => {
                let invite = TxKey::new(top.branch.unwrap_or(""), top.host, top.port, "INVITE");
                let ours = invite.as_ref().filter(|k| {
                    self.egress.pending(k)
                        && (self.proxy.owns(k) || self.b2bua.owns(k) || self.voicemail.owns(k))
                });
                match ours {
                    // Answered before anything is cancelled, so the caller sees this
                    // 200 before the 487 that follows.
                    Some(k) => {
                        self.respond(&m, &key, source, 200, "OK", &[]);
                        // The voicemail first: a call the proxy handed to it is its.
                        if !self.voicemail.cancel(k) && !self.proxy.cancel(k) {
                            self.b2bua.cancel(k);
                        }
                    }
                    None => self.respond(
                        &m,
                        &key,
                        source,
                        481,
                        "Call/Transaction Does Not Exist",
                        &[],
                    ),
                }
            }
            m_ if KNOWN_METHODS.contains(&m_) => {
                Metrics::inc(&self.metrics.other_methods);
                self.respond(
                    &m,
                    &key,
                    source,
                    405,
                    "Method Not Allowed",
                    &[("Allow", ALLOW)],
                );
            }
            _ => {
                Metrics::inc(&self.metrics.other_methods);
                self.respond(
                    &m,
                    &key,
                    source,
                    501,
                    "Not Implemented",
                    &[("Allow", ALLOW)],
                );
            }
        }
    }

    /// A request within a dialog (`key`: None for an ACK). It is carried only when the
    /// dialog table knows its dialog, the dialog is live, and it comes from the flow of
    /// the party its From names; and only to the other party.
    fn in_dialog(&self, m: &Message<'_>, bytes: &[u8], key: Option<&TxKey>, flow: &Flow) {
        let source = flow.remote;
        let refuse = |code: u16, reason: &str| {
            if let Some(key) = key {
                self.respond(m, key, source, code, reason, &[]);
            }
        };
        let Some(method) = m.method() else { return };
        let found = dialog_ids(m).and_then(|(c, f, t)| self.dialogs.find(c, f, t));
        let Some((d, side)) = found else {
            // An in-dialog OPTIONS without a Route is a keepalive for us.
            if method == "OPTIONS" && m.header(Name::Route).is_none() {
                refuse(200, "OK");
            } else {
                refuse(481, "Call/Transaction Does Not Exist");
            }
            return;
        };
        let from_the_party = d.party(side).flow.is_some_and(|f| f.same_peer(flow));
        let live = d.live() || (method == "BYE" && d.phase == crate::dialog::Phase::Terminating);
        if !from_the_party || !live {
            refuse(481, "Call/Transaction Does Not Exist");
            return;
        }
        match d.kind {
            Kind::Proxied => {
                if method == "REFER" && !self.refer_allowed(m, &d, side) {
                    Metrics::inc(&self.metrics.transfers_refused);
                    refuse(403, "Forbidden");
                    return;
                }
                if let Err((code, reason)) = self.proxy.relay(m, bytes, key, flow, &d, side) {
                    refuse(code, reason);
                }
            }
            Kind::Trunk { call, leg } => self.b2bua.in_dialog(m, bytes, key, flow, call, leg),
            Kind::Voicemail { call } => self.voicemail.in_dialog(m, key, flow, call),
        }
    }

    /// A REFER between two parties of a proxied dialog: its target must be one the
    /// referrer's own class may call (a granted one is then the referrer's call), and
    /// neither the call nor the target may lie across the internal hop.
    fn refer_allowed(&self, m: &Message<'_>, d: &Dialog, side: Side) -> bool {
        let number = |w: &Who| match w {
            Who::Extension(n) => Some(n.clone()),
            _ => None,
        };
        let referrer = number(&d.party(side).who);
        let transferee = number(&d.other(side).who);
        // Towards a trunk nothing is let through: the trunk would carry out the transfer
        // itself, at the owner's cost, whatever the target looks like.
        if matches!(d.other(side).who, Who::Trunk(_)) {
            return false;
        }
        // Transfers are not offered across nodes (issue 21). Over the hop the other
        // node would carry out the REFER with none of this node's state (the grant
        // that charges an outside target to the referrer is held here), so a REFER in
        // a call that crosses the hop goes no further, from either party.
        let over_hop =
            |p: &crate::dialog::Party| p.flow.is_some_and(|f| f.transport == TransportKind::Hop);
        if over_hop(d.party(side)) || over_hop(d.other(side)) {
            return false;
        }
        // Exactly one Refer-To (RFC 3515 §2.1): a second one could name another target
        // than the one judged here.
        let targets: Vec<&str> = m
            .headers
            .iter()
            .filter(|h| {
                h.raw_name.eq_ignore_ascii_case("Refer-To") || h.raw_name.eq_ignore_ascii_case("r")
            })
            .map(|h| h.value.as_ref())
            .collect();
        let [target] = targets.as_slice() else {
            return false;
        };
        // Nor is a phone of another node a transfer target: an extension with no
        // binding here but one on another node would be reached only over the hop.
        let now = self.clock.now();
        if let Some(user) = crate::transfer::target_number(target) {
            let dir = self.directory.get();
            if let Some(callee) = dir.extension_for_user(&user)
                && self.registrar.flows(callee, now).is_empty()
                && !self.egress.hop_targets().of(callee).is_empty()
            {
                return false;
            }
        }
        self.transfers
            .judge(referrer.as_deref(), transferee.as_deref(), target, now)
            != Verdict::Refused
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
            // What it registers carries the old credentials' generation.
            outcome = Outcome::Authenticated(a.grace_login());
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
                // A login with the grace window's old password earns no trust: trust
                // outlives the window, the old password must not.
                if !old_password {
                    self.guard.auth_success(ip, &a.auth_id, now);
                }
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
                    // its answer is silence. A row whose HA1s do not open is nobody's,
                    // as the authenticator judged it (until the pass leaves it out).
                    let known = dir.account(&auth_id).is_some_and(|a| a.ha1s().is_some());
                    if !known && self.guard.decoy(ip, &auth_id, now) {
                        return Authn::Silent;
                    }
                    self.guard.auth_failure(ip, &auth_id, known, now);
                }
                Authn::Challenge(self.auth.challenges(ip, now_u, stale))
            }
        }
    }

    /// An INVITE outside a dialog. From a trunk (a gateway's or provider's address, or a
    /// gateway that authenticated) it reaches an extension only through a DID. Anyone
    /// else authenticates first (407), and only then is the dialled number looked at:
    /// emergency numbers always go out (within the emergency limits); an extension is
    /// called through the proxy; anything else is routed, the number that leaves is
    /// classified (E.164), and class of service and fraud limits are held to that class
    /// before the B2BUA places the call.
    fn invite(&self, m: &Message<'_>, uri: &str, bytes: &[u8], key: &TxKey, flow: &Flow) {
        let source = flow.remote;
        let respond = |code: u16, reason: &str| self.respond(m, key, source, code, reason, &[]);
        let now = self.clock.now();
        let dir = self.directory.get();
        let dialled = SipUri::parse(uri).and_then(|u| u.user).unwrap_or("");
        if let Some(label) = self.trunks.trunk_at(source.ip()) {
            return self.inbound(m, bytes, key, flow, dialled, Who::Trunk(label));
        }
        let caller =
            match self.authenticate(&dir, m, Name::ProxyAuthorization, "INVITE", source, now) {
                Authn::Account(a) => a,
                Authn::Silent => {
                    // Silence is an answer of sorts: nothing more will be sent, so
                    // the entry goes now rather than at the pending limit.
                    self.egress.abandon(key);
                    return;
                }
                Authn::Challenge(challenges) => {
                    Metrics::inc(&self.metrics.invite_challenged);
                    let headers: Vec<(&str, &str)> = challenges
                        .iter()
                        .map(|c| ("Proxy-Authenticate", c.as_str()))
                        .collect();
                    self.respond(
                        m,
                        key,
                        source,
                        407,
                        "Proxy Authentication Required",
                        &headers,
                    );
                    return;
                }
            };
        let forbidden = || {
            Metrics::inc(&self.metrics.calls_forbidden);
            respond(403, "Forbidden");
        };
        if caller.kind == "gateway" {
            let label = self
                .trunks
                .gateway_label(&caller.number)
                .unwrap_or_else(|| format!("gateway:{}", caller.number));
            return self.inbound(m, bytes, key, flow, dialled, Who::Trunk(label));
        }
        if caller.kind != "ext" {
            return forbidden();
        }
        // The voicemail menu: only for an extension that authenticated (above; a trunk's
        // call never gets here). `*97` opens the caller's own box without a PIN only
        // from one of its registered flows; never on caller ID.
        let on_registered_flow = || {
            self.registrar
                .flows(&caller.number, now)
                .iter()
                .any(|(_, f)| f.same_peer(flow))
        };
        if let Some(entry) =
            self.voicemail
                .retrieval_entry(dialled, &caller.number, on_registered_flow())
        {
            return self.voicemail.retrieve(
                m,
                bytes,
                key,
                flow,
                Who::Extension(caller.number.clone()),
                entry,
            );
        }
        // A transfer or redirect a referrer allowed: the call is the referrer's.
        let counted = self
            .outbound
            .take_grant(&caller.number, dialled, now)
            .unwrap_or_else(|| caller.number.clone());
        let Some((cos, _)) = self.outbound.line(&counted) else {
            return forbidden();
        };
        let plan = self.outbound.plan();
        let is_extension = |u: &str| dir.extension_for_user(u).is_some();
        match plan.dialled(dialled, is_extension) {
            Dialled::Invalid => forbidden(),
            Dialled::Internal => {
                match self.outbound.decide(&counted, CallClass::Internal) {
                    Step::Decided(Decision::Allow(_)) => {}
                    _ => return forbidden(),
                }
                let Some(callee) = dir.extension_for_user(dialled) else {
                    return respond(404, "Not Found");
                };
                let intercom = policy::transfer::auto_answer_passes(&plan, cos);
                self.proxy_to(
                    m,
                    bytes,
                    key,
                    flow,
                    Who::Extension(caller.number.clone()),
                    callee,
                    intercom,
                    Some((CallClass::Internal, cos)),
                );
            }
            Dialled::Emergency => {
                let (mine, total) = self.b2bua.emergencies(&caller.number);
                if let Some(breach) = plan.emergency.check(mine, total) {
                    Metrics::inc(&self.metrics.emergency_refused);
                    self.guard.report(Event::EmergencyRefused {
                        number: caller.number.clone(),
                        breach,
                    });
                    return respond(486, "Busy Here");
                }
                Metrics::inc(&self.metrics.emergency_calls);
                self.guard.report(Event::EmergencyCall {
                    number: caller.number.clone(),
                    dialled: dialled.to_owned(),
                });
                let routed = self.route(dialled, &caller.number);
                let e164 = match &routed {
                    Routed::To(_, number) => {
                        plan.leaving(number).ok().map(|l| l.number.to_string())
                    }
                    _ => None,
                };
                // An emergency call is never refused by the fraud limits and never
                // waits for the store, but it counts against the next external call:
                // its lease is written behind.
                let lease = self.outbound.ledger().map(|l| l.name());
                self.trunk_call(
                    m,
                    bytes,
                    key,
                    flow,
                    routed,
                    TrunkCall {
                        caller: &caller.number,
                        counted: &caller.number,
                        dialled,
                        e164,
                        class: CallClass::Emergency,
                        cos,
                        lease: lease.clone(),
                    },
                );
                if let (Some(lease), Some(ledger), Ok(rt)) = (
                    lease,
                    self.outbound.ledger().cloned(),
                    tokio::runtime::Handle::try_current(),
                ) {
                    let account = caller.number.clone();
                    rt.spawn(async move {
                        background::checked(
                            Task::CallState,
                            "leasing an emergency call",
                            ledger.take_uncapped(lease, account, now).await,
                        );
                    });
                }
            }
            Dialled::Outside => {
                let routed = self.route(dialled, &caller.number);
                // The class is the number that leaves, in E.164; with no route nothing
                // leaves, and the dialled text is held to the class of service as it is.
                let (class, e164) = match &routed {
                    Routed::To(_, number) => match plan.leaving(number) {
                        Ok(l) => (CallClass::from(l.destination), Some(l.number.to_string())),
                        Err(_) => {
                            Metrics::inc(&self.metrics.calls_unrouted);
                            return respond(404, "Not Found");
                        }
                    },
                    _ => (plan.classify(dialled, is_extension), None),
                };
                match self.outbound.decide(&counted, class) {
                    Step::Decided(Decision::Allow(_)) => {}
                    Step::Decided(_) => return forbidden(),
                    Step::Count(counting) => {
                        let call = OwnedTrunkCall {
                            caller: caller.number.clone(),
                            dialled: dialled.to_owned(),
                            e164,
                            cos,
                        };
                        return self.count_then_call(bytes, key, flow, routed, counting, call, now);
                    }
                }
                self.trunk_call(
                    m,
                    bytes,
                    key,
                    flow,
                    routed,
                    TrunkCall {
                        caller: &caller.number,
                        counted: &counted,
                        dialled,
                        e164,
                        class,
                        cos,
                        lease: None,
                    },
                );
            }
        }
    }

    /// Takes an external call's counts in the store, off the receiving thread, and
    /// then places it, or refuses it (`403`; `503` when the store cannot count it:
    /// no external call leaves uncounted).
    #[allow(clippy::too_many_arguments)]
    fn count_then_call(
        &self,
        bytes: &[u8],
        key: &TxKey,
        flow: &Flow,
        routed: Routed,
        counting: Counting,
        call: OwnedTrunkCall,
        now: i64,
    ) {
        let source = flow.remote;
        let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            Metrics::inc(&self.metrics.calls_forbidden);
            if let Ok(m) = msg::parse(bytes) {
                self.respond(&m, key, source, 403, "Forbidden", &[]);
            }
            return;
        };
        let (bytes, key, flow) = (bytes.to_vec(), key.clone(), *flow);
        rt.spawn(async move {
            let counted = me
                .outbound
                .count(&counting, || me.b2bua.live_leases(), now)
                .await;
            // It parsed on arrival: the same bytes parse again.
            let Ok(m) = msg::parse(&bytes) else {
                me.egress.abandon(&key);
                return;
            };
            match counted {
                Err(e) => {
                    background::failed(
                        Task::CallState,
                        "counting a call against the fraud limits",
                        &e,
                    );
                    me.respond(&m, &key, source, 503, "Service Unavailable", &[]);
                }
                Ok(Admitted {
                    decision: Decision::Allow(class),
                    lease,
                }) => {
                    me.trunk_call(
                        &m,
                        &bytes,
                        &key,
                        &flow,
                        routed,
                        TrunkCall {
                            caller: &call.caller,
                            counted: &counting.number,
                            dialled: &call.dialled,
                            e164: call.e164,
                            class,
                            cos: call.cos,
                            lease: lease.clone(),
                        },
                    );
                    // Held once the call is up (or refused: then the next round
                    // releases it), never before.
                    if let (Some(lease), Some(ledger)) = (lease, me.outbound.ledger()) {
                        ledger.hold(lease, counting.number.clone(), counting.cap());
                    }
                }
                Ok(Admitted {
                    decision: Decision::Suspend(breach),
                    ..
                }) => {
                    Metrics::inc(&me.metrics.outbound_suspensions);
                    me.guard.report(Event::Suspended {
                        number: counting.number.clone(),
                        breach,
                        dialled: call.dialled.clone(),
                        source: source.ip(),
                    });
                    Metrics::inc(&me.metrics.calls_forbidden);
                    me.respond(&m, &key, source, 403, "Forbidden", &[]);
                }
                Ok(Admitted {
                    decision: Decision::Forbidden,
                    ..
                }) => {
                    Metrics::inc(&me.metrics.calls_forbidden);
                    me.respond(&m, &key, source, 403, "Forbidden", &[]);
                }
            }
        });
    }

    /// A SUBSCRIBE for a box's message-summary (RFC 3842): accepted only from a phone
    /// that authenticates (401) as the box's own extension and is registered on this
    /// very flow; any other event is 489. The box's state follows in a NOTIFY.
    fn subscribe(&self, m: &Message<'_>, uri: &str, key: &TxKey, flow: &Flow) {
        let source = flow.remote;
        let now = self.clock.now();
        let event = m.header(Name::Event).unwrap_or("");
        let package = event.split(';').next().unwrap_or("").trim();
        if !package.eq_ignore_ascii_case("message-summary") {
            return self.respond(
                m,
                key,
                source,
                489,
                "Bad Event",
                &[("Allow-Events", "message-summary")],
            );
        }
        let dir = self.directory.get();
        let account =
            match self.authenticate(&dir, m, Name::Authorization, "SUBSCRIBE", source, now) {
                Authn::Account(a) => a,
                Authn::Silent => {
                    self.egress.abandon(key);
                    return;
                }
                Authn::Challenge(challenges) => {
                    let headers: Vec<(&str, &str)> = challenges
                        .iter()
                        .map(|c| ("WWW-Authenticate", c.as_str()))
                        .collect();
                    return self.respond(m, key, source, 401, "Unauthorized", &headers);
                }
            };
        let target = SipUri::parse(uri).and_then(|u| u.user);
        let own_box = account.kind == "ext"
            && target.is_none_or(|t| t == account.number || t == account.auth_id);
        let registered_here = self
            .registrar
            .flows(&account.number, now)
            .iter()
            .any(|(_, f)| f.same_peer(flow));
        if !own_box || !registered_here {
            return self.respond(m, key, source, 403, "Forbidden", &[]);
        }
        let (Some(from), Some(call_id)) = (
            m.header(Name::From).and_then(NameAddr::parse),
            m.header(Name::CallId),
        ) else {
            return self.respond(m, key, source, 400, "Bad Request", &[]);
        };
        let expires = m
            .header(Name::Expires)
            .and_then(|e| e.trim().parse::<i64>().ok())
            .unwrap_or(3600)
            .clamp(0, 3600);
        let remote_target = m
            .header(Name::Contact)
            .and_then(|c| split_list(c).next())
            .and_then(NameAddr::parse)
            .map_or_else(|| from.uri.to_owned(), |a| a.uri.to_owned());
        let expires_text = expires.to_string();
        let contact = self.voicemail.contact(flow);
        self.respond(
            m,
            key,
            source,
            200,
            "OK",
            &[("Expires", &expires_text), ("Contact", &contact)],
        );
        self.voicemail.subscribed(crate::voicemail::Subscription {
            number: account.number.clone(),
            call_id: call_id.to_owned(),
            local_tag: self.to_tag(m),
            remote_uri: from.uri.to_owned(),
            remote_tag: from.tag().unwrap_or("").to_owned(),
            remote_target,
            flow: *flow,
            expires_at: now + expires,
            cseq: 0,
        });
    }

    /// The route for a number (a gateway is reached where it registered from, if it did).
    fn route(&self, dialled: &str, caller: &str) -> Routed {
        let now = self.clock.now();
        self.trunks.route(dialled, caller, |gateway| {
            self.registrar
                .flows(gateway, now)
                .first()
                .map(|(_, flow)| *flow)
        })
    }

    /// Places an admitted call on the route's trunk.
    fn trunk_call(
        &self,
        m: &Message<'_>,
        bytes: &[u8],
        key: &TxKey,
        flow: &Flow,
        routed: Routed,
        call: TrunkCall<'_>,
    ) {
        let source = flow.remote;
        let (target, number) = match routed {
            Routed::To(target, number) => (target, number),
            Routed::NoRoute => {
                Metrics::inc(&self.metrics.calls_unrouted);
                return self.respond(m, key, source, 404, "Not Found", &[]);
            }
            Routed::NoAddress => {
                Metrics::inc(&self.metrics.calls_unrouted);
                return self.respond(m, key, source, 503, "Service Unavailable", &[]);
            }
        };
        let plan = self.outbound.plan();
        // Without a To tag: a 100 makes no dialog.
        self.respond(m, key, source, 100, "Trying", &[]);
        let placed = b2bua::Placed {
            request: bytes,
            key: key.clone(),
            source: *flow,
            caller: call.caller.to_owned(),
            counted: call.counted.to_owned(),
            lease: call.lease,
            dialled: call.dialled.to_owned(),
            number,
            e164: call.e164,
            class: call.class,
            class_of_service: call.cos,
            ring: plan.max_ring_duration(call.cos),
            max: plan.max_call_duration(call.cos, call.class),
            target,
        };
        match self.b2bua.start(placed) {
            Ok(()) => Metrics::inc(&self.metrics.calls_trunk),
            Err((code, reason)) => self.respond(m, key, source, code, reason, &[]),
        }
    }

    /// A call from a trunk: the DID (Request-URI user, else To user) names the
    /// extension; nothing from a trunk ever goes out to a trunk again.
    fn inbound(
        &self,
        m: &Message<'_>,
        bytes: &[u8],
        key: &TxKey,
        flow: &Flow,
        dialled: &str,
        caller: Who,
    ) {
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
            return self.respond(m, key, flow.remote, 404, "Not Found", &[]);
        };
        Metrics::inc(&self.metrics.calls_inbound);
        self.proxy_to(m, bytes, key, flow, caller, &callee, false, None);
    }

    /// Forks an INVITE to the flows an extension is registered from; with none here,
    /// to the other live nodes that hold one (the hop, issue 21); with none anywhere, to
    /// its voicemail (or 480).
    ///
    /// The hop comes before this node's voicemail: a phone registered on another node
    /// is reachable, and ringing the box here instead would send every call that
    /// lands on the "wrong" node to voicemail. When the hop fails busy, unavailable or
    /// unanswered (408/480/486/6xx), the proxy's own fallback puts the call to the box
    /// here, exactly as for a local phone: the other node never takes it to voicemail.
    #[allow(clippy::too_many_arguments)]
    fn proxy_to(
        &self,
        m: &Message<'_>,
        bytes: &[u8],
        key: &TxKey,
        flow: &Flow,
        caller: Who,
        callee: &str,
        intercom: bool,
        class: Option<(CallClass, ClassOfService)>,
    ) {
        let source = flow.remote;
        let mut contacts = self.registrar.flows(callee, self.clock.now());
        // Never from a hop: what came from another node goes to this node's phones
        // only, not on to a third node nor to a voicemail box (no hop of a hop).
        let from_node = flow.transport == TransportKind::Hop;
        if contacts.is_empty() && !from_node && self.proxy.hops_on() {
            contacts = self.hop_contacts(callee);
        }
        if contacts.is_empty() && !from_node && self.voicemail.enabled() {
            // No phone to ring: the box takes the call (or answers why it cannot).
            Metrics::inc(&self.metrics.calls_unrouted);
            return self
                .voicemail
                .deposit(m, bytes, key, flow, caller, callee, None);
        }
        if contacts.is_empty() {
            Metrics::inc(&self.metrics.calls_unrouted);
            return self.respond(m, key, source, 480, "Temporarily Unavailable", &[]);
        }
        // Without a To tag: a 100 makes no dialog.
        self.respond(m, key, source, 100, "Trying", &[]);
        // The caller's class's ring time; three minutes (Timer C) for a trunk's call.
        let ring = class.map_or(std::time::Duration::from_secs(180), |(_, cos)| {
            self.outbound.plan().max_ring_duration(cos)
        });
        let placed = proxy::Placed {
            request: bytes,
            key: key.clone(),
            source: *flow,
            caller,
            callee,
            contacts,
            intercom,
            ring,
            class: class.map(|c| c.0),
            class_of_service: class.map(|c| c.1),
        };
        match self.proxy.invite(placed) {
            Ok(()) => Metrics::inc(&self.metrics.calls_proxied),
            Err((code, reason)) => {
                if code == 480 {
                    Metrics::inc(&self.metrics.calls_unrouted);
                }
                self.respond(m, key, source, code, reason, &[]);
            }
        }
    }

    /// A hop from another node (issue 21): taken only with its proof (the source is a
    /// live node's published address, the MAC under the install's hop key names that
    /// node, the time is fresh, the Call-ID and CSeq unseen) and only for an extension
    /// of the directory. It is forked to this node's own bindings of that extension and
    /// nothing else: no dial plan, no trunk, no further hop, no voicemail (the sending
    /// node's is the box), and no fraud count (the sending node admitted and counted
    /// the call). The proof is stripped by the proxy before the phone sees the INVITE.
    /// A refused hop is answered 403 (to the node's address, whoever forged it) and
    /// counted by reason; no binding here is 480, which the sending node takes to its
    /// voicemail.
    fn take_hop(&self, m: &Message<'_>, uri: &str, bytes: &[u8], key: &TxKey, flow: &Flow) {
        let source = flow.remote;
        let refuse = |index: usize| {
            if let Some(c) = self.metrics.hops_refused.get(index) {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.respond(m, key, source, 403, "Forbidden", &[]);
        };
        let (Some(taker), Some(node)) = (self.hop.get(), self.egress.hop_targets().node_at(source))
        else {
            return refuse(0);
        };
        let extension = SipUri::parse(uri).and_then(|u| u.user).unwrap_or("");
        let mut proofs = m
            .headers
            .iter()
            .filter(|h| h.raw_name.trim().eq_ignore_ascii_case(crate::hop::HEADER));
        let proof = proofs.next().map(|h| h.value.as_ref());
        let checked = match (
            proofs.next(),
            m.header(Name::CallId),
            m.header(Name::CSeq).and_then(CSeq::parse),
            m.header(Name::From)
                .and_then(NameAddr::parse)
                .and_then(|a| a.tag()),
        ) {
            (None, Some(call_id), Some(cseq), Some(from_tag)) => {
                let fields = crate::hop::HopFields {
                    method: "INVITE",
                    extension,
                    call_id,
                    cseq: cseq.seq,
                    from_tag,
                    node: &node,
                };
                let mut replays = taker.replays.lock().unwrap_or_else(|p| p.into_inner());
                crate::hop::check(&taker.key, &fields, proof, self.clock.now(), &mut replays)
            }
            _ => Err(crate::hop::Refused::Malformed),
        };
        if let Err(refused) = checked {
            return refuse(refused.index());
        }
        // An extension's number only: a gateway's virtual number is in the directory
        // (and has bindings) too, and a hop never reaches a gateway.
        if self
            .directory
            .get()
            .by_number(extension)
            .is_none_or(|a| a.kind != "ext")
        {
            return self.respond(m, key, source, 404, "Not Found", &[]);
        }
        // Only this node's own bindings (a hop flow is never one).
        let contacts: Vec<(String, Flow)> = self
            .registrar
            .flows(extension, self.clock.now())
            .into_iter()
            .filter(|(_, f)| f.transport != TransportKind::Hop)
            .collect();
        if contacts.is_empty() {
            Metrics::inc(&self.metrics.calls_unrouted);
            return self.respond(m, key, source, 480, "Temporarily Unavailable", &[]);
        }
        self.respond(m, key, source, 100, "Trying", &[]);
        let placed = proxy::Placed {
            request: bytes,
            key: key.clone(),
            source: *flow,
            // Like a trunk to this node: no 3xx goes back to it.
            caller: Who::Trunk(format!("node:{node}")),
            callee: extension,
            contacts,
            intercom: false,
            ring: std::time::Duration::from_secs(180),
            class: None,
            class_of_service: None,
        };
        match self.proxy.invite(placed) {
            Ok(()) => Metrics::inc(&self.metrics.calls_proxied),
            Err((code, reason)) => self.respond(m, key, source, code, reason, &[]),
        }
    }

    /// The other live nodes that hold a binding of `callee`, as hop branches: the
    /// Request-URI names the extension and the node's internal address, nothing else
    /// (the taking node looks the extension up in its own bindings).
    fn hop_contacts(&self, callee: &str) -> Vec<(String, Flow)> {
        self.egress
            .hop_targets()
            .of(callee)
            .into_iter()
            .map(|addr| (format!("sip:{callee}@{addr}"), Flow::hop(addr)))
            .collect()
    }

    /// A REGISTER: the bytes of its answer (None: no answer at all), and the write it
    /// must wait for (a new or moved binding).
    fn register(
        &self,
        m: &Message<'_>,
        flow: &Flow,
        tag: &str,
    ) -> Option<(Vec<u8>, Option<Durable>)> {
        let source = flow.remote;
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
                return Some((b.finish(), None));
            }
        };
        // Only an authenticated request learns anything about the address of record.
        let refused = |code: u16, reason: &str| {
            Metrics::inc(&self.metrics.register_refused);
            respond(code, reason).map(|b| (b.finish(), None))
        };
        let to = m.header(Name::To).and_then(NameAddr::parse)?;
        let user = SipUri::parse(to.uri).and_then(|u| u.user);
        let aor_number = user.and_then(|u| dir.number_for_user(u));
        if aor_number != Some(account.number.as_str()) {
            return refused(403, "Forbidden");
        }
        let Some(req) = register_request(m, *flow, account.generation) else {
            return refused(400, "Bad Request");
        };
        match self.registrar.register(&account.number, &req, now) {
            Ok(done) => {
                Metrics::inc(&self.metrics.register_ok);
                let mut b = respond(200, "OK")?;
                for c in &done.current {
                    b = b.header(
                        "Contact",
                        &format!("<{}>;expires={}", c.contact, c.expires_in),
                    );
                }
                Some((b.finish(), done.durable))
            }
            Err(RegisterError::IntervalTooBrief { min }) => {
                Metrics::inc(&self.metrics.register_refused);
                Some((
                    respond(423, "Interval Too Brief")?
                        .header("Min-Expires", &min.to_string())
                        .finish(),
                    None,
                ))
            }
            Err(RegisterError::BadStar) => refused(400, "Bad Request"),
            Err(RegisterError::OutOfOrder) => refused(500, "Server Internal Error"),
            Err(RegisterError::TooManyContacts) => refused(403, "Too Many Contacts"),
        }
    }
}

/// What the endpoint decided about a trunk call.
struct TrunkCall<'a> {
    caller: &'a str,
    counted: &'a str,
    dialled: &'a str,
    e164: Option<String>,
    class: CallClass,
    /// The class of service of the account the call is charged to.
    cos: ClassOfService,
    /// The lease it holds in the store while it counts.
    lease: Option<String>,
}

/// What a [`TrunkCall`] borrows, owned while its counts are taken.
struct OwnedTrunkCall {
    caller: String,
    dialled: String,
    e164: Option<String>,
    cos: ClassOfService,
}

impl Inbound for Endpoint {
    fn admit(&self, ip: IpAddr) -> Admission {
        self.guard.admit(ip)
    }

    fn admit_on_connection(&self, ip: IpAddr) -> Admission {
        self.guard.admit_on_connection(ip)
    }

    fn admits_connection(&self, ip: IpAddr) -> bool {
        let admitted = self.guard.admits(ip);
        if !admitted {
            Metrics::inc(&self.metrics.dropped_banned);
        }
        admitted
    }

    fn handshake(&self, ip: IpAddr) -> Admission {
        Metrics::inc(&self.metrics.tls_handshakes);
        self.guard.admit_on_connection(ip)
    }

    fn keepalive(&self, ip: IpAddr) -> Admission {
        Metrics::inc(&self.metrics.keepalive_pings);
        if self.registrar.registered_from(ip) {
            return Admission::Admit;
        }
        self.guard.admit_on_connection(ip)
    }

    fn banned(&self, ip: IpAddr) -> bool {
        !self.guard.admits(ip)
    }

    fn uncapped(&self, ip: IpAddr) -> bool {
        self.guard.allowed(ip)
    }

    fn registered_from(&self, ip: IpAddr) -> bool {
        self.registrar.registered_from(ip)
    }

    fn received(&self, bytes: &[u8], flow: Flow) -> bool {
        self.handle(bytes, flow)
    }

    fn max_message(&self, transport: TransportKind) -> usize {
        self.messages.of(transport)
    }

    fn oversized(&self, bytes: &[u8], flow: Flow) {
        Endpoint::oversized(self, bytes, flow);
    }

    fn unframed(&self, ip: IpAddr) {
        Metrics::inc(&self.metrics.parse_errors);
        // The handshake proved the source: junk from it counts toward its flood limit
        // like any message, and bans it at the limit.
        let _ = self.guard.admit_on_connection(ip);
    }

    fn connection(&self, closed: ConnectionEnd) {
        Metrics::inc(match closed {
            ConnectionEnd::Refused => &self.metrics.tcp_refused,
            ConnectionEnd::TimedOut => &self.metrics.tcp_timeouts,
            ConnectionEnd::Banned => &self.metrics.tcp_banned_closed,
            ConnectionEnd::Unfinished => &self.metrics.tcp_unfinished_closed,
            ConnectionEnd::HandshakeFailed => &self.metrics.tls_handshake_failed,
            ConnectionEnd::HandshakeTimedOut => &self.metrics.tls_handshake_timeouts,
            ConnectionEnd::HandshakesFull => &self.metrics.tls_handshakes_refused,
            ConnectionEnd::HandshakeYielded => &self.metrics.tls_handshakes_yielded,
        });
    }

    fn closed(&self, flow: Flow) {
        if let Some(conn) = flow.conn {
            self.registrar.connection_closed(conn);
        }
    }

    fn accept_backoff(&self, error: &std::io::Error, delay: Duration, first: bool) {
        Metrics::inc(&self.metrics.accept_backoff);
        if first {
            self.guard.report(Event::AcceptBackoff {
                error: error.to_string(),
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            });
        }
    }
}

/// Whether a Request-URI is a SIP or SIPS URI (RFC 3261 §19.1; the scheme is
/// case-insensitive).
fn sip_scheme(uri: &str) -> bool {
    uri.split_once(':').is_some_and(|(scheme, _)| {
        ["sip", "sips"]
            .iter()
            .any(|s| scheme.eq_ignore_ascii_case(s))
    })
}

/// Reads the registrar's view of a REGISTER; `None` when Contact or Expires is malformed.
fn register_request(m: &Message<'_>, flow: Flow, generation: i64) -> Option<RegisterRequest> {
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
        flow,
        generation,
    })
}
