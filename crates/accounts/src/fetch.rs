//! What the provisioning server needs to answer one fetch: the phone whose login the
//! request names (the Digest user is the phone's MAC), the files it may fetch, its
//! current password, and the previous login its grace window keeps for the addresses
//! where that login fetched the phone's file before the change. Looking a login up
//! costs the same whether or not a phone has it (one query that always returns a row,
//! one secret opened, a stand-in when there is none), so the time of an answer tells a
//! prober nothing about which MACs exist.

use std::net::IpAddr;
use std::path::PathBuf;

use policy::Secret;
use sip::digest::Algorithm;

use crate::Result;
use crate::provisioning::Vendor;
use crate::registry::{Ha1Owner, Registry, ext_aad};

/// The associated data of the stand-in secret opened for logins no phone has.
const STAND_IN_AAD: &str = "ext/000000/phone_http";

/// A provisioning login as the server checks it.
#[derive(Debug)]
pub struct PhoneLogin {
    /// The phone, when one has this login; None for a user nobody has (the password
    /// below is then a stand-in no request can match).
    pub phone: Option<PhoneFiles>,
    /// The login's current password.
    pub password: Secret,
    /// The previous login, while a grace window keeps it for some addresses.
    pub grace: Option<LoginGrace>,
}

/// The files of one phone.
#[derive(Clone, Debug)]
pub struct PhoneFiles {
    pub number: String,
    pub mac: String,
    pub vendor: Vendor,
    /// The names this phone fetches that sipward serves.
    pub files: Vec<String>,
    dir: PathBuf,
}

impl PhoneFiles {
    /// Where a file of this phone lies on disk; None for a name it does not have.
    pub fn path_of(&self, file: &str) -> Option<PathBuf> {
        self.files
            .iter()
            .any(|f| f == file)
            .then(|| self.dir.join(file))
    }
}

/// The previous provisioning login of a phone (HA1s only, opened from their sealed
/// form), accepted only from `sources` until `expires_at`: the phone fetches the file
/// that brings its new login with it.
#[derive(Clone, Debug)]
pub struct LoginGrace {
    pub ha1_md5: Secret,
    pub ha1_sha256: Secret,
    pub sources: Vec<IpAddr>,
    pub expires_at: i64,
}

impl LoginGrace {
    /// The old login's HA1 for `alg`, if `source` may use it at `now`.
    pub fn ha1_for(&self, alg: Algorithm, source: IpAddr, now: i64) -> Option<&str> {
        if now >= self.expires_at || !self.sources.contains(&source) {
            return None;
        }
        let ha1 = match alg {
            Algorithm::Md5 => self.ha1_md5.expose(),
            Algorithm::Sha256 => self.ha1_sha256.expose(),
        };
        (!ha1.is_empty()).then_some(ha1)
    }
}

/// A MAC as phones send it (12 hex digits, any case, `:` or `-` separated) in the form
/// stored; None for anything else.
fn normalise_mac(user: &str) -> Option<String> {
    let hex: String = user.chars().filter(|c| !matches!(c, ':' | '-')).collect();
    (hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

impl Registry {
    /// Looks up the provisioning login `user` (see the module documentation for why it
    /// costs the same either way).
    pub async fn provisioning_login(&self, user: &str) -> Result<PhoneLogin> {
        let now = self.now();
        // An impossible key keeps the query (and its cost) for users that are no MAC.
        let mac = normalise_mac(user).unwrap_or_else(|| "-".into());
        let mut conn = self.store.conn().await?;
        let found = store::provisioning::phone_by_mac(&mut conn, &mac, now).await?;
        drop(conn);
        let real = match (&found.number, &found.http_password_enc) {
            (Some(number), Some(enc)) => Some((number.clone(), enc.clone())),
            _ => None,
        };
        let (aad, sealed) = match &real {
            Some((number, enc)) => (ext_aad(number, "phone_http"), enc.clone()),
            None => (STAND_IN_AAD.to_owned(), self.stand_in()),
        };
        let password = self.open_secret(&aad, &sealed)?;
        let vendor = found.model.as_deref().and_then(Vendor::from_model);
        let phone = match (real, vendor) {
            (Some((number, _)), Some(vendor)) => Some(PhoneFiles {
                number,
                // The CA file is served when it was written (TLS phones, private CA).
                files: vendor
                    .files(&mac)
                    .into_iter()
                    .map(|(f, _)| f)
                    .chain([crate::provisioning::ca_file(&mac)])
                    .collect(),
                mac,
                vendor,
                dir: self.data.provisioning_dir(),
            }),
            _ => None,
        };
        let window = match (
            &phone,
            found.grace_prov_ha1_md5_enc,
            found.grace_prov_ha1_sha256_enc,
            found.grace_sources,
            found.grace_expires_at,
        ) {
            (Some(phone), Some(md5), Some(sha), Some(sources), Some(expires_at))
                if !md5.is_empty() && !sha.is_empty() =>
            {
                Some((phone.number.clone(), md5, sha, sources, expires_at))
            }
            _ => None,
        };
        // The old login's HA1s are sealed at rest: opened here, or (no window) the
        // stand-in twice in their place, so an open window costs no more to look up.
        let grace = match window {
            Some((number, md5, sha, sources, expires_at)) => self
                .open_ha1s(Ha1Owner::GraceProvisioning(&number), (&md5, &sha))
                .ok()
                .map(|(ha1_md5, ha1_sha256)| LoginGrace {
                    ha1_md5,
                    ha1_sha256,
                    sources: sources.split(',').filter_map(|s| s.parse().ok()).collect(),
                    expires_at,
                }),
            None => {
                let stand_in = self.stand_in();
                for _ in 0..2 {
                    let _ = self.open_secret(STAND_IN_AAD, &stand_in);
                }
                None
            }
        };
        Ok(PhoneLogin {
            phone,
            password,
            grace,
        })
    }

    /// Records that the phone of `number` fetched a file with its current login from
    /// `ip`: once the login is rotated, its grace window accepts it only from there.
    pub async fn record_fetch(&self, number: &str, ip: IpAddr) -> Result<()> {
        let mut conn = self.store.conn().await?;
        store::provisioning::record_fetch(&mut conn, number, &ip.to_string(), self.now()).await?;
        Ok(())
    }

    /// A sealed secret nobody knows, opened in place of a phone's for logins no phone
    /// has. Sealed once per process.
    fn stand_in(&self) -> String {
        self.stand_in
            .get_or_init(|| {
                let secret = self.new_phone_secret();
                self.seal(STAND_IN_AAD, secret.expose())
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_normalised_and_nothing_else_passes() {
        assert_eq!(
            normalise_mac("001565AABBCC").as_deref(),
            Some("001565aabbcc")
        );
        assert_eq!(
            normalise_mac("00:15:65:aa:bb:cc").as_deref(),
            Some("001565aabbcc")
        );
        for bad in [
            "",
            "admin",
            "001565aabbc",
            "001565aabbccd",
            "00156zaabbcc",
            "../x",
        ] {
            assert_eq!(normalise_mac(bad), None, "{bad}");
        }
    }
}
