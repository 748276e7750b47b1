//! Opening the data dir for a command: created on first use (with the first console
//! administrator), what opening found told to the operator, and a data dir older than
//! this build's security epoch backed up and hardened before any command runs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use accounts::Registry;
use accounts::backup::utc_stamp;
use policy::epoch::CURRENT;
use policy::generate;
use store::DataDir;
use store::backup::secrecy::ExposeSecret;
use store::backup::{self as archive, Seal};

use crate::backup_keys::{config_seal, default_dir};
use crate::clock::clock;
use crate::config::{self, BackupConfig};
use crate::error::OperatorError;

/// Opens the data dir named on the command line, creating it on first use.
pub async fn open_registry(
    path: &std::path::Path,
    config: &config::Config,
) -> anyhow::Result<Registry> {
    let mut settings = config.settings.clone();
    let data = DataDir::new(path);
    // The private CA phones are given with their files (made once, DATA/tls).
    settings.provisioning.ca_pem = crate::tls::private_ca(&config.tls, path, false)?;
    let rng = Box::new(rand_core::UnwrapErr(rand::rngs::SysRng));
    let (mut registry, opened) = Registry::open_on(
        &data,
        config.database.as_ref(),
        settings.clone(),
        rng,
        clock(),
    )
    .await?;
    // A new data dir (or one from before TLS) gets its CA now; the registry is opened
    // again so that phones' files written by this command carry it.
    let ca = crate::tls::private_ca(&config.tls, path, true)?;
    if ca != settings.provisioning.ca_pem {
        settings.provisioning.ca_pem = ca;
        let rng = Box::new(rand_core::UnwrapErr(rand::rngs::SysRng));
        registry.store().close().await;
        registry = Registry::open_on(&data, config.database.as_ref(), settings, rng, clock())
            .await?
            .0;
    }
    if opened.created {
        eprintln!(
            "created data dir {} (database, secrets key, fax extension {} with strong credentials)",
            path.display(),
            accounts::registry::DEFAULT_FAX_NUMBER
        );
        let password = first_admin(&registry).await?;
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
    if let Some(n) = opened.ha1_sealed.filter(|n| *n > 0) {
        eprintln!(
            "sealed the stored digests (HA1s) of {n} accounts and grace windows with the data dir's key"
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
    let (backup, key) = automatic(registry, &config.backup).await?;
    eprintln!(
        "upgrading the data dir from security epoch {from} to {}: backed it up first to {}{}",
        policy::epoch::CURRENT,
        backup.display(),
        key.map(|k| format!(" (its key: {}; move both off this machine, or delete them once the upgrade is checked)", k.display()))
            .unwrap_or_default()
    );
    let (changes, _) = registry
        .harden(true, &mut crate::output::regenerate_progress)
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

/// Before a security epoch hardens an upgraded data dir: a backup of it as it was, for
/// rollback. Encrypted with `[backup]`'s key; without one, to a new age key written
/// beside it (mode 0600), so the data never leaves the data dir less protected than it
/// was. Returns the backup's path and the key file's, if one was made.
pub async fn automatic(
    reg: &Registry,
    config: &BackupConfig,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let dir = default_dir(reg, config)?;
    let now = clock().now();
    let from = reg.security_epoch().await?;
    let out = dir.join(format!("pre-epoch-{CURRENT}-{}.swbak", utc_stamp(now)));
    let (seal, key_file) = if config.recipient.is_some() || config.passphrase_file.is_some() {
        (config_seal(config)?, None)
    } else {
        let (secret, public) = archive::new_identity();
        let key_path = out.with_extension("key");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(|e| OperatorError(format!("cannot write {}: {e}", key_path.display())))?;
        writeln!(
            f,
            "# the key of {} (sipward's backup before security epoch {CURRENT}, from epoch {from})\n{}",
            out.display(),
            secret.expose_secret()
        )?;
        (Seal::Recipient(public), Some(key_path))
    };
    reg.create_backup(
        &out,
        &seal,
        "sipward (before security epoch)",
        &mut |_, _| {},
    )
    .await?;
    Ok((out, key_file))
}

/// The administrator "admin" of a new data dir, with a generated password (returned,
/// to be shown once).
async fn first_admin(reg: &Registry) -> anyhow::Result<String> {
    let mut rng = rand_core::UnwrapErr(rand::rngs::SysRng);
    let password = generate::password(&mut rng, console::admin::GENERATED_PASSWORD_LEN, &[]);
    let hash = console::admin::hash_password(password.expose(), &mut rng)
        .ok_or_else(|| OperatorError("the password cannot be hashed".into()))?;
    console::admin::store_password(reg, "admin", &hash, clock().now()).await?;
    Ok(password.expose().to_owned())
}
