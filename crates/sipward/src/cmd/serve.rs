//! `sipward serve`: binds SIP (UDP+TCP) and HTTP, prints one JSON ready line, serves
//! until SIGINT or SIGTERM, then writes the bindings a last time. SIGHUP reloads the
//! config file.
//!
//! SIP runs on the main runtime; the console (every HTTP request: the audit behind the
//! extension list, argon2 logins, backups, CSV import) and the scheduled backups run on
//! a runtime of their own, whose threads are niced, so no console request can hold a
//! thread that serves SIP or take its CPU.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use accounts::Registry;
use pbx::server::{self, Live, Reconfigure, ServeConfig, ServerKeys};
use rand_core::Rng;

use crate::cli::ServeArgs;
use crate::config::Config;
use crate::error::OperatorError;

/// SIGINT or SIGTERM. The handlers are installed when this is called, before the ready
/// line: a SIGTERM right after "ready" stops the server cleanly instead of killing it.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Where the config came from, for SIGHUP to read it again, and the log it may refilter.
#[derive(Debug)]
pub struct Source {
    /// `--config`, if given (else DATA/sipward.toml when present).
    pub config: Option<PathBuf>,
    pub data: PathBuf,
    pub log: crate::log::Log,
    /// `--log` / RUST_LOG: when given, it wins over the file's `[log] filter`.
    pub log_filter: Option<String>,
    /// `--database` / SIPWARD_DATABASE_URL (a reload keeps the database it runs on).
    pub database: Option<String>,
}

/// Threads of the console's runtime: one worker, and at most two blocking threads
/// (argon2, archives) at a time.
const CONSOLE_WORKERS: usize = 1;
const CONSOLE_BLOCKING: usize = 2;
/// How much less CPU the console's threads get than SIP's when both want it (nice 10:
/// about a tenth of the share).
const CONSOLE_NICE: i32 = 10;

/// Settings that weaken a defence: said at start and at each reload, one event each.
fn announce_findings(findings: &[policy::Finding]) {
    for f in findings {
        accounts::event::emit(&serde_json::json!({
            "event": "config_weakened",
            "rule": f.rule,
            "severity": f.severity,
            "field": f.field,
            "detail": f.message,
        }));
    }
}

/// The runtime the console and scheduled backups run on, apart from SIP's. Dropped, it
/// shuts down without waiting: a runtime dropped the ordinary way inside another one's
/// task (any early return of `run`) would panic.
struct ConsoleRuntime(Option<tokio::runtime::Runtime>);

impl ConsoleRuntime {
    fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(rt) => rt.spawn(future),
            // Only between drop's take and the end of drop: never seen by a caller.
            None => tokio::spawn(future),
        }
    }
}

impl Drop for ConsoleRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            // Blocking threads still busy (a backup being written) are not waited for.
            rt.shutdown_background();
        }
    }
}

fn console_runtime() -> std::io::Result<ConsoleRuntime> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CONSOLE_WORKERS)
        .max_blocking_threads(CONSOLE_BLOCKING)
        .thread_name("console")
        .on_thread_start(|| {
            let tid = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(Some(tid), CONSOLE_NICE) {
                accounts::background::failed(
                    accounts::background::Task::SocketSetup,
                    "lowering the console thread's priority",
                    &std::io::Error::from(e),
                );
            }
        })
        .enable_all()
        .build()?;
    Ok(ConsoleRuntime(Some(rt)))
}

