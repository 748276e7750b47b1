//! The secrets vault: plaintext credentials (SIP passwords, PINs, trunk passwords) are
//! stored sealed with XChaCha20-Poly1305 under the data dir's 256-bit key. The associated
//! data names the record and field (`ext/1001/password`), so a sealed value copied into
//! another row or field fails to open instead of silently becoming that row's secret.
//!
//! Sealed format: `v1:` followed by hex of the 24-byte nonce and the ciphertext with tag.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use policy::Secret;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 24;
/// The domain-separation label of the internal hop's key.
const HOP_LABEL: &[u8] = b"sipward/v1/internal-hop-hmac";

pub struct Vault {
    cipher: XChaCha20Poly1305,
    /// The internal hop's key (issue 21): HMAC-SHA256 of a label under the secrets key,
    /// so every node of the install has it, it opens nothing the vault sealed, and a
    /// stolen database alone cannot make it.
    hop: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault([key redacted])")
    }
}

impl Vault {
    /// A vault over raw key bytes (tests, restores).
    pub fn from_key(key: &[u8; 32]) -> Self {
        use hmac::Mac as _;
        let mut hop = Zeroizing::new([0u8; 32]);
        if let Ok(mut m) = <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(key) {
            m.update(HOP_LABEL);
            hop.copy_from_slice(&m.finalize().into_bytes());
        }
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
            hop,
        }
    }

    /// The internal hop's key (see the field): the same on every node given this key.
    pub fn hop_key(&self) -> Zeroizing<[u8; 32]> {
        self.hop.clone()
    }

    /// Loads the key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self> {
        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| Error::io(path, e))?);
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), key.as_mut()).map_err(|_| Error::KeyInvalid {
            path: path.to_owned(),
        })?;
        Ok(Self::from_key(&key))
    }

    /// Writes a new random key to `path` with mode 0600. The key is written to a
    /// temporary file first and then linked into place, so a crash never leaves a partial
    /// key and two processes racing to create one cannot both succeed.
    pub fn create<R: CryptoRng + ?Sized>(path: &Path, rng: &mut R) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        let text = Zeroizing::new(format!("{}\n", hex::encode(key.as_ref())));
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
            Ok(()) => Ok(Self::from_key(&key)),
            // Someone else created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Whether `text` has the form of a sealed value (not whether it opens): tells values
    /// stored before a field was sealed at rest from those sealed since.
    pub fn looks_sealed(text: &str) -> bool {
        text.starts_with(PREFIX)
    }

    /// Seals `plaintext` for the record and field named by `aad`.
    pub fn seal<R: CryptoRng + ?Sized>(&self, rng: &mut R, aad: &str, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: aad.as_bytes(),
        };
        // Encryption fails only for inputs beyond 256 GiB; our secrets are at most 128 bytes.
        let ct = self
            .cipher
            .encrypt(&XNonce::from(nonce), payload)
            .unwrap_or_default();
        let mut out = String::with_capacity(PREFIX.len() + 2 * (NONCE_LEN + ct.len()));
        out.push_str(PREFIX);
        out.push_str(&hex::encode(nonce));
        out.push_str(&hex::encode(ct));
        out
    }

    /// Opens a sealed value; fails when it was altered or sealed for another record/field.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<Secret> {
        let fail = || Error::Decrypt {
            what: aad.to_owned(),
        };
        let body = sealed.strip_prefix(PREFIX).ok_or_else(fail)?;
        let bytes = decode_hex(body).ok_or_else(fail)?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(fail());
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| fail())?;
        let pt = Zeroizing::new(
            self.cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: ct,
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| fail())?,
        );
        let text = std::str::from_utf8(&pt).map_err(|_| fail())?;
        Ok(Secret::new(text))
    }
}

/// Hex decoding with a lookup table: `hex::decode` goes through an iterator per byte and
/// was a third of the time the audit spent opening secrets.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    const fn table() -> [u8; 256] {
        let mut t = [0xff_u8; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    }
    static TABLE: [u8; 256] = table();
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 2);
    for pair in bytes.chunks_exact(2) {
        let (hi, lo) = (TABLE[usize::from(pair[0])], TABLE[usize::from(pair[1])]);
        if hi == 0xff || lo == 0xff {
            return None;
        }
        out.push(hi << 4 | lo);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn the_hop_key_is_the_installs_own_and_not_the_secrets_key() {
        let a = Vault::from_key(&[7u8; 32]);
        let again = Vault::from_key(&[7u8; 32]);
        let other = Vault::from_key(&[8u8; 32]);
        assert_eq!(
            *a.hop_key(),
            *again.hop_key(),
            "every node with the key derives it"
        );
        assert_ne!(*a.hop_key(), *other.hop_key(), "another install's differs");
        assert_ne!(*a.hop_key(), [7u8; 32], "never the secrets key itself");
        assert_ne!(*a.hop_key(), [0u8; 32]);
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let mut rng = StdRng::seed_from_u64(3);
        let v = Vault::from_key(&[7u8; 32]);
        let sealed = v.seal(&mut rng, "ext/1001/password", "Xk29fLq8PzR4tW7yM3cB");
        assert!(!sealed.contains("Xk29"), "sealed text shows no plaintext");
        assert_eq!(
            v.open("ext/1001/password", &sealed)
                .expect("opens")
                .expose(),
            "Xk29fLq8PzR4tW7yM3cB"
        );
        // Bound to its record and field.
        assert!(v.open("ext/1002/password", &sealed).is_err());
        assert!(v.open("ext/1001/pin", &sealed).is_err());
        // Any flipped character fails.
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
        assert!(
            v.open(
                "ext/1001/password",
                &String::from_utf8(bytes).expect("ascii")
            )
            .is_err()
        );
        // Another key fails.
        assert!(
            Vault::from_key(&[8u8; 32])
                .open("ext/1001/password", &sealed)
                .is_err()
        );
        for junk in [
            "",
            "v1:",
            "v1:zz",
            "v2:00",
            &format!("v1:{}", "00".repeat(30)),
        ] {
            assert!(v.open("x", junk).is_err(), "{junk}");
        }
        // Same plaintext twice seals differently (fresh nonce).
        assert_ne!(v.seal(&mut rng, "a", "same"), v.seal(&mut rng, "a", "same"));
    }

    #[test]
    fn hex_decoding_matches_the_hex_crate() {
        for bytes in [
            vec![],
            vec![0u8],
            vec![0xff, 0x00, 0xab, 0x7f],
            (0..=255).collect::<Vec<u8>>(),
        ] {
            let lower = hex::encode(&bytes);
            assert_eq!(decode_hex(&lower), Some(bytes.clone()));
            assert_eq!(decode_hex(&lower.to_uppercase()), Some(bytes));
        }
        for bad in ["0", "zz", "0g", "é0"] {
            assert_eq!(decode_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");
        let mut rng = StdRng::seed_from_u64(9);
        let a = Vault::create(&path, &mut rng).expect("create");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = a.seal(&mut rng, "t", "hello");
        // A second create keeps the first key.
        let b = Vault::create(&path, &mut rng).expect("second create loads");
        assert_eq!(b.open("t", &sealed).expect("same key").expose(), "hello");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            Vault::load(&path),
            Err(Error::KeyPermissions { mode: 0o644, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&path, "not a key").expect("write");
        assert!(matches!(Vault::load(&path), Err(Error::KeyInvalid { .. })));
    }
}
