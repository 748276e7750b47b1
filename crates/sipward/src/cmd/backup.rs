//! `sipward backup create|verify|restore` and `sipward log`, and the automatic backup
//! made before a security epoch hardens an upgraded data dir.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use accounts::Registry;
use accounts::audit_log::LogEntry;
use accounts::backup::{Created, file_name, utc_stamp};
use accounts::epoch::Hardening;
use policy::epoch::{self, CURRENT};
use serde::Serialize;
use store::BackupError;
use store::backup::{self as archive, Manifest, Target, Unseal};
use store::signing::{Signer, SigningKey};

use crate::backup_keys::{config_seal, default_dir, seal_for, unseal_for};
use crate::cli::{BackupCommand, BackupKeyArgs};
use crate::config::BackupConfig;
use crate::error::OperatorError;
use crate::output::{self, Table};

/// Progress lines are printed for archives larger than this.
const PROGRESS_FROM: u64 = 4 << 20;

pub async fn run(
    data: &Path,
    config_path: Option<&Path>,
    database: Option<&str>,
    command: BackupCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        BackupCommand::Create {
            out,
            key,
            out_format,
        } => {
            let config = crate::config::load(config_path, data, database)?;
            let reg = crate::open::open_registry(data, &config).await?;
            let seal = seal_for(&key, &config.backup)?;
            let out = match out {
                Some(p) => p,
                None => {
                    default_dir(&reg, &config.backup)?.join(file_name(crate::clock::clock().now()))
                }
            };
            let started = Instant::now();
            let created = reg
                .create_backup(
                    &out,
                    &seal,
                    "sipward backup create",
                    &mut progress("backup"),
                )
                .await?;
            reg.store().close().await;
            print_created(&created, started.elapsed().as_secs_f64(), out_format.json)?;
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Verify { file, key, out } => {
            let config = crate::config::load(config_path, data, database)?;
            let unseal = unseal_for(&key, &config.backup)?;
            let started = Instant::now();
            let opened = tokio::task::block_in_place(|| {
                archive::read_archive(
                    &file,
                    &unseal,
                    Target::Nowhere,
                    config.backup.restore_limits,
                    &mut |_, _| Ok(()),
                    &mut progress("verify"),
                )
            })?;
            let own = own_signer(data)?;
            print_verified(
                &file,
                &opened,
                own.as_ref(),
                started.elapsed().as_secs_f64(),
                out.json,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Restore {
            file,
            key,
            reharden,
            no_email,
            trust_signer,
            allow_unsigned,
            out,
        } => {
            let how = How {
                trust: Trust {
                    signers: trust_signer,
                    allow_unsigned,
                },
                reharden,
                email: !no_email,
                json: out.json,
            };
            restore(data, config_path, &file, &key, &how).await
        }
    }
}

/// `serve`'s scheduled backups: one every `secs`, then the oldest pruned down to
/// `keep`. Each outcome is one JSON event line on stderr. On a shared PostgreSQL
/// database only the node holding the backup job makes them.
pub async fn scheduled(
    reg: Registry,
    config: BackupConfig,
    secs: u64,
    metrics: std::sync::Arc<pbx::metrics::Metrics>,
) {
    let every = std::time::Duration::from_secs(secs);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Nodes sharing a database make one archive per interval: the holder's.
    let mut job = store::jobs::JobLock::new(reg.store(), store::jobs::Job::Backup);
    let slot = store::jobs::Job::ALL
        .iter()
        .position(|j| *j == store::jobs::Job::Backup)
        .unwrap_or(0);
    loop {
        tick.tick().await;
        let held = job.hold().await;
        metrics.job_holder[slot].store(held, std::sync::atomic::Ordering::Relaxed);
        if !held {
            continue;
        }
        let outcome = async {
            let seal = config_seal(&config)?;
            let dir = default_dir(&reg, &config)?;
            let out = dir.join(file_name(crate::clock::clock().now()));
            let created = reg
                .create_backup(&out, &seal, "sipward serve (scheduled)", &mut |_, _| {})
                .await?;
            let removed = accounts::backup::prune(&dir, config.keep)?;
            anyhow::Ok((created, removed))
        }
        .await;
        let line = match outcome {
            Ok((c, removed)) => serde_json::json!({
                "event": "backup_created",
                "path": c.path,
                "bytes": c.bytes,
                "security_epoch": c.manifest.security_epoch,
                "pruned": removed,
            }),
            Err(e) => serde_json::json!({
                "event": "backup_failed",
                "error": format!("{e:#}"),
            }),
        };
        eprintln!("{line}");
    }
}

/// Progress to stderr in 10 % steps, for archives worth it.
fn progress(what: &'static str) -> impl FnMut(u64, u64) + Send {
    let mut shown = 0u64;
    move |done, total| {
        if total < PROGRESS_FROM || total == 0 {
            return;
        }
        let pct = done * 100 / total;
        if pct >= shown + 10 || (done == total && shown < 100) {
            shown = pct - pct % 10;
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "{what}: {pct}% ({:.1} of {:.1} MiB)",
                mib(done),
                mib(total)
            );
        }
    }
}

#[derive(Serialize)]
struct CreatedOut<'a> {
    path: &'a Path,
    bytes: u64,
    seconds: f64,
    files: usize,
    version: &'a str,
    schema_version: i64,
    security_epoch: u32,
    created_at: i64,
    /// The fingerprint of the key that signed it.
    signer: &'a str,
}