/// This node's name: `--node-name`, else `[cluster] node`, else the host name.
fn node_name(
    flag: Option<&str>,
    config: Option<&policy::node::NodeName>,
) -> anyhow::Result<policy::node::NodeName> {
    if let Some(raw) = flag {
        return policy::node::NodeName::parse(raw)
            .map_err(|e| OperatorError(format!("--node-name: {e}")).into());
    }
    if let Some(name) = config {
        return Ok(name.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    policy::node::NodeName::parse(&host).map_err(|e| {
        OperatorError(format!(
            "the host name {:?} cannot name this node ({e}): give --node-name or [cluster] node",
            host.trim()
        ))
        .into()
    })
}

pub async fn run(
    reg: &Registry,
    args: ServeArgs,
    config: &Config,
    source: Source,
    mut hangup: tokio::signal::unix::Signal,
) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal()
        .map_err(|e| anyhow::anyhow!("cannot install the SIGTERM/SIGINT handlers: {e}"))?;
    // A zero-out that is not an internal extension is refused before anything listens.
    let operator = crate::config::voicemail_operator(config, reg).await?;
    let findings = config.findings_with(&reg.guard_view().await?.policy);
    announce_findings(&findings);
    raise_fd_limit();
    let mut rng = rand_core::UnwrapErr(rand::rngs::SysRng);
    let mut keys = ServerKeys {
        nonce: [0; 32],
        dummy: [0; 32],
        notify: [0; 32],
    };
    rng.fill_bytes(&mut keys.nonce);
    rng.fill_bytes(&mut keys.dummy);
    rng.fill_bytes(&mut keys.notify);
    let mailer = config
        .mail
        .as_ref()
        .map(accounts::mail::Mailer::new)
        .transpose()
        .map_err(|e| OperatorError(e.to_string()))?;
    // SIP over TLS: the certificate (made at the first start when none is configured)
    // is in force before anything listens.
    let tls = if config.tls.enabled {
        let addr = args
            .sips
            .or(config.tls.listen)
            .unwrap_or_else(|| next_port(args.sip));
        let source = crate::tls::Source::of(&config.tls, reg.data_dir().root());
        let names = crate::tls::names(&config.tls, &config.settings, addr);
        let identity = crate::tls::open(&source, &names, crate::clock::clock().now())?;
        Some((source, server::TlsListen { addr, identity }))
    } else {
        None
    };
    let cfg = ServeConfig {
        sip: args.sip,
        registrar: config.registrar.clone(),
        nonce_max_age_secs: config.nonce_lifetime_secs,
        digest_algorithms: config.digest_algorithms.clone(),
        bans: config.bans.clone(),
        min_strength_score: config.settings.policy.min_strength_score,
        udp_workers: std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8),
        tcp: config.sip_tcp.clone(),
        messages: config.sip_messages,
        mailer,
        tls: tls.as_ref().map(|(_, t)| t.clone()),
        node: node_name(args.node_name.as_deref(), config.node.as_ref())?,
        internal: config.internal,
        version_poll: config.version_poll,
        // Voicemail answers calls only with a `[media]` section: no RTP port is opened
        // until the operator names the range the firewall lets through.
        voicemail: config.rtp.clone().map(|rtp| {
            let boxes = Arc::new(pbx::mailbox::Mailboxes::new(reg.clone()));
            server::VoicemailConfig {
                deposits: boxes.clone(),
                rtp,
                limits: pbx::voicemail::DepositLimits::default(),
                boxes: Some(boxes),
                any_box: pbx::voicemail::RetrievalNumbers::default().any_box,
                operator: operator.clone(),
            }
        }),
    };
    // Before the server claims its node name: on SQLite this lock is what proves the
    // process the data dir's only server (`pbx::node`).
    let data_root = reg.data_dir().root().to_owned();
    let _serving =
        super::backup::DirLock::take(&super::backup::serve_lock_path(&data_root), || {
            format!(
                "another sipward serve is running on {}",
                data_root.display()
            )
        })?;
    let bound = server::bind(reg.clone(), cfg, keys, crate::clock::clock()).await?;
    let reconfigure = bound.reconfigure();
    let http = std::net::TcpListener::bind(args.http)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| OperatorError(format!("cannot serve HTTP on {}: {e}", args.http)))?;
    let http_addr = http.local_addr()?;
    let console_rt = console_runtime()
        .map_err(|e| anyhow::anyhow!("cannot start the console's runtime: {e}"))?;
    let ready = Arc::new(AtomicBool::new(false));
    let mut prov_nonce = [0u8; 32];
    rng.fill_bytes(&mut prov_nonce);
    // The console sees the running server only through this handle.
    let server = bound.handle();
    let prov = console::provisioning::Provisioning::new(
        reg.clone(),
        server.clone(),
        policy::Secret::new(reg.provisioning_path().await?),
        sip::nonce::NonceKey::new(prov_nonce),
        crate::clock::clock(),
    );
    let counters = Arc::new(console::entry::Counters::default());
    let entry = console::entry::Entry::new(
        config.http.clone(),
        counters.clone(),
        reg.clone(),
        crate::clock::clock(),
    );
    let web = console::web::Web::new(
        reg.clone(),
        crate::clock::clock(),
        console::web::Options {
            listening: (bound.sip_udp, http_addr),
            sips: bound.sip_tls,
            allow: config.console_allow.clone(),
            backups_dir: config
                .backup
                .dir
                .clone()
                .unwrap_or_else(|| reg.backups_dir()),
            config_findings: {
                let config = config.clone();
                console::web::ConfigFindings(Arc::new(move |guard| config.findings_with(guard)))
            },
            trusted_proxies: config.http.trusted_proxies.clone(),
            http: counters.clone(),
        },
        server.clone(),
    )
    .map_err(|e| anyhow::anyhow!("the console's templates do not compile: {e}"))?;
    // The dashboard's pictures: the server's counters and gauges, every minute. On the
    // console's runtime: each sample may run the audit over every account, work that
    // never runs on the threads that serve SIP.
    let trends = console_rt.spawn(
        console::trends::Recorder::new(
            reg.clone(),
            web.audit.clone(),
            crate::clock::clock(),
            server.clone(),
        )
        .run(std::time::Duration::from_secs(60), std::future::pending()),
    );
    let app = console::router(
        console::ConsoleState {
            server,
            ready: ready.clone(),
            http: counters.clone(),
        },
        prov,
        web,
        entry,
    );
    let per_source = config.http.connections_per_source;
    let limits = console::listener::Limits {
        per_source,
        per_prefix: per_source.saturating_mul(config.bans.prefix_factor),
        ipv4_prefix: config.bans.ipv4_prefix,
        ipv6_prefix: config.bans.ipv6_prefix,
        header_timeout: config.http.header_timeout,
        trusted_proxies: config.http.trusted_proxies.clone(),
    };
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = console_rt.spawn(async move {
        // Registered with the console runtime's reactor, where it is served.
        let http = tokio::net::TcpListener::from_std(http)?;
        console::listener::serve(http, app, limits, counters, async {
            // Sent by this function before it returns; a dropped sender stops it too.
            drop(http_stopped.await);
        })
        .await;
        Ok::<_, std::io::Error>(())
    });

    // Reloads of the certificate: SIGHUP, `sipward tls reload`, the files changing.
    // SIGHUP reloads the config and then the certificate: its one handler (below)
    // forwards to this channel.
    let (tls_reload, hup) = tokio::sync::mpsc::channel::<()>(1);
    let tls_watch = match tls {
        Some((source, listen)) => {
            let metrics = bound.endpoint.metrics.clone();
            crate::tls::record_expiry(&listen.identity, &metrics, crate::clock::clock().now());
            Some(tokio::spawn(crate::tls::watch(
                reg.clone(),
                source,
                listen.identity,
                metrics,
                hup,
            )))
        }
        None => None,
    };

    ready.store(true, Ordering::Release);
    let mut line = serde_json::json!({
        "event": "ready",
        "sip_udp": bound.sip_udp.to_string(),
        "sip_tcp": bound.sip_tcp.to_string(),
        "http": http_addr.to_string(),
    });
    if let Some(a) = bound.sip_tls {
        line["sip_tls"] = a.to_string().into();
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    drop(out);

    let scheduler = config.backup.interval_secs.map(|secs| {
        console_rt.spawn(super::backup::scheduled(
            reg.clone(),
            config.backup.clone(),
            secs,
            bound.endpoint.metrics.clone(),
        ))
    });
    let reloader = tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload(&source, &reconfigure, &tls_reload).await;
        }
    });
    bound.run(shutdown).await?;
    reloader.abort();
    if let Some(s) = scheduler {
        s.abort();
    }
    trends.abort();
    if let Some(w) = tls_watch {
        w.abort();
    }
    // The receiver is gone only if the console stopped by itself: nothing to stop.
    stop_http.send(()).ok();
    match http_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the console could not serve HTTP"),
        Err(e) => tracing::error!(error = %e, "the console stopped abnormally"),
    }
    drop(console_rt);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: everything that is reloaded without a restart: the config, then the TLS
