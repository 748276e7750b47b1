//! Voicemail on the wire: sipward answers a call to an extension that cannot take it
//! (no registered phone) itself, with a 200 and an SDP answer, plays the greeting and
//! a tone over RTP, records what the caller says into a WAV file of the mailbox, files
//! it, and tells the extension's phones that a message waits (RFC 3842
//! `message-summary` NOTIFY).
//!
//! Architecture invariant: **the voicemail never places a call.** This module has no
//! path to `crate::b2bua`, `crate::trunk` or `crate::proxy`: the only requests it sends
//! in its own dialog with the caller (egress permit (c), sipward's own leg) are its BYE
//! and one REFER to the operator the configuration names (`[voicemail] operator`, an
//! internal extension), to an internal caller only; its NOTIFYs go under the
//! registration permit (d). A unit test reads this file and fails if that changes.
//!
//! The media side runs as one task per call on the server's runtime; the signalling
//! side (answers, the dialog, BYE) is synchronous like the rest of the endpoint. The
//! store side (opening a message file, filing it) is behind [`Deposits`], which the
//! server implements with `accounts` and tests with a directory.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use media::activity::SilenceDetector;
use media::g711::Law;
use media::jitter::{JitterBuffer, Playout};
use policy::fields::ExtensionNumber;
use policy::voicemail::menu::{Entry, Menu, MenuConfig, Operator};
use sip::header::addr::NameAddr;
use sip::header::cseq::CSeq;
use sip::header::split_list;
use sip::msg::{Message, Name};
use sip::request::{DialogState, RequestBuilder, TopVia};
use sip::response::ResponseBuilder;
use sip::sdp::{self, SessionDescription};
use sip::transaction::{Action, ResponseClass, TxId, TxKey};
use tokio::sync::mpsc;

use crate::dialog::{DialogId, Kind, NewDialog, Party, Phase, Who};
use crate::egress::{Delivery, Owner, Purpose};
use crate::flow::{Flow, our_uri};
use crate::metrics::Metrics;
use crate::registrar::Registrar;
use crate::rtp::{Lease, PortPool, RtpPeer, Share};
use crate::signalling::Signalling;

mod call;
pub mod retrieval;
pub use call::{BoxFuture, DepositLimits};
pub use retrieval::{Boxes, Retrieval, RetrievalNumbers};

use call::{FRAME, Heard, Session, Signal, tone};
use retrieval::{Indicator, Left, MenuCall, Prompts};

/// At most this many voicemail calls at once (the port pool bounds them too).
pub const MAX_CALLS: usize = 1024;
/// What a voicemail dialog allows.
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY";

/// The default greeting (see `prompts/README.md` for how it was made).
const DEFAULT_GREETING: &[u8] = include_bytes!("../prompts/greeting.wav");

/// A box's counts for the message-waiting NOTIFY.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    pub new: u32,
    pub saved: u32,
}

/// A message file opened for a recording: where to write the WAV.
#[derive(Debug)]
pub struct Opened {
    pub path: PathBuf,
    /// The store's handle, given back to [`Deposits::commit`] or [`Deposits::discard`].
    pub handle: Box<dyn std::any::Any + Send>,
}

/// The store side of a deposit. The server implements it with `accounts`' voicemail
/// (`begin_message`, `commit_message`, `discard`, `summary`).
pub trait Deposits: Send + Sync + std::fmt::Debug {
    /// A new, empty message file (0600) for `mailbox`; None when the box takes no
    /// message (no voicemail for that extension, or the box is full).
    fn begin(&self, mailbox: &str) -> BoxFuture<'_, Option<Opened>>;
    /// Files the written message; the box's counts after it, None on failure.
    fn commit(
        &self,
        opened: Opened,
        caller: String,
        duration_ms: u64,
    ) -> BoxFuture<'_, Option<Waiting>>;
    /// Drops a message that is not kept (its file is removed).
    fn discard(&self, opened: Opened);
    /// The box's own greeting (a WAV file's bytes), None for the default.
    fn greeting(&self, mailbox: &str) -> BoxFuture<'_, Option<Vec<u8>>>;
    /// The box's counts (answering a SUBSCRIBE for message-summary).
    fn waiting(&self, mailbox: &str) -> BoxFuture<'_, Option<Waiting>>;
    /// Every extension's seconds of ringing before its voicemail answers (0: none).
    fn ring_times(&self) -> BoxFuture<'_, Option<HashMap<String, u32>>>;
}

/// What the server attaches to switch voicemail on.
#[derive(Debug)]
pub struct Backend {
    pub deposits: Arc<dyn Deposits>,
    pub pool: Arc<PortPool>,
    pub registrar: Arc<Registrar>,
    pub realm: String,
    /// `sip.domain`: the host of the operator's Refer-To (else the address the caller
    /// reached sipward at).
    pub domain: Option<String>,
    pub limits: DepositLimits,
    pub runtime: tokio::runtime::Handle,
    /// Retrieval (`*97`, `*98`); None: only deposits.
    pub retrieval: Option<Retrieval>,
}

#[derive(Debug)]
struct Call {
    key: TxKey,
    request: Vec<u8>,
    flow: Flow,
    caller: Who,
    tag: String,
    call_id: String,
    remote_uri: String,
    remote_tag: String,
    local_uri: String,
    remote_target: String,
    invite_cseq: u32,
    our_cseq: u32,
    dialog: Option<DialogId>,
    answered: bool,
    /// What the caller gets if the box takes no message.
    fallback: Option<Vec<u8>>,
    signals: mpsc::Sender<Signal>,
    bye: Option<TxId>,
    /// Our REFER to the operator, until its transaction ends (then our BYE).
    refer: Option<TxId>,
    /// The call's task has finished with it.
    done: bool,
}

impl Call {
    fn dialog_state(&self) -> DialogState<'_> {
        DialogState {
            call_id: &self.call_id,
            local_uri: &self.local_uri,
            local_tag: &self.tag,
            remote_uri: &self.remote_uri,
            remote_tag: Some(&self.remote_tag),
            remote_target: &self.remote_target,
            route_set: Vec::new(),
        }
    }
}

