//! The registrar's credentials, opened from the store. HA1 digests work like passwords
//! (whoever holds one logs in), so they are sealed at rest like every secret and opened
//! only here, for the running server's in-memory directory.
//!
//! A reload opens only what changed: a sealed value is written whole whenever its HA1
//! changes (with a fresh nonce), so the same ciphertext under the same record always
//! opens to the same HA1, and [`OpenedHa1s`] keeps what the last load opened.

use std::collections::HashMap;

use policy::Secret;
use sip::digest::Algorithm;
use store::Db;
use store::directory::DirectoryRow;
use store::grace::GraceRow;

use crate::Result;
use crate::registry::{Ha1Owner, Registry, parallel_map, worker_threads};

/// Below this many values to open, a load opens them on the calling thread.
const PARALLEL_FROM: usize = 512;

/// One account that can authenticate, with its HA1s opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// `ext` or `gateway`.
    pub kind: &'static str,
    /// The extension number (or the gateway's virtual extension number).
    pub number: String,
    pub auth_id: String,
    pub sip_id: Option<String>,
    pub ha1_md5: Secret,
    pub ha1_sha256: Secret,
    /// The password's zxcvbn score (0..=4), stored when it was set.
    pub password_score: u8,
    /// An extension's credential generation (see
    /// [`store::account::ExtensionRow::credential_generation`]); 0 for gateways.
    pub credential_generation: i64,
}

/// An open grace window with its old HA1s opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraceCredential {
    pub number: String,
    pub auth_id: String,
    pub ha1_md5: Secret,
    pub ha1_sha256: Secret,
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
    /// Sealed HA1s that did not open (altered in the database, or copied from another
    /// row): these accounts or windows cannot log in. Their AADs, for the operator.
    pub unopened: Vec<String>,
}

/// HA1s opened by the last load: sealed text to the AAD it opened under and the HA1.
/// A hit counts only under the same AAD (the same ciphertext copied into another record
/// must still fail to open). Holds only what the last load used.
#[derive(Debug, Default)]
pub struct OpenedHa1s {
    map: HashMap<String, (String, Secret)>,
}

impl OpenedHa1s {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One sealed value a load needs: its AAD and ciphertext.
type Wanted = (String, String);

/// A value of one load: opened already (from the last load), or waiting to be opened
/// (its index among the values to open).
enum Slot {
    Ready(Option<Secret>),
    Pending(usize),
}

impl Registry {
    /// Every account that can register and every grace window open at `now`, with their
    /// HA1s opened; values `opened` holds from the last load are not opened again. Many
    /// values (a first load, a bulk Re-Generate) are opened on worker threads, off the
    /// caller's.
    pub async fn credentials(
        &self,
        conn: &mut dyn Db,
        now: i64,
        opened: &mut OpenedHa1s,
    ) -> Result<Credentials> {
        let rows = store::directory::directory(conn).await?;
        let graces = store::grace::live_graces(conn, now).await?;

        // One pass: each sealed value is taken from the last load or queued to open.
        let mut previous = std::mem::replace(
            &mut opened.map,
            HashMap::with_capacity(2 * (rows.len() + graces.len())),
        );
        let mut todo: Vec<Wanted> = Vec::new();
        let mut slot = |owner: Ha1Owner<'_>, alg, sealed: String| -> (String, Slot) {
            let aad = owner.aad(alg);
            match previous.remove(&sealed) {
                Some((was, ha1)) if was == aad => {
                    opened.map.insert(sealed, (was, ha1.clone()));
                    (aad, Slot::Ready(Some(ha1)))
                }
                _ => {
                    todo.push((aad.clone(), sealed));
                    (aad, Slot::Pending(todo.len() - 1))
                }
            }
        };
        let mut rows: Vec<_> = rows
            .into_iter()
            .map(|mut r| {
                let sealed = (
                    std::mem::take(&mut r.ha1_md5_enc),
                    std::mem::take(&mut r.ha1_sha256_enc),
                );
                let md5 = slot(owner_of(&r), Algorithm::Md5, sealed.0);
                let sha = slot(owner_of(&r), Algorithm::Sha256, sealed.1);
                (r, md5, sha)
            })
            .collect();
        let mut graces: Vec<_> = graces
            .into_iter()
            .map(|mut g| {
                let sealed = (
                    std::mem::take(&mut g.ha1_md5_enc),
                    std::mem::take(&mut g.ha1_sha256_enc),
                );
                let owner = Ha1Owner::Grace(&g.number);
                let md5 = slot(owner, Algorithm::Md5, sealed.0);
                let sha = slot(owner, Algorithm::Sha256, sealed.1);
                (g, md5, sha)
            })
            .collect();
        drop(previous);

