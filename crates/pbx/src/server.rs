//! The running SIP server: binds the transports, loads the directory and the persisted
//! bindings, and runs the background work (directory reload when the store changes,
//! revocation of what changed credentials reached, the bindings' group commit and
//! write-behind, expiry) until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use store::guard as gq;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::{self, Ledger, Outbound};
use crate::authenticator::{AuthConfig, Authenticator};
use crate::directory::{Directory, DirectoryCache, Opening, Revocation};
use crate::endpoint::{Endpoint, Parts};
use crate::guard::{Event, Guard};
use crate::metrics::Metrics;
use crate::registrar::{Registrar, RegistrarConfig};
use crate::transport::{Inbound, Transports};
use crate::trunk::Trunks;
use crate::{Result, transport};
use accounts::Registry;
use accounts::background::{self, Health, Task};
use accounts::provisioning::Vendor;
use accounts::trunks::resolve;
use policy::clock::Clock;

/// How often the store's registry version is polled (a CLI change is live within this).
pub const RELOAD_EVERY: Duration = Duration::from_millis(250);

/// How often the hop tables are read again (issue 21): bindings move no version, so
/// they are polled, and a whole table every 250 ms would cost more than a second's
/// delay before a phone just registered on another node can be called through this one.
pub const HOPS_EVERY: Duration = Duration::from_secs(1);
/// Ban records are kept this long after they expire (longer than any repeat window
/// that escalation looks back over), then pruned.
pub const BAN_RECORDS_KEPT_SECS: i64 = 30 * 86_400;
/// How often bindings are expired and written behind.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long the writer gathers changes that wait for their write (new or moved
/// bindings) before it commits them together: every answer waits about this long plus
/// one commit, and a burst of registrations shares one commit.
pub const GROUP_COMMIT_AFTER: Duration = Duration::from_millis(3);

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub sip: SocketAddr,
    pub registrar: RegistrarConfig,
    pub nonce_max_age_secs: u64,
    /// Digest algorithms challenged with, in order of preference.
    pub digest_algorithms: Vec<sip::digest::Algorithm>,
    /// The guard's rules.
    pub bans: policy::ban::BanPolicy,
    /// Passwords scoring below this are weak (`policy.min_strength_score`).
    pub min_strength_score: u8,
    /// Tasks receiving on the UDP socket (one per core is best).
    pub udp_workers: usize,
    /// What the SIP TCP transport enforces per connection and per source.
    pub tcp: crate::transport::TcpLimits,
    /// The largest message taken per transport (`[sip] max_message_*`).
    pub messages: crate::transport::MessageLimits,
    /// The SMTP server the outbox is sent through; None leaves mails queued.
    pub mailer: Option<accounts::mail::Mailer>,
    /// SIP over TLS: where to listen, and the certificate in force (which the binary
    /// replaces on reload). None serves no TLS.
    pub tls: Option<TlsListen>,
    /// This node's name: on `/metrics`, and on the rows it owns in a store other nodes
    /// share (its call leases).
    pub node: policy::node::NodeName,
    /// Where this node takes internal hops (`[cluster] internal`), published in its
    /// `nodes` row: a UDP socket there reads only live nodes' datagrams, and this node
    /// sends calls for phones registered on another node to that node's address.
    pub internal: Option<SocketAddr>,
    /// How often the store's versions are read (`[store] poll_ms`). On PostgreSQL a
    /// notification makes the read happen at once; this bounds how long a lost one
    /// leaves this node stale.
    pub version_poll: Duration,
    /// Voicemail: where messages are filed and the RTP ports its calls use. None
    /// answers a call to an extension without a registered phone 480, as before.
    pub voicemail: Option<VoicemailConfig>,
}

/// What switches voicemail on.
#[derive(Clone, Debug)]
pub struct VoicemailConfig {
    pub deposits: Arc<dyn crate::voicemail::Deposits>,
    pub rtp: crate::rtp::RtpConfig,
    pub limits: crate::voicemail::DepositLimits,
    /// The boxes' store side for retrieval; None: calls to `*97`/`*98` are not the
    /// voicemail's (they are refused like any service code).
    pub boxes: Option<Arc<dyn crate::voicemail::Boxes>>,
    /// The number that reaches any box (`*98`); the own box's is the provisioning
    /// `voicemail_number` the phones are given.
    pub any_box: String,
    /// `[voicemail] operator`: the internal extension `0` refers an internal caller to
    /// (the binary checked it is one); None: `0` does nothing special.
    pub operator: Option<policy::voicemail::menu::Operator>,
}

/// The default of [`ServeConfig::version_poll`].
pub const VERSION_POLL: Duration = RELOAD_EVERY;

/// The TLS listener's address and the certificate it presents.
#[derive(Clone, Debug)]
pub struct TlsListen {
    pub addr: SocketAddr,
    pub identity: Arc<crate::tls::ServerIdentity>,
}

/// Random keys for this process, from the OS CSPRNG (through the binary).
#[derive(Clone)]
pub struct ServerKeys {
    pub nonce: [u8; 32],
    pub dummy: [u8; 32],
    /// Keys the branches, tags and Call-IDs of every request sipward sends.
    pub notify: [u8; 32],
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKeys([redacted])")
    }
}

/// A server whose sockets are bound and whose state is loaded, ready to run.
#[derive(Debug)]
pub struct Bound {
    pub sip_udp: SocketAddr,
    pub sip_tcp: SocketAddr,
    /// The TLS listener's address, when TLS is served.
    pub sip_tls: Option<SocketAddr>,
    /// The internal hop socket's address, when hops are on (issue 21).
    pub sip_internal: Option<SocketAddr>,
    pub endpoint: Arc<Endpoint>,
    transports: Arc<Transports>,
    tcp: TcpListener,
    tls: Option<(TcpListener, Arc<crate::tls::ServerIdentity>)>,
    registry: Registry,
    cfg: ServeConfig,
    /// The registry and guard versions the loaded state corresponds to.
    versions: (i64, i64),
    /// What opens the directory's HA1s (on first use, and in the pass after ready).
    opening: Arc<Opening>,
    clock: Arc<dyn Clock>,
    /// The SMTP server the outbox goes through now; a config reload replaces it.
    mailer: Arc<watch::Sender<Option<accounts::mail::Mailer>>>,
    /// This process's token in the rows it shares with other nodes (the per-account
    /// failure counts, the `nodes` row's instance): derived from its random keys, so
    /// each process has its own.
    node: String,
    /// This process's claim on its node name.
    hold: Arc<crate::node::NodeHold>,
}

/// What a config reload (SIGHUP) changes in a running server. Everything else (sockets,
/// realm, registrar and TCP limits, the prefix lengths the TCP caps count by) is fixed
/// at start.
#[derive(Clone, Debug)]
pub struct Live {
    /// The guard's thresholds, windows, decoys and switches.
    pub bans: policy::ban::BanPolicy,
    /// The dial plan and its classes of service.
    pub dialplan: policy::dialplan::DialPlan,
    /// The SMTP server the outbox is sent through; None leaves mails queued.
    pub mailer: Option<accounts::mail::Mailer>,
    /// `[voicemail] operator`, checked by the binary against the extensions.
    pub voicemail_operator: Option<policy::voicemail::menu::Operator>,
}

