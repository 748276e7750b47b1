//! Backup archives: one file, `age`-encrypted zstd-compressed tar, so that the age, zstd
//! and tar command-line tools can open one by hand:
//!
//! ```text
//! age -d -i key.txt FILE | zstd -d | tar -x      # or: age -d FILE (passphrase)
//! ```
//!
//! The tar holds `manifest.json` first (product and schema version, security epoch,
//! creation time, and the size and SHA-256 of every other file), then the files: a
//! consistent database snapshot (`VACUUM INTO`), the secrets key, the config, operator
//! templates and provisioning files. Reading checks everything: the age MAC and chunk
//! tags (a flipped byte or a cut-off file fails), the manifest, and every file's size and
//! digest; entries that are not plain files or whose paths leave the archive are refused.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

pub use age::secrecy;
use age::secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::datadir::DataDir;
use crate::error::{BackupError, Error, Result};

/// The archive layout this code writes and reads.
pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
const PRODUCT: &str = "sipward";
/// The database file's name inside the archive (and in a data dir).
pub const DB_FILE: &str = "sipward.db";
/// A manifest larger than this is not one of ours.
const MANIFEST_MAX: u64 = 4 << 20;
/// The highest scrypt work factor accepted when reading (age's own limit).
const MAX_WORK_FACTOR: u8 = 22;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub product: String,
    /// The sipward version that wrote it.
    pub version: String,
    /// The highest database migration applied.
    pub schema_version: i64,
    pub security_epoch: u32,
    /// Unix seconds.
    pub created_at: i64,
    pub files: Vec<FileEntry>,
}

/// How a backup is encrypted.
#[derive(Debug)]
pub enum Seal {
    /// age's scrypt passphrase mode (about a second of work on this machine).
    Passphrase(SecretString),
    /// An age X25519 recipient (`age1...`).
    Recipient(String),
}

/// How a backup is opened.
#[derive(Debug)]
pub enum Unseal {
    Passphrase(SecretString),
    /// The text of an age identity file (`AGE-SECRET-KEY-1...` lines, `#` comments).
    Identity(SecretString),
}

/// Work done so far, for progress output: (`done`, `total`) bytes.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Parses an `age1...` recipient.
pub fn parse_recipient(text: &str) -> std::result::Result<age::x25519::Recipient, BackupError> {
    age::x25519::Recipient::from_str(text.trim()).map_err(|_| {
        BackupError::BadKey(format!(
            "{:?} is not an age recipient (it starts with age1)",
            text.chars().take(12).collect::<String>()
        ))
    })
}

/// A new age X25519 identity: its secret text (for an identity file) and its recipient.
pub fn new_identity() -> (SecretString, String) {
    let id = age::x25519::Identity::generate();
    (id.to_string(), id.to_public().to_string())
}

/// The data dir's files that go into a backup besides the database: paths relative to
/// the data dir, in a stable order. Symbolic links and special files are skipped.
pub fn data_files(data: &DataDir) -> Result<Vec<String>> {
    let mut out = vec![];
    for top in ["secrets.key", "sipward.toml"] {
        if data.root().join(top).is_file() {
            out.push(top.to_owned());
        }
    }
    for dir in ["templates", "provisioning"] {
        walk(data.root(), Path::new(dir), &mut out)?;
    }
    Ok(out)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    let dir = root.join(rel);
    let Ok(meta) = fs::symlink_metadata(&dir) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return Ok(());
    }
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok())
        .collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let Ok(kind) = e.file_type() else { continue };
        let child = rel.join(e.file_name());
        if kind.is_dir() {
            walk(root, &child, out)?;
        } else if kind.is_file()
            && let Some(s) = child.to_str()
        {
            out.push(s.to_owned());
        }
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}

/// What goes into one archive: `(path in the archive, file on disk)`.
#[derive(Debug)]
pub struct Contents {
    pub files: Vec<(String, PathBuf)>,
}

