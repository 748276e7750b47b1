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
/// Extensions read per page at a load: 4,000 sealed values to open per page.
const DIRECTORY_PAGE: i64 = 2_000;

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
        self.credentials_in_pages(conn, now, opened, DIRECTORY_PAGE)
            .await
    }

    async fn credentials_in_pages(
        &self,
        conn: &mut dyn Db,
        now: i64,
        opened: &mut OpenedHa1s,
        page_size: i64,
    ) -> Result<Credentials> {
        let graces = store::grace::live_graces(conn, now).await?;
        let gateways = store::directory::gateway_directory(conn).await?;

        // One pass: each sealed value is taken from the last load or queued to open.
        let last_load = opened.map.len();
        let mut slots = Slots {
            previous: std::mem::replace(&mut opened.map, HashMap::with_capacity(last_load)),
            kept: &mut opened.map,
            todo: Vec::new(),
            queued: 0,
        };
        let mut graces: Vec<_> = graces
            .into_iter()
            .map(|mut g| {
                let sealed = (
                    std::mem::take(&mut g.ha1_md5_enc),
                    std::mem::take(&mut g.ha1_sha256_enc),
                );
                let owner = Ha1Owner::Grace(&g.number);
                let md5 = slots.slot(owner, Algorithm::Md5, sealed.0);
                let sha = slots.slot(owner, Algorithm::Sha256, sealed.1);
                (g, md5, sha)
            })
            .collect();
        let mut gateways = slots.rows(gateways);
        // Extensions a page at a time: a page's values are opened on worker threads
        // while the next page is read, and the results come back in the order queued.
        let mut results: Vec<(Wanted, Option<Secret>)> = Vec::new();
        let mut opening = self.start_opening(slots.take());
        let mut rows = Vec::new();
        let mut after = String::new();
        loop {
            let page = store::directory::extension_directory(conn, &after, page_size).await?;
            let full = i64::try_from(page.rows.len()).is_ok_and(|n| n >= page_size);
            rows.extend(slots.rows(page.rows));
            let next = self.start_opening(slots.take());
            results.extend(opening.finish().await?);
            opening = next;
            match page.last {
                Some(last) if full => after = last,
                _ => break,
            }
        }
        results.extend(opening.finish().await?);
        drop(slots);
        rows.append(&mut gateways);

        let mut out = Credentials::default();
        let mut resolve = |(aad, s): (String, Slot)| -> Option<Secret> {
            let ha1 = match s {
                Slot::Ready(h) => h,
                Slot::Pending(i) => {
                    let ((aad, sealed), ha1) =
                        results.get_mut(i).map(std::mem::take).unwrap_or_default();
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

    /// Starts opening `todo`: many values on blocking worker threads (the caller may be
    /// a thread that serves SIP), a few at once on this one.
    fn start_opening(&self, todo: Vec<Wanted>) -> Opening {
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
            Opening::Done(open(todo))
        } else {
            Opening::Running(tokio::task::spawn_blocking(move || open(todo)))
        }
    }
}

/// Values being opened, or opened already.
enum Opening {
    Done(Vec<(Wanted, Option<Secret>)>),
    Running(tokio::task::JoinHandle<Vec<(Wanted, Option<Secret>)>>),
}

impl Opening {
    async fn finish(self) -> Result<Vec<(Wanted, Option<Secret>)>> {
        match self {
            Opening::Done(v) => Ok(v),
            Opening::Running(h) => match h.await {
                Ok(v) => Ok(v),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Err(crate::Error::ShuttingDown),
            },
        }
    }
}

/// The directory rows of one load, with what each sealed value resolves to: opened by
/// the last load, or the index it will have among the values opened by this one.
type SlottedRow = (DirectoryRow, (String, Slot), (String, Slot));

/// One load's pass over the sealed values.
struct Slots<'m> {
    /// What the last load opened, not yet claimed by this one.
    previous: HashMap<String, (String, Secret)>,
    /// What this load keeps for the next.
    kept: &'m mut HashMap<String, (String, Secret)>,
    /// Values to open, not yet handed to [`Registry::start_opening`].
    todo: Vec<Wanted>,
    /// Values handed over before `todo`: the index of `todo[0]` among all.
    queued: usize,
}

impl Slots<'_> {
    fn slot(&mut self, owner: Ha1Owner<'_>, alg: Algorithm, sealed: String) -> (String, Slot) {
        let aad = owner.aad(alg);
        match self.previous.remove(&sealed) {
            Some((was, ha1)) if was == aad => {
                self.kept.insert(sealed, (was, ha1.clone()));
                (aad, Slot::Ready(Some(ha1)))
            }
            _ => {
                self.todo.push((aad.clone(), sealed));
                (aad, Slot::Pending(self.queued + self.todo.len() - 1))
            }
        }
    }

    fn rows(&mut self, rows: Vec<DirectoryRow>) -> Vec<SlottedRow> {
        rows.into_iter()
            .map(|mut r| {
                let sealed = (
                    std::mem::take(&mut r.ha1_md5_enc),
                    std::mem::take(&mut r.ha1_sha256_enc),
                );
                let md5 = self.slot(owner_of(&r), Algorithm::Md5, sealed.0);
                let sha = self.slot(owner_of(&r), Algorithm::Sha256, sealed.1);
                (r, md5, sha)
            })
            .collect()
    }

    /// The values queued since the last call, to be opened next.
    fn take(&mut self) -> Vec<Wanted> {
        let todo = std::mem::take(&mut self.todo);
        self.queued += todo.len();
        todo
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_load_what_one_read_loads_and_keep_every_value_for_the_next_load() {
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
        let mut whole_cache = OpenedHa1s::default();
        let whole = reg
            .credentials_in_pages(&mut conn, 0, &mut whole_cache, 1_000)
            .await
            .expect("one page");
        // 888, the data dir's fax extension, and the five.
        assert_eq!(
            numbers(&whole),
            ["1001", "1002", "1003", "1004", "1005", "888"]
        );
        for size in [1, 2, 4] {
            let mut cache = OpenedHa1s::default();
            let paged = reg
                .credentials_in_pages(&mut conn, 0, &mut cache, size)
                .await
                .expect("pages");
            assert_eq!(paged.accounts, whole.accounts, "pages of {size}");
            assert!(paged.unopened.is_empty());
            assert_eq!(cache.len(), 12, "two HA1s each, kept for the next load");
            // The next load finds each value among what this one kept.
            let again = reg
                .credentials_in_pages(&mut conn, 0, &mut cache, size)
                .await
                .expect("reload");
            assert_eq!(again.accounts, whole.accounts);
            assert_eq!(cache.len(), 12);
        }
    }
}