        let mut results = self.open_many(todo).await?;
        let mut out = Credentials::default();
        let mut resolve = |(aad, s): (String, Slot)| -> Option<Secret> {
            let ha1 = match s {
                Slot::Ready(h) => h,
                Slot::Pending(i) => {
                    let ((aad, sealed), ha1) = std::mem::take(&mut results[i]);
                    if let Some(h) = &ha1 {
                        opened.map.insert(sealed, (aad, h.clone()));
                    }
                    ha1
                }
            };
            if ha1.is_none() {
                out.unopened.push(aad);
            }
            ha1
        };
        let mut accounts = Vec::with_capacity(rows.len());
        for (r, md5, sha) in rows.drain(..) {
            if let (Some(md5), Some(sha)) = (resolve(md5), resolve(sha)) {
                accounts.push(Credential {
                    kind: r.kind,
                    number: r.number,
                    auth_id: r.auth_id,
                    sip_id: r.sip_id,
                    ha1_md5: md5,
                    ha1_sha256: sha,
                    password_score: r.password_score,
                    credential_generation: r.credential_generation,
                });
            }
        }
        let mut open_graces = Vec::with_capacity(graces.len());
        for (g, md5, sha) in graces.drain(..) {
            if let (Some(md5), Some(sha)) = (resolve(md5), resolve(sha)) {
                open_graces.push(grace_credential(g, md5, sha));
            }
        }
        out.accounts = accounts;
        out.graces = open_graces;
        Ok(out)
    }

    /// Opens `todo`; `None` for a value that does not open. Many values are opened on
    /// blocking worker threads (the caller may be a thread that serves SIP).
    async fn open_many(&self, todo: Vec<Wanted>) -> Result<Vec<(Wanted, Option<Secret>)>> {
        let vault = self.vault.clone();
        let open = move |todo: Vec<Wanted>| {
            let one = |(aad, sealed): &Wanted| vault.open(aad, sealed).ok();
            let opened: Vec<Option<Secret>> = if todo.len() < PARALLEL_FROM {
                todo.iter().map(one).collect()
            } else {
                parallel_map(&todo, worker_threads(), one)
            };
            todo.into_iter().zip(opened).collect::<Vec<_>>()
        };
        if todo.len() < PARALLEL_FROM {
            return Ok(open(todo));
        }
        match tokio::task::spawn_blocking(move || open(todo)).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(crate::Error::ShuttingDown),
        }
    }
}

/// Whose HA1s a directory row holds.
fn owner_of(r: &DirectoryRow) -> Ha1Owner<'_> {
    match r.kind {
        "gateway" => Ha1Owner::Gateway(&r.record),
        _ => Ha1Owner::Extension(&r.record),
    }
}

fn grace_credential(g: GraceRow, ha1_md5: Secret, ha1_sha256: Secret) -> GraceCredential {
    GraceCredential {
        number: g.number,
        auth_id: g.auth_id,
        ha1_md5,
        ha1_sha256,
        sources: g.sources,
        expires_at: g.expires_at,
        generation: g.generation,
    }
}