/// Applies a reloaded config to the running server; kept by the binary after `run`
/// took the server.
#[derive(Clone, Debug)]
pub struct Reconfigure {
    endpoint: Arc<Endpoint>,
    registry: Registry,
    mailer: Arc<watch::Sender<Option<accounts::mail::Mailer>>>,
}

impl Reconfigure {
    /// The data dir's registry the server runs on (what a reloaded setting is checked
    /// against, such as the voicemail's operator extension).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The guard's rules in force now (the file's with the stored changes over them).
    pub fn guard_policy(&self) -> policy::ban::BanPolicy {
        (*self.endpoint.guard.policy()).clone()
    }

    /// Puts `live` in force: the guard's rules and the dial plan from the next message,
    /// the mail settings from the next outbox round. The classes of service are
    /// recomputed from the store under the new plan; if the store cannot be read the
    /// new plan is in force already and the lines follow at the next directory reload.
    pub async fn apply(&self, live: Live) -> Result<()> {
        // The file's rules at once; the console's changes over them as soon as they are
        // read (if the store cannot be read, once the guard version next moves).
        self.registry.set_guard_file(live.bans.clone());
        self.endpoint.guard.set_policy(live.bans);
        self.registry.set_dialplan(live.dialplan.clone());
        self.endpoint.outbound.set_plan(live.dialplan);
        self.mailer.send_replace(live.mailer);
        self.endpoint
            .voicemail
            .set_operator(live.voicemail_operator);
        let mut conn = self.registry.store().conn().await?;
        apply_guard_policy(&mut conn, &self.registry, &self.endpoint, true).await?;
        let rows = store::outbound::calling(&mut conn).await?;
        self.endpoint
            .outbound
            .replace_with_users(&rows, self.endpoint.directory.get().extension_numbers());
        Ok(())
    }
}

pub async fn bind(
    registry: Registry,
    cfg: ServeConfig,
    keys: ServerKeys,
    clock: Arc<dyn Clock>,
) -> Result<Bound> {
    let bind_err = |source| crate::Error::Bind {
        addr: cfg.sip,
        source,
    };
    let (transports, tcp) = Transports::bind(cfg.sip).await.map_err(bind_err)?;
    let sip_udp = transports.local_addr().map_err(bind_err)?;
    // What a hop's Via and Record-Route name (the bound port, should the config say 0).
    let internal_bound =
        match cfg.internal {
            Some(internal) => Some(transports.bind_internal(internal).await.map_err(|source| {
                crate::Error::Bind {
                    addr: internal,
                    source,
                }
            })?),
            None => None,
        };
    let sip_tcp = tcp.local_addr().map_err(bind_err)?;
    let tls = match &cfg.tls {
        Some(t) => {
            let tls_err = |source| crate::Error::Bind {
                addr: t.addr,
                source,
            };
            let listener = TcpListener::bind(t.addr).await.map_err(tls_err)?;
            Some((listener, t.identity.clone()))
        }
        None => None,
    };
    let sip_tls = match &tls {
        Some((l, _)) => Some(l.local_addr().map_err(bind_err)?),
        None => None,
    };

    let metrics = Arc::new(Metrics::default());
    let _ = metrics.node.set(cfg.node.to_string());
    let directory = Arc::new(DirectoryCache::default());
    let mut conn = registry.store().conn().await?;
    let versions = (
        store::directory::accounts_version(&mut conn).await?,
        gq::guard_version(&mut conn).await?,
    );
    let realm = registry.settings().realm.clone();
    // The HA1s stay sealed until first use, or until the pass `run` starts after the
    // ready line opens them (`Directory::open_all`); the gateways' open now.
    let opening = Arc::new(Opening {
        opener: Some(registry.ha1_opener()),
        realm: realm.clone(),
    });
    let credentials = registry.credentials(&mut conn, clock.now()).await?;
    let (dir, unopened) = Directory::load(
        credentials.accounts,
        credentials.graces,
        opening.clone(),
        cfg.min_strength_score,
        None,
    );
    report_unopened(&unopened);
    metrics
        .directory_accounts
        .store(dir.len() as u64, Ordering::Relaxed);
    directory.replace(dir);
    let registrar = Arc::new(Registrar::new(cfg.registrar.clone()));
    // This node's bindings (and unowned ones, which it takes over): another node's
    // flows are not reachable from here.
    let bindings =
        store::bindings::live_node_bindings(&mut conn, cfg.node.as_str(), clock.now()).await?;
    // Where phones are registered from is trusted for them, across restarts.
    let guard = Arc::new(Guard::new(cfg.bans.clone(), metrics.clone()));
    guard.set_registrations(registrar.clone());
    let dir = directory.get();
    // (Only bindings made with the account's current credentials: a grace window's
    // old password earns no trust.)
    for b in &bindings {
        if let (Some(account), Ok(source)) =
            (dir.by_number(&b.number), b.source.parse::<SocketAddr>())
            && account.generation == b.generation
        {
            guard.auth_success(source.ip(), &account.auth_id, clock.now());
        }
    }
    registrar.load(bindings);
    // Only bindings the directory's credentials back are kept (the store's read already
    // filters them; this holds it true of memory, whatever was read).
    let now = clock.now();
    registrar.reconcile(|n, b| {
        dir.by_number(n)
            .is_some_and(|a| a.backs(b.generation, b.flow.remote.ip(), now))
    });
    metrics
        .bindings
        .store(registrar.binding_count() as u64, Ordering::Relaxed);
    drop(conn);

    let auth = Authenticator::new(
        AuthConfig {
            realm,
            nonce_max_age_secs: cfg.nonce_max_age_secs,
            nc_capacity: 65_536,
            algorithms: cfg.digest_algorithms.clone(),
        },
        keys.nonce,
        keys.dummy,
        metrics.clone(),
    );
    let outbound = Arc::new(Outbound::new((*registry.dialplan()).clone()));
    // Lease names carry a random word per process: a restarted node's never meet the
    // ones its last run left to lapse.
    let boot = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        clock.now(),
    );
    outbound.attach(Arc::new(Ledger::new(
        registry.store().clone(),
        &cfg.node,
        boot,
    )));
    let endpoint = Endpoint::shared(Parts {
        directory,
        guard,
        auth,
        registrar,
        metrics,
        clock: clock.clone(),
        outbound,
        trunks: Arc::new(Trunks::default()),
        bound: sip_udp,
        tls_bound: sip_tls,
        internal: internal_bound,
        key: keys.notify,
        messages: cfg.messages,
    });
    if internal_bound.is_some() {
        // Hops on: calls for phones registered on another live node go there, proved
        // with the install's hop key under this node's name.
        endpoint.attach_hop(
            crate::hop::HopKey::new(*registry.hop_key()),
            cfg.node.as_str(),
        );
    }
    if let Some(vm) = &cfg.voicemail {
        // RTP is bound on the SIP address: the SDP names the address the phone reaches
        // sipward at, which is where its RTP must arrive.
        let pool = crate::rtp::PortPool::new(sip_udp.ip(), &vm.rtp, endpoint.metrics.clone());
        endpoint.voicemail.attach(crate::voicemail::Backend {
            deposits: vm.deposits.clone(),
            pool,
            registrar: endpoint.registrar.clone(),
            realm: registry.settings().realm.clone(),
            domain: registry.settings().domain.clone(),
            limits: vm.limits,
            runtime: tokio::runtime::Handle::current(),
            retrieval: vm.boxes.clone().map(|boxes| crate::voicemail::Retrieval {
                boxes,
                numbers: crate::voicemail::RetrievalNumbers {
                    own_box: registry.settings().provisioning.voicemail_number.clone(),
                    any_box: vm.any_box.clone(),
                },
                guard: endpoint.guard.clone(),
            }),
        });
    }
    if let Some(vm) = &cfg.voicemail {
        endpoint.voicemail.set_operator(vm.operator.clone());
    }
    endpoint.voicemail.reload_ring_times().await;
    load_trunks(&registry, &endpoint).await?;
    let mut conn = registry.store().conn().await?;
    registry.set_guard_file(cfg.bans.clone());
    load_guard(&mut conn, &registry, &endpoint, clock.now(), false).await?;
    endpoint.outbound.replace_with_users(
        &store::outbound::calling(&mut conn).await?,
        endpoint.directory.get().extension_numbers(),
    );
    drop(conn);
    if registry.store().backend() == store::Backend::Postgres {
        endpoint.guard.share_failures();
    }
    let node = {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(keys.dummy)
            .chain_update(b"sipward node token")
            .finalize();
        hex::encode(&digest[..8])
    };
    // Every message sipward writes goes through the egress rule to these sockets.
    endpoint.egress.connect(transports.clone());
    let mailer = Arc::new(watch::channel(cfg.mailer.clone()).0);
    // Last, so that nothing after it can fail and leave the name held by a process that
    // never served. On SQLite the data dir's serve lock, taken before, proves this the
    // only process.
    let hold = Arc::new(
        crate::node::NodeHold::claim(
            registry.store(),
            cfg.node.as_str(),
            &node,
            // The bound address: what the other nodes send hops to and read them from.
            &internal_bound.map(|a| a.to_string()).unwrap_or_default(),
            clock.now(),
            registry.store().backend() == store::Backend::Sqlite,
        )
        .await?,
    );
    Ok(Bound {
        sip_udp,
        sip_tcp,
        sip_tls,
        sip_internal: internal_bound,
        endpoint,
        transports,
        tcp,
        tls,
        registry,
        cfg,
        versions,
        opening,
        clock,
        mailer,
        node,
        hold,
    })
}

