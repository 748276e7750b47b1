//! `sipward serve`: binds SIP (UDP+TCP) and HTTP, prints one JSON ready line, serves
//! until SIGINT or SIGTERM, then writes the bindings a last time.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use accounts::Registry;
use pbx::server::{self, ServeConfig, ServerKeys};
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

pub async fn run(reg: &Registry, args: ServeArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal()
        .map_err(|e| anyhow::anyhow!("cannot install the SIGTERM/SIGINT handlers: {e}"))?;
    // Settings that weaken a defence are said at start, one event line each.
    let findings = config.findings();
    for f in &findings {
        eprintln!(
            "{}",
            serde_json::json!({
                "event": "config_weakened",
                "rule": f.rule,
                "severity": f.severity,
                "field": f.field,
                "detail": f.message,
            })
        );
    }
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
        mailer,
        tls: tls.as_ref().map(|(_, t)| t.clone()),
    };
    let bound = server::bind(reg.clone(), cfg, keys, crate::clock::clock()).await?;
    let http = tokio::net::TcpListener::bind(args.http)
        .await
        .map_err(|e| OperatorError(format!("cannot serve HTTP on {}: {e}", args.http)))?;
    let http_addr = http.local_addr()?;
    let data_root = reg.data_dir().root().to_owned();
    let _serving =
        super::backup::DirLock::take(&super::backup::serve_lock_path(&data_root), || {
            format!(
                "another sipward serve is running on {}",
                data_root.display()
            )
        })?;
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
    let app = console::router(
        console::ConsoleState {
            server,
            ready: ready.clone(),
            http: counters.clone(),
        },
        prov,
        console::web::Web::new(
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
                guard: config.bans.clone(),
                config_findings: findings.clone(),
                trusted_proxies: config.http.trusted_proxies.clone(),
                http: counters.clone(),
            },
        )
        .map_err(|e| anyhow::anyhow!("the console's templates do not compile: {e}"))?,
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
    let http_task = tokio::spawn(console::listener::serve(
        http,
        app,
        limits,
        counters,
        async {
            let _ = http_stopped.await;
        },
    ));

    // Reloads of the certificate: SIGHUP, `sipward tls reload`, the files changing.
    let tls_watch = match tls {
        Some((source, listen)) => {
            let hup = tls_hup()?;
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
        tokio::spawn(super::backup::scheduled(
            reg.clone(),
            config.backup.clone(),
            secs,
        ))
    });
    bound.run(shutdown).await?;
    if let Some(s) = scheduler {
        s.abort();
    }
    if let Some(w) = tls_watch {
        w.abort();
    }
    let _ = stop_http.send(());
    let _ = http_task.await;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
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

/// SIGHUP, as a stream of reload requests for the TLS certificate (kept to this one
/// small forwarder so that a config reload on SIGHUP can share the signal).
fn tls_hup() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGHUP handler: {e}"))?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
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
            eprintln!(
                "{}",
                serde_json::json!({
                    "event": "fd_limit_not_raised",
                    "soft": now.current,
                    "hard": now.maximum,
                    "error": e.to_string(),
                })
            );
        }
    }
}
