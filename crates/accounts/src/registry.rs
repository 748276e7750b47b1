//! The registry: extensions, PSTN gateways and VoIP providers, and the workflow that
//! keeps their stored form right (validated fields, sealed secrets, current HA1s).

pub use crate::extension::{
    ExtensionChange, ExtensionKind, ExtensionView, NewExtension, RegistrationView,
};
pub use crate::gateway::{GatewayChange, GatewayView, NewGateway};
pub use crate::outbound::OutboundView;
pub use crate::provider::{NewProvider, ProviderChange, ProviderView};
pub use crate::trunks::{
    DidView, GatewayTrunk, LoadedRoute, NewRoute, ProviderTrunk, RouteView, TrunkSet,
};

pub(crate) use crate::extension::Prepared;
pub(crate) use crate::extension::aad as ext_aad;
pub use crate::extension::{Added, Revealed};
pub(crate) use crate::gateway::aad as gateway_aad;
pub(crate) use crate::provider::aad as provider_aad;

use std::sync::{Arc, Mutex};

use policy::clock::Clock;
use policy::{PolicyConfig, Secret, generate};
use rand_core::CryptoRng;
use sip::digest::{self, Algorithm};
use store::{DataDir, Store, Vault, registry as q};

use crate::{Error, Result};

/// Installation settings the registry needs (from the config file, via the binary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The digest realm HA1s are computed for.
    pub realm: String,
    /// The SIP domain, if configured; passwords must not contain it.
    pub domain: Option<String>,
    pub policy: PolicyConfig,
    /// What phones' provisioning files and welcome mails say.
    pub provisioning: ProvisioningSettings,
    /// Call classes, classes of service and fraud limits (`[dialplan]`).
    pub dialplan: policy::dialplan::DialPlan,
    /// Where security alerts (suspensions, emergency calls) are mailed (`mail.admin`).
    pub admin_email: Option<String>,
}

/// Settings of provisioning and Re-Generate (`[provisioning]` in the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisioningSettings {
    /// The SIP server phones register to (host name or address); defaults to the domain.
    pub server: Option<String>,
    pub port: u16,
    pub transport: crate::provisioning::PhoneTransport,
    /// The number phones dial for voicemail.
    pub voicemail_number: String,
    /// Where phones fetch their files: `http://host:port`, without the path.
    pub base_url: Option<String>,
    /// How long an old password keeps working after Re-Generate, from the addresses the
    /// extension was registered from (0 = not at all).
    pub grace_secs: i64,
}

impl Default for ProvisioningSettings {
    fn default() -> Self {
        Self {
            server: None,
            port: 5060,
            transport: crate::provisioning::PhoneTransport::Udp,
            voicemail_number: "*97".into(),
            base_url: None,
            grace_secs: 86_400,
        }
    }
}

/// The number of the default fax extension every new data dir gets.
pub const DEFAULT_FAX_NUMBER: &str = "888";

const META_REALM: &str = "realm";
const META_KEY_CHECK: &str = "key_check";
const KEY_CHECK_AAD: &str = "meta/key_check";
const KEY_CHECK_TEXT: &str = "sipward key check";

type SharedRng = Arc<Mutex<Box<dyn CryptoRng + Send>>>;

/// An open registry over one data dir.
#[derive(Clone)]
pub struct Registry {
    pub(crate) store: Store,
    pub(crate) data: DataDir,
    vault: Arc<Vault>,
    pub(crate) settings: Arc<Settings>,
    rng: SharedRng,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What opening a data dir did, for the operator to hear about.
#[derive(Debug, Default)]
pub struct Opened {
    /// The data dir was created by this call (schema, key, fax extension 888).
    pub created: bool,
    /// The realm changed since the HA1s were computed; this many accounts were re-hashed.
    pub rehashed: Option<usize>,
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
        let rng: SharedRng = Arc::new(Mutex::new(rng));
        let fresh = data.ensure()?;
        let key_path = data.key_path();
        let vault = if key_path.exists() {
            Vault::load(&key_path)?
        } else if fresh {
            let mut guard = rng.lock().unwrap_or_else(|p| p.into_inner());
            Vault::create(&key_path, &mut **guard)?
        } else {
            return Err(store::Error::KeyMissing {
                path: key_path,
                db: data.db_path(),
            }
            .into());
        };
        let store = Store::open_sqlite(&data.db_path()).await?;
        data.restrict_db_files()?;
        let registry = Self {
            store,
            data: data.clone(),
            vault: Arc::new(vault),
            settings: Arc::new(settings),
            rng,
            clock,
        };
        let mut opened = Opened::default();