/// Opens every HA1 of `dir` not opened yet on a blocking thread (20,000 values at a
/// start with 10,000 extensions: tens of milliseconds the SIP threads must not spend);
/// the AADs of those that did not open. `None` when the runtime is shutting down.
async fn open_all(dir: Arc<Directory>) -> Option<Vec<String>> {
    match tokio::task::spawn_blocking(move || dir.open_all()).await {
        Ok(unopened) => Some(unopened),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

/// Says which sealed HA1s did not open (altered in the database, or copied from another
/// row): those accounts cannot log in until their password is set again.
fn report_unopened(unopened: &[String]) {
    if !unopened.is_empty() {
        let line = serde_json::json!({
            "event": "credentials_unreadable",
            "fields": unopened,
        });
        accounts::event::emit(&line);
    }
}

impl Bound {
    /// What the binary keeps to apply a reloaded config once `run` has the server.
    pub fn reconfigure(&self) -> Reconfigure {
        Reconfigure {
            endpoint: self.endpoint.clone(),
            registry: self.registry.clone(),
            mailer: self.mailer.clone(),
        }
    }

    /// The console's handle on this server (ban check, provisioning probes, metrics).
    pub fn handle(&self) -> Arc<dyn accounts::running::RunningServer> {
        Arc::new(crate::handle::ServerHandle::new(
            self.endpoint.guard.clone(),
            self.endpoint.metrics.clone(),
            self.endpoint.registrar.clone(),
        ))
    }

    /// Serves until `shutdown` resolves, then writes the bindings one last time.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        // The guard's events: a ban or refusal made by the first datagram read is
        // persisted and logged, not lost before the writer exists.
        let (event_tx, event_rx) = tokio::sync::mpsc::channel(4096);
        self.endpoint.guard.set_events(event_tx);
        let inbound: Arc<dyn Inbound> = self.endpoint.clone();
        for _ in 0..self.cfg.udp_workers.max(1) {
            tasks.spawn(transport::serve_udp(
                self.transports.clone(),
                inbound.clone(),
                stop_rx.clone(),
            ));
        }
        if self.cfg.internal.is_some() {
            let endpoint = self.endpoint.clone();
            tasks.spawn(transport::serve_internal(
                self.transports.clone(),
                self.endpoint.egress.hop_targets().clone(),
                self.endpoint.metrics.clone(),
                // Answers to this node's hops, hops from the other nodes (checked in
                // `Endpoint::take_hop`) and requests in the dialogs they made.
                Arc::new(move |bytes: &[u8], flow: crate::flow::Flow| {
                    endpoint.hop_received(bytes, flow);
                }),
                stop_rx.clone(),
            ));
        }
        tasks.spawn(timer_loop(self.endpoint.clone(), stop_rx.clone()));
        tasks.spawn(event_writer(
            self.registry.clone(),
            self.endpoint.clone(),
            event_rx,
            stop_rx.clone(),
        ));
        // Stream messages are handled on as many lanes as there are UDP receivers: one
        // per core.
        let stream_limits = transport::TcpLimits {
            lanes: self.cfg.udp_workers.max(1),
            ..self.cfg.tcp.clone()
        };
        tasks.spawn(transport::serve_tcp(
            self.tcp,
            self.transports.clone(),
            inbound.clone(),
            stream_limits.clone(),
            stop_rx.clone(),
        ));
        if let Some((listener, identity)) = self.tls {
            tasks.spawn(transport::serve_tls(
                listener,
                identity,
                self.transports.clone(),
                inbound.clone(),
                stream_limits,
                stop_rx.clone(),
            ));
        }
        let hints = Arc::new(Hints::default());
        if let Some(url) = self.registry.store().postgres_url() {
            tasks.spawn(listen_loop(
                url.clone(),
                hints.clone(),
                self.endpoint.clone(),
                stop_rx.clone(),
            ));
        }
        tasks.spawn(reload_loop(
            self.transports.clone(),
            self.registry.clone(),
            self.endpoint.clone(),
            self.clock.clone(),
            (self.versions, self.opening),
            (
                self.cfg.min_strength_score,
                self.cfg.version_poll,
                hints,
                // With an internal address, this node hops calls and takes hops.
                self.cfg.internal.map(|_| self.cfg.node.as_str().to_owned()),
            ),
            stop_rx.clone(),
        ));
        tasks.spawn(resync_loop(
            self.registry.clone(),
            self.endpoint.clone(),
            self.clock.clone(),
            self.cfg.node.to_string(),
            stop_rx.clone(),
        ));
        tasks.spawn(outbox_loop(
            self.registry.clone(),
            self.mailer.subscribe(),
            self.endpoint.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(lease_loop(
            self.endpoint.clone(),
            self.clock.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(flush_loop(
            self.registry.clone(),
            self.endpoint.clone(),
            self.transports.clone(),
            self.clock.clone(),
            (self.node.clone(), self.hold.clone()),
            stop_rx.clone(),
        ));
        tokio::select! {
            () = shutdown => {}
            () = self.hold.lost() => {}
        }
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        // No server, no calls: `sipward calls` must not show the last ones as up.
        if let Some(mut conn) = background::checked(
            Task::CallState,
            "clearing the active calls",
            self.registry.store().conn().await,
        ) {
            background::checked(
                Task::CallState,
                "clearing the active calls",
                store::trunks::replace_active_calls(&mut conn, self.cfg.node.as_str(), &[], 0)
                    .await,
            );
        }
        if self.hold.is_lost() {
            // The name, and the bindings under it, are another process's now.
            return Err(crate::Error::NodeNameLost {
                node: self.cfg.node.to_string(),
            });
        }
        flush(
            &self.registry,
            &self.endpoint,
            &self.hold,
            self.clock.now(),
            true,
        )
        .await?;
        self.hold.release(self.registry.store()).await
    }
}

/// What the PostgreSQL listener tells the reload loop: read the versions now, and
/// whether everything must be reloaded (the listener reconnected: what was notified
/// meanwhile is lost).
#[derive(Default)]
struct Hints {
    now: tokio::sync::Notify,
    everything: std::sync::atomic::AtomicBool,
}

/// Turns the database's change notifications into [`Hints`] for the reload loop.
async fn listen_loop(
    url: store::PgUrl,
    hints: Arc<Hints>,
    endpoint: Arc<Endpoint>,
    mut stop: watch::Receiver<bool>,
) {
    let mut listener = match store::listen::VersionListener::connect(&url).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "the database's change notifications are not reachable yet; polling meanwhile");
            store::listen::VersionListener::disconnected(&url)
        }
    };
    loop {
        let hint = tokio::select! {
            h = listener.next() => h,
            _ = stop.changed() => return,
        };
        if hint == store::listen::Hint::Reconnected {
            Metrics::inc(&endpoint.metrics.store_reconnects);
            hints.everything.store(true, Ordering::Relaxed);
        } else {
            Metrics::inc(&endpoint.metrics.store_hints);
        }
        hints.now.notify_one();
    }
}

/// Reloads what other processes (the CLI, other nodes) change: the credential directory
/// when the registry version moves, the guard when the ban/allow version moves (or the
/// registry's: gateway addresses are exempt). The versions are read every `poll`, and
/// at once on a hint from the PostgreSQL listener; after the listener reconnected,
/// everything is reloaded. Also keeps the guard's coarse clock current.
async fn reload_loop(
    transports: Arc<Transports>,
    registry: Registry,
    endpoint: Arc<Endpoint>,
    clock: Arc<dyn Clock>,
    (mut versions, opening): ((i64, i64), Arc<Opening>),
    (min_score, poll, hints, hops_from): (u8, Duration, Arc<Hints>, Option<String>),
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(RELOAD_EVERY.min(poll));
    // Paced by the runtime's time, like the tick: the injected clock is the domain's
    // time (bans, windows), which a test may hold still.
    let mut last_poll: Option<tokio::time::Instant> = None;
    let mut last_hops: Option<tokio::time::Instant> = None;
    let mut kernel_generation = None;
    let mut store_health = Health::new(Task::Reload, "reloading from the store");
    // The next grace window to end by time: no reload marks it, so the loop watches.
    let mut next_grace_end = endpoint.directory.get().next_grace_end(clock.now());
    // The HA1s the start left sealed: opened now, off the SIP threads, the ones that
    // do not open reported and their accounts left out, as a load before the ready line
    // did.
    let Some(unopened) = open_all(endpoint.directory.get()).await else {
        return;
    };
    report_unopened(&unopened);
    if let Some(dir) = endpoint.directory.get().without_unopened() {
        endpoint
            .metrics
            .directory_accounts
            .store(dir.len() as u64, Ordering::Relaxed);
        apply_directory(&endpoint, dir, clock.now());
    }
    loop {
        let hinted = tokio::select! {
            _ = tick.tick() => false,
            _ = hints.now.notified() => true,
            _ = stop.changed() => return,
        };
        // Bans reach the kernel's socket filter within one tick; until then (and beyond
        // its capacity) they are dropped in user space.
        let generation = endpoint.guard.generation();
        if kernel_generation != Some(generation) {
            let list = endpoint.guard.kernel_drop_list();
            if background::checked(
                Task::SocketSetup,
                "updating the kernel drop filter",
                transports.kernel_drop(&list),
            )
            .is_some()
            {
                endpoint
                    .metrics
                    .kernel_drop_sources
                    .store(list.len() as u64, Ordering::Relaxed);
            }
            kernel_generation = Some(generation);
        }
        endpoint.guard.tick(clock.now());
        endpoint
            .metrics
            .bans
            .store(endpoint.guard.banned_count() as u64, Ordering::Relaxed);
        let instant = tokio::time::Instant::now();
        if !hinted && last_poll.is_some_and(|t| instant.saturating_duration_since(t) < poll) {
            continue;
        }
        if hints.everything.swap(false, Ordering::Relaxed) {
            // Versions that match nothing: both reloads run.
            versions = (i64::MIN, i64::MIN);
        }
        let conn = registry.store().conn().await;
        let Some(mut conn) = store_health.checked(conn) else {
            store_health.settle();
            continue;
        };
        last_poll = Some(instant);
        let mut registry_moved = false;
        let version = store_health.checked(store::directory::accounts_version(&mut conn).await);
        if let Some(v) = version
            && v != versions.0
            && let Some(credentials) =
                store_health.checked(registry.credentials(&mut conn, clock.now()).await)
        {
            // What changed is opened before it is in force; what did not keeps its
            // opened HA1s.
            let (dir, mut unopened) = Directory::load(
                credentials.accounts,
                credentials.graces,
                opening.clone(),
                min_score,
                Some(&endpoint.directory.get()),
            );
            let dir = Arc::new(dir);
            let Some(more) = open_all(dir.clone()).await else {
                return;
            };
            unopened.extend(more);
            report_unopened(&unopened);
            let dir = match dir.without_unopened() {
                Some(d) => d,
                None => Arc::try_unwrap(dir).unwrap_or_else(|d| d.keeping(|_| true)),
            };
            endpoint
                .metrics
                .directory_accounts
                .store(dir.len() as u64, Ordering::Relaxed);
            if let Some(rows) = store_health.checked(store::outbound::calling(&mut conn).await) {
                endpoint
                    .outbound
                    .replace_with_users(&rows, dir.extension_numbers());
            }
            let reloaded = apply_directory(&endpoint, dir, clock.now());
            for r in &reloaded.revoked {
                accounts::event::emit(&revocation_event(r, &reloaded.bindings_dropped));
            }
            for (number, calls) in &reloaded.calls_ended {
                accounts::event::emit(&calls_ended_event(number, *calls));
            }
            versions.0 = v;
            registry_moved = true;
            store_health.checked(load_trunks(&registry, &endpoint).await);
            endpoint.voicemail.reload_ring_times().await;
        }
        let now = clock.now();
        if registry_moved {
            next_grace_end = endpoint.directory.get().next_grace_end(now);
        } else if next_grace_end.is_some_and(|end| now >= end) {
            // A window ended by time: the bindings it kept go from memory as they go
            // from the store (the flush's sweep), so calls stop ringing them.
            let dropped = reconcile_bindings(&endpoint, now);
            if !dropped.is_empty() {
                accounts::event::emit(
                    &serde_json::json!({"event": "grace_ended", "bindings_dropped": dropped}),
                );
            }
            next_grace_end = endpoint.directory.get().next_grace_end(now);
        }
        if let Some(v) = store_health.checked(gq::guard_version(&mut conn).await)
            && (v != versions.1 || registry_moved)
            && store_health
                .checked(load_guard(&mut conn, &registry, &endpoint, clock.now(), true).await)
                .is_some()
        {
            versions.1 = v;
        }
        if let Some(own) = &hops_from
            && last_hops.is_none_or(|t| instant.saturating_duration_since(t) >= HOPS_EVERY)
        {
            last_hops = Some(instant);
            load_hops(&mut conn, &endpoint, own, clock.now(), &mut store_health).await;
        }
        if versions.0 != i64::MIN && versions.1 != i64::MIN {
            endpoint
                .metrics
                .store_versions_seen_at
                .store(clock.now(), Ordering::Relaxed);
        }
        store_health.settle();
    }
}

/// Fills the egress rule's hop table (issue 21) on every poll, since bindings move
/// without a version: the other live nodes' internal addresses (the only sources a hop
/// is read from) and, in one query, every extension another live node holds a binding
/// of, with that node's address. A failed read keeps the tables as they were.
async fn load_hops(
    conn: &mut store::Conn,
    endpoint: &Endpoint,
    own: &str,
    now: i64,
    health: &mut Health,
) {
    let live_since = now.saturating_sub(crate::node::STALE_AFTER_SECS);
    let targets = endpoint.egress.hop_targets();
    if let Some(nodes) = health.checked(store::nodes::live_nodes(&mut *conn, live_since).await) {
        targets.replace_nodes(
            nodes
                .iter()
                .filter(|n| n.name != own)
                .filter_map(|n| Some((n.hop.parse::<SocketAddr>().ok()?, n.name.clone()))),
        );
    }
    let limit = i64::try_from(crate::hop::MAX_TARGETS).unwrap_or(i64::MAX);
    if let Some(rows) =
        health.checked(store::bindings::all_hops(&mut *conn, own, now, live_since, limit).await)
    {
        targets.replace_from_rows(&rows);
    }
}

/// What a directory reload changed for the runtime.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Accounts removed or given new credentials since the previous snapshot: every
    /// call of theirs must end (the call path's part of revocation).
    pub revoked: Vec<Revocation>,
    /// Extensions that lost bindings no credentials back any more (revoked ones, and
    /// those whose grace window ended).
    pub bindings_dropped: Vec<String>,
    /// Revoked extensions whose calls were ended, with how many (emergency calls are
    /// kept, so an extension on one alone is not here).
    pub calls_ended: Vec<(String, usize)>,
}

/// Puts a new directory snapshot in force: the registrar drops every binding that no
/// credentials in it back (removed extensions, changed credentials without a grace
/// window from the binding's source, ended windows), and every call of a revoked
/// extension ends with BYE on every leg (`Endpoint::end_calls_of`: emergency calls go
/// on). Returns what was revoked and what ended.
pub fn apply_directory(endpoint: &Endpoint, dir: Directory, now: i64) -> Reloaded {
    let old = endpoint.directory.get();
    let revoked = old.revocations(&dir);
    // Trust earned with the old credentials goes with them: a removed-then-re-added
    // number, or one with a new password or auth ID, starts with none.
    for r in &revoked {
        for d in [old.as_ref(), &dir] {
            if let Some(a) = d.by_number(&r.number) {
                endpoint.guard.forget_account(&a.auth_id);
            }
        }
    }
    endpoint.directory.replace(dir);
    let bindings_dropped = reconcile_bindings(endpoint, now);
    // A gateway's number is no party of any call (its calls are the trunk's).
    let calls_ended = revoked
        .iter()
        .filter(|r| r.kind == "ext")
        .filter_map(|r| {
            let n = endpoint.end_calls_of(&r.number);
            (n > 0).then(|| (r.number.clone(), n))
        })
        .collect();
    Reloaded {
        revoked,
        bindings_dropped,
        calls_ended,
    }
}

/// Drops every binding the directory in force no longer backs at `now` (changed or
/// removed credentials, grace windows ended by time); the numbers that lost bindings.
pub fn reconcile_bindings(endpoint: &Endpoint, now: i64) -> Vec<String> {
    let current = endpoint.directory.get();
    let dropped = endpoint.registrar.reconcile(|n, b| {
        current
            .by_number(n)
            .is_some_and(|a| a.backs(b.generation, b.flow.remote.ip(), now))
    });
    if !dropped.is_empty() {
        endpoint
            .metrics
            .bindings
            .store(endpoint.registrar.binding_count() as u64, Ordering::Relaxed);
    }
    dropped
}

/// The security event for the calls ended because `number`'s credentials were revoked.
fn calls_ended_event(number: &str, calls: usize) -> serde_json::Value {
    serde_json::json!({
        "event": "calls_ended",
        "number": number,
        "calls": calls,
        "reason": "credentials_revoked",
    })
}

/// The security event for one revocation (one JSON line).
fn revocation_event(r: &Revocation, dropped: &[String]) -> serde_json::Value {
    serde_json::json!({
        "event": "credentials_revoked",
        "number": r.number,
        "kind": r.kind,
        "reason": r.reason.as_str(),
        "bindings_dropped": dropped.contains(&r.number),
    })
}

/// Loads gateways, providers, routes and DIDs (passwords opened), resolving each
/// trunk's host (a name that does not resolve now leaves that trunk without an address
/// until the next load).
async fn load_trunks(registry: &Registry, endpoint: &Endpoint) -> Result<()> {
    let set = registry.trunk_set().await?;
    let mut resolved = std::collections::HashMap::new();
    let hosts = set
        .gateways
        .iter()
        .map(|g| g.host.clone())
        .chain(set.providers.iter().map(|p| p.registrar.clone()));
    for host in hosts {
        if let Some(addr) = resolve(&host).await {
            resolved.insert(host, addr);
        }
    }
    let withdrawn = endpoint.trunks.replace(set, |h| resolved.get(h).copied());
    endpoint.providers.sync(endpoint.trunks.providers());
    for label in withdrawn {
        let calls = endpoint.end_calls_via(&label);
        if calls > 0 {
            accounts::event::emit(&serde_json::json!({
                "event": "calls_ended",
                "trunk": label,
                "calls": calls,
                "reason": "trunk_withdrawn",
            }));
        }
    }
    Ok(())
}

/// Puts the guard's rules in force: the config file's `[guard]` with the settings an
/// administrator changed in the database over it, or the file's alone when those no
/// longer fit it (one event says why).
async fn apply_guard_policy(
    conn: &mut dyn store::Db,
    registry: &Registry,
    endpoint: &Endpoint,
    announce: bool,
) -> Result<()> {
    let stored = gq::overrides(conn).await?;
    let overrides = accounts::guard_policy::Overrides::from_stored(stored.as_deref());
    let file = registry.guard_file();
    let (policy, refused) = match overrides.over(&file) {
        Ok(p) => (p, None),
        Err(e) => ((*file).clone(), Some(e)),
    };
    // Said at start and at each config reload (`announce`), and when the rules in
    // force change: not at every ban's reload.
    let changed = *endpoint.guard.policy() != policy;
    if let Some(e) = refused
        && (announce || changed)
    {
        accounts::event::emit(&serde_json::json!({
            "event": "guard_settings_refused",
            "detail": e.to_string(),
        }));
    }
    if changed {
        endpoint.guard.set_policy(policy);
    }
    Ok(())
}

async fn load_guard(
    conn: &mut dyn store::Db,
    registry: &Registry,
    endpoint: &Endpoint,
    now: i64,
    announce: bool,
) -> Result<()> {
    // At start (not `announce`: the guard's first load) a refusal is said too.
    apply_guard_policy(conn, registry, endpoint, !announce).await?;
    // Expired records too: they feed escalation.
    let bans = gq::bans(conn, None).await?;
    let allow = gq::allow_list(conn).await?;
    // Gateways' literal addresses, and every trunk's resolved address (providers
    // send inbound calls from theirs).
    let mut gateways: Vec<_> = gq::gateway_hosts(conn)
        .await?
        .iter()
        .filter_map(|h| policy::fields::Host::ip_literal(h))
        .collect();
    gateways.extend(endpoint.trunks.ips());
    endpoint.guard.tick(now);
    endpoint.guard.replace(&bans, &allow, &gateways, announce);
    endpoint
        .metrics
        .bans
        .store(endpoint.guard.banned_count() as u64, Ordering::Relaxed);
    endpoint
        .metrics
        .allowed_networks
        .store(endpoint.guard.allowed_count() as u64, Ordering::Relaxed);
    Ok(())
}

/// Writes one JSON security event per line to stderr, persisting the bans the guard
/// made first (they are in force in memory already). On shutdown the events still
/// queued are handled before the task ends.
async fn event_writer(
    registry: Registry,
    endpoint: Arc<Endpoint>,
    mut rx: tokio::sync::mpsc::Receiver<Event>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = stop.changed() => {
                while let Ok(e) = rx.try_recv() {
                    handle_event(&registry, &endpoint, e).await;
                }
                return;
            }
        };
        match event {
            Some(e) => handle_event(&registry, &endpoint, e).await,
            None => return,
        }
    }
}