/// certificate (`tls`: the certificate watch's channel).
async fn reload(source: &Source, server: &Reconfigure, tls: &tokio::sync::mpsc::Sender<()>) {
    reload_config(source, server).await;
    // Full: a reload is pending already, and it reads the files anyway.
    tls.try_send(()).ok();
}

/// Reads the config file again and puts what can change live in force: the guard's
/// rules, the dial plan and classes of service, the mail settings and the log filter.
/// A file that does not load changes nothing, and says why in one line.
async fn reload_config(source: &Source, server: &Reconfigure) {
    let loaded = crate::config::load(
        source.config.as_deref(),
        &source.data,
        source.database.as_deref(),
    )
    .and_then(|c| {
        let mailer = c
            .mail
            .as_ref()
            .map(accounts::mail::Mailer::new)
            .transpose()
            .map_err(|e| OperatorError(format!("[mail]: {e}")))?;
        Ok((c, mailer))
    });
    let loaded = match loaded {
        Ok((config, mailer)) => crate::config::voicemail_operator(&config, server.registry())
            .await
            .map(|operator| (config, mailer, operator)),
        Err(e) => Err(e),
    };
    let (config, mailer, voicemail_operator) = match loaded {
        Ok(v) => v,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            tracing::error!(
                "config not reloaded, the running settings stay: {}",
                chain.join(": ")
            );
            return;
        }
    };
    if source.log_filter.is_none() {
        let spec = config
            .log_filter
            .as_deref()
            .unwrap_or(crate::log::DEFAULT_FILTER);
        if let Err(e) = source.log.set_filter(spec) {
            tracing::error!(error = %e, "the log filter was not replaced");
        }
    }
    let live = Live {
        bans: config.bans.clone(),
        dialplan: config.settings.dialplan.clone(),
        mailer,
        voicemail_operator,
    };
    if let Err(e) = server.apply(live).await {
        let e: anyhow::Error = e.into();
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        tracing::warn!(
            "config reloaded, but the classes of service wait for the next directory reload: {}",
            chain.join(": ")
        );
        return;
    }
    announce_findings(&config.findings_with(&server.guard_policy()));
    tracing::info!(
        "config reloaded: [guard], [dialplan], [mail], [log] and [voicemail] are in force; [sip], [http], [console], [registrar], [policy], [provisioning] and [backup] take effect at the next start"
    );
}

