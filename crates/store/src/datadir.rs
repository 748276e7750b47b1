//! The data directory: one folder holding the database, the secrets key, the optional
//! config file, and (later) provisioning files and backups.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join("sipward.db")
    }

    pub fn key_path(&self) -> PathBuf {
        self.root.join("secrets.key")
    }

    /// The install's backup signing key (never put in a backup: it stays with the
    /// install it names).
    pub fn signing_key_path(&self) -> PathBuf {
        self.root.join("backup-signing.key")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("sipward.toml")
    }

    /// Generated phone provisioning files.
    pub fn provisioning_dir(&self) -> PathBuf {
        self.root.join("provisioning")
    }

    /// Voicemail audio: `voicemail/<extension>/` holds a box's messages and greeting
    /// (directories 0700, files 0600).
    pub fn voicemail_dir(&self) -> PathBuf {
        self.root.join("voicemail")
    }

    /// Operator overrides of the built-in templates (phone files, welcome mail).
    pub fn templates_dir(&self) -> PathBuf {
        self.root.join("templates")
    }

    /// Creates the directory (mode 0700) when it does not exist. Returns whether the
    /// database is new, i.e. this is the first use of the data dir.
    pub fn ensure(&self) -> Result<bool> {
        if !self.root.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(|e| Error::io(&self.root, e))?;
        } else if !self.root.is_dir() {
            return Err(Error::io(
                &self.root,
                std::io::Error::other("it exists and is not a directory"),
            ));
        }
        Ok(!self.db_path().exists())
    }

    /// Restricts the database files to their owner; they hold sealed secrets and HA1s.
    pub fn restrict_db_files(&self) -> Result<()> {
        let db = self.db_path();
        for path in [
            db.clone(),
            db.with_extension("db-wal"),
            db.with_extension("db-shm"),
        ] {
            if path.exists() {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }
}