async fn handle_event(registry: &Registry, endpoint: &Endpoint, e: Event) {
    let now = endpoint.now();
    let persisted = match &e {
        Event::Ban {
            row,
            from_store: false,
        } => Some(persist_ban(registry, row).await),
        Event::Suspended {
            number,
            breach,
            dialled,
            ..
        } => {
            let ok = background::checked(
                Task::Reload,
                "recording a suspension",
                registry
                    .suspend_outbound(number, *breach, dialled, now)
                    .await,
            )
            .is_some();
            if ok {
                endpoint.outbound.persisted(number);
            }
            Some(ok)
        }
        Event::EmergencyCall { number, dialled } => Some(
            background::checked(
                Task::Outbox,
                "queuing an emergency alert",
                registry.emergency_alert(number, dialled, now).await,
            )
            .is_some(),
        ),
        Event::EmergencyRefused { number, breach } => Some(
            background::checked(
                Task::Outbox,
                "queuing an emergency alert",
                registry.emergency_refused_alert(number, *breach, now).await,
            )
            .is_some(),
        ),
        _ => None,
    };
    accounts::event::emit(&e.to_json(persisted));
}

async fn persist_ban(registry: &Registry, row: &gq::BanRow) -> bool {
    let what = "writing a ban record";
    let Some(mut conn) = background::checked(Task::BanRecord, what, registry.store().conn().await)
    else {
        return false;
    };
    // The record keeps its first_seen on update (see put_ban).
    let stored =
        background::checked(Task::BanRecord, what, gq::put_ban(&mut conn, row).await).is_some();
    let pruned = gq::prune_bans(
        &mut conn,
        row.last_seen.saturating_sub(BAN_RECORDS_KEPT_SECS),
    )
    .await;
    background::checked(Task::BanRecord, "pruning old ban records", pruned);
    stored
}

