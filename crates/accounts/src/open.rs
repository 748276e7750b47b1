//! Opening a data dir: creating it on first use (schema, secrets key, the fax extension
//! 888 with strong credentials, the provisioning path), checking the key against the
//! database, sealing the HA1s of a data dir from before they were sealed at rest,
//! re-hashing every account after a realm change, and rewriting provisioning files a
//! crash left behind. What it found is reported back, never silently fixed.

use std::sync::{Arc, Mutex};

use policy::clock::Clock;
use policy::generate;
use rand_core::CryptoRng;
use sip::digest::Algorithm;
use store::account as q;
use store::{DataDir, Db, PgUrl, Store, Vault};

use crate::Result;
use crate::extension::{ExtensionKind, NewExtension};
use crate::registry::{
    DEFAULT_FAX_NUMBER, Ha1Owner, META_EPOCH, META_HA1_SEALED, META_KEY_CHECK,
    META_PROVISIONING_PATH, META_REALM, Registry, Settings, SharedRng, ext_aad, gateway_aad,
};

/// The key check: a known text sealed with the data dir's key when it was created, so a
/// wrong key is refused at open instead of failing on the first secret.
const KEY_CHECK_AAD: &str = "meta/key_check";
const KEY_CHECK_TEXT: &str = "sipward key check";

/// What opening a data dir did, for the operator to hear about.
#[derive(Debug, Default)]
pub struct Opened {
    /// The data dir was created by this call (schema, key, fax extension 888).
    pub created: bool,
    /// The realm changed since the HA1s were computed; this many accounts were re-hashed.
    pub rehashed: Option<usize>,
    /// The data dir was from before HA1s were sealed at rest; this many rows
    /// (extensions, gateways, grace windows) had theirs sealed now, once.
    pub ha1_sealed: Option<usize>,
    /// Phones whose provisioning files were behind the database (an interrupted
    /// Re-Generate) and were rewritten.
    pub provisioning_rewritten: usize,
    /// Phones whose files still cannot be written (extension number, why): a broken
    /// operator template, say. Retried at every open.
    pub provisioning_failed: Vec<(String, String)>,
    /// The data dir is at this security epoch, older than [`policy::epoch::CURRENT`]:
    /// the caller backs it up and calls [`Registry::harden`].
    pub epoch_behind: Option<u32>,
}

impl Registry {
    /// Opens the data dir, creating it on first use: database schema, secrets key (mode
    /// 0600) and the fax extension 888 with strong credentials.
    pub async fn open(
        data: &DataDir,
        settings: Settings,
        rng: Box<dyn CryptoRng + Send>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, Opened)> {
        Self::open_on(data, None, settings, rng, clock).await
    }

