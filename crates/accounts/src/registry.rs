//! The registry: extensions, PSTN gateways and VoIP providers, and the workflow that
//! keeps their stored form right (validated fields, sealed secrets, current HA1s).

use std::sync::{Arc, Mutex};

use policy::clock::Clock;
use policy::{PolicyConfig, Secret, generate};
use rand_core::CryptoRng;
use sip::digest::{self, Algorithm};
use store::account as q;
use store::{DataDir, Db, Store, Vault};

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
    /// Call classes, classes of service and fraud limits (`[dialplan]`) as the registry
    /// opens; a reload replaces it ([`Registry::set_dialplan`]): read
    /// [`Registry::dialplan`], never this field, for the plan in force.
    pub dialplan: policy::dialplan::DialPlan,
    /// Where security alerts (suspensions, emergency calls) are mailed (`mail.admin`).
    pub admin_email: Option<String>,
}

/// Settings of provisioning and Re-Generate (`[provisioning]` in the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisioningSettings {
    /// The SIP server phones register to (host name or address); defaults to the domain.
    pub server: Option<String>,
    /// The SIP port of UDP and TCP phones.
    pub port: u16,
    /// The SIP port of TLS phones.
    pub tls_port: u16,
    /// The transport of every extension's phones but those with their own.
    pub transport: crate::provisioning::PhoneTransport,
    /// The number phones dial for voicemail.
    pub voicemail_number: String,
    /// Where phones fetch their files: `http://host:port`, without the path.
    pub base_url: Option<String>,
    /// How long an old password keeps working after Re-Generate, from the addresses the
    /// extension was registered from (0 = not at all).
    pub grace_secs: i64,
    /// The private CA that signed sipward's TLS certificate (PEM), given to phones that
    /// register over TLS; None when the certificate chains to a public root.
    pub ca_pem: Option<String>,
}

impl ProvisioningSettings {
    /// The transport and port an extension's phones are given: its own transport when
    /// set (`udp`, `tcp`, `tls`), else the installation's; TLS phones get the TLS port.
    pub fn for_phone(&self, own: Option<&str>) -> (crate::provisioning::PhoneTransport, u16) {
        use crate::provisioning::PhoneTransport;
        let t = own
            .and_then(|t| PhoneTransport::parse(t).ok())
            .unwrap_or(self.transport);
        let port = match t {
            PhoneTransport::Tls => self.tls_port,
            _ => self.port,
        };
        (t, port)
    }
}

impl Default for ProvisioningSettings {
    fn default() -> Self {
        Self {
            server: None,
            port: 5060,
            tls_port: 5061,
            transport: crate::provisioning::PhoneTransport::Udp,
            voicemail_number: "*97".into(),
            base_url: None,
            grace_secs: 86_400,
            ca_pem: None,
        }
    }
}

/// The number of the default fax extension every new data dir gets.
pub const DEFAULT_FAX_NUMBER: &str = "888";

/// Keys of the data dir's meta table.
pub(crate) const META_REALM: &str = "realm";
pub(crate) const META_KEY_CHECK: &str = "key_check";
pub(crate) const META_EPOCH: &str = "security_epoch";
pub(crate) const META_PROVISIONING_PATH: &str = "provisioning_path";
/// `0` until every stored HA1 is sealed (set by migration 12 on data dirs from before).
pub(crate) const META_HA1_SEALED: &str = "ha1_sealed";

/// The associated data that binds a sealed secret to its extension and field
/// (`ext/1001/password`): a ciphertext copied to another row or field does not open.
pub(crate) fn ext_aad(number: &str, field: &str) -> String {
    format!("ext/{number}/{field}")
}