/// How often the re-fetch queue and the outbox are looked at.
pub const RESYNC_EVERY: Duration = Duration::from_millis(500);
pub const OUTBOX_EVERY: Duration = Duration::from_secs(2);

/// Sends a check-sync NOTIFY to every registration of each extension the store asks for
/// (Re-Generate queues them) whose flows this node holds (`node`: the other nodes send
/// to theirs), on the flow each registered from (UDP, or the phone's own TCP
/// connection); their transactions run on the server's timer.
async fn resync_loop(
    registry: Registry,
    endpoint: Arc<Endpoint>,
    clock: Arc<dyn Clock>,
    node: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(RESYNC_EVERY);
    let realm = registry.settings().realm.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let what = "taking the phones to re-sync";
        let Some(mut conn) = background::checked(Task::Reload, what, registry.store().conn().await)
        else {
            continue;
        };
        // Only the requests for phones whose flows this node holds (the other nodes
        // take theirs); those with no live phone anywhere are dropped, counted.
        let taken = store::provisioning::take_resyncs(&mut conn, &node, clock.now()).await;
        let Some(taken) = background::checked(Task::Reload, what, taken) else {
            continue;
        };
        endpoint
            .metrics
            .resyncs_dropped
            .fetch_add(taken.dropped, std::sync::atomic::Ordering::Relaxed);
        for number in taken.numbers {
            let vendor = store::account::get_extension(&mut conn, &number)
                .await
                .ok()
                .flatten()
                .and_then(|r| r.model)
                .and_then(|m| Vendor::from_model(&m));
            let Some(vendor) = vendor else { continue };
            let registrations = endpoint.registrar.flows(&number, clock.now());
            endpoint.notifier.check_sync(
                &number,
                &realm,
                vendor.check_sync_event(),
                &registrations,
            );
        }
    }
}