    /// Like [`Registry::open`], with the database in PostgreSQL at `database` when it is
    /// given (several nodes share it; each keeps the data dir for its secrets key,
    /// provisioning files and backups). The secrets key is created only along with the
    /// database's key check: a node given an initialised database without the key is
    /// refused, as a data dir without its key is.
    pub async fn open_on(
        data: &DataDir,
        database: Option<&PgUrl>,
        settings: Settings,
        rng: Box<dyn CryptoRng + Send>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, Opened)> {
        let rng: SharedRng = Arc::new(Mutex::new(rng));
        let fresh_file = data.ensure()?;
        let (store, fresh, db_name) = match database {
            None => (None, fresh_file, data.db_path()),
            Some(url) => {
                let store = Store::open_postgres(url).await?;
                let mut conn = store.conn().await?;
                let fresh = store::meta::get_meta(&mut conn, META_KEY_CHECK)
                    .await?
                    .is_none();
                drop(conn);
                (Some(store), fresh, std::path::PathBuf::from(url.redacted()))
            }
        };
        let key_path = data.key_path();
        let vault = if key_path.exists() {
            Vault::load(&key_path)?
        } else if fresh {
            let mut guard = rng.lock().unwrap_or_else(|p| p.into_inner());
            Vault::create(&key_path, &mut **guard)?
        } else {
            return Err(store::Error::KeyMissing {
                path: key_path,
                db: db_name,
            }
            .into());
        };
        let store = match store {
            Some(store) => store,
            None => {
                let store = Store::open_sqlite(&data.db_path()).await?;
                data.restrict_db_files()?;
                store
            }
        };
        let registry = Self {
            store,
            data: data.clone(),
            vault: Arc::new(vault),
            plan: Arc::new(std::sync::RwLock::new((
                0,
                Arc::new(settings.dialplan.clone()),
            ))),
            settings: Arc::new(settings),
            rng,
            clock,
            stand_in: Arc::default(),
            guard_file: Arc::default(),
        };
        let mut opened = Opened::default();

        let mut tx = registry.store.begin().await?;
        match store::meta::get_meta(&mut tx, META_KEY_CHECK).await? {
            Some(sealed) => {
                let ok = registry
                    .vault
                    .open(KEY_CHECK_AAD, &sealed)
                    .is_ok_and(|s| s.ct_eq(KEY_CHECK_TEXT));
                if !ok {
                    return Err(store::Error::KeyMismatch.into());
                }
            }
            None => {
                // A database without a key check is one this call just created.
                let sealed = registry.seal(KEY_CHECK_AAD, KEY_CHECK_TEXT);
                store::meta::set_meta(&mut tx, META_KEY_CHECK, &sealed).await?;
                store::meta::set_meta(&mut tx, META_REALM, &registry.settings.realm).await?;
                registry.create_default_fax(&mut tx).await?;
                // Created hardened: nothing an epoch fixes can be in a new data dir.
                store::meta::set_meta(&mut tx, META_EPOCH, &policy::epoch::CURRENT.to_string())
                    .await?;
                opened.created = true;
            }
        }
        if store::meta::get_meta(&mut tx, META_HA1_SEALED)
            .await?
            .is_some_and(|v| v != "1")
        {
            opened.ha1_sealed = Some(registry.seal_stored_ha1s(&mut tx).await?);
            store::meta::set_meta(&mut tx, META_HA1_SEALED, "1").await?;
        }
        let stored_realm = store::meta::get_meta(&mut tx, META_REALM).await?;
        if stored_realm.as_deref() != Some(registry.settings.realm.as_str()) {
            opened.rehashed = Some(registry.rehash_all(&mut tx).await?);
            store::meta::set_meta(&mut tx, META_REALM, &registry.settings.realm).await?;
        }
        if store::meta::get_meta(&mut tx, META_PROVISIONING_PATH)
            .await?
            .is_none()
        {
            // 24 random alphanumerics (~143 bits): the per-install path phones fetch under.
            let path = registry.with_rng(|rng| generate::password(rng, 24, &[]));
            store::meta::set_meta(&mut tx, META_PROVISIONING_PATH, path.expose()).await?;
        }
        let at: u32 = store::meta::get_meta(&mut tx, META_EPOCH)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        opened.epoch_behind = (at < policy::epoch::CURRENT).then_some(at);
        tx.commit().await?;
        if opened.ha1_sealed.is_some_and(|n| n > 0) {
            // The plain HA1s must not survive in free pages or the log either.
            registry.store.compact().await?;
        }
        // Files a crash left behind their database state are written now.
        (opened.provisioning_rewritten, opened.provisioning_failed) =
            registry.write_unwritten_files().await?;
        Ok((registry, opened))
    }

    async fn create_default_fax(&self, conn: &mut dyn Db) -> Result<()> {
        let new = NewExtension {
            kind: ExtensionKind::Fax,
            name: Some("Fax".into()),
            ..NewExtension::default()
        };
        let prepared = self
            .prepare_new_extension(DEFAULT_FAX_NUMBER, new, conn)
            .await?;
        q::insert_extension(conn, &prepared.row).await?;
        Ok(())
    }