fn print_created(c: &Created, seconds: f64, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(&CreatedOut {
            path: &c.path,
            bytes: c.bytes,
            seconds,
            files: c.manifest.files.len(),
            version: &c.manifest.version,
            schema_version: c.manifest.schema_version,
            security_epoch: c.manifest.security_epoch,
            created_at: c.manifest.created_at,
            signer: &c.signer,
        });
    }
    println!(
        "wrote {} ({} bytes, {} files, schema {}, security epoch {}) in {seconds:.2} s, signed by this install's key {}",
        c.path.display(),
        c.bytes,
        c.manifest.files.len(),
        c.manifest.schema_version,
        c.manifest.security_epoch,
        c.signer
    );
    Ok(())
}

/// The public half of the signing key of the data dir at `data`, if it has one.
fn own_signer(data: &Path) -> anyhow::Result<Option<Signer>> {
    let path = store::DataDir::new(data).signing_key_path();
    Ok(SigningKey::load(&path)?.map(|k| k.signer()))
}

/// Which signers a restore trusts besides the target data dir's own key.
#[derive(Debug, Default)]
struct Trust {
    /// Fingerprints given with `--trust-signer`.
    signers: Vec<String>,
    /// `--allow-unsigned`: a format 1 archive (made before archives were signed).
    allow_unsigned: bool,
}

impl Trust {
    /// Refuses an archive whose signer the operator has not vouched for: the target's
    /// own key and the `--trust-signer` fingerprints are trusted; nothing else is, even
    /// when the archive opened with the configured key (anyone with the age recipient
    /// can encrypt to it).
    fn check(
        &self,
        file: &Path,
        signer: Option<&Signer>,
        own: Option<&Signer>,
    ) -> store::Result<()> {
        match signer {
            None if self.allow_unsigned => Ok(()),
            None => Err(BackupError::Refused(format!(
                "{} is not signed (made before sipward signed its backups): anyone who knows the age recipient could have made it; if you know it is yours, restore it with --allow-unsigned",
                file.display()
            ))
            .into()),
            Some(s) if own == Some(s) || self.signers.iter().any(|t| s.matches(t)) => Ok(()),
            Some(s) => Err(BackupError::Refused(format!(
                "{} is signed by key {}, which is not this install's: if that is the key of the install you backed up (`backup create` printed it), restore with --trust-signer {}",
                file.display(),
                s.fingerprint(),
                s.fingerprint()
            ))
            .into()),
        }
    }
}