/// How often the transaction, dialog and call timers are looked at. The timers read the
/// injected clock: tests move it, and the next tick acts on it.
pub const TIMER_TICK: Duration = Duration::from_millis(20);

/// Runs every client and server transaction's timers (retransmissions, timeouts), the
/// trunk calls' ring limits and maximum durations, provider registration refreshes, and
/// forgets ended dialogs.
async fn timer_loop(endpoint: Arc<Endpoint>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        endpoint.tick();
    }
}

/// Sends the outbox's due mails (retries included) every few seconds, through the
/// SMTP server configured now (none: mails stay queued).
async fn outbox_loop(
    registry: Registry,
    mailer: watch::Receiver<Option<accounts::mail::Mailer>>,
    endpoint: Arc<Endpoint>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(OUTBOX_EVERY);
    // One node at a time sends (on SQLite, the one node always does).
    let mut job = store::jobs::JobLock::new(registry.store(), store::jobs::Job::Outbox);
    let holder = |held: bool| {
        endpoint.metrics.job_holder[0].store(held, Ordering::Relaxed);
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {
                job.release().await;
                return;
            }
        }
        let Some(smtp) = mailer.borrow().clone() else {
            // A node that cannot send leaves the job to one that can.
            job.release().await;
            holder(false);
            continue;
        };
        let held = job.hold().await;
        holder(held);
        if !held {
            continue;
        }
        let done = match registry.send_due_mail(&smtp, None).await {
            Ok(done) => done,
            Err(e) => {
                background::failed(Task::Outbox, "sending the outbox", &e);
                continue;
            }
        };
        for (_, outcome) in done {
            use accounts::mail::MailOutcome as M;
            let m = &endpoint.metrics;
            match outcome {
                M::Sent { .. } => Metrics::inc(&m.mail_sent),
                M::Deferred { .. } => Metrics::inc(&m.mail_deferred),
                M::Failed { .. } => Metrics::inc(&m.mail_failed),
                _ => {}
            }
        }
    }
}

