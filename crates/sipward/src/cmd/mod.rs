//! One module per command area; each turns parsed flags into registry calls and output.

pub mod admin;
mod advise;
mod audit;
mod audit_log;
pub mod backup;
mod calls;
mod ext;
mod guard;
mod import;
mod mail;
pub mod regenerate;
mod serve;
mod store;
mod tls;
mod trunk;
mod vm;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli, log: crate::log::Log) -> anyhow::Result<ExitCode> {
    let Cli {
        data,
        config: config_path,
        command,
        log_filter,
        database,
        ..
    } = cli;
    let command = match command {
        // Backups open data dirs themselves: a restore must not create its target first.
        Command::Backup(c) => {
            return backup::run(&data, config_path.as_deref(), database.as_deref(), c).await;
        }
        // A copy names its own source and target.
        Command::Store(c) => return store::run(database.as_deref(), c).await,
        other => other,
    };
    // The server's SIGHUP handler goes in before anything slow (the config, the
    // registry): a reload asked for while it starts must not kill it (SIGHUP's default),
    // and is carried out once it runs.
    let hangup = match command {
        Command::Serve(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| anyhow::anyhow!("cannot install the SIGHUP handler: {e}"))?,
        ),
        _ => None,
    };
    let config = crate::config::load(config_path.as_deref(), &data, database.as_deref())?;
    if log_filter.is_none()
        && let Some(spec) = &config.log_filter
    {
        log.set_filter(spec)?;
    }
    let registry = crate::open::open_registry(&data, &config).await?;
    let code = match command {
        Command::Serve(a) => {
            let hangup = hangup.ok_or_else(|| anyhow::anyhow!("no SIGHUP handler"))?;
            let source = serve::Source {
                config: config_path,
                data: data.clone(),
                log,
                log_filter,
                database: database.clone(),
            };
            serve::run(&registry, a, &config, source, hangup).await?
        }
        Command::Ext(c) => ext::run(&registry, c, &config).await?,
        Command::Gateway(c) => trunk::gateway(&registry, c).await?,
        Command::Provider(c) => trunk::provider(&registry, c).await?,
        Command::Audit(a) => audit::run(&registry, a, &config).await?,
        Command::Import(a) => import::run(&registry, a).await?,
        Command::Ban(c) => guard::ban(&registry, c).await?,
        Command::Allow(c) => guard::allow(&registry, c).await?,
        Command::Guard(c) => guard::thresholds(&registry, c).await?,
        Command::Mail(c) => mail::run(&registry, c, &config).await?,
        Command::Route(c) => calls::route(&registry, c).await?,
        Command::Did(c) => calls::did(&registry, c).await?,
        Command::Calls { out } => calls::calls(&registry, out.json).await?,
        Command::Vm(c) => vm::run(&registry, c, &config).await?,
        Command::Admin(c) => admin::run(&registry, c).await?,
        Command::Log { limit, out } => backup::log(&registry, limit, out.json).await?,
        Command::Tls(c) => tls::run(&registry, c, &config).await?,
        Command::Advise {
            sip,
            http,
            remote_phones,
            out,
        } => advise::run(&registry, &config, sip, http, remote_phones, out.json).await?,
        // Returned above, before any data dir was opened.
        Command::Backup(_) | Command::Store(_) => ExitCode::from(2),
    };
    registry.store().close().await;
    Ok(code)
}