/// Hashes `contents` into a manifest.
pub fn manifest_for(
    contents: &Contents,
    version: &str,
    schema_version: i64,
    security_epoch: u32,
    created_at: i64,
) -> Result<Manifest> {
    let mut files = Vec::with_capacity(contents.files.len());
    for (name, path) in &contents.files {
        let (size, sha256) = sha256_file(path)?;
        files.push(FileEntry {
            path: name.clone(),
            size,
            sha256,
        });
    }
    Ok(Manifest {
        format: FORMAT,
        product: PRODUCT.into(),
        version: version.into(),
        schema_version,
        security_epoch,
        created_at,
        files,
    })
}

/// Writes the archive to `out` through `out.partial` (mode 0600), renamed into place
/// only when complete: a crash never leaves a half backup under the final name.
pub fn write_archive(
    out: &Path,
    seal: &Seal,
    manifest: &Manifest,
    contents: &Contents,
    progress: Progress<'_>,
) -> Result<u64> {
    let partial = partial_path(out);
    let result = write_to(&partial, seal, manifest, contents, progress);
    match result {
        Ok(()) => {
            fs::rename(&partial, out).map_err(|e| Error::io(out, e))?;
            Ok(fs::metadata(out).map_err(|e| Error::io(out, e))?.len())
        }
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    out.with_file_name(name)
}

fn write_to(
    partial: &Path,
    seal: &Seal,
    manifest: &Manifest,
    contents: &Contents,
    progress: Progress<'_>,
) -> Result<()> {
    let io_err = |e: io::Error| Error::io(partial, e);
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(partial)
        .map_err(io_err)?;
    let encryptor = match seal {
        Seal::Passphrase(p) => age::Encryptor::with_user_passphrase(p.clone()),
        Seal::Recipient(r) => {
            let r = parse_recipient(r).map_err(|e| Error::io(partial, io::Error::other(e)))?;
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                .map_err(|e| Error::io(partial, io::Error::other(e)))?
        }
    };
    let sealed = encryptor
        .wrap_output(io::BufWriter::new(file))
        .map_err(io_err)?;
    let zst = zstd::Encoder::new(sealed, 3).map_err(io_err)?;
    let mut tar = tar::Builder::new(zst);
    tar.mode(tar::HeaderMode::Deterministic);
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| io_err(io::Error::other(e)))?;
    append(&mut tar, MANIFEST, json.len() as u64, &mut json.as_slice()).map_err(io_err)?;
    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    let mut done = 0u64;
    for ((name, path), entry) in contents.files.iter().zip(&manifest.files) {
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        // The size hashed is the size written: a file that changed since is an error,
        // not a silently inconsistent archive.
        append(&mut tar, name, entry.size, &mut (&mut f).take(entry.size)).map_err(io_err)?;
        done += entry.size;
        progress(done, total);
    }
    let zst = tar.into_inner().map_err(io_err)?;
    let sealed = zst.finish().map_err(io_err)?;
    let buffered = sealed.finish().map_err(io_err)?;
    let file = buffered.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(())
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: &mut dyn Read,
) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    tar.append_data(&mut h, name, data)
}

/// Where [`read_archive`] puts the files.
#[derive(Debug)]
pub enum Target<'a> {
    /// Check only: every byte is decrypted and hashed, nothing is written.
    Nowhere,
    /// Write the files under this directory (which must exist).
    Dir(&'a Path),
}