/// Whose HA1s a sealed value holds. The AAD names the record, the field and the
/// algorithm (`ext/1001/ha1_md5`): an HA1 copied into another row, into a grace window or
/// into the other algorithm's column does not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ha1Owner<'a> {
    Extension(&'a str),
    /// A gateway, by name (its number can change; its name cannot).
    Gateway(&'a str),
    /// An extension's previous HA1s, during its grace window after Re-Generate.
    Grace(&'a str),
    /// The previous provisioning login of an extension's phone (HA1s over the
    /// provisioning realm), during its grace window: it logs in like the SIP HA1s do.
    GraceProvisioning(&'a str),
}

impl Ha1Owner<'_> {
    pub(crate) fn aad(self, alg: Algorithm) -> String {
        let field = match alg {
            Algorithm::Md5 => "ha1_md5",
            Algorithm::Sha256 => "ha1_sha256",
        };
        match self {
            Ha1Owner::Extension(n) => format!("ext/{n}/{field}"),
            Ha1Owner::Gateway(n) => format!("gateway/{n}/{field}"),
            Ha1Owner::Grace(n) => format!("grace/{n}/{field}"),
            Ha1Owner::GraceProvisioning(n) => format!("grace/{n}/prov_{field}"),
        }
    }
}

/// The associated data of a gateway's sealed password.
pub(crate) fn gateway_aad(name: &str) -> String {
    format!("gateway/{name}/password")
}

/// The associated data of a provider's sealed password.
pub(crate) fn provider_aad(name: &str) -> String {
    format!("provider/{name}/password")
}

/// The associated data of a queued mail (it carries a password).
pub(crate) fn mail_aad(id: &str) -> String {
    format!("outbox/{id}")
}

pub(crate) type SharedRng = Arc<Mutex<Box<dyn CryptoRng + Send>>>;

/// An open registry over one data dir.
#[derive(Clone)]
pub struct Registry {
    pub(crate) store: Store,
    pub(crate) data: DataDir,
    pub(crate) vault: Arc<Vault>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) rng: SharedRng,
    pub(crate) clock: Arc<dyn Clock>,
    /// The stand-in secret the provisioning lookup opens for logins no phone has.
    pub(crate) stand_in: Arc<std::sync::OnceLock<String>>,
    /// The dial plan in force and how many times it was replaced, shared by every clone
    /// (the server's and the console's see one reload).
    pub(crate) plan: Arc<std::sync::RwLock<(u64, Arc<policy::dialplan::DialPlan>)>>,
    /// The config file's `[guard]` as last loaded (the defaults until the binary sets
    /// it), under the settings changed in the database ([`crate::guard_policy`]).
    pub(crate) guard_file: Arc<std::sync::RwLock<Arc<policy::ban::BanPolicy>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The internal hop's key, derived from the secrets key (`pbx::hop`): every node of
    /// the install has the same one.
    pub fn hop_key(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.vault.hop_key()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The dial plan in force (the config's `[dialplan]` as last loaded).
    pub fn dialplan(&self) -> Arc<policy::dialplan::DialPlan> {
        let plan = self.plan.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&plan.1)
    }

    /// How many times the dial plan was replaced since the registry opened: part of the
    /// key of anything computed from it (the console's cached audit).
    pub fn dialplan_generation(&self) -> u64 {
        self.plan.read().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Puts a reloaded dial plan in force for the audit and the classes of service.
    pub fn set_dialplan(&self, plan: policy::dialplan::DialPlan) {
        let mut cell = self.plan.write().unwrap_or_else(|p| p.into_inner());
        *cell = (cell.0.wrapping_add(1), Arc::new(plan));
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

    /// HA1 digests (MD5, SHA-256) for an auth ID and password in the configured realm,
    /// sealed for `owner`: what the `ha1_*_enc` columns hold.
    pub(crate) fn sealed_ha1s(
        &self,
        owner: Ha1Owner<'_>,
        auth_id: &str,
        password: &Secret,
    ) -> (String, String) {
        let realm = &self.settings.realm;
        let seal = |alg| {
            let ha1 = Secret::new(digest::ha1(alg, auth_id, realm, password.expose()));
            self.seal(&owner.aad(alg), ha1.expose())
        };
        (seal(Algorithm::Md5), seal(Algorithm::Sha256))
    }

    /// Opens HA1s sealed for `owner` (MD5, SHA-256).
    pub(crate) fn open_ha1s(
        &self,
        owner: Ha1Owner<'_>,
        (md5, sha256): (&str, &str),
    ) -> Result<(Secret, Secret)> {
        Ok((
            self.open_secret(&owner.aad(Algorithm::Md5), md5)?,
            self.open_secret(&owner.aad(Algorithm::Sha256), sha256)?,
        ))
    }

    /// Re-seals HA1s opened for one owner for another (an extension's current HA1s
    /// becoming its grace window's old ones).
    pub(crate) fn reseal_ha1s(
        &self,
        from: Ha1Owner<'_>,
        to: Ha1Owner<'_>,
        sealed: (&str, &str),
    ) -> Result<(String, String)> {
        let (md5, sha) = self.open_ha1s(from, sealed)?;
        Ok((
            self.seal(&to.aad(Algorithm::Md5), md5.expose()),
            self.seal(&to.aad(Algorithm::Sha256), sha.expose()),
        ))
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

    /// Fails when `value`, as this account's `role`, is already an identity of an
    /// account other than `me` (a subject such as `ext:1001`; `None` when adding):
    /// numbers, SIP IDs and auth IDs of extensions and gateways form one namespace. A
    /// SIP ID equal to another extension's number would take that extension's calls
    /// and registrations.
    pub(crate) async fn ensure_identity_free(
        &self,
        conn: &mut dyn Db,
        role: Identity,
        value: &str,
        me: Option<&str>,
    ) -> Result<()> {
        let owners = q::identity_owners(conn, value).await?;
        match owners.into_iter().find(|(who, _)| Some(who.as_str()) != me) {
            Some((owner, other)) => Err(Error::InUse {
                what: format!("{} {value}", role.label()),
                owner: format!("{owner} (as its {})", Identity::parse(&other).label()),
            }),
            None => Ok(()),
        }
    }

    /// Fails when the MAC is held by an extension other than `me`.
    pub(crate) async fn ensure_mac_free(
        &self,
        conn: &mut dyn Db,
        value: Option<&str>,
        me: Option<&str>,
    ) -> Result<()> {
        let Some(value) = value else { return Ok(()) };
        match q::extension_with(conn, q::UniqueField::Mac, value).await? {
            Some(owner) if Some(owner.as_str()) != me => Err(Error::InUse {
                what: format!("MAC address {value}"),
                owner,
            }),
            _ => Ok(()),
        }
    }
}

/// What an identifier is to its account; numbers, SIP IDs and auth IDs share one
/// namespace ([`Registry::ensure_identity_free`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    Number,
    SipId,
    AuthId,
}

impl Identity {
    pub fn label(self) -> &'static str {
        match self {
            Identity::Number => "number",
            Identity::SipId => "SIP ID",
            Identity::AuthId => "auth ID",
        }
    }

    /// The store's role name (`number`, `sip_id`, `auth_id`).
    pub fn parse(role: &str) -> Identity {
        match role {
            "sip_id" => Identity::SipId,
            "auth_id" => Identity::AuthId,
            _ => Identity::Number,
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
