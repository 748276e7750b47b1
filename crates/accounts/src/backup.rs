//! Making a backup of the open data dir: a consistent database snapshot plus the files
//! beside it, in one encrypted archive (see [`store::backup`]).

use std::path::{Path, PathBuf};

use serde::Serialize;
use store::Error as StoreError;
use store::backup::{self, Contents, Manifest, Seal};
use store::signing::SigningKey;

use crate::Result;
use crate::audit_log::LogEntry;
use crate::registry::Registry;

/// What `backup create` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Created {
    pub path: PathBuf,
    pub bytes: u64,
    pub manifest: Manifest,
    /// The fingerprint of the install's signing key the archive is signed with: what a
    /// restore elsewhere passes to `--trust-signer`.
    pub signer: String,
}

/// `sipward-20261129T014755Z.swbak`: sorts by time, which retention relies on.
pub fn file_name(unix: i64) -> String {
    format!("sipward-{}.swbak", utc_stamp(unix))
}

/// Whether `name` is one of [`file_name`]'s (retention never touches other files).
pub fn is_backup_name(name: &str) -> bool {
    name.strip_prefix("sipward-")
        .and_then(|r| r.strip_suffix(".swbak"))
        .is_some_and(|s| s.len() == 16 && s.ends_with('Z') && s.as_bytes()[8] == b'T')
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC, proleptic Gregorian).
pub fn utc_stamp(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

impl Registry {
    /// The directory scheduled and automatic backups go to by default.
    pub fn backups_dir(&self) -> PathBuf {
        self.data_dir().root().join("backups")
    }

    /// Writes a backup of this data dir to `out`. `progress(done, total)` counts bytes.
    pub async fn create_backup(
        &self,
        out: &Path,
        seal: &Seal,
        actor: &str,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Created> {
        let now = self.now();
        let root = self.data_dir().root();
        let staging = root.join(format!(".backup-{}-{now}", std::process::id()));
        std::fs::create_dir(&staging).map_err(|e| StoreError::Io {
            path: staging.clone(),
            source: e,
        })?;
        let result = self
            .create_backup_via(&staging, out, seal, now, progress)
            .await;
        if let Err(e) = std::fs::remove_dir_all(&staging) {
            crate::background::failed(
                crate::background::Task::Cleanup,
                "removing a backup's staging directory",
                &e,
            );
        }
        let created = result?;
        let subject = created.path.display().to_string();
        let detail = format!(
            "{} bytes, {} files, schema {}, security epoch {}",
            created.bytes,
            created.manifest.files.len(),
            created.manifest.schema_version,
            created.manifest.security_epoch
        );
        let entry = LogEntry {
            actor,
            action: "backup.created",
            subject: &subject,
            detail: &detail,
        };
        let mut conn = self.store().conn().await?;
        self.log_in(&mut conn, now, entry).await?;
        Ok(created)
    }

    async fn create_backup_via(
        &self,
        staging: &Path,
        out: &Path,
        seal: &Seal,
        now: i64,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Created> {
        let db = staging.join(backup::DB_FILE);
        self.store().snapshot_into(&db).await?;
        let schema = self.store().schema_version().await?;
        let epoch = self.security_epoch().await?;
        let root = self.data_dir().root();
        let mut files = vec![(backup::DB_FILE.to_owned(), db)];
        files.extend(
            backup::data_files(self.data_dir())?
                .into_iter()
                .map(|rel| (rel.clone(), root.join(rel))),
        );
        let contents = Contents { files };
        let manifest =
            backup::manifest_for(&contents, env!("CARGO_PKG_VERSION"), schema, epoch, now)?;
        let signing = self.signing_key()?;
        // Compression and encryption are CPU work: off the async threads where the
        // runtime has others to run them.
        let mut write =
            || backup::write_archive(out, seal, &signing, &manifest, &contents, progress);
        let bytes = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(write),
            _ => write(),
        }?;
        Ok(Created {
            path: out.to_owned(),
            bytes,
            manifest,
            signer: signing.signer().fingerprint(),
        })
    }

    /// The install's backup signing key, created (0600) on first use.
    pub fn signing_key(&self) -> Result<SigningKey> {
        let path = self.data_dir().signing_key_path();
        Ok(self.with_rng(|rng| SigningKey::load_or_create(&path, rng))?)
    }
}

/// Deletes the oldest backups in `dir` (only files named like [`file_name`]'s) until
/// `keep` remain. Returns the paths removed.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| StoreError::Io {
            path: dir.to_owned(),
            source: e,
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_backup_name(n))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for n in names.into_iter().take(excess) {
        let p = dir.join(n);
        if std::fs::remove_file(&p).is_ok() {
            removed.push(p);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_and_names_are_recognised() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_795_916_875), "20261129T014755Z");
        let name = file_name(1_795_916_875);
        assert_eq!(name, "sipward-20261129T014755Z.swbak");
        assert!(is_backup_name(&name));
        for other in [
            "sipward-x.swbak",
            "notes.txt",
            "sipward-20261129T014755Z.swbak.partial",
        ] {
            assert!(!is_backup_name(other), "{other}");
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().expect("tmp");
        for t in [100, 200, 300, 400] {
            std::fs::write(dir.path().join(file_name(t)), b"x").expect("write");
        }
        std::fs::write(dir.path().join("mine.txt"), b"x").expect("write");
        let removed = prune(dir.path(), 2).expect("prune");
        assert_eq!(removed.len(), 2);
        assert!(dir.path().join(file_name(300)).exists());
        assert!(dir.path().join(file_name(400)).exists());
        assert!(!dir.path().join(file_name(100)).exists());
        assert!(dir.path().join("mine.txt").exists());
    }
}
