//! Where backups go and what seals and opens them. Keys come from flags first, then
//! `[backup]` in the config, then `SIPWARD_BACKUP_PASSPHRASE`, then a prompt; scheduled
//! and automatic backups never prompt.

use std::fs;
use std::io::IsTerminal;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use accounts::Registry;
use store::backup::secrecy::{ExposeSecret, SecretString};
use store::backup::{self as archive, Seal, Unseal};

use crate::cli::BackupKeyArgs;
use crate::config::BackupConfig;
use crate::error::OperatorError;

/// The env variable a passphrase can come from (never a flag: flags show in `ps`).
const PASSPHRASE_ENV: &str = "SIPWARD_BACKUP_PASSPHRASE";
/// Passphrases shorter than this are refused for new backups.
const MIN_PASSPHRASE: usize = 12;

/// The directory `backup create` writes to without `--out` (created 0700).
pub fn default_dir(reg: &Registry, config: &BackupConfig) -> anyhow::Result<PathBuf> {
    let dir = config.dir.clone().unwrap_or_else(|| reg.backups_dir());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| OperatorError(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

fn read_passphrase_file(path: &Path) -> anyhow::Result<SecretString> {
    let text = fs::read_to_string(path).map_err(|e| {
        OperatorError(format!(
            "cannot read the passphrase file {}: {e}",
            path.display()
        ))
    })?;
    let line = text.lines().next().unwrap_or("").to_owned();
    if line.is_empty() {
        return Err(
            OperatorError(format!("the passphrase file {} is empty", path.display())).into(),
        );
    }
    Ok(SecretString::from(line))
}

fn env_passphrase() -> Option<SecretString> {
    std::env::var(PASSPHRASE_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .map(SecretString::from)
}

fn prompt(confirm: bool) -> anyhow::Result<SecretString> {
    if !std::io::stdin().is_terminal() {
        return Err(OperatorError(format!(
            "no backup passphrase: give --passphrase-file, --recipient/--identity, or set {PASSPHRASE_ENV}"
        ))
        .into());
    }
    let first = rpassword::prompt_password("backup passphrase: ")
        .map_err(|e| OperatorError(format!("cannot read the passphrase: {e}")))?;
    if confirm {
        let again = rpassword::prompt_password("again: ")
            .map_err(|e| OperatorError(format!("cannot read the passphrase: {e}")))?;
        if again != first {
            return Err(OperatorError("the passphrases differ".into()).into());
        }
    }
    Ok(SecretString::from(first))
}

fn recipient_seal(r: &str) -> anyhow::Result<Seal> {
    archive::parse_recipient(r).map_err(|e| OperatorError(e.to_string()))?;
    Ok(Seal::Recipient(r.trim().to_owned()))
}

/// How a new backup is sealed: flags, then `[backup]`, then the env variable, then a
/// prompt.
pub fn seal_for(key: &BackupKeyArgs, config: &BackupConfig) -> anyhow::Result<Seal> {
    if key.identity.is_some() {
        return Err(OperatorError(
            "--identity opens backups; to make one for a key, give its --recipient".into(),
        )
        .into());
    }
    // Flags first, then the config, then the environment, then a prompt.
    let passphrase = if let Some(r) = &key.recipient {
        return recipient_seal(r);
    } else if let Some(f) = &key.passphrase_file {
        read_passphrase_file(f)?
    } else if let Some(r) = &config.recipient {
        return recipient_seal(r);
    } else if let Some(f) = &config.passphrase_file {
        read_passphrase_file(f)?
    } else if let Some(p) = env_passphrase() {
        p
    } else {
        prompt(true)?
    };
    if passphrase.expose_secret().chars().count() < MIN_PASSPHRASE {
        return Err(OperatorError(format!(
            "the backup passphrase must be at least {MIN_PASSPHRASE} characters (it protects every password in the backup)"
        ))
        .into());
    }
    Ok(Seal::Passphrase(passphrase))
}

/// The key `[backup]` names (scheduled backups never prompt).
pub fn config_seal(config: &BackupConfig) -> anyhow::Result<Seal> {
    match (&config.recipient, &config.passphrase_file) {
        (Some(r), _) => Ok(Seal::Recipient(r.clone())),
        (None, Some(f)) => {
            // Checked at load when it existed; a file that appeared since is checked here
            // (once it could be read: a missing file says so).
            let passphrase = read_passphrase_file(f)?;
            crate::config::private(f, "the backup passphrase", "SIPWARD_BACKUP_PASSPHRASE")?;
            Ok(Seal::Passphrase(passphrase))
        }
        (None, None) => {
            Err(OperatorError("[backup] names no recipient or passphrase_file".into()).into())
        }
    }
}

/// How a backup is opened: `--identity`, a passphrase file, `[backup]`'s passphrase
/// file, the env variable, a prompt.
pub fn unseal_for(key: &BackupKeyArgs, config: &BackupConfig) -> anyhow::Result<Unseal> {
    if key.recipient.is_some() {
        return Err(OperatorError(
            "--recipient makes backups; to open one, give the matching --identity file".into(),
        )
        .into());
    }
    if let Some(path) = &key.identity {
        let text = fs::read_to_string(path).map_err(|e| {
            OperatorError(format!(
                "cannot read the identity file {}: {e}",
                path.display()
            ))
        })?;
        return Ok(Unseal::Identity(SecretString::from(text)));
    }
    let p = match key
        .passphrase_file
        .as_ref()
        .or(config.passphrase_file.as_ref())
    {
        Some(f) => read_passphrase_file(f)?,
        None => match env_passphrase() {
            Some(p) => p,
            None => prompt(false)?,
        },
    };
    Ok(Unseal::Passphrase(p))
}
