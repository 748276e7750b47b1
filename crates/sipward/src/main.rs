//! `sipward`: the binary. It reads the environment, the config file and the clock,
//! wires the libraries together, and turns errors into one sentence and an exit code
//! (2 for bad input or environment, 1 for findings and failures).

mod cli;
mod cmd;
mod config;
mod output;

use std::process::ExitCode;
use std::sync::Arc;

use accounts::Registry;
use clap::Parser;
use policy::clock::Clock;
use store::DataDir;

/// An error caused by the operator's input or environment: exit code 2.
#[derive(Debug)]
pub struct OperatorError(pub String);

impl std::fmt::Display for OperatorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OperatorError {}

#[derive(Debug)]
struct SystemClock;

pub fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    fn instant(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
}

/// Opens the data dir named on the command line, creating it on first use.
pub async fn open_registry(
    path: &std::path::Path,
    config: &config::Config,
) -> anyhow::Result<Registry> {
    let settings = config.settings.clone();
    let data = DataDir::new(path);
    let rng = Box::new(rand_core::UnwrapErr(rand::rngs::SysRng));
    let (registry, opened) = Registry::open(&data, settings, rng, clock()).await?;
    if opened.created {
        eprintln!(
            "created data dir {} (database, secrets key, fax extension {} with strong credentials)",
            path.display(),
            accounts::registry::DEFAULT_FAX_NUMBER
        );
        let password = cmd::admin::first_admin(&registry).await?;
        eprintln!(
            "console login: admin / {password}  (shown once; `sipward admin passwd` sets a new one)"
        );
    }
    if let Some((number, reason)) = opened.provisioning_failed.first() {
        eprintln!(
            "warning: the provisioning files of {} phone(s) cannot be written (extension {number}: {reason}); they are retried with every command",
            opened.provisioning_failed.len()
        );
    }
    if let Some(n) = opened.rehashed {
        eprintln!(
            "the realm changed to {:?}: re-computed the digests of {n} accounts",
            registry.settings().realm
        );
    }
    if let Some(from) = opened.epoch_behind {
        harden_upgraded(&registry, config, from).await?;
    }
    Ok(registry)
}

/// An upgraded data dir older than this version's security epoch: backed up as it is,
/// then hardened (through the Re-Generate workflow, so files and mails follow), with
/// every change printed and in the audit log.
async fn harden_upgraded(
    registry: &Registry,
    config: &config::Config,
    from: u32,
) -> anyhow::Result<()> {
    let (backup, key) = cmd::backup::automatic(registry, &config.backup).await?;
    eprintln!(
        "upgrading the data dir from security epoch {from} to {}: backed it up first to {}{}",
        policy::epoch::CURRENT,
        backup.display(),
        key.map(|k| format!(" (its key: {}; move both off this machine, or delete them once the upgrade is checked)", k.display()))
            .unwrap_or_default()
    );
    let (changes, _) = registry
        .harden(true, &mut cmd::regenerate::progress)
        .await?;
    for c in &changes {
        eprintln!(
            "security epoch {}: {} {}: {}",
            c.epoch, c.action, c.subject, c.detail
        );
    }
    eprintln!(
        "security epoch {} applied: {} changes (see `sipward log`); new passwords are in the phones' files and the welcome mails",
        policy::epoch::CURRENT,
        changes.len()
    );
    Ok(())
}

fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<OperatorError>() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<pbx::Error>() {
            return if e.is_operator_error() { 2 } else { 1 };
        }
        if let Some(e) = cause.downcast_ref::<accounts::Error>() {
            return if e.is_operator_error() { 2 } else { 1 };
        }
        if let Some(e) = cause.downcast_ref::<store::Error>() {
            return if e.is_operator_error() { 2 } else { 1 };
        }
    }
    1
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            let chain: Vec<String> = err.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::from(exit_code_for(&err))
        }
    }
}