fn print_verified(
    file: &Path,
    opened: &archive::Opened,
    own: Option<&Signer>,
    seconds: f64,
    json: bool,
) -> anyhow::Result<()> {
    let m = &opened.manifest;
    let signer = opened.signer.as_ref().map(Signer::fingerprint);
    let own_key = opened.signer.is_some() && opened.signer.as_ref() == own;
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            file: &'a Path,
            ok: bool,
            seconds: f64,
            manifest: &'a Manifest,
            /// The signer's fingerprint (null: an unsigned format 1 archive).
            signer: Option<&'a str>,
            /// Signed by this data dir's own key.
            own_key: bool,
        }
        return output::json(&Out {
            file,
            ok: true,
            seconds,
            manifest: m,
            signer: signer.as_deref(),
            own_key,
        });
    }
    let mut t = Table::new(&["FILE", "BYTES", "SHA-256"]);
    for f in &m.files {
        t.row(
            vec![f.path.clone(), f.size.to_string(), f.sha256.clone()],
            false,
        );
    }
    t.print()?;
    let epoch_note = if m.security_epoch < CURRENT {
        format!(" (older than this version's {CURRENT}: restore needs --reharden)")
    } else {
        String::new()
    };
    let signed = match (&signer, own_key) {
        (None, _) => "not signed (restore needs --allow-unsigned)".to_owned(),
        (Some(fp), true) => format!("signed by this install's key {fp}"),
        (Some(fp), false) => {
            format!("signed by key {fp}, not this install's (restore needs --trust-signer {fp})")
        }
    };
    println!(
        "{}: decrypted, manifest and {} files check out; {signed}; sipward {}, schema {}, security epoch {}{epoch_note}, made {}",
        file.display(),
        m.files.len(),
        m.version,
        m.schema_version,
        m.security_epoch,
        utc_stamp(m.created_at)
    );
    Ok(())
}

/// A lock file held while a process owns a data dir (`serve`) or a restore target.
pub struct DirLock {
    _file: fs::File,
}

impl DirLock {
    /// Takes the lock at `path` (creating the file) without waiting; `busy` is the
    /// sentence when it is held.
    pub fn take(path: &Path, busy: impl FnOnce() -> String) -> anyhow::Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| OperatorError(format!("cannot open {}: {e}", path.display())))?;
        Self::lock(file, path, busy)
    }

    /// Like [`DirLock::take`], but a missing lock file means nobody holds it (and none
    /// is created: the directory stays as it was).
    pub fn take_existing(
        path: &Path,
        busy: impl FnOnce() -> String,
    ) -> anyhow::Result<Option<Self>> {
        match fs::OpenOptions::new().write(true).open(path) {
            Ok(file) => Self::lock(file, path, busy).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(OperatorError(format!("cannot open {}: {e}", path.display())).into()),
        }
    }

    fn lock(file: fs::File, path: &Path, busy: impl FnOnce() -> String) -> anyhow::Result<Self> {
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(OperatorError(busy()).into()),
            Err(fs::TryLockError::Error(e)) => {
                Err(OperatorError(format!("cannot lock {}: {e}", path.display())).into())
            }
        }
    }
}

/// The lock `serve` holds on its data dir.
pub fn serve_lock_path(data: &Path) -> PathBuf {
    data.join("serve.lock")
}

#[derive(Serialize)]
struct RestoredOut<'a> {
    data: &'a Path,
    /// Where the data dir that was replaced is kept (None: there was none).
    replaced_kept_at: Option<&'a Path>,
    /// The fingerprint of the key that signed the archive (null: unsigned).
    signer: Option<&'a str>,
    manifest: &'a Manifest,
    hardening: &'a [Hardening],
    seconds: f64,
}

/// How `backup restore` was asked to restore.
#[derive(Debug)]
struct How {
    trust: Trust,
    /// `--reharden`.
    reharden: bool,
    /// Queue welcome mails for extensions hardening re-generates.
    email: bool,
    json: bool,
}

