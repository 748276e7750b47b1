//! Backup archives: one file, `age`-encrypted zstd-compressed tar, so that the age, zstd
//! and tar command-line tools can open one by hand:
//!
//! ```text
//! age -d -i key.txt FILE | zstd -d | tar -x      # or: age -d FILE (passphrase)
//! ```
//!
//! The tar holds `manifest.json` first (product and schema version, security epoch,
//! creation time, and the size and SHA-256 of every other file), then `manifest.sig`
//! (the install's Ed25519 signature over the manifest, with its public key: see
//! [`crate::signing`]), then the files: a consistent database snapshot (`VACUUM INTO`),
//! the secrets key, the config, operator templates, provisioning files, voicemail
//! recordings and the generated TLS CA and certificate. Reading checks
//! everything: the age MAC and chunk tags (a flipped byte or a cut-off file fails), the
//! signature, the manifest, and every file's size and digest; entries that are not plain
//! files or whose paths leave the archive are refused.
//!
//! A crafted archive cannot fill the disk or the memory: the manifest's total is held to
//! a limit before anything is written, every entry's size in its tar header must be the
//! manifest's before its file is created, and the tar reader runs raw (extension headers
//! are not read into memory whole; long names are bounded).

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
use crate::signing::{Signer, SigningKey};

/// How much a read may write (or, checking only, decompress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes all files of one archive may hold together.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// The `manifest.sig` entry.
#[derive(Debug, Serialize, Deserialize)]
struct SignatureEntry {
    algorithm: String,
    /// The signer's public key, hex.
    public_key: String,
    /// Ed25519 over the manifest's bytes as stored (see [`crate::signing`]), hex.
    signature: String,
}

/// What reading an archive found.
#[derive(Clone, Debug)]
pub struct Opened {
    pub manifest: Manifest,
    /// Who signed it; `None` for a format 1 archive (made before archives were signed).
    pub signer: Option<Signer>,
}

