//! The registrar's credentials, read from the store with their HA1s still sealed. HA1
//! digests work like passwords (whoever holds one logs in), so they are sealed at rest
//! like every secret and opened only here ([`Ha1Opener`]), by the running server, when
//! an account is first used or by the pass that opens the rest after the server is
//! ready: a start reads every account but opens none of their 20,000 HA1s before it
//! answers.

use std::sync::Arc;

use policy::Secret;
use sip::digest::Algorithm;
use store::Db;
use store::Vault;
use store::directory::DirectoryRow;
use store::grace::GraceRow;

use crate::Result;
use crate::registry::{Ha1Owner, Registry};

/// Extensions read per page at a load: the packed text of one page at a time.
const DIRECTORY_PAGE: i64 = 2_000;

/// Whose HA1s a sealed pair holds (with [`SealedHa1s::record`], the AAD they open under).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Extension,
    Gateway,
    Grace,
}

/// An account's two HA1s as sealed by the vault (`ext/1001/ha1_md5`, ...), not opened.
/// Opened only through [`Ha1Opener::open`]; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedHa1s {
    holder: Holder,
    /// The record the AADs name: the extension number, the gateway's name, the grace
    /// window's number.
    record: String,
    md5: String,
    sha256: String,
}

impl SealedHa1s {
    fn owner(&self) -> Ha1Owner<'_> {
        match self.holder {
            Holder::Extension => Ha1Owner::Extension(&self.record),
            Holder::Gateway => Ha1Owner::Gateway(&self.record),
            Holder::Grace => Ha1Owner::Grace(&self.record),
        }
    }

    /// The AADs of the two values (MD5, SHA-256): what the operator is told when one
    /// does not open.
    pub fn aads(&self) -> [String; 2] {
        [
            self.owner().aad(Algorithm::Md5),
            self.owner().aad(Algorithm::Sha256),
        ]
    }
}

impl std::fmt::Debug for SealedHa1s {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedHa1s")
            .field("holder", &self.holder)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// Opened HA1s (MD5, SHA-256): redacted when printed, zeroized when dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedHa1s {
    pub md5: Secret,
    pub sha256: Secret,
}

/// An account's HA1s as a load hands them over: sealed (read from the store), or
/// opened already (a directory built in a test).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ha1s {
    Sealed(SealedHa1s),
    Opened(OpenedHa1s),
}

impl Ha1s {
    /// HA1s that need no opening.
    pub fn opened(md5: Secret, sha256: Secret) -> Self {
        Ha1s::Opened(OpenedHa1s { md5, sha256 })
    }
}

/// Opens sealed HA1s with the data dir's key. Cheap to clone (one shared vault).
#[derive(Clone)]
pub struct Ha1Opener {
    vault: Arc<Vault>,
    /// A pair sealed at start under an AAD no row has: opened in place of an unknown
    /// user's, so that a first login and an unknown user do the same work.
    dummy: Arc<SealedHa1s>,
}

impl std::fmt::Debug for Ha1Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ha1Opener").finish_non_exhaustive()
    }
}

impl Ha1Opener {
    /// Opens both values (always both: the same work whether the first opens or not).
    /// Fails with the AADs of the values that did not open (altered in the database, or
    /// copied from another record or field): such an account cannot log in.
    pub fn open(&self, sealed: &SealedHa1s) -> std::result::Result<OpenedHa1s, Vec<String>> {
        let [md5_aad, sha_aad] = sealed.aads();
        let md5 = self.vault.open(&md5_aad, &sealed.md5).ok();
        let sha256 = self.vault.open(&sha_aad, &sealed.sha256).ok();
        match (md5, sha256) {
            (Some(md5), Some(sha256)) => Ok(OpenedHa1s { md5, sha256 }),
            (md5, sha) => Err([(md5.is_none(), md5_aad), (sha.is_none(), sha_aad)]
                .into_iter()
                .filter_map(|(failed, aad)| failed.then_some(aad))
                .collect()),
        }
    }

    /// Opens HA1s as a load handed them over (opened ones as they are).
    pub fn open_ha1s(&self, ha1s: &Ha1s) -> std::result::Result<OpenedHa1s, Vec<String>> {
        match ha1s {
            Ha1s::Sealed(sealed) => self.open(sealed),
            Ha1s::Opened(opened) => Ok(opened.clone()),
        }
    }

    /// Opens the dummy pair: the work of a first login, for a user who has none.
    pub fn open_dummy(&self) -> Option<OpenedHa1s> {
        self.open(&self.dummy).ok()
    }
}

/// One account that can authenticate, its HA1s as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// `ext` or `gateway`.
    pub kind: &'static str,
    /// The extension number (or the gateway's virtual extension number).
    pub number: String,
    pub auth_id: String,
    pub sip_id: Option<String>,
    pub ha1s: Ha1s,
    /// The password's zxcvbn score (0..=4), stored when it was set.
    pub password_score: u8,
    /// An extension's credential generation (see
    /// [`store::account::ExtensionRow::credential_generation`]); 0 for gateways.
    pub credential_generation: i64,
}

/// An open grace window with its old HA1s as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraceCredential {
    pub number: String,
    pub auth_id: String,
    pub ha1s: Ha1s,
    /// IP addresses, comma-separated.
    pub sources: String,
    pub expires_at: i64,
    /// The credential generation the old HA1s had: bindings made with it stay (from the
    /// sources above) until the window ends.
    pub generation: i64,
}

/// What one load found.
#[derive(Debug, Default)]
pub struct Credentials {
    pub accounts: Vec<Credential>,
    pub graces: Vec<GraceCredential>,
}