async fn restore(
    data: &Path,
    config_path: Option<&Path>,
    file: &Path,
    key: &BackupKeyArgs,
    how: &How,
) -> anyhow::Result<ExitCode> {
    let (trust, reharden, email, json) = (&how.trust, how.reharden, how.email, how.json);
    let started = Instant::now();
    let target = absolute(data)?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            OperatorError(format!(
                "{} is not a usable data dir path",
                target.display()
            ))
        })?
        .to_owned();
    let parent = target.parent().unwrap_or(Path::new("/")).to_owned();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)
        .map_err(|e| OperatorError(format!("cannot create {}: {e}", parent.display())))?;
    let _restoring = DirLock::take(&parent.join(format!(".{name}.restore.lock")), || {
        format!("another restore into {} is running", target.display())
    })?;
    let _serving = if target.exists() {
        if !target.is_dir() {
            return Err(OperatorError(format!(
                "{} exists and is not a directory",
                target.display()
            ))
            .into());
        }
        let empty = fs::read_dir(&target)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty && !target.join(archive::DB_FILE).exists() {
            return Err(OperatorError(format!(
                "{} is not empty and is not a sipward data dir; restore into a new directory",
                target.display()
            ))
            .into());
        }
        DirLock::take_existing(&serve_lock_path(&target), || {
            format!(
                "a sipward serve is running on {}; stop it before restoring into its data dir",
                target.display()
            )
        })?
    } else {
        None
    };
    let config_for_key = crate::config::load(config_path, &target, None)
        .map(|c| c.backup)
        .unwrap_or_default();
    let unseal = unseal_for(key, &config_for_key)?;
    // The install being replaced trusts its own backups, and keeps its key.
    let own_key_path = store::DataDir::new(&target).signing_key_path();
    let own_key = SigningKey::load(&own_key_path)?;
    let own = own_key.as_ref().map(SigningKey::signer);
    let bad_fingerprint = trust
        .signers
        .iter()
        .find(|t| store::signing::normalize_fingerprint(t).is_none());
    if let Some(t) = bad_fingerprint {
        return Err(OperatorError(format!(
            "--trust-signer {t:?} is not a key fingerprint (32 hex digits, as `backup create` prints it)"
        ))
        .into());
    }

    // Everything happens in a staging dir beside the target; the target is touched only
    // by the final rename. A staging dir left by an interrupted restore goes first.
    let staging = parent.join(format!(".{name}.restoring"));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| {
            OperatorError(format!(
                "cannot remove {} (left by an interrupted restore): {e}",
                staging.display()
            ))
        })?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| OperatorError(format!("cannot create {}: {e}", staging.display())))?;
    let check = Check {
        limits: config_for_key.restore_limits,
        trust,
        own: own.as_ref(),
    };
    let result = restore_into(
        config_path,
        file,
        &unseal,
        &staging,
        &check,
        reharden,
        email,
    )
    .await
    .and_then(|done| {
        if own_key.is_some() {
            // The signing key stays with the install (it is in no backup).
            fs::copy(
                &own_key_path,
                staging.join(own_key_path.file_name().unwrap_or_default()),
            )
            .map_err(|e| {
                OperatorError(format!(
                    "cannot keep the signing key {}: {e}",
                    own_key_path.display()
                ))
            })?;
        }
        Ok(done)
    });
    let (opened, hardening) = match result {
        Ok(v) => v,
        Err(e) => {
            if let Err(rm) = fs::remove_dir_all(&staging) {
                tracing::warn!(path = %staging.display(), error = %rm, "the restore's staging directory could not be removed");
            }
            return Err(e);
        }
    };
    let manifest = opened.manifest;
    let signer = opened.signer.as_ref().map(Signer::fingerprint);
    let kept = swap_into_place(&staging, &target, &parent, &name)?;
    if let Some(k) = &kept {
        eprintln!(
            "the data dir that was replaced is kept at {} (delete it once the restore is checked)",
            k.display()
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    if json {
        output::json(&RestoredOut {
            data: &target,
            replaced_kept_at: kept.as_deref(),
            signer: signer.as_deref(),
            manifest: &manifest,
            hardening: &hardening,
            seconds,
        })?;
    } else {
        print_hardening(&hardening)?;
        println!(
            "restored {} into {} (signed by {}; sipward {}, schema {}, security epoch {} -> {CURRENT}) in {seconds:.2} s",
            file.display(),
            target.display(),
            signer.as_deref().unwrap_or("nobody"),
            manifest.version,
            manifest.schema_version,
            manifest.security_epoch
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    Ok(std::env::current_dir()
        .map_err(|e| OperatorError(format!("cannot read the current directory: {e}")))?
        .join(p))
}

/// What a restore holds an archive to before anything is written.
struct Check<'a> {
    limits: archive::Limits,
    trust: &'a Trust,
    /// The signing key of the data dir restored into.
    own: Option<&'a Signer>,
}

/// The bytes free for an unprivileged writer on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Extracts, checks, opens (migrating to this version's schema) and, with `reharden`,
/// hardens the backup in `staging`. Signer, sizes, schema and epoch are checked before
/// the first file is written.
async fn restore_into(
    config_path: Option<&Path>,
    file: &Path,
    unseal: &Unseal,
    staging: &Path,
    check: &Check<'_>,
    reharden: bool,
    email: bool,
) -> anyhow::Result<(archive::Opened, Vec<Hardening>)> {
    let known = store::Store::known_schema_version();
    let opened = tokio::task::block_in_place(|| {
        archive::read_archive(
            file,
            unseal,
            Target::Dir(staging),
            check.limits,
            &mut |m, signer| {
                check.trust.check(file, signer, check.own)?;
                let total: u64 = m.files.iter().map(|f| f.size).sum();
                if let Some(free) = free_bytes(staging)
                    && total > free
                {
                    return Err(BackupError::TooLarge {
                        path: file.to_owned(),
                        detail: format!(
                            "its files need {total} bytes and {} has {free} free",
                            staging.display()
                        ),
                    }
                    .into());
                }
                if m.schema_version > known {
                    return Err(BackupError::Refused(format!(
                        "{} was made by a newer sipward ({}, schema {}); this one knows schema {known}: upgrade sipward to restore it",
                        file.display(),
                        m.version,
                        m.schema_version
                    ))
                    .into());
                }
                if m.security_epoch > CURRENT {
                    return Err(BackupError::Refused(format!(
                        "{} was made by a newer sipward ({}, security epoch {}); upgrade sipward to restore it",
                        file.display(),
                        m.version,
                        m.security_epoch
                    ))
                    .into());
                }
                if m.security_epoch < CURRENT && !reharden {
                    return Err(BackupError::Refused(epoch::refusal(m.security_epoch)).into());
                }
                Ok(())
            },
            &mut progress("restore"),
        )
    })?;
    let manifest = &opened.manifest;
    let config = crate::config::load(config_path, staging, None)?;
    let data = store::DataDir::new(staging);
    let rng = Box::new(rand_core::UnwrapErr(rand::rngs::SysRng));
    let (reg, dir_opened) =
        Registry::open(&data, config.settings.clone(), rng, crate::clock::clock()).await?;
    if dir_opened.created {
        return Err(OperatorError(format!(
            "{} holds no database that sipward can open",
            file.display()
        ))
        .into());
    }
    let at = reg.security_epoch().await?;
    if at != manifest.security_epoch {
        return Err(BackupError::Refused(format!(
            "{}: its manifest says security epoch {} but its database says {at}; it cannot be trusted",
            file.display(),
            manifest.security_epoch
        ))
        .into());
    }
    let mut hardening = Vec::new();
    if reharden && at < CURRENT {
        let mut progress = crate::output::regenerate_progress;
        let (changes, _) = reg.harden(email, &mut progress).await?;
        hardening = changes;
    }
    let subject = file.display().to_string();
    let detail = format!(
        "made {} by sipward {} at security epoch {}, signed by {}; {} hardening changes",
        utc_stamp(manifest.created_at),
        manifest.version,
        manifest.security_epoch,
        opened
            .signer
            .as_ref()
            .map_or_else(|| "nobody".to_owned(), Signer::fingerprint),
        hardening.len()
    );
    reg.log(LogEntry {
        actor: "sipward backup restore",
        action: "backup.restored",
        subject: &subject,
        detail: &detail,
    })
    .await?;
    reg.store().close().await;
    Ok((opened, hardening))
}

/// Puts `staging` at `target`. An existing target is exchanged atomically
/// (`renameat2(RENAME_EXCHANGE)`) and kept as `NAME.pre-restore-TIME` beside it.
fn swap_into_place(
    staging: &Path,
    target: &Path,
    parent: &Path,
    name: &str,
) -> anyhow::Result<Option<PathBuf>> {
    let fail = |e: std::io::Error| {
        OperatorError(format!(
            "cannot move the restored data dir into {}: {e}",
            target.display()
        ))
    };
    if !target.exists() {
        fs::rename(staging, target).map_err(fail)?;
        return Ok(None);
    }
    // Two restores in the same second must not collide on the name the old dir is
    // kept under (the second rename would fail after the exchange).
    let stamp = utc_stamp(crate::clock::clock().now());
    let kept = (1..)
        .map(|n| match n {
            1 => parent.join(format!("{name}.pre-restore-{stamp}")),
            n => parent.join(format!("{name}.pre-restore-{stamp}-{n}")),
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| parent.join(format!("{name}.pre-restore-{stamp}")));
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, staging, CWD, target, RenameFlags::EXCHANGE) {
        Ok(()) => {
            // `staging` now holds the old data dir.
            fs::rename(staging, &kept).map_err(fail)?;
        }
        Err(_) => {
            // File systems without RENAME_EXCHANGE: two renames.
            fs::rename(target, &kept).map_err(fail)?;
            if let Err(e) = fs::rename(staging, target) {
                if let Err(back) = fs::rename(&kept, target) {
                    tracing::error!(
                        kept = %kept.display(),
                        error = %back,
                        "the old data dir could not be moved back: it is at the kept path"
                    );
                }
                return Err(fail(e).into());
            }
        }
    }
    Ok(Some(kept))
}

pub fn print_hardening(changes: &[Hardening]) -> anyhow::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut t = Table::new(&["EPOCH", "ACTION", "SUBJECT", "WHY"]);
    for c in changes {
        t.row(
            vec![
                c.epoch.to_string(),
                c.action.to_owned(),
                c.subject.clone(),
                c.detail.clone(),
            ],
            c.action == "reported",
        );
    }
    t.print()
}

/// `sipward log`.
pub async fn log(reg: &Registry, limit: i64, json: bool) -> anyhow::Result<ExitCode> {
    if !(1..=100_000).contains(&limit) {
        return Err(OperatorError("--limit must be between 1 and 100000".into()).into());
    }
    let rows = reg.recent_log(limit).await?;
    if json {
        #[derive(Serialize)]
        struct Entry<'a> {
            id: i64,
            at: i64,
            actor: &'a str,
            action: &'a str,
            subject: &'a str,
            detail: &'a str,
        }
        let entries: Vec<Entry<'_>> = rows
            .iter()
            .map(|r| Entry {
                id: r.id,
                at: r.at,
                actor: &r.actor,
                action: &r.action,
                subject: &r.subject,
                detail: &r.detail,
            })
            .collect();
        return output::json(&entries).map(|()| ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["TIME (UTC)", "ACTOR", "ACTION", "SUBJECT", "DETAIL"]);
    for r in &rows {
        t.row(
            vec![
                utc_stamp(r.at),
                r.actor.clone(),
                r.action.clone(),
                r.subject.clone(),
                r.detail.clone(),
            ],
            false,
        );
    }
    t.print()?;
    Ok(ExitCode::SUCCESS)
}