/// Decrypts and reads a whole archive, checking the manifest and every file against
/// it. `on_manifest` sees the manifest before any file is read and may refuse it.
pub fn read_archive(
    path: &Path,
    unseal: &Unseal,
    target: Target<'_>,
    on_manifest: &mut dyn FnMut(&Manifest) -> Result<()>,
    progress: Progress<'_>,
) -> Result<Manifest> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let decryptor = age::Decryptor::new(BufReader::new(file)).map_err(|e| match e {
        age::DecryptError::Io(e) if e.kind() != io::ErrorKind::UnexpectedEof => Error::io(path, e),
        age::DecryptError::InvalidHeader
        | age::DecryptError::UnknownFormat
        | age::DecryptError::Io(_) => BackupError::NotAge(path.to_owned()).into(),
        other => BackupError::damaged(path, other).into(),
    })?;
    let reader = match unseal {
        Unseal::Passphrase(p) => {
            if !decryptor.is_scrypt() {
                return Err(BackupError::WantsIdentity(path.to_owned()).into());
            }
            let mut id = age::scrypt::Identity::new(p.clone());
            id.set_max_work_factor(MAX_WORK_FACTOR);
            decryptor.decrypt(std::iter::once(&id as &dyn age::Identity))
        }
        Unseal::Identity(text) => {
            if decryptor.is_scrypt() {
                return Err(BackupError::WantsPassphrase(path.to_owned()).into());
            }
            use age::secrecy::ExposeSecret;
            let ids = age::IdentityFile::from_buffer(text.expose_secret().as_bytes())
                .ok()
                .and_then(|f| f.into_identities().ok())
                .filter(|ids| !ids.is_empty())
                .ok_or_else(|| {
                    BackupError::BadKey("the identity file holds no age identity".into())
                })?;
            decryptor.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        }
    }
    .map_err(|e| -> Error {
        match e {
            age::DecryptError::DecryptionFailed
            | age::DecryptError::NoMatchingKeys
            | age::DecryptError::KeyDecryptionFailed => {
                BackupError::WrongKey(path.to_owned()).into()
            }
            age::DecryptError::ExcessiveWork { required, .. } => BackupError::damaged(
                path,
                format!("it asks for scrypt work factor {required}, more than {MAX_WORK_FACTOR}"),
            )
            .into(),
            other => BackupError::damaged(path, other).into(),
        }
    })?;
    let zst = zstd::Decoder::new(reader).map_err(|e| BackupError::damaged(path, e))?;
    let mut tar = tar::Archive::new(zst);
    let mut entries = tar.entries().map_err(|e| BackupError::damaged(path, e))?;
    let bad_manifest = |detail: String| -> Error {
        BackupError::BadManifest {
            path: path.to_owned(),
            detail,
        }
        .into()
    };
    let mismatch = |detail: String| -> Error {
        BackupError::Mismatch {
            path: path.to_owned(),
            detail,
        }
        .into()
    };

    let first = entries
        .next()
        .ok_or_else(|| bad_manifest("the archive is empty".into()))?
        .map_err(|e| BackupError::damaged(path, e))?;
    if first.path_bytes().as_ref() != MANIFEST.as_bytes() {
        return Err(bad_manifest(format!("the first entry is not {MANIFEST}")));
    }
    if first.size() > MANIFEST_MAX {
        return Err(bad_manifest("it is too large".into()));
    }
    let mut text = Vec::new();
    first
        .take(MANIFEST_MAX)
        .read_to_end(&mut text)
        .map_err(|e| BackupError::damaged(path, e))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| bad_manifest(e.to_string()))?;
    if manifest.product != PRODUCT {
        return Err(bad_manifest(format!(
            "it was made by {:?}, not sipward",
            manifest.product
        )));
    }
    if manifest.format > FORMAT {
        return Err(bad_manifest(format!(
            "archive format {} is newer than this sipward reads ({FORMAT}); upgrade sipward",
            manifest.format
        )));
    }
    let mut expected: BTreeMap<&str, &FileEntry> = BTreeMap::new();
    for f in &manifest.files {
        if safe_relative(&f.path).is_none() {
            return Err(bad_manifest(format!("unsafe path {:?}", f.path)));
        }
        if expected.insert(f.path.as_str(), f).is_some() {
            return Err(bad_manifest(format!("{:?} is listed twice", f.path)));
        }
    }
    if !expected.contains_key(DB_FILE) {
        return Err(bad_manifest(format!("it lists no {DB_FILE}")));
    }
    on_manifest(&manifest)?;

    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    let mut done = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| BackupError::damaged(path, e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = name.trim_end_matches('/').to_owned();
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                if safe_relative(&name).is_none() {
                    return Err(mismatch(format!("unsafe path {name:?}")));
                }
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            other => {
                return Err(mismatch(format!(
                    "{name:?} is not a plain file ({other:?})"
                )));
            }
        }
        let Some(want) = expected.remove(name.as_str()) else {
            return Err(mismatch(format!(
                "{name:?} is not in the manifest, or is there twice"
            )));
        };
        let rel = safe_relative(&name).ok_or_else(|| mismatch(format!("unsafe path {name:?}")))?;
        let mut sink: Box<dyn Write> = match target {
            Target::Nowhere => Box::new(io::sink()),
            Target::Dir(root) => {
                let dest = root.join(&rel);
                if let Some(parent) = dest.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(|e| Error::io(parent, e))?;
                }
                Box::new(
                    fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&dest)
                        .map_err(|e| Error::io(&dest, e))?,
                )
            }
        };
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| BackupError::damaged(path, e))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            h.update(&buf[..n]);
            sink.write_all(&buf[..n]).map_err(|e| Error::io(path, e))?;
            done += n as u64;
            progress(done.min(total), total);
        }
        sink.flush().map_err(|e| Error::io(path, e))?;
        if size != want.size || hex::encode(h.finalize()) != want.sha256 {
            return Err(mismatch(format!("{name} does not match its SHA-256")));
        }
    }
    if let Some(missing) = expected.keys().next() {
        return Err(mismatch(format!("{missing} is listed but missing")));
    }
    Ok(manifest)
}