/// The archive layout this code writes (and the newest it reads): 2 adds the signature.
/// Format 1 archives carry none.
pub const FORMAT: u32 = 2;
pub const MANIFEST: &str = "manifest.json";
/// The second entry: the signature over the manifest, and the signer's public key.
pub const SIGNATURE: &str = "manifest.sig";
/// A signature entry larger than this is not one of ours.
const SIGNATURE_MAX: u64 = 4096;
/// The longest GNU long name accepted (longer paths are not ours).
const LONG_NAME_MAX: u64 = 4096;
/// The largest zstd window a reader allocates (2^24 = 16 MiB); ours use far less.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// The default total of the files a restore writes (`backup.restore_max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;
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
    // `tls`: the private CA and server certificate made at the first start; a restore
    // without them would make a new CA that no provisioned phone trusts. `voicemail`: the
    // recordings and greetings the database's voicemail rows name.
    for dir in ["templates", "provisioning", "tls", "voicemail"] {
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
    signing: &SigningKey,
    manifest: &Manifest,
    contents: &Contents,
    progress: Progress<'_>,
) -> Result<u64> {
    let partial = partial_path(out);
    let result = write_to(&partial, seal, signing, manifest, contents, progress);
    match result {
        Ok(()) => {
            fs::rename(&partial, out).map_err(|e| Error::io(out, e))?;
            Ok(fs::metadata(out).map_err(|e| Error::io(out, e))?.len())
        }
        Err(e) => {
            if let Err(rm) = fs::remove_file(&partial)
                && rm.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %partial.display(), error = %rm, "a failed backup's partial file could not be removed");
            }
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
    signing: &SigningKey,
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
    let sig = serde_json::to_vec_pretty(&SignatureEntry {
        algorithm: "ed25519".into(),
        public_key: hex::encode(signing.signer().to_bytes()),
        signature: hex::encode(signing.sign(&json)),
    })
    .map_err(|e| io_err(io::Error::other(e)))?;
    append(&mut tar, SIGNATURE, sig.len() as u64, &mut sig.as_slice()).map_err(io_err)?;
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

/// Decrypts and reads a whole archive, checking the signature, the manifest and every
/// file against it. `on_manifest` sees the manifest and its signer before any file is
/// read and may refuse them (the caller decides which signers it trusts); `limits` holds
/// the total, checked before anything is written.
pub fn read_archive(
    path: &Path,
    unseal: &Unseal,
    target: Target<'_>,
    limits: Limits,
    on_manifest: &mut dyn FnMut(&Manifest, Option<&Signer>) -> Result<()>,
    progress: Progress<'_>,
) -> Result<Opened> {
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
    let mut zst = zstd::Decoder::new(reader).map_err(|e| BackupError::damaged(path, e))?;
    zst.window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| BackupError::damaged(path, e))?;
    let mut tar = tar::Archive::new(zst);
    // Raw: GNU long names and PAX headers come to us as entries (bounded below) instead
    // of being read into memory whole by the tar reader.
    let mut entries = tar
        .entries()
        .map_err(|e| BackupError::damaged(path, e))?
        .raw(true);
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
    let bad_signature = |detail: &str| -> Error {
        BackupError::BadSignature {
            path: path.to_owned(),
            detail: detail.to_owned(),
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
    // From format 2 on, the signature comes second; format 1 archives have none.
    let signer = if manifest.format >= 2 {
        let entry = entries
            .next()
            .ok_or_else(|| bad_signature("there is none"))?
            .map_err(|e| BackupError::damaged(path, e))?;
        if entry.path_bytes().as_ref() != SIGNATURE.as_bytes() {
            return Err(bad_signature(&format!(
                "the second entry is not {SIGNATURE}"
            )));
        }
        if entry.size() > SIGNATURE_MAX {
            return Err(bad_signature("it is too large"));
        }
        let mut sig = Vec::new();
        entry
            .take(SIGNATURE_MAX)
            .read_to_end(&mut sig)
            .map_err(|e| BackupError::damaged(path, e))?;
        let sig: SignatureEntry =
            serde_json::from_slice(&sig).map_err(|_| bad_signature("it is not readable"))?;
        if sig.algorithm != "ed25519" {
            return Err(bad_signature("its algorithm is not ed25519"));
        }
        let mut key = [0u8; 32];
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&sig.public_key, &mut key)
            .map_err(|_| bad_signature("its public key is not readable"))?;
        hex::decode_to_slice(&sig.signature, &mut signature)
            .map_err(|_| bad_signature("it is not readable"))?;
        let signer = Signer::from_bytes(&key)
            .ok_or_else(|| bad_signature("its public key is not readable"))?;
        if !signer.verifies(&text, &signature) {
            return Err(bad_signature("it does not match the manifest"));
        }
        Some(signer)
    } else {
        None
    };
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
    let total = manifest
        .files
        .iter()
        .try_fold(0u64, |sum, f| sum.checked_add(f.size))
        .filter(|t| *t <= limits.max_bytes)
        .ok_or_else(|| -> Error {
            BackupError::TooLarge {
                path: path.to_owned(),
                detail: format!(
                    "its manifest lists more than {} bytes of files, the most a restore writes (backup.restore_max_bytes)",
                    limits.max_bytes
                ),
            }
            .into()
        })?;
    on_manifest(&manifest, signer.as_ref())?;

    let mut done = 0u64;
    let mut long_name: Option<Vec<u8>> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| BackupError::damaged(path, e))?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname() {
            if long_name.is_some() || entry.size() > LONG_NAME_MAX {
                return Err(mismatch("an entry has an overlong name".into()));
            }
            let mut name = Vec::new();
            (&mut entry)
                .take(LONG_NAME_MAX)
                .read_to_end(&mut name)
                .map_err(|e| BackupError::damaged(path, e))?;
            if name.last() == Some(&0) {
                name.pop();
            }
            long_name = Some(name);
            continue;
        }
        let raw_name = match long_name.take() {
            Some(n) => n,
            None => entry.path_bytes().into_owned(),
        };
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let name = name.trim_end_matches('/').to_owned();
        match kind {
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
        // Checked before the file is created: an entry larger than its manifest says
        // writes nothing.
        if entry.size() != want.size {
            return Err(mismatch(format!(
                "{name} holds {} bytes, its manifest says {}",
                entry.size(),
                want.size
            )));
        }
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
        // Never more than the manifest's size, whatever the reader yields.
        let mut body = (&mut entry).take(want.size);
        loop {
            let n = body
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
    if long_name.is_some() {
        return Err(mismatch("a long name names no entry".into()));
    }
    if let Some(missing) = expected.keys().next() {
        return Err(mismatch(format!("{missing} is listed but missing")));
    }
    Ok(Opened { manifest, signer })
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
    use rand::SeedableRng;
    use serde_json::Value;

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

    fn signing_key(dir: &Path, name: &str) -> SigningKey {
        let mut rng = rand::rngs::StdRng::seed_from_u64(name.len() as u64);
        SigningKey::load_or_create(&dir.join(name), &mut rng).expect("signing key")
    }

    fn read(p: &Path, u: &Unseal, target: Target<'_>, limits: Limits) -> Result<Opened> {
        read_archive(p, u, target, limits, &mut |_, _| Ok(()), &mut |_, _| {})
    }

    #[test]
    fn round_trip_with_a_key_and_every_refusal() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = contents(dir.path());
        let m = manifest_for(&c, "0.1.0", 7, 1, 1_700_000_000).expect("manifest");
        let (secret, public) = new_identity();
        let key = signing_key(dir.path(), "sign.key");
        let out = dir.path().join("b.swbak");
        write_archive(&out, &Seal::Recipient(public), &key, &m, &c, &mut |_, _| {}).expect("write");
        assert!(!partial_path(&out).exists());

        let restore = dir.path().join("r");
        fs::create_dir(&restore).expect("dir");
        let unseal = Unseal::Identity(secret);
        let mut seen = None;
        let got = read_archive(
            &out,
            &unseal,
            Target::Dir(&restore),
            Limits::default(),
            &mut |_, signer| {
                seen = signer.cloned();
                Ok(())
            },
            &mut |_, _| {},
        )
        .expect("read");
        assert_eq!(got.manifest, m);
        assert_eq!(got.signer, Some(key.signer()));
        assert_eq!(seen, Some(key.signer()), "the caller sees the signer first");
        assert_eq!(
            fs::read(restore.join("templates/welcome.txt")).expect("file"),
            b"hello"
        );

        // Another key, a passphrase, a flipped byte, a cut-off file, not age at all.
        let other = Unseal::Identity(new_identity().0);
        let check = |p: &Path, u: &Unseal| {
            read(p, u, Target::Nowhere, Limits::default())
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

    /// One tar entry of a crafted archive.
    struct Raw<'a> {
        name: &'a str,
        bytes: Vec<u8>,
        kind: tar::EntryType,
    }

    fn raw(name: &str, bytes: impl Into<Vec<u8>>) -> Raw<'_> {
        Raw {
            name,
            bytes: bytes.into(),
            kind: tar::EntryType::Regular,
        }
    }

    /// Packs `entries` as the archive's tar, encrypted to `public`: what an attacker who
    /// knows the age public key can write.
    fn pack(out: &Path, public: &str, entries: &[Raw<'_>]) {
        let r = parse_recipient(public).expect("recipient");
        let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
            .expect("encryptor");
        let file = File::create(out).expect("create");
        let sealed = enc.wrap_output(file).expect("wrap");
        let zst = zstd::Encoder::new(sealed, 3).expect("zstd");
        let mut tar = tar::Builder::new(zst);
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(e.bytes.len() as u64);
            h.set_mode(0o600);
            h.set_entry_type(e.kind);
            h.set_cksum();
            if e.kind.is_gnu_longname() {
                h.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
                h.set_cksum();
                tar.append(&h, e.bytes.as_slice()).expect("append");
            } else {
                tar.append_data(&mut h, e.name, e.bytes.as_slice())
                    .expect("append");
            }
        }
        let zst = tar.into_inner().expect("tar");
        zst.finish().expect("zstd").finish().expect("age");
    }

    /// A manifest listing `files` (name, size, bytes hashed) and its signature entry.
    fn signed(key: &SigningKey, files: &[(&str, u64, &[u8])]) -> (Vec<u8>, Vec<u8>) {
        let manifest = Manifest {
            format: FORMAT,
            product: PRODUCT.into(),
            version: "0.1.0".into(),
            schema_version: 1,
            security_epoch: 1,
            created_at: 1_700_000_000,
            files: files
                .iter()
                .map(|(path, size, bytes)| FileEntry {
                    path: (*path).into(),
                    size: *size,
                    sha256: hex::encode(Sha256::digest(bytes)),
                })
                .collect(),
        };
        let json = serde_json::to_vec(&manifest).expect("json");
        let sig = serde_json::to_vec(&SignatureEntry {
            algorithm: "ed25519".into(),
            public_key: hex::encode(key.signer().to_bytes()),
            signature: hex::encode(key.sign(&json)),
        })
        .expect("json");
        (json, sig)
    }

    #[test]
    fn crafted_archives_are_refused_before_anything_big_is_written() {
        let dir = tempfile::tempdir().expect("tmp");
        let (secret, public) = new_identity();
        let unseal = Unseal::Identity(secret);
        let key = signing_key(dir.path(), "sign.key");
        let limits = Limits { max_bytes: 1 << 20 };
        let db = b"a small database".to_vec();
        let big = vec![0u8; 8 << 20];
        let refused = |name: &str, entries: &[Raw<'_>]| {
            let file = dir.path().join(format!("{name}.swbak"));
            pack(&file, &public, entries);
            let target = dir.path().join(name);
            fs::create_dir(&target).expect("dir");
            let err = read(&file, &unseal, Target::Dir(&target), limits)
                .expect_err("refused")
                .to_string();
            let written: Vec<_> = fs::read_dir(&target)
                .expect("dir")
                .flatten()
                .map(|e| e.file_name())
                .collect();
            (err, written)
        };

        // An entry larger than its manifest says (8 MiB where 16 bytes are listed): its
        // header is checked before the file is created.
        let (m, sig) = signed(&key, &[(DB_FILE, db.len() as u64, &db)]);
        let (err, written) = refused(
            "larger",
            &[
                raw(MANIFEST, m),
                raw(SIGNATURE, sig),
                raw(DB_FILE, big.clone()),
            ],
        );
        assert!(
            err.contains("holds 8388608 bytes, its manifest says 16"),
            "{err}"
        );
        assert!(written.is_empty(), "nothing written: {written:?}");

        // A manifest whose files add up to more than the limit: refused before any file.
        let (m, sig) = signed(
            &key,
            &[
                (DB_FILE, db.len() as u64, &db),
                ("provisioning/a.cfg", 2 << 20, &big),
            ],
        );
        let (err, written) = refused(
            "total",
            &[
                raw(MANIFEST, m),
                raw(SIGNATURE, sig),
                raw(DB_FILE, db.clone()),
            ],
        );
        assert!(
            err.contains("more than 1048576 bytes") && err.contains("before anything is written"),
            "{err}"
        );
        assert!(written.is_empty(), "{written:?}");
        // Sizes that overflow when added are refused the same way.
        let (m, sig) = signed(&key, &[(DB_FILE, u64::MAX, &db), ("x", 2, &db)]);
        let (err, _) = refused("overflow", &[raw(MANIFEST, m), raw(SIGNATURE, sig)]);
        assert!(err.contains("more than 1048576 bytes"), "{err}");

        // A GNU long name is read only up to its bound, never into memory whole.
        let (m, sig) = signed(&key, &[(DB_FILE, db.len() as u64, &db)]);
        let (err, written) = refused(
            "longname",
            &[
                raw(MANIFEST, m),
                raw(SIGNATURE, sig),
                Raw {
                    name: "",
                    bytes: big.clone(),
                    kind: tar::EntryType::GNULongName,
                },
                raw(DB_FILE, db.clone()),
            ],
        );
        assert!(err.contains("overlong name"), "{err}");
        assert!(written.is_empty(), "{written:?}");

        // Signatures: none, altered manifest, not ours at all.
        let (m, sig) = signed(&key, &[(DB_FILE, db.len() as u64, &db)]);
        let (err, _) = refused(
            "unsigned",
            &[raw(MANIFEST, m.clone()), raw(DB_FILE, db.clone())],
        );
        assert!(err.contains("bad signature"), "{err}");
        let altered = String::from_utf8(m.clone())
            .expect("utf8")
            .replace("1700000000", "1700000001");
        let (err, written) = refused(
            "altered",
            &[
                raw(MANIFEST, altered),
                raw(SIGNATURE, sig.clone()),
                raw(DB_FILE, db.clone()),
            ],
        );
        assert!(err.contains("does not match the manifest"), "{err}");
        assert!(written.is_empty());
        // Signed by another key: sound, and the caller learns who signed it.
        let stranger = signing_key(dir.path(), "stranger.key");
        let (m2, sig2) = signed(&stranger, &[(DB_FILE, db.len() as u64, &db)]);
        let file = dir.path().join("stranger.swbak");
        pack(
            &file,
            &public,
            &[
                raw(MANIFEST, m2),
                raw(SIGNATURE, sig2),
                raw(DB_FILE, db.clone()),
            ],
        );
        let got = read(&file, &unseal, Target::Nowhere, limits).expect("sound");
        assert_eq!(got.signer, Some(stranger.signer()));
        assert_ne!(got.signer, Some(key.signer()));
        // A format 1 archive (before signatures) reads with no signer.
        let mut old: Value = serde_json::from_slice(&m).expect("json");
        old["format"] = 1.into();
        let file = dir.path().join("old.swbak");
        pack(
            &file,
            &public,
            &[raw(MANIFEST, old.to_string()), raw(DB_FILE, db.clone())],
        );
        let got = read(&file, &unseal, Target::Nowhere, limits).expect("old format");
        assert_eq!(got.signer, None);
    }
}