        let mut tx = registry.store.begin().await?;
        match q::get_meta(&mut tx, META_KEY_CHECK).await? {
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
                q::set_meta(&mut tx, META_KEY_CHECK, &sealed).await?;
                q::set_meta(&mut tx, META_REALM, &registry.settings.realm).await?;
                registry.create_default_fax(&mut tx).await?;
                // Created hardened: nothing an epoch fixes can be in a new data dir.
                q::set_meta(
                    &mut tx,
                    crate::epoch::META_EPOCH,
                    &policy::epoch::CURRENT.to_string(),
                )
                .await?;
                opened.created = true;
            }
        }
        let stored_realm = q::get_meta(&mut tx, META_REALM).await?;
        if stored_realm.as_deref() != Some(registry.settings.realm.as_str()) {
            opened.rehashed = Some(registry.rehash_all(&mut tx).await?);
            q::set_meta(&mut tx, META_REALM, &registry.settings.realm).await?;
        }
        if q::get_meta(&mut tx, crate::regenerate::META_PROVISIONING_PATH)
            .await?
            .is_none()
        {
            // 24 random alphanumerics (~143 bits): the per-install path phones fetch under.
            let path = registry.with_rng(|rng| generate::password(rng, 24, &[]));
            q::set_meta(
                &mut tx,
                crate::regenerate::META_PROVISIONING_PATH,
                path.expose(),
            )
            .await?;
        }
        let at: u32 = q::get_meta(&mut tx, crate::epoch::META_EPOCH)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        opened.epoch_behind = (at < policy::epoch::CURRENT).then_some(at);
        tx.commit().await?;
        // Files a crash left behind their database state are written now.
        (opened.provisioning_rewritten, opened.provisioning_failed) =
            registry.write_unwritten_files().await?;
        Ok((registry, opened))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.data
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now()
    }

    pub(crate) fn with_rng<T>(&self, f: impl FnOnce(&mut dyn CryptoRng) -> T) -> T {
        let mut guard = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut **guard)
    }

    pub(crate) fn seal(&self, aad: &str, plaintext: &str) -> String {
        self.with_rng(|rng| self.vault.seal(rng, aad, plaintext))
    }

    pub(crate) fn open_secret(&self, aad: &str, sealed: &str) -> Result<Secret> {
        Ok(self.vault.open(aad, sealed)?)
    }

    /// Seals a console administrator's TOTP secret (bound to the administrator).
    pub fn seal_admin_totp(&self, admin: &str, secret: &str) -> String {
        self.seal(&format!("admin:{admin}:totp"), secret)
    }

    /// Opens what [`Registry::seal_admin_totp`] sealed.
    pub fn open_admin_totp(&self, admin: &str, sealed: &str) -> Result<Secret> {
        self.open_secret(&format!("admin:{admin}:totp"), sealed)
    }

    /// HA1 digests (MD5, SHA-256) for an auth ID and password in the configured realm.
    pub(crate) fn ha1s(&self, auth_id: &str, password: &Secret) -> (String, String) {
        let realm = &self.settings.realm;
        (
            digest::ha1(Algorithm::Md5, auth_id, realm, password.expose()),
            digest::ha1(Algorithm::Sha256, auth_id, realm, password.expose()),
        )
    }

    /// A generated password for an account: it avoids the account's identifiers, the
    /// words of its name and the configured domain, so no audit rule can fire on it.
    pub(crate) fn generated_password(&self, ids: &[&str], name: &str) -> Secret {
        let len = self.settings.policy.generated_password_length;
        let mut avoid: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        avoid.extend(policy::password::name_tokens(name));
        if let Some(domain) = &self.settings.domain {
            avoid.extend(policy::password::domain_tokens(domain));
        }
        let avoid: Vec<&str> = avoid.iter().map(String::as_str).collect();
        self.with_rng(|rng| generate::password(rng, len, &avoid))
    }

    async fn create_default_fax(&self, conn: &mut sqlx::AnyConnection) -> Result<()> {
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
    async fn rehash_all(&self, conn: &mut sqlx::AnyConnection) -> Result<usize> {
        let mut n = 0;
        for mut e in q::list_extensions(conn).await? {
            let pw = self.open_secret(
                &crate::extension::aad(&e.number, "password"),
                &e.password_enc,
            )?;
            (e.ha1_md5, e.ha1_sha256) = self.ha1s(&e.auth_id, &pw);
            q::update_extension(conn, &e).await?;
            n += 1;
        }
        for mut g in q::list_gateways(conn).await? {
            let pw = self.open_secret(&crate::gateway::aad(&g.name), &g.password_enc)?;
            (g.ha1_md5, g.ha1_sha256) = self.ha1s(&g.auth_id, &pw);
            q::update_gateway(conn, &g).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Fails when `number` is used by an account other than `me` (a subject such as
    /// `ext:1001`); pass `None` when adding, where any user is a conflict.
    pub(crate) async fn ensure_number_free(
        &self,
        conn: &mut sqlx::AnyConnection,
        number: &str,
        me: Option<&str>,
    ) -> Result<()> {
        match q::number_owner(conn, number).await? {
            Some(owner) if Some(owner.as_str()) != me => Err(Error::InUse {
                what: format!("number {number}"),
                owner,
            }),
            _ => Ok(()),
        }
    }

    /// Fails when the SIP ID or MAC is held by an extension other than `me`.
    pub(crate) async fn ensure_unique(
        &self,
        conn: &mut sqlx::AnyConnection,
        field: q::UniqueField,
        value: Option<&str>,
        me: Option<&str>,
    ) -> Result<()> {
        let Some(value) = value else { return Ok(()) };
        match q::extension_with(conn, field, value).await? {
            Some(owner) if Some(owner.as_str()) != me => {
                let label = match field {
                    q::UniqueField::SipId => "SIP ID",
                    q::UniqueField::Mac => "MAC address",
                };
                Err(Error::InUse {
                    what: format!("{label} {value}"),
                    owner,
                })
            }
            _ => Ok(()),
        }
    }

    /// Fails when `auth_id` is used by an account other than `me` (`None` when adding).
    pub(crate) async fn ensure_auth_id_free(
        &self,
        conn: &mut sqlx::AnyConnection,
        auth_id: &str,
        me: Option<&str>,
    ) -> Result<()> {
        match q::auth_id_owner(conn, auth_id).await? {
            Some(owner) if Some(owner.as_str()) != me => Err(Error::InUse {
                what: format!("auth ID {auth_id}"),
                owner,
            }),
            _ => Ok(()),
        }
    }
}

/// Maps `f` over `items` on up to `threads` scoped threads, keeping the order. A panic
/// in `f` is re-raised (never a silently shorter result).
pub(crate) fn parallel_map<'a, T: Sync, R: Send>(
    items: &'a [T],
    threads: usize,
    f: impl Fn(&'a T) -> R + Sync,
) -> Vec<R> {
    let chunk = items.len().div_ceil(threads.max(1)).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Threads for CPU-bound work over many accounts: the cores, at most 8.
pub(crate) fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
}

/// A generated (not given) secret or identifier, shown to the operator once.
#[derive(Debug, Default)]
pub struct Generated {
    pub password: Option<Secret>,
    pub pin: Option<Secret>,
    pub auth_id: Option<String>,
}