/// The bindings' writer: a group commit as soon as a change waits for its write (after
/// [`GROUP_COMMIT_AFTER`], so that a burst shares it), and every second the
/// write-behind of refreshes, expiry and the trunk state.
async fn flush_loop(
    registry: Registry,
    endpoint: Arc<Endpoint>,
    transports: Arc<Transports>,
    clock: Arc<dyn Clock>,
    (node, hold): (String, Arc<crate::node::NodeHold>),
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut beaten = clock.instant();
    let shared = registry.store().backend() == store::Backend::Postgres;
    let mut calls_written = None;
    let mut health = Health::new(Task::Flush, "writing the bindings");
    let mut slow = SlowWrites::default();
    let mut sweep = FailureSweep::default();
    loop {
        let every_second = tokio::select! {
            _ = tick.tick() => true,
            _ = endpoint.registrar.urgent() => {
                tokio::time::sleep(GROUP_COMMIT_AFTER).await;
                false
            }
            _ = stop.changed() => return,
        };
        if every_second {
            sample_tables(&endpoint, &transports);
            write_trunk_state(&registry, &endpoint, &node, clock.now(), &mut calls_written).await;
            if shared {
                share_failures(&registry, &endpoint, &node, clock.now(), &mut sweep).await;
            }
            if clock.instant().saturating_duration_since(beaten) >= crate::node::HEARTBEAT_EVERY {
                beaten = clock.instant();
                background::checked(
                    Task::Flush,
                    "moving this node's heartbeat",
                    hold.beat(registry.store(), clock.now()).await,
                );
            }
        }
        if hold.is_lost() {
            // The server is stopping: nothing more is written under the name.
            return;
        }
        let started = clock.instant();
        let written = flush(&registry, &endpoint, &hold, clock.now(), every_second).await;
        if written.is_ok() {
            slow.note(
                clock.instant().saturating_duration_since(started),
                clock.instant(),
            );
        }
        health.checked(written);
        health.settle();
    }
}

// Every call up can hold its lease, and those ended within the last round too.
const _: () = assert!(admission::MAX_HELD >= 2 * crate::b2bua::MAX_CALLS);

/// How often call leases are tended: the leases of calls that ended released (another
/// node sees the place free within this), and every [`admission::RENEW_EVERY_SECS`]
/// the rest renewed.
pub const LEASES_EVERY: Duration = Duration::from_secs(1);
/// Rounds between prunings of what lapsed in the fraud tables.
const PRUNE_LEASES_EVERY: u32 = 60;

/// Tends this node's call leases (see [`admission::Ledger::tend`]). On the way out,
/// the leases of calls still up are released: the server ends with them.
async fn lease_loop(
    endpoint: Arc<Endpoint>,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(ledger) = endpoint.outbound.ledger().cloned() else {
        return;
    };
    let mut tick = tokio::time::interval(LEASES_EVERY);
    let mut health = Health::new(Task::CallState, "tending the call leases");
    let mut last_renewal = clock.now();
    let mut round: u32 = 0;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let now = clock.now();
        let renew = now - last_renewal >= admission::RENEW_EVERY_SECS;
        round = round.wrapping_add(1);
        let prune = round.is_multiple_of(PRUNE_LEASES_EVERY);
        let live = || {
            if stopping {
                std::collections::HashSet::new()
            } else {
                endpoint.b2bua.live_leases()
            }
        };
        let tended = health.checked(ledger.tend(live, now, renew, prune).await);
        if let Some(lapsed) = &tended
            && renew
        {
            last_renewal = now;
            // Calls whose place lapsed and was taken meanwhile: ended, not carried on
            // uncounted past the concurrent limit.
            for l in lapsed {
                let ended = endpoint.b2bua.end_call_holding(&l.lease, clock.instant());
                Metrics::inc(&endpoint.metrics.calls_ended_lease_lapsed);
                endpoint.guard.report(crate::guard::Event::LeaseLapsed {
                    number: l.account.clone(),
                    calls_ended: ended,
                });
            }
        }
        health.settle();
        if stopping {
            return;
        }
    }
}

/// How many accounts' shared failure sums a node reads back a round: the most-failed
/// first, and as many again of a sweep over every account in auth ID order.
const SHARED_FAILURES_READ: i64 = 10_000;

/// Where the sweep over the other nodes' failure sums stands: the last auth ID read (the
/// next page starts after it), and the sums read since the sweep began (bounded by the
/// guard's table), given whole to the guard when it ends.
#[derive(Debug, Default)]
struct FailureSweep {
    cursor: String,
    seen: std::collections::HashMap<String, u32>,
}