/// A phone's subscription to its box's message-summary (RFC 3842 over RFC 6665): the
/// dialog its SUBSCRIBE made, where NOTIFYs go, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub number: String,
    pub call_id: String,
    /// Our tag (the To tag of our 200).
    pub local_tag: String,
    pub remote_uri: String,
    pub remote_tag: String,
    /// The subscriber's Contact.
    pub remote_target: String,
    pub flow: Flow,
    /// Wall-clock second it ends.
    pub expires_at: i64,
    pub cseq: u32,
}

/// At most this many subscriptions in all, and per extension.
pub const MAX_SUBSCRIPTIONS: usize = 65_536;
pub const MAX_SUBSCRIPTIONS_PER_BOX: usize = 8;

#[derive(Debug, Default)]
struct Calls {
    by_id: HashMap<u64, Call>,
    by_key: HashMap<TxKey, u64>,
    by_tx: HashMap<TxId, u64>,
}

/// The voicemail's calls; see the module documentation.
#[derive(Debug)]
pub struct Voicemail {
    sig: Arc<Signalling>,
    backend: OnceLock<Backend>,
    calls: Mutex<Calls>,
    subscriptions: Mutex<HashMap<String, Vec<Subscription>>>,
    /// Each extension's ring time before its voicemail answers (absent or 0: none).
    ring_times: std::sync::RwLock<HashMap<String, u32>>,
    next: AtomicU64,
    greeting: Vec<i16>,
    prompts: Prompts,
    /// `[voicemail] operator`, replaced at a config reload.
    operator: std::sync::RwLock<Option<Operator>>,
    /// The accounts in force: the operator is referred to only while it is one of
    /// their extensions (the config is checked at load, the directory on every call).
    directory: Arc<crate::directory::DirectoryCache>,
}

/// Why the recording ended (for the log and the tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    HungUp,
    Pound,
    MaxLength,
    Silence,
    NoMedia,
    /// The caller pressed `0` during the greeting, and an operator is configured.
    Operator,
}

fn cseq_of(m: &Message<'_>) -> Option<u32> {
    m.header(Name::CSeq).and_then(CSeq::parse).map(|c| c.seq)
}

impl Voicemail {
    pub fn new(sig: Arc<Signalling>, directory: Arc<crate::directory::DirectoryCache>) -> Self {
        let greeting = media::wav::decode(DEFAULT_GREETING, 8000 * 60).unwrap_or_default();
        Voicemail {
            sig,
            backend: OnceLock::new(),
            calls: Mutex::new(Calls::default()),
            subscriptions: Mutex::new(HashMap::new()),
            ring_times: std::sync::RwLock::new(HashMap::new()),
            next: AtomicU64::new(1),
            greeting,
            prompts: Prompts::load(),
            operator: std::sync::RwLock::new(None),
            directory,
        }
    }

    /// Puts `[voicemail] operator` in force for the calls that start from now.
    pub fn set_operator(&self, operator: Option<Operator>) {
        *self.operator.write().unwrap_or_else(|p| p.into_inner()) = operator;
    }

    /// The operator a call from `caller` may be referred to (see [`zero_out`]).
    /// The operator must still be an extension of the directory in force: one removed
    /// (its number perhaps given to a gateway's virtual extension, a trunk) while the
    /// server runs is referred to by no call until the config names another.
    fn operator_for(&self, caller: &Who) -> Option<Operator> {
        let configured = self.operator.read().unwrap_or_else(|p| p.into_inner());
        let operator = configured.as_ref().filter(|op| {
            self.directory
                .get()
                .by_number(op.extension().as_str())
                .is_some_and(|a| a.kind == "ext")
        });
        zero_out(caller, operator)
    }

    /// The voicemail's Contact as a peer on `flow` reaches it (`<sip:voicemail@...>`).
    pub fn contact(&self, flow: &Flow) -> String {
        format!(
            "<{}>",
            our_uri(self.sig.bound_for(flow), flow, Some("voicemail"))
        )
    }

    /// How long `number`'s phones ring before its voicemail answers; None when voicemail
    /// is off or the extension has none.
    pub fn ring_time(&self, number: &str) -> Option<Duration> {
        self.backend.get()?;
        let secs = *self
            .ring_times
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(number)?;
        (secs > 0).then(|| Duration::from_secs(u64::from(secs)))
    }

    /// Reads every extension's ring time again (at start and when accounts change).
    pub async fn reload_ring_times(&self) {
        let Some(b) = self.backend.get() else { return };
        if let Some(times) = b.deposits.ring_times().await {
            *self.ring_times.write().unwrap_or_else(|p| p.into_inner()) = times;
        }
    }

    /// Switches voicemail on (once; later calls are ignored).
    pub fn attach(&self, backend: Backend) {
        let _ = self.backend.set(backend);
    }

