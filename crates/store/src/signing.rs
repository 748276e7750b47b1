//! The install's backup signing key (Ed25519). Encryption alone does not say who made a
//! backup: anyone holding the age public key in the config can encrypt an archive to it.
//! Every archive is signed with a key that never leaves the data dir (0600, created on
//! first use, never put in a backup), and carries the public half; a restore trusts the
//! key of the data dir it replaces and keys the operator names by fingerprint.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, SigningKey as DalekKey, VerifyingKey};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// What a signature covers besides the manifest: a signature made for anything else
/// with the same key cannot pass for a manifest's.
const CONTEXT: &[u8] = b"sipward backup manifest v1\n";
/// Hex digits of a fingerprint (128 bits of SHA-256 over the public key).
const FINGERPRINT_HEX: usize = 32;

/// The install's private signing key.
pub struct SigningKey {
    key: DalekKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.signer().fingerprint())
    }
}

/// A public signing key: who signed an archive.
#[derive(Clone, PartialEq, Eq)]
pub struct Signer {
    key: VerifyingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.fingerprint())
    }
}

impl SigningKey {
    /// Loads the key at `path`, creating it (mode 0600) when there is none. A key file
    /// that group or others can read is refused, like the secrets key.
    pub fn load_or_create<R: CryptoRng + ?Sized>(path: &Path, rng: &mut R) -> Result<Self> {
        if let Some(key) = Self::load(path)? {
            return Ok(key);
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        let text = Zeroizing::new(format!("{}\n", hex::encode(seed.as_ref())));
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::hard_link(&tmp, path)
        };
        let result = write();
        // The key is in place (hard link) or not: the temporary name goes either way.
        if let Err(e) = fs::remove_file(&tmp)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %tmp.display(), error = %e, "a key's temporary file could not be removed");
        }
        match result {
            Ok(()) => Ok(Self {
                key: DalekKey::from_bytes(&seed),
            }),
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path)?
                .ok_or_else(|| Error::SigningKeyInvalid {
                    path: path.to_owned(),
                }),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// The key at `path`, or `None` when there is no file.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::SigningKeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| Error::io(path, e))?);
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), seed.as_mut()).map_err(|_| Error::SigningKeyInvalid {
            path: path.to_owned(),
        })?;
        Ok(Some(Self {
            key: DalekKey::from_bytes(&seed),
        }))
    }

    pub fn signer(&self) -> Signer {
        Signer {
            key: self.key.verifying_key(),
        }
    }

    /// Signs a manifest's bytes exactly as they are stored in the archive.
    pub fn sign(&self, manifest: &[u8]) -> [u8; 64] {
        self.key.sign(&message(manifest)).to_bytes()
    }
}

fn message(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + manifest.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(manifest);
    m
}

impl Signer {
    /// The public key from its 32 bytes; `None` for bytes that are not a valid point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        VerifyingKey::from_bytes(bytes).ok().map(|key| Self { key })
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// 32 hex digits of SHA-256 over the public key, grouped by four: what an operator
    /// compares and passes to `--trust-signer`.
    pub fn fingerprint(&self) -> String {
        let digest = hex::encode(Sha256::digest(self.key.as_bytes()));
        digest.as_bytes()[..FINGERPRINT_HEX]
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Whether `text` names this key's fingerprint (case, `:` and spaces ignored).
    pub fn matches(&self, text: &str) -> bool {
        normalize_fingerprint(text).is_some_and(|f| f == normalize(&self.fingerprint()))
    }

    /// Whether `signature` is this key's over `manifest` (strict verification: no
    /// malleable or small-order forms).
    pub fn verifies(&self, manifest: &[u8], signature: &[u8; 64]) -> bool {
        self.key
            .verify_strict(&message(manifest), &Signature::from_bytes(signature))
            .is_ok()
    }
}

fn normalize(text: &str) -> String {
    text.chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// `text` as a fingerprint (32 hex digits once `:` and spaces are removed), lower case.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let n = normalize(text);
    (n.len() == FINGERPRINT_HEX && n.bytes().all(|b| b.is_ascii_hexdigit())).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn keys_sign_verify_and_are_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backup-signing.key");
        let mut rng = StdRng::seed_from_u64(1);
        assert!(SigningKey::load(&path).expect("load").is_none());
        let key = SigningKey::load_or_create(&path, &mut rng).expect("create");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = SigningKey::load_or_create(&path, &mut rng).expect("load");
        assert_eq!(again.signer(), key.signer(), "created once");

        let sig = key.sign(b"{\"files\":[]}");
        let signer = key.signer();
        assert!(signer.verifies(b"{\"files\":[]}", &sig));
        assert!(
            !signer.verifies(b"{\"files\":[1]}", &sig),
            "another manifest"
        );
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!signer.verifies(b"{\"files\":[]}", &bad));
        let other =
            SigningKey::load_or_create(&dir.path().join("other.key"), &mut rng).expect("other");
        assert!(!other.signer().verifies(b"{\"files\":[]}", &sig));
        // A signature over the bare manifest (no context) is not a manifest signature.
        let bare = key.key.sign(b"{\"files\":[]}").to_bytes();
        assert!(!signer.verifies(b"{\"files\":[]}", &bare));

        let fp = signer.fingerprint();
        assert_eq!(fp.len(), 39, "{fp}");
        assert!(signer.matches(&fp));
        assert!(signer.matches(&fp.replace(':', "").to_uppercase()));
        assert!(!other.signer().matches(&fp));
        assert!(!signer.matches("not a fingerprint"));
        assert_eq!(
            Signer::from_bytes(&signer.to_bytes()).expect("point"),
            signer
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            SigningKey::load(&path),
            Err(Error::SigningKeyPermissions { mode: 0o644, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&path, "nope").expect("write");
        assert!(matches!(
            SigningKey::load(&path),
            Err(Error::SigningKeyInvalid { .. })
        ));
    }
}