impl Registry {
    /// Opens the HA1s of [`Registry::credentials`]. Seals the dummy pair it opens for
    /// unknown users (one fresh nonce per call).
    pub fn ha1_opener(&self) -> Ha1Opener {
        let record = "-".to_owned();
        let owner = Ha1Owner::Extension(&record);
        let zeros = |alg| {
            let len = match alg {
                Algorithm::Md5 => 32,
                Algorithm::Sha256 => 64,
            };
            self.seal(&owner.aad(alg), &"0".repeat(len))
        };
        let dummy = SealedHa1s {
            holder: Holder::Extension,
            md5: zeros(Algorithm::Md5),
            sha256: zeros(Algorithm::Sha256),
            record,
        };
        Ha1Opener {
            vault: self.vault.clone(),
            dummy: Arc::new(dummy),
        }
    }

    /// Every account that can register and every grace window open at `now`, with their
    /// HA1s sealed: nothing is opened here (see [`Ha1Opener`]).
    pub async fn credentials(&self, conn: &mut dyn Db, now: i64) -> Result<Credentials> {
        credentials_in_pages(conn, now, DIRECTORY_PAGE).await
    }
}

async fn credentials_in_pages(conn: &mut dyn Db, now: i64, page_size: i64) -> Result<Credentials> {
    let graces = store::grace::live_graces(conn, now)
        .await?
        .into_iter()
        .map(grace_credential)
        .collect();
    let gateways = store::directory::gateway_directory(conn).await?;
    let mut accounts = Vec::new();
    let mut after = String::new();
    loop {
        let page = store::directory::extension_directory(conn, &after, page_size).await?;
        let full = i64::try_from(page.rows.len()).is_ok_and(|n| n >= page_size);
        accounts.extend(page.rows.into_iter().map(credential));
        match page.last {
            Some(last) if full => after = last,
            _ => break,
        }
    }
    accounts.extend(gateways.into_iter().map(credential));
    Ok(Credentials { accounts, graces })
}

fn credential(r: DirectoryRow) -> Credential {
    let holder = match r.kind {
        "gateway" => Holder::Gateway,
        _ => Holder::Extension,
    };
    Credential {
        kind: r.kind,
        ha1s: Ha1s::Sealed(SealedHa1s {
            holder,
            record: r.record,
            md5: r.ha1_md5_enc,
            sha256: r.ha1_sha256_enc,
        }),
        number: r.number,
        auth_id: r.auth_id,
        sip_id: r.sip_id,
        password_score: r.password_score,
        credential_generation: r.credential_generation,
    }
}

fn grace_credential(g: GraceRow) -> GraceCredential {
    GraceCredential {
        ha1s: Ha1s::Sealed(SealedHa1s {
            holder: Holder::Grace,
            record: g.number.clone(),
            md5: g.ha1_md5_enc,
            sha256: g.ha1_sha256_enc,
        }),
        number: g.number,
        auth_id: g.auth_id,
        sources: g.sources,
        expires_at: g.expires_at,
        generation: g.generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_load_what_one_read_loads_and_every_value_opens() {
        let dir = tempfile::tempdir().expect("tmp");
        let reg = crate::open::tests::registry_in(dir.path()).await;
        for n in ["1001", "1002", "1003", "1004", "1005"] {
            reg.add_extension(n, Default::default()).await.expect("add");
        }
        let mut conn = reg.store().conn().await.expect("conn");
        let numbers = |c: &Credentials| {
            let mut n: Vec<String> = c.accounts.iter().map(|a| a.number.clone()).collect();
            n.sort();
            n
        };
        let whole = credentials_in_pages(&mut conn, 0, 1_000)
            .await
            .expect("one page");
        // 888, the data dir's fax extension, and the five.
        assert_eq!(
            numbers(&whole),
            ["1001", "1002", "1003", "1004", "1005", "888"]
        );
        for size in [1, 2, 4] {
            let paged = credentials_in_pages(&mut conn, 0, size)
                .await
                .expect("pages");
            assert_eq!(paged.accounts, whole.accounts, "pages of {size}");
        }
        let opener = reg.ha1_opener();
        for a in &whole.accounts {
            let Ha1s::Sealed(sealed) = &a.ha1s else {
                panic!("a load hands HA1s over sealed")
            };
            let opened = opener.open(sealed).expect("opens");
            assert_eq!(opened.md5.expose().len(), 32);
            assert_eq!(opened.sha256.expose().len(), 64);
        }
        assert!(opener.open_dummy().is_some(), "the dummy opens");
    }

    #[tokio::test]
    async fn a_value_copied_into_another_record_does_not_open_and_names_its_field() {
        let dir = tempfile::tempdir().expect("tmp");
        let reg = crate::open::tests::registry_in(dir.path()).await;
        let opener = reg.ha1_opener();
        let sealed = |record: &str, md5: String, sha256: String| SealedHa1s {
            holder: Holder::Extension,
            record: record.into(),
            md5,
            sha256,
        };
        let a = Ha1Owner::Extension("1001");
        let md5 = reg.seal(&a.aad(Algorithm::Md5), &"a".repeat(32));
        let sha = reg.seal(&a.aad(Algorithm::Sha256), &"b".repeat(64));
        assert!(
            opener
                .open(&sealed("1001", md5.clone(), sha.clone()))
                .is_ok()
        );
        assert_eq!(
            opener.open(&sealed("1002", md5.clone(), sha.clone())),
            Err(vec![
                "ext/1002/ha1_md5".to_owned(),
                "ext/1002/ha1_sha256".to_owned()
            ])
        );
        assert_eq!(
            opener.open(&sealed("1001", md5, "v1:00".into())),
            Err(vec!["ext/1001/ha1_sha256".to_owned()])
        );
    }
}