/// Writes this node's new per-account failures and reads the other nodes' sums (once a
/// second, on PostgreSQL). Each round reads the [`SHARED_FAILURES_READ`] most-failed
/// accounts (an account under the heaviest guessing is behind the truth by at most one
/// second of the others' failures) and the next page of a sweep over all of them (so
/// with more accounts under attack than the bound, each is still seen, within a second
/// per page). Counts older than the window are pruned.
async fn share_failures(
    registry: &Registry,
    endpoint: &Endpoint,
    node: &str,
    now: i64,
    sweep: &mut FailureSweep,
) {
    let what = "sharing the failure counts";
    let Some(mut conn) = background::checked(Task::Reload, what, registry.store().conn().await)
    else {
        return;
    };
    let deltas = endpoint.guard.take_failure_deltas();
    if !deltas.is_empty() {
        let rows: Vec<store::failures::FailureDelta> = deltas
            .iter()
            .map(|(auth_id, minute, count)| store::failures::FailureDelta {
                auth_id: auth_id.clone(),
                minute: *minute,
                count: i64::from(*count),
            })
            .collect();
        let written = store::failures::add_auth_failures(&mut conn, node, &rows).await;
        if background::checked(Task::Reload, what, written).is_none() {
            endpoint.guard.return_failure_deltas(deltas);
        }
    }
    let window = endpoint.guard.policy().extension_window_secs.max(0);
    // The minute the window starts in counts whole: the sum errs high, never low.
    let since = (now - window) / 60;
    let sums = |rows: Vec<(String, i64)>| -> Vec<(String, u32)> {
        rows.into_iter()
            .map(|(id, n)| (id, u32::try_from(n).unwrap_or(u32::MAX)))
            .collect()
    };
    let started_over = sweep.cursor.is_empty();
    let page = store::failures::others_auth_failures_after(
        &mut conn,
        node,
        since,
        &sweep.cursor,
        SHARED_FAILURES_READ,
    )
    .await;
    if let Some(page) = background::checked(Task::Reload, what, page).map(sums) {
        let last_page = page.len() < usize::try_from(SHARED_FAILURES_READ).unwrap_or(usize::MAX);
        // One page that holds every account is the whole set: no top to read apart.
        let top = if started_over && last_page {
            Some(Vec::new())
        } else {
            let top =
                store::failures::others_auth_failures(&mut conn, node, since, SHARED_FAILURES_READ)
                    .await;
            background::checked(Task::Reload, what, top).map(sums)
        };
        if let Some(top) = top {
            match page.last() {
                Some((id, _)) if !last_page => sweep.cursor.clone_from(id),
                _ => sweep.cursor.clear(),
            }
            for (id, n) in page.iter().chain(&top) {
                if sweep.seen.len() < crate::guard::TABLE_CAPACITY || sweep.seen.contains_key(id) {
                    sweep.seen.insert(id.clone(), *n);
                }
            }
            if last_page {
                // The sweep is whole: accounts no longer failing are forgotten.
                endpoint.guard.set_others_failures(
                    std::mem::take(&mut sweep.seen).into_iter().collect(),
                    now,
                );
            } else {
                endpoint
                    .guard
                    .merge_others_failures(page.into_iter().chain(top).collect(), now);
            }
        }
    }
    if now % 60 == 0 {
        let pruned = store::failures::prune_auth_failures(&mut conn, since - 1).await;
        background::checked(Task::Reload, "pruning the shared failure counts", pruned);
    }
}

/// A bindings write that took longer than a second (another process held the database):
/// the answers waiting for it waited as long. Failures are the flush [`Health`]'s. At most
/// one line per [`WRITE_REPORT_EVERY`], saying how many since the last.
#[derive(Default)]
struct SlowWrites {
    last: Option<std::time::Instant>,
    slow: u64,
}

const WRITE_REPORT_EVERY: Duration = Duration::from_secs(10);
const WRITE_SLOW: Duration = Duration::from_secs(1);

impl SlowWrites {
    fn note(&mut self, took: Duration, now: std::time::Instant) {
        if took < WRITE_SLOW {
            return;
        }
        self.slow += 1;
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < WRITE_REPORT_EVERY)
        {
            return;
        }
        self.last = Some(now);
        tracing::warn!(
            slow = self.slow,
            last_ms = took.as_millis() as u64,
            "bindings writes took over a second (another process held the database)"
        );
        self.slow = 0;
    }
}

/// Samples every bounded table and the write-behind backlog into the metrics (once a
/// second, before the write-behind, so the backlog is what one second gathered).
fn sample_tables(endpoint: &Endpoint, transports: &Transports) {
    let m = &endpoint.metrics;
    let (backlog, waiting) = endpoint.registrar.backlog();
    m.write_behind_backlog
        .store(backlog as u64, Ordering::Relaxed);
    m.write_behind_waiting
        .store(waiting as u64, Ordering::Relaxed);
    let mut tables: Vec<(&'static str, u64)> = endpoint
        .table_sizes()
        .into_iter()
        .map(|(k, v)| (k, v as u64))
        .collect();
    tables.push(("tcp_connections", transports.connection_count() as u64));
    *m.tables.lock().unwrap_or_else(|p| p.into_inner()) = tables;
}

/// How often an unchanged active-calls snapshot is stamped again (so `sipward calls`
/// can tell a running server's empty list from a stopped server's).
const CALLS_STAMP_EVERY: i64 = 10;

/// Writes what `provider show` and `sipward calls` read: changed registration states,
/// and this node's trunk calls up (when they change, and stamped every 10 s). `last` is what
/// was written last; None writes in any case.
async fn write_trunk_state(
    registry: &Registry,
    endpoint: &Endpoint,
    node: &str,
    now: i64,
    last: &mut Option<(Vec<store::trunks::ActiveCallRow>, i64)>,
) {
    let what = "writing the provider status and active calls";
    let Some(mut conn) = background::checked(Task::CallState, what, registry.store().conn().await)
    else {
        return;
    };
    for s in endpoint.providers.take_status(now) {
        background::checked(
            Task::CallState,
            what,
            store::trunks::put_provider_status(&mut conn, &s).await,
        );
    }
    let calls = endpoint.b2bua.snapshot();
    let due = match last {
        Some((written, at)) => *written != calls || now - *at >= CALLS_STAMP_EVERY,
        None => true,
    };
    if due
        && background::checked(
            Task::CallState,
            what,
            store::trunks::replace_active_calls(&mut conn, node, &calls, now).await,
        )
        .is_some()
    {
        *last = Some((calls, now));
    }
}

/// Writes every changed extension's bindings in one transaction (one batch: the answers
/// waiting for it go out once it is committed), expiring bindings first when `sweep`;
/// on failure the changes stay dirty and are retried with the next batch.
/// `hold` is this node's name: the bindings it writes are its own (their flows are
/// this node's), and other nodes' stay as they are. They are written only in a
/// transaction that finds the name still this process's.
async fn flush(
    registry: &Registry,
    endpoint: &Endpoint,
    hold: &crate::node::NodeHold,
    now: i64,
    sweep: bool,
) -> Result<()> {
    let ended = endpoint.take_graces_ended();
    if !ended.is_empty() {
        let mut conn = registry.store().conn().await?;
        if let Err(e) = store::grace::end_graces(&mut conn, &ended, now).await {
            endpoint.return_graces_ended(ended);
            return Err(e.into());
        }
    }
    if sweep {
        endpoint.registrar.sweep(now);
    }
    endpoint
        .metrics
        .bindings
        .store(endpoint.registrar.binding_count() as u64, Ordering::Relaxed);
    let batch = endpoint.registrar.take_dirty();
    if batch.rows.is_empty() {
        endpoint.registrar.committed(batch.id);
        return Ok(());
    }
    let write = async {
        let mut tx = registry.store().begin().await?;
        if !hold.still_held(&mut tx).await? {
            return Err(crate::Error::NodeNameLost {
                node: hold.name().to_owned(),
            });
        }
        let holder = hold.name();
        // Rows no credentials back any more (changed or removed since) are not written:
        // the store refuses them. The whole batch is a few statements (on PostgreSQL each
        // is a round trip, and the answers wait for all of them).
        store::bindings::replace_node_batch(&mut tx, holder, &batch.rows, now).await?;
        if sweep {
            store::bindings::delete_expired_bindings(&mut tx, now).await?;
        }
        tx.commit().await?;
        Ok::<_, crate::Error>(())
    };
    let result = write.await;
    match &result {
        Ok(()) => endpoint.registrar.committed(batch.id),
        Err(_) => endpoint
            .registrar
            .mark_dirty(batch.rows.into_iter().map(|(n, _)| n)),
    }
    result
}