    /// Recomputes every stored HA1 for the current realm (the realm changed in config).
    async fn rehash_all(&self, conn: &mut dyn Db) -> Result<usize> {
        let mut n = 0;
        for mut e in q::list_extensions(conn).await? {
            let pw = self.open_secret(&ext_aad(&e.number, "password"), &e.password_enc)?;
            (e.ha1_md5_enc, e.ha1_sha256_enc) =
                self.sealed_ha1s(Ha1Owner::Extension(&e.number), &e.auth_id, &pw);
            q::update_extension(conn, &e).await?;
            n += 1;
        }
        for mut g in q::list_gateways(conn).await? {
            let pw = self.open_secret(&gateway_aad(&g.name), &g.password_enc)?;
            (g.ha1_md5_enc, g.ha1_sha256_enc) =
                self.sealed_ha1s(Ha1Owner::Gateway(&g.name), &g.auth_id, &pw);
            q::update_gateway(conn, &g).await?;
            n += 1;
        }
        Ok(n)
    }

    /// The one-time step of migration 12: seals every HA1 a data dir from before it
    /// stored in the clear: extensions', gateways', and grace windows' (the old SIP HA1s
    /// and the phone's old provisioning login, which logs in just the same). Values
    /// already sealed, and a window's empty provisioning login (the phone had none), are
    /// left as they are. Returns how many rows changed.
    async fn seal_stored_ha1s(&self, conn: &mut dyn Db) -> Result<usize> {
        // Seals one value if it is in the clear; true when it did.
        let seal = |owner: Ha1Owner<'_>, alg: Algorithm, value: &mut String| {
            let plain = !value.is_empty() && !Vault::looks_sealed(value);
            if plain {
                *value = self.seal(&owner.aad(alg), value);
            }
            plain
        };
        let pair = |owner: Ha1Owner<'_>, md5: &mut String, sha: &mut String| {
            // Both, always: `|` does not short-circuit.
            seal(owner, Algorithm::Md5, md5) | seal(owner, Algorithm::Sha256, sha)
        };
        let mut n = 0;
        for mut e in q::list_extensions(conn).await? {
            let owner = Ha1Owner::Extension(&e.number);
            if pair(owner, &mut e.ha1_md5_enc, &mut e.ha1_sha256_enc) {
                q::update_extension(conn, &e).await?;
                n += 1;
            }
        }
        for mut g in q::list_gateways(conn).await? {
            let owner = Ha1Owner::Gateway(&g.name);
            if pair(owner, &mut g.ha1_md5_enc, &mut g.ha1_sha256_enc) {
                q::update_gateway(conn, &g).await?;
                n += 1;
            }
        }
        for mut g in store::grace::all_graces(conn).await? {
            let number = g.number.clone();
            let sip = pair(
                Ha1Owner::Grace(&number),
                &mut g.ha1_md5_enc,
                &mut g.ha1_sha256_enc,
            );
            let login = pair(
                Ha1Owner::GraceProvisioning(&number),
                &mut g.prov_ha1_md5_enc,
                &mut g.prov_ha1_sha256_enc,
            );
            if sip | login {
                store::grace::put_grace(conn, &g).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A new data dir's registry under `dir`, on a seeded generator and a clock held
    /// still: what the unit tests that need a whole registry start from.
    pub(crate) async fn registry_in(dir: &std::path::Path) -> Registry {
        use rand::SeedableRng;
        let clock = std::sync::Arc::new(policy::clock::ManualClock::new(
            1_795_916_875,
            std::time::Instant::now(),
        ));
        let (reg, _) = Registry::open(
            &store::DataDir::new(dir.join("d")),
            crate::Settings {
                realm: "sipward".into(),
                domain: None,
                policy: policy::PolicyConfig::default(),
                dialplan: Default::default(),
                admin_email: None,
                provisioning: Default::default(),
            },
            Box::new(rand::rngs::StdRng::seed_from_u64(7)),
            clock,
        )
        .await
        .expect("open");
        reg
    }
}