/// The TLS address beside a SIP address: the next port (5061 beside 5060), or an
/// ephemeral one beside an ephemeral one.
pub(crate) fn next_port(sip: std::net::SocketAddr) -> std::net::SocketAddr {
    let port = match sip.port() {
        0 => 0,
        p => p.saturating_add(1),
    };
    std::net::SocketAddr::new(sip.ip(), port)
}

/// Raises the soft limit on open files to the hard one: every SIP and HTTP connection is
/// a file descriptor, and the usual soft limit (1,024) is reached long before the
/// connection caps are. Past it, the accept loops back off (`sipward_accept_backoff_total`).
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    /// Linux's default `fs.nr_open`: the most a soft limit may be when the hard one is
    /// unlimited.
    const NR_OPEN: u64 = 1 << 20;
    let now = getrlimit(Resource::Nofile);
    let target = now.maximum.unwrap_or(NR_OPEN);
    if now.current.is_some_and(|c| c < target) {
        let raised = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: now.maximum,
            },
        );
        if let Err(e) = raised {
            accounts::event::emit(&serde_json::json!({
                "event": "fd_limit_not_raised",
                "soft": now.current,
                "hard": now.maximum,
                "error": e.to_string(),
            }));
        }
    }
    // The SIP connection bound (TCP and TLS together) needs as many descriptors, plus
    // room for the HTTP side, the database and the sockets: say so when the limit in
    // force is lower, since the bound then cannot be reached (the accept loops back off
    // before it).
    let needed = u64::try_from(pbx::transport::MAX_TCP_CONNECTIONS)
        .unwrap_or(u64::MAX)
        .saturating_add(FD_RESERVE);
    let in_force = getrlimit(Resource::Nofile).current;
    if in_force.is_some_and(|c| c < needed) {
        accounts::event::emit(&serde_json::json!({
            "event": "fd_limit_below_connection_bound",
            "soft": in_force,
            "hard": now.maximum,
            "needed": needed,
        }));
    }
}

/// Descriptors kept beside the SIP connection bound: the HTTP listener's connections, the
/// database, the listeners and UDP sockets, the RTP sockets of a few hundred calls.
const FD_RESERVE: u64 = 2048;