    pub fn enabled(&self) -> bool {
        self.backend.get().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls in progress (for `/metrics`' table sizes).
    pub fn call_count(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether the INVITE `key` is one of ours (a CANCEL for it is ours to answer).
    pub fn owns(&self, key: &TxKey) -> bool {
        self.lock().by_key.contains_key(key)
    }

    fn respond(&self, m: &Message<'_>, key: &TxKey, flow: &Flow, code: u16, reason: &str) {
        if let Ok(b) = ResponseBuilder::new(m, code, reason, flow.remote, "") {
            let _ = self.sig.egress.respond(key, b.finish());
        }
    }

    /// Takes a call for `callee`'s box. A call the box cannot take (no offer it can
    /// answer, or no box) gets `fallback` (the answer the caller would have had without
    /// voicemail: the callee's own failure, else 480); no port: 503. Otherwise 100 now,
    /// and the rest from the call's task.
    #[allow(clippy::too_many_arguments)]
    pub fn deposit(
        self: &Arc<Self>,
        m: &Message<'_>,
        bytes: &[u8],
        key: &TxKey,
        flow: &Flow,
        caller: Who,
        callee: &str,
        fallback: Option<Vec<u8>>,
    ) {
        let Some((job, runtime)) = self.admit(m, bytes, key, flow, caller, callee, fallback) else {
            return;
        };
        Metrics::inc(&self.sig.metrics.voicemail_calls);
        let this = self.clone();
        runtime.spawn(async move { this.run(job).await });
    }

    /// Takes a retrieval call (`*97` or `*98`, as [`Voicemail::retrieval_entry`] said)
    /// into the menu: 100 now, the 200 and the menu from the call's task; the same
    /// refusals as a deposit (488, 503, 480).
    pub fn retrieve(
        self: &Arc<Self>,
        m: &Message<'_>,
        bytes: &[u8],
        key: &TxKey,
        flow: &Flow,
        caller: Who,
        entry: policy::voicemail::menu::Entry,
    ) {
        let Some((mut job, runtime)) = self.admit(m, bytes, key, flow, caller, "", None) else {
            return;
        };
        // A PIN-less login holds only for media from the exact address the
        // authenticated INVITE's SDP named on the caller's own IP: anything else (a
        // phone behind a NAT, a port rewritten) is asked for the PIN like any caller.
        let entry = match entry {
            policy::voicemail::menu::Entry::OwnBox {
                mailbox,
                authenticated_owner: true,
            } => {
                let exact = job.peer.sdp_on_caller_ip();
                if exact {
                    job.peer = job.peer.exact_only();
                }
                policy::voicemail::menu::Entry::OwnBox {
                    mailbox,
                    authenticated_owner: exact,
                }
            }
            other => other,
        };
        Metrics::inc(&self.sig.metrics.voicemail_retrievals);
        let this = self.clone();
        let source = flow.remote.ip();
        runtime.spawn(async move { this.run_menu(job, entry, source).await });
    }

    /// What a deposit and a retrieval share: the offer answered, a port pair leased,
    /// the call entered, 100 sent. None when the call was refused (answered already).
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        m: &Message<'_>,
        bytes: &[u8],
        key: &TxKey,
        flow: &Flow,
        caller: Who,
        callee: &str,
        fallback: Option<Vec<u8>>,
    ) -> Option<(Job, tokio::runtime::Handle)> {
        let decline = |fallback: Option<Vec<u8>>| {
            match fallback {
                Some(bytes) => {
                    let _ = self.sig.egress.respond(key, bytes);
                }
                None => self.respond(m, key, flow, 480, "Temporarily Unavailable"),
            }
            None
        };
        let refuse = |code: u16, reason: &str| {
            self.respond(m, key, flow, code, reason);
            None
        };
        let Some(b) = self.backend.get() else {
            return decline(fallback);
        };
        let offer = (!m.body.is_empty())
            .then(|| SessionDescription::parse(m.body).ok())
            .flatten();
        let local_ip = crate::flow::local_for(self.sig.bound_for(flow), flow.remote).ip();
        // A call with no offer, or one sipward cannot answer, is not the box's.
        let probe = sdp::Local {
            address: SocketAddr::new(local_ip, 0),
            session_id: 0,
            session_version: 0,
        };
        let Some(offer) = offer.filter(|o| sdp::answer(o, probe).is_ok()) else {
            Metrics::inc(&self.sig.metrics.voicemail_refused);
            return decline(fallback);
        };
        // A trunk's callers all arrive from the trunk's address: they share the
        // trunk's part of the pool, not one address's (see `crate::rtp`).
        let share = match &caller {
            Who::Trunk(label) => Share::Trunk(label.clone()),
            _ => Share::Source(flow.remote.ip()),
        };
        let lease = match b.pool.lease(share) {
            Ok(l) => l,
            Err(_) => {
                Metrics::inc(&self.sig.metrics.voicemail_refused);
                return refuse(503, "Service Unavailable");
            }
        };
        let local = sdp::Local {
            address: SocketAddr::new(local_ip, lease.port),
            session_id: self.next.load(Ordering::Relaxed),
            session_version: 1,
        };
        let Ok((answer, negotiated)) = sdp::answer(&offer, local) else {
            Metrics::inc(&self.sig.metrics.voicemail_refused);
            return refuse(488, "Not Acceptable Here");
        };
        let (Some(from), Some(to), Some(call_id), Some(invite_cseq)) = (
            m.header(Name::From).and_then(NameAddr::parse),
            m.header(Name::To).and_then(NameAddr::parse),
            m.header(Name::CallId),
            cseq_of(m),
        ) else {
            return refuse(400, "Bad Request");
        };
        let operator = self.operator_for(&caller);
        let remote_target = m
            .header(Name::Contact)
            .and_then(|c| split_list(c).next())
            .and_then(NameAddr::parse)
            .map_or_else(|| from.uri.to_owned(), |a| a.uri.to_owned());
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(32);
        {
            let mut st = self.lock();
            if st.by_key.contains_key(key) {
                return None;
            }
            if st.by_id.len() >= MAX_CALLS {
                drop(st);
                return refuse(503, "Service Unavailable");
            }
            st.by_key.insert(key.clone(), id);
            st.by_id.insert(
                id,
                Call {
                    key: key.clone(),
                    request: bytes.to_vec(),
                    flow: *flow,
                    caller,
                    tag: self.sig.token("vm-tag"),
                    call_id: call_id.to_owned(),
                    remote_uri: from.uri.to_owned(),
                    remote_tag: from.tag().unwrap_or("").to_owned(),
                    local_uri: to.uri.to_owned(),
                    remote_target,
                    invite_cseq,
                    our_cseq: 0,
                    dialog: None,
                    answered: false,
                    fallback,
                    signals: tx,
                    bye: None,
                    refer: None,
                    done: false,
                },
            );
        }
        self.respond(m, key, flow, 100, "Trying");
        let caller_text = from.uri.chars().take(128).collect::<String>();
        let callee = callee.to_owned();
        let job = Job {
            id,
            callee,
            caller: caller_text,
            lease,
            peer: RtpPeer::new(negotiated.remote, flow.remote.ip()),
            negotiated,
            answer: answer.print(),
            signals: rx,
            operator,
        };
        Some((job, b.runtime.clone()))
    }

    /// What a call dialling `dialled` from `caller` (digest-authenticated as that
    /// extension) opens, if it dials a retrieval number. `on_registered_flow`: the
    /// INVITE came on one of the caller's own registered flows; only then does `*97`
    /// log in without a PIN (never on caller ID).
    pub fn retrieval_entry(
        &self,
        dialled: &str,
        caller: &str,
        on_registered_flow: bool,
    ) -> Option<Entry> {
        let r = self.backend.get()?.retrieval.as_ref()?;
        if dialled == r.numbers.own_box {
            Some(Entry::OwnBox {
                mailbox: ExtensionNumber::parse(caller).ok()?,
                authenticated_owner: on_registered_flow,
            })
        } else if dialled == r.numbers.any_box {
            Some(Entry::AnyBox)
        } else {
            None
        }
    }

    /// The menu's call's task: answer, drive the menu, hang up.
    async fn run_menu(self: Arc<Self>, mut job: Job, entry: Entry, source: IpAddr) {
        let Some(b) = self.backend.get() else { return };
        let Some(retrieval) = b.retrieval.as_ref() else {
            self.decline(job.id);
            return;
        };
        if !self.answer(job.id, &job.answer) {
            return;
        }
        // The latch's grace window starts at the answer (see `crate::rtp`).
        job.peer.answered(self.sig.clock.instant());
        let Job {
            id,
            lease,
            peer,
            negotiated,
            signals,
            operator,
            ..
        } = job;
        let session = Session::new(lease, peer, negotiated, self.sig.clone(), b.limits.no_media);
        let left = match session {
            Some(s) => {
                let menu = Menu::new(MenuConfig { operator }, entry);
                let call = MenuCall {
                    prompts: &self.prompts,
                    indicator: self.as_ref(),
                    retrieval,
                    source,
                    silence: b.limits.silence,
                };
                s.retrieve(call, menu, signals).await
            }
            None => Left::NoMedia,
        };
        tracing::info!(ended = ?left, "voicemail retrieval ended");
        match left {
            Left::HungUp => {}
            Left::Operator(op) => self.refer(id, &op),
            _ => self.hang_up(id),
        }
        self.forget_when_done(id);
    }

    /// The call's task: open the message, answer, play, record, file, notify, hang up.
    async fn run(self: Arc<Self>, mut job: Job) {
        let Some(b) = self.backend.get() else { return };
        let Some(opened) = b.deposits.begin(&job.callee).await else {
            Metrics::inc(&self.sig.metrics.voicemail_refused);
            self.decline(job.id);
            return;
        };
        if !self.answer(job.id, &job.answer) {
            b.deposits.discard(opened);
            return;
        }
        // The latch's grace window starts at the answer (see `crate::rtp`).
        job.peer.answered(self.sig.clock.instant());
        let greeting = match b.deposits.greeting(&job.callee).await {
            Some(wav) => media::wav::decode(&wav, 8000 * 120).unwrap_or_default(),
            None => self.greeting.clone(),
        };
        let mut prompt = greeting;
        prompt.extend(tone());
        let Job {
            id,
            callee,
            caller,
            lease,
            peer,
            negotiated,
            signals,
            operator,
            ..
        } = job;
        let session = Session::new(lease, peer, negotiated, self.sig.clone(), b.limits.no_media);
        let (recorded, ended) = match session {
            Some(s) => {
                s.deposit(prompt, signals, b.limits, operator.is_some())
                    .await
            }
            None => (Vec::new(), Ended::NoMedia),
        };
        tracing::info!(mailbox = %callee, samples = recorded.len(), ended = ?ended, "voicemail deposit ended");
        match (ended, operator) {
            (Ended::HungUp, _) => {}
            (Ended::Operator, Some(op)) => self.refer(id, &op),
            _ => self.hang_up(id),
        }
        let min = b.limits.min_message.as_millis() as usize * 8;
        if recorded.len() < min {
            b.deposits.discard(opened);
            self.forget_when_done(id);
            return;
        }
        let duration_ms = recorded.len() as u64 / 8;
        let path = opened.path.clone();
        let bytes = media::wav::encode(&recorded);
        let written = tokio::task::spawn_blocking(move || write_private(&path, &bytes)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(mailbox = %callee, "cannot write a voicemail message");
            b.deposits.discard(opened);
            self.forget_when_done(id);
            return;
        }
        match b.deposits.commit(opened, caller, duration_ms).await {
            Some(waiting) => {
                Metrics::inc(&self.sig.metrics.voicemail_messages);
                self.notify_waiting(&callee, waiting);
            }
            None => tracing::warn!(mailbox = %callee, "cannot file a voicemail message"),
        }
        self.forget_when_done(id);
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Subscription>>> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscriptions held now (for `/metrics`' table sizes).
    pub fn subscription_count(&self) -> usize {
        self.subs().values().map(Vec::len).sum()
    }

    /// A SUBSCRIBE the endpoint accepted (authenticated as the box's own extension,
    /// from one of its registered flows) and answered 200: remembered (replacing one
    /// of the same dialog; `expires_at` now or earlier removes it), and answered at
    /// once with the box's state.
    pub fn subscribed(self: &Arc<Self>, sub: Subscription) {
        let Some(b) = self.backend.get() else { return };
        let now = self.sig.clock.now();
        {
            let mut all = self.subs();
            let total: usize = all.values().map(Vec::len).sum();
            let list = all.entry(sub.number.clone()).or_default();
            list.retain(|s| s.expires_at > now && s.call_id != sub.call_id);
            if sub.expires_at > now
                && list.len() < MAX_SUBSCRIPTIONS_PER_BOX
                && total < MAX_SUBSCRIPTIONS
            {
                list.push(sub.clone());
            }
            if list.is_empty() {
                all.remove(&sub.number);
            }
        }
        let this = self.clone();
        b.runtime.spawn(async move {
            let Some(b) = this.backend.get() else { return };
            let waiting = b.deposits.waiting(&sub.number).await.unwrap_or_default();
            let mut sub = sub;
            sub.cseq = 1;
            this.notify_subscription(&sub, waiting, &b.realm);
        });
    }

    /// A NOTIFY in a subscription's dialog.
    fn notify_subscription(&self, sub: &Subscription, waiting: Waiting, realm: &str) -> bool {
        let now = self.sig.clock.now();
        let left = sub.expires_at - now;
        let state = if left > 0 {
            format!("active;expires={left}")
        } else {
            "terminated;reason=timeout".to_owned()
        };
        let local_uri = format!("sip:{}@{realm}", sub.number);
        let body = message_summary(waiting, &local_uri);
        let dialog = DialogState {
            call_id: &sub.call_id,
            local_uri: &local_uri,
            local_tag: &sub.local_tag,
            remote_uri: &sub.remote_uri,
            remote_tag: Some(&sub.remote_tag),
            remote_target: &sub.remote_target,
            route_set: Vec::new(),
        };
        let branch = self.sig.branch();
        let Ok(bytes) = RequestBuilder::in_dialog(&dialog, "NOTIFY", sub.cseq)
            .via(TopVia::new(
                sub.flow.transport.via_token(),
                self.sig.local(&sub.flow),
                &branch,
            ))
            .contact(&our_uri(
                self.sig.bound_for(&sub.flow),
                &sub.flow,
                Some("voicemail"),
            ))
            .header("Event", "message-summary")
            .header("Subscription-State", &state)
            .body("application/simple-message-summary", body.as_bytes())
            .build()
        else {
            return false;
        };
        self.send_notify(bytes, sub.flow, &sub.number)
    }

    fn send_notify(&self, bytes: Vec<u8>, flow: Flow, number: &str) -> bool {
        let sent = self
            .sig
            .egress
            .start(bytes, flow, Purpose::Registration { number }, Owner::Notify)
            .is_ok();
        if sent {
            Metrics::inc(&self.sig.metrics.notify_sent);
        }
        sent
    }

    /// Tells `number`'s phones what its box holds: in each live subscription's dialog,
    /// or, when none subscribed, unsolicited to every phone registered for it. Returns
    /// how many NOTIFYs went out.
    pub fn notify_waiting(&self, number: &str, waiting: Waiting) -> usize {
        let Some(b) = self.backend.get() else {
            return 0;
        };
        let now = self.sig.clock.now();
        let subs: Vec<Subscription> = {
            let mut all = self.subs();
            match all.get_mut(number) {
                Some(list) => {
                    list.retain(|s| s.expires_at > now);
                    for s in list.iter_mut() {
                        s.cseq += 1;
                    }
                    list.clone()
                }
                None => Vec::new(),
            }
        };
        if !subs.is_empty() {
            return subs
                .iter()
                .filter(|s| self.notify_subscription(s, waiting, &b.realm))
                .count();
        }
        let registrations = b.registrar.flows(number, now);
        let body = message_summary(waiting, &format!("sip:{number}@{}", b.realm));
        registrations
            .iter()
            .filter_map(|(contact, flow)| {
                crate::notify::build_message_summary(
                    &self.sig, contact, number, &b.realm, flow, &body,
                )
                .map(|bytes| (bytes, *flow))
            })
            .filter(|(bytes, flow)| self.send_notify(bytes.clone(), *flow, number))
            .count()
    }

    /// The 200 with our SDP, and the dialog it makes. False when the call is gone.
    fn answer(&self, id: u64, sdp_answer: &str) -> bool {
        let mut st = self.lock();
        let Some(call) = st.by_id.get_mut(&id) else {
            return false;
        };
        let Ok(m) = sip::msg::parse(&call.request) else {
            return false;
        };
        let Ok(b) = ResponseBuilder::new(&m, 200, "OK", call.flow.remote, &call.tag) else {
            return false;
        };
        let contact = format!(
            "<{}>",
            our_uri(
                self.sig.bound_for(&call.flow),
                &call.flow,
                Some("voicemail")
            )
        );
        let bytes = b
            .header("Contact", &contact)
            .header("Allow", ALLOW)
            .finish_with_body("application/sdp", sdp_answer.as_bytes());
        let now = self.sig.clock.instant();
        call.dialog = self
            .sig
            .dialogs
            .create(
                NewDialog {
                    call_id: call.call_id.clone(),
                    caller: Party {
                        who: call.caller.clone(),
                        tag: call.remote_tag.clone(),
                        flow: Some(call.flow),
                    },
                    callee: Party {
                        who: Who::Sipward,
                        tag: call.tag.clone(),
                        flow: None,
                    },
                    phase: Phase::Confirmed,
                    kind: Kind::Voicemail { call: id },
                    class: None,
                    class_of_service: None,
                    e164: None,
                },
                now,
            )
            .ok();
        if call.dialog.is_none() || self.sig.egress.respond_until_ack(&call.key, bytes).is_err() {
            return false;
        }
        call.answered = true;
        true
    }

    /// The box takes no message: the caller gets the answer it would have had without
    /// voicemail (the callee's own failure, else 480); the call is forgotten.
    fn decline(&self, id: u64) {
        let fallback = {
            let mut st = self.lock();
            st.by_id.get_mut(&id).and_then(|c| c.fallback.take())
        };
        match fallback {
            Some(bytes) => {
                let mut st = self.lock();
                if let Some(call) = st.by_id.remove(&id) {
                    st.by_key.remove(&call.key);
                    drop(st);
                    let _ = self.sig.egress.respond(&call.key, bytes);
                }
            }
            None => self.finish_unanswered(id, 480, "Temporarily Unavailable"),
        }
    }

    /// A final failure to the INVITE before it was answered; the call is forgotten.
    fn finish_unanswered(&self, id: u64, code: u16, reason: &str) {
        let mut st = self.lock();
        let Some(call) = st.by_id.remove(&id) else {
            return;
        };
        st.by_key.remove(&call.key);
        drop(st);
        if let Ok(m) = sip::msg::parse(&call.request)
            && let Ok(b) = ResponseBuilder::new(&m, code, reason, call.flow.remote, &call.tag)
        {
            let _ = self.sig.egress.respond(&call.key, b.finish());
        }
    }

    /// Our BYE to the caller (the recording ended on our side).
    fn hang_up(&self, id: u64) {
        let mut st = self.lock();
        let Some(call) = st.by_id.get_mut(&id) else {
            return;
        };
        let Some(dialog) = call.dialog else { return };
        if !self
            .sig
            .dialogs
            .get(dialog)
            .is_some_and(|d| d.phase == Phase::Confirmed)
        {
            return;
        }
        self.sig.dialogs.terminating(dialog);
        match self.start_in_dialog(call, "BYE", None, &[]) {
            Some(tx) => {
                call.bye = Some(tx);
                st.by_tx.insert(tx, id);
            }
            None => self.sig.dialogs.end(dialog, self.sig.clock.instant()),
        }
    }

    /// Starts our in-dialog `method` to the caller (the next CSeq, a Via of ours on the
    /// call's flow, the `contact` and `headers` given), through the egress rule as an
    /// in-dialog request of the voicemail: the transaction, or None when it could not
    /// be built or sent.
    fn start_in_dialog(
        &self,
        call: &mut Call,
        method: &str,
        contact: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Option<TxId> {
        call.our_cseq += 1;
        let flow = call.flow;
        let branch = self.sig.branch();
        let local = self.sig.local(&flow);
        let state = call.dialog_state();
        let mut builder = RequestBuilder::in_dialog(&state, method, call.our_cseq)
            .via(TopVia::new(flow.transport.via_token(), local, &branch));
        if let Some(contact) = contact {
            builder = builder.contact(contact);
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let bytes = builder.build().ok()?;
        self.sig
            .egress
            .start(
                bytes,
                flow,
                Purpose::InDialog { from: None },
                Owner::Voicemail,
            )
            .ok()
    }

    /// Our REFER (RFC 3515) sending the caller to the configured operator; our BYE
    /// follows once the REFER's transaction has ended, whatever its answer. The
    /// `Refer-To` is built here from the configuration alone (the operator extension at
    /// `sip.domain`, else at the address the caller reached sipward at), never from
    /// anything the caller sent; the caller's phone then places an ordinary call of its
    /// own, which sipward routes and holds to the caller's class like any other.
    fn refer(&self, id: u64, operator: &Operator) {
        let domain = self.backend.get().and_then(|b| b.domain.clone());
        let mut st = self.lock();
        let Some(call) = st.by_id.get_mut(&id) else {
            return;
        };
        let Some(dialog) = call.dialog else { return };
        if !self
            .sig
            .dialogs
            .get(dialog)
            .is_some_and(|d| d.phase == Phase::Confirmed)
        {
            return;
        }
        let flow = call.flow;
        let target = operator_uri(
            operator,
            domain.as_deref(),
            self.sig.bound_for(&flow),
            &flow,
        );
        let contact = our_uri(self.sig.bound_for(&flow), &flow, Some("voicemail"));
        let refer_to = format!("<{target}>");
        let started =
            self.start_in_dialog(call, "REFER", Some(&contact), &[("Refer-To", &refer_to)]);
        match started {
            Some(tx) => {
                call.refer = Some(tx);
                st.by_tx.insert(tx, id);
                Metrics::inc(&self.sig.metrics.voicemail_operator_refers);
                tracing::info!(operator = %operator.extension(), "voicemail call referred to the operator");
            }
            None => {
                drop(st);
                self.hang_up(id);
            }
        }
    }

    /// Forgets a call whose media is over, unless our BYE still waits for its answer
    /// (then [`Voicemail::on_delivery`] forgets it).
    fn forget_when_done(&self, id: u64) {
        let mut st = self.lock();
        let Some(call) = st.by_id.get_mut(&id) else {
            return;
        };
        call.done = true;
        if call.bye.is_some() || call.refer.is_some() {
            return;
        }
        if let Some(d) = call.dialog {
            self.sig.dialogs.end(d, self.sig.clock.instant());
        }
        let key = call.key.clone();
        st.by_id.remove(&id);
        st.by_key.remove(&key);
    }

    /// An output of our BYE's transaction: the dialog is over either way.
    pub fn on_delivery(&self, d: &Delivery) {
        let done = matches!(
            d.action,
            Action::Deliver(ResponseClass::Success | ResponseClass::Failure)
                | Action::TimedOut
                | Action::TransportFailed
        );
        if !done {
            return;
        }
        let mut st = self.lock();
        let Some(id) = st.by_tx.remove(&d.tx) else {
            return;
        };
        if let Some(call) = st.by_id.get_mut(&id)
            && call.refer == Some(d.tx)
        {
            // The REFER is answered (or never will be): now the call ends as any other.
            call.refer = None;
            drop(st);
            self.hang_up(id);
            if self.lock().by_id.get(&id).is_some_and(|c| c.done) {
                self.forget_when_done(id);
            }
            return;
        }
        if let Some(call) = st.by_id.get_mut(&id) {
            call.bye = None;
            if let Some(dialog) = call.dialog {
                self.sig.dialogs.end(dialog, self.sig.clock.instant());
            }
            // Forgotten now if its task is done; else the task forgets it when it is.
            if call.done {
                let key = call.key.clone();
                st.by_id.remove(&id);
                st.by_key.remove(&key);
            }
        }
    }

    /// A CANCEL for a call not answered yet: 487, and the task stops.
    pub fn cancel(&self, key: &TxKey) -> bool {
        let id = {
            let st = self.lock();
            match st.by_key.get(key) {
                Some(id) => *id,
                None => return false,
            }
        };
        let answered = self.lock().by_id.get(&id).is_some_and(|c| c.answered);
        if answered {
            return true;
        }
        self.signal(id, Signal::HungUp);
        self.finish_unanswered(id, 487, "Request Terminated");
        true
    }

    fn signal(&self, id: u64, s: Signal) {
        let tx = self.lock().by_id.get(&id).map(|c| c.signals.clone());
        if let Some(tx) = tx {
            let _ = tx.try_send(s);
        }
    }

    /// A request in a voicemail dialog (`key`: None for an ACK).
    pub fn in_dialog(&self, m: &Message<'_>, key: Option<&TxKey>, flow: &Flow, id: u64) {
        let Some(method) = m.method() else { return };
        let answer = |code: u16, reason: &str| {
            if let Some(key) = key {
                self.respond(m, key, flow, code, reason);
            }
        };
        let (invite_key, invite_cseq) = {
            let st = self.lock();
            match st.by_id.get(&id) {
                Some(c) => (c.key.clone(), c.invite_cseq),
                None => return answer(481, "Call/Transaction Does Not Exist"),
            }
        };
        match method {
            "ACK" => {
                if cseq_of(m) == Some(invite_cseq) {
                    self.sig.egress.acknowledged(&invite_key);
                }
            }
            "BYE" => {
                answer(200, "OK");
                self.signal(id, Signal::HungUp);
                let mut st = self.lock();
                if let Some(c) = st.by_id.get_mut(&id)
                    && let Some(d) = c.dialog
                {
                    self.sig.dialogs.end(d, self.sig.clock.instant());
                    c.dialog = None;
                }
            }
            "INFO" => {
                let is_relay = m
                    .header(Name::ContentType)
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/dtmf-relay"));
                match is_relay
                    .then(|| media::dtmf::parse_dtmf_relay(m.body))
                    .flatten()
                {
                    Some(d) => {
                        self.signal(id, Signal::Digit(d));
                        answer(200, "OK");
                    }
                    None => answer(415, "Unsupported Media Type"),
                }
            }
            "OPTIONS" => answer(200, "OK"),
            // The progress of a REFER to the operator (RFC 3515's implicit
            // subscription): taken note of, nothing more.
            "NOTIFY" => answer(200, "OK"),
            // A re-INVITE (hold, codec change) is refused: the call keeps its media.
            "INVITE" | "UPDATE" => answer(488, "Not Acceptable Here"),
            // No transfer, ever: the voicemail places no call.
            "REFER" => {
                Metrics::inc(&self.sig.metrics.transfers_refused);
                answer(403, "Forbidden");
            }
            _ => answer(501, "Not Implemented"),
        }
    }
}

impl Indicator for Voicemail {
    fn box_changed<'a>(&'a self, mailbox: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(b) = self.backend.get() else { return };
            if let Some(w) = b.deposits.waiting(mailbox).await {
                self.notify_waiting(mailbox, w);
            }
        })
    }
}

/// Where `0` sends a call from `caller`: the configured operator, only for an internal,
/// authenticated extension's call. A trunk's caller is never offered the zero-out: a
/// REFER to a carrier is an instruction to the carrier to place a call, outside the
/// egress rule and the class of service.
fn zero_out(caller: &Who, configured: Option<&Operator>) -> Option<Operator> {
    match caller {
        Who::Extension(_) => configured.cloned(),
        Who::Trunk(_) | Who::Sipward => None,
    }
}

/// The operator's `Refer-To` URI: `sip:OPERATOR@DOMAIN`, or without a configured domain
/// the operator at the address `flow`'s caller reached sipward at.
fn operator_uri(
    operator: &Operator,
    domain: Option<&str>,
    bound: SocketAddr,
    flow: &Flow,
) -> String {
    let user = operator.extension().as_str();
    match domain {
        Some(d) => format!("sip:{user}@{d}"),
        None => our_uri(bound, flow, Some(user)),
    }
}

/// Writes a message's WAV: the file exists already (0600, made by the store side).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The RFC 3842 body: `Messages-Waiting`, the account, and the voice counts.
pub fn message_summary(w: Waiting, account: &str) -> String {
    format!(
        "Messages-Waiting: {}\r\nMessage-Account: {account}\r\nVoice-Message: {}/{} (0/0)\r\n",
        if w.new > 0 { "yes" } else { "no" },
        w.new,
        w.saved
    )
}

/// What the call's task is given.
#[derive(Debug)]
struct Job {
    id: u64,
    callee: String,
    caller: String,
    lease: Lease,
    peer: RtpPeer,
    negotiated: sdp::Negotiated,
    answer: String,
    signals: mpsc::Receiver<Signal>,
    /// Where `0` refers this caller (an internal caller with an operator configured).
    operator: Option<Operator>,
}

impl Session {
    /// Plays `prompt`, then records until the caller hangs up, presses `#`, goes
    /// silent, sends nothing, or the message reaches its longest. The call lasts at
    /// most the prompt and the longest message: digits keep it open like audio (see
    /// [`Session::hear_rtp`]) but record nothing, so without that bound a caller typing
    /// digits would hold it for ever.
    async fn deposit(
        mut self,
        prompt: Vec<i16>,
        mut signals: mpsc::Receiver<Signal>,
        limits: DepositLimits,
        zero_out: bool,
    ) -> (Vec<i16>, Ended) {
        let mut silence = SilenceDetector::new(300, limits.silence);
        let mut jitter: JitterBuffer<Vec<u8>> = JitterBuffer::new(3, 64);
        let max = limits.max_message.as_millis() as usize * 8;
        let longest = Duration::from_millis(prompt.len() as u64 / 8) + limits.max_message;
        let mut recorded: Vec<i16> = Vec::new();
        let mut played = 0usize;
        let mut recording = false;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 1500];
        let metrics = self.sig.metrics.clone();
        let fill = |recorded: &mut Vec<i16>, law: Law, bytes: &[u8]| {
            if recorded.len() < max {
                law.decode_into(bytes, recorded);
                recorded.truncate(max);
            }
        };
        let ended = loop {
            tokio::select! {
                _ = tick.tick() => {
                    if played < prompt.len() {
                        let end = (played + FRAME).min(prompt.len());
                        let frame = prompt[played..end].to_vec();
                        self.send_frame(&frame, played == 0).await;
                        played = end;
                        if played == prompt.len() {
                            recording = true;
                        }
                    }
                    if !recording {
                        // What comes during the greeting is not the message; it is
                        // played out (and dropped) so that no gap opens at the tone.
                        while jitter.pop().is_some() {}
                    } else {
                        while let Some(p) = jitter.pop() {
                            match p {
                                Playout::Packet(bytes) => {
                                    let before = recorded.len();
                                    fill(&mut recorded, self.law, &bytes);
                                    if silence.feed(&recorded[before..]) {
                                        break;
                                    }
                                }
                                // A lost stretch is silence, at most a second of it.
                                Playout::Lost(n) => {
                                    let n = (n.min(50) as usize) * FRAME;
                                    if recorded.len() < max {
                                        recorded.extend(std::iter::repeat_n(0, n));
                                        recorded.truncate(max);
                                    }
                                }
                            }
                        }
                        if recorded.len() >= max {
                            break Ended::MaxLength;
                        }
                        if silence.silent_for() >= limits.silence {
                            break Ended::Silence;
                        }
                    }
                    if self.media_expired() {
                        break Ended::NoMedia;
                    }
                    if self.elapsed() >= longest {
                        break Ended::MaxLength;
                    }
                }
                r = self.rtp.recv_from(&mut buf) => {
                    match self.hear_rtp(r, &buf).await {
                        Heard::Audio { sequence, payload } => {
                            let _ = jitter.push(sequence, payload.to_vec());
                        }
                        Heard::Digits(got) => {
                            for _ in &got {
                                Metrics::inc(&metrics.voicemail_digits);
                            }
                            if recording && got.contains(&'#') {
                                break Ended::Pound;
                            }
                            if zero_out && !recording && got.contains(&'0') {
                                break Ended::Operator;
                            }
                        }
                        Heard::Nothing => {}
                    }
                }
                r = self.rtcp.recv_from(&mut rtcp_buf) => self.hear_rtcp(r, &rtcp_buf),
                s = signals.recv() => match s {
                    Some(Signal::HungUp) | None => break Ended::HungUp,
                    Some(Signal::Digit(d)) => {
                        Metrics::inc(&metrics.voicemail_digits);
                        if d == '#' && recording {
                            break Ended::Pound;
                        }
                        if d == '0' && zero_out && !recording {
                            break Ended::Operator;
                        }
                    }
                },
            }
        };
        if ended == Ended::HungUp || ended == Ended::Pound {
            // What is still buffered belongs to the message.
            while let Some(p) = jitter.drain() {
                if let Playout::Packet(bytes) = p
                    && recording
                {
                    fill(&mut recorded, self.law, &bytes);
                }
            }
        }
        self.close().await;
        (recorded, ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_voicemail_has_no_path_to_a_trunk() {
        // The invariant at the top of this file, held by reading it: no trunk, B2BUA
        // or proxy, and no client transaction but a BYE of its own and NOTIFYs.
        let code: String = [
            include_str!("voicemail.rs"),
            include_str!("voicemail/call.rs"),
            include_str!("voicemail/retrieval.rs"),
        ]
        .iter()
        .flat_map(|source| {
            source
                .split("#[cfg(test)]")
                .next()
                .unwrap_or(source)
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
        })
        .collect::<Vec<_>>()
        .join("\n");
        for forbidden in [
            concat!("crate::", "b2bua"),
            concat!("crate::", "trunk"),
            concat!("crate::", "proxy"),
            concat!("Purpose::", "Callee"),
            concat!("Purpose::", "Trunk"),
            concat!("Owner::", "B2bua"),
            concat!("Owner::", "Proxy"),
            concat!("\"", "INVITE", "\", call"),
        ] {
            assert!(!code.contains(forbidden), "voicemail.rs names {forbidden}");
        }
        let flat: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(
            flat.matches("egress.start(").count(),
            2,
            "requests in the call's own dialog and the NOTIFYs, nothing else"
        );
        assert_eq!(
            flat.matches("Purpose::InDialog{from:None},Owner::Voicemail")
                .count(),
            1,
            "the call's requests are in its own dialog"
        );
        assert_eq!(
            flat.matches("self.start_in_dialog(call,").count(),
            2,
            "the call's requests: a BYE and a REFER"
        );
        assert!(flat.contains("self.start_in_dialog(call,\"BYE\",None,&[])"));
        // The REFER's one Refer-To is the configured operator, built by `operator_uri`
        // from an `Operator` (which only the configuration makes).
        assert_eq!(flat.matches(",\"REFER\",").count(), 1, "one REFER built");
        assert_eq!(flat.matches("\"Refer-To\"").count(), 1);
        assert!(flat.contains("letrefer_to=format!(\"<{target}>\");"));
        assert!(flat.contains("&[(\"Refer-To\",&refer_to)]"));
        assert!(flat.contains("lettarget=operator_uri(operator,"));
        assert!(flat.contains("fnrefer(&self,id:u64,operator:&Operator)"));
        assert!(flat.contains("Purpose::Registration{number},Owner::Notify"));
        assert!(!flat.contains("Purpose::Callee"));
    }

    #[test]
    fn only_an_internal_caller_is_offered_the_operator() {
        let op = Operator::configured(ExtensionNumber::parse("100").expect("number"));
        assert_eq!(
            zero_out(&Who::Extension("1001".into()), Some(&op)),
            Some(op.clone())
        );
        assert_eq!(zero_out(&Who::Extension("1001".into()), None), None);
        assert_eq!(
            zero_out(&Who::Trunk("gateway:pstn".into()), Some(&op)),
            None
        );
        assert_eq!(zero_out(&Who::Sipward, Some(&op)), None);
    }

    #[test]
    fn the_operator_is_reached_at_the_configured_domain_or_at_sipward_itself() {
        let op = Operator::configured(ExtensionNumber::parse("100").expect("number"));
        let bound: SocketAddr = "192.0.2.10:5060".parse().expect("addr");
        let flow = Flow::udp("198.51.100.7:5062".parse().expect("addr"));
        assert_eq!(
            operator_uri(&op, Some("pbx.example.com"), bound, &flow),
            "sip:100@pbx.example.com"
        );
        assert_eq!(
            operator_uri(&op, None, bound, &flow),
            "sip:100@192.0.2.10:5060"
        );
    }

    #[test]
    fn message_summary_body() {
        assert_eq!(
            message_summary(Waiting { new: 2, saved: 1 }, "sip:1001@pbx.example.com"),
            "Messages-Waiting: yes\r\nMessage-Account: sip:1001@pbx.example.com\r\nVoice-Message: 2/1 (0/0)\r\n"
        );
        assert!(
            message_summary(Waiting::default(), "sip:1@x").starts_with("Messages-Waiting: no\r\n")
        );
    }

    #[test]
    fn the_default_greeting_is_shipped_and_playable() {
        let s = media::wav::decode(DEFAULT_GREETING, 8000 * 60).expect("8 kHz mono 16-bit");
        assert!(s.len() > 8000, "over a second of speech");
        assert!(s.iter().any(|v| v.unsigned_abs() > 3000), "not silence");
        assert_eq!(tone().len(), 3200);
    }
}