/// `name` as a relative path of normal components only (no `..`, no root).
fn safe_relative(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if name.is_empty() || name.contains('\0') {
        return None;
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_safe() {
        assert_eq!(
            safe_relative("templates/a.j2"),
            Some(PathBuf::from("templates/a.j2"))
        );
        assert_eq!(
            safe_relative("./sipward.db"),
            Some(PathBuf::from("sipward.db"))
        );
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a\0b", "."] {
            assert_eq!(safe_relative(bad), None, "{bad:?}");
        }
    }

    fn contents(dir: &Path) -> Contents {
        fs::write(dir.join("sipward.db"), b"not really a database").expect("db");
        fs::create_dir_all(dir.join("templates")).expect("dir");
        fs::write(dir.join("templates/welcome.txt"), b"hello").expect("tpl");
        Contents {
            files: vec![
                ("sipward.db".into(), dir.join("sipward.db")),
                (
                    "templates/welcome.txt".into(),
                    dir.join("templates/welcome.txt"),
                ),
            ],
        }
    }

    #[test]
    fn round_trip_with_a_key_and_every_refusal() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = contents(dir.path());
        let m = manifest_for(&c, "0.1.0", 7, 1, 1_700_000_000).expect("manifest");
        let (secret, public) = new_identity();
        let out = dir.path().join("b.swbak");
        write_archive(&out, &Seal::Recipient(public), &m, &c, &mut |_, _| {}).expect("write");
        assert!(!partial_path(&out).exists());

        let restore = dir.path().join("r");
        fs::create_dir(&restore).expect("dir");
        let unseal = Unseal::Identity(secret);
        let got = read_archive(
            &out,
            &unseal,
            Target::Dir(&restore),
            &mut |_| Ok(()),
            &mut |_, _| {},
        )
        .expect("read");
        assert_eq!(got, m);
        assert_eq!(
            fs::read(restore.join("templates/welcome.txt")).expect("file"),
            b"hello"
        );

        // Another key, a passphrase, a flipped byte, a cut-off file, not age at all.
        let other = Unseal::Identity(new_identity().0);
        let check = |p: &Path, u: &Unseal| {
            read_archive(p, u, Target::Nowhere, &mut |_| Ok(()), &mut |_, _| {})
                .expect_err("refused")
                .to_string()
        };
        assert!(check(&out, &other).contains("wrong passphrase or key"));
        let pass = Unseal::Passphrase(SecretString::from("x".to_owned()));
        assert!(check(&out, &pass).contains("give its identity file"));
        let bytes = fs::read(&out).expect("read");
        let flipped = dir.path().join("flipped");
        let mut f = bytes.clone();
        let at = f.len() - 40;
        f[at] ^= 1;
        fs::write(&flipped, f).expect("write");
        assert!(
            check(&flipped, &unseal).contains("damaged"),
            "{}",
            check(&flipped, &unseal)
        );
        let cut = dir.path().join("cut");
        fs::write(&cut, &bytes[..bytes.len() - 30]).expect("write");
        assert!(
            check(&cut, &unseal).contains("damaged"),
            "{}",
            check(&cut, &unseal)
        );
        let junk = dir.path().join("junk");
        fs::write(&junk, b"PK\x03\x04 a zip file").expect("write");
        assert!(check(&junk, &unseal).contains("not a sipward backup"));
    }
}
