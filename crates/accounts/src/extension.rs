//! Extension operations: add, update, remove, show, list.

use policy::fields::{self, AuthId, DisplayName, Email, ExtensionNumber, Mac, PhoneModel, SipId};
use policy::{Secret, generate, password, voicemail};
use serde::Serialize;
use store::Db;
use store::account::{self as q, ExtensionRow};

use crate::provisioning::PhoneTransport;
use crate::registry::{Generated, Ha1Owner, Identity, Registry, ext_aad};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtensionKind {
    #[default]
    User,
    Fax,
}

impl ExtensionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExtensionKind::User => "user",
            ExtensionKind::Fax => "fax",
        }
    }

    pub fn parse(value: &str) -> Result<Self, policy::InvalidField> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "user" => Ok(ExtensionKind::User),
            "fax" => Ok(ExtensionKind::Fax),
            _ => Err(policy::InvalidField {
                field: "kind",
                reason: "it must be \"user\" or \"fax\"".into(),
            }),
        }
    }
}

/// A new extension as typed by an operator: raw text, validated by [`Registry::add_extension`].
/// Absent password, PIN and auth ID are generated; an absent SIP ID stays blank.
#[derive(Clone, Debug, Default)]
pub struct NewExtension {
    pub kind: ExtensionKind,
    pub name: Option<String>,
    pub email: Option<String>,
    pub password: Option<String>,
    pub pin: Option<String>,
    pub sip_id: Option<String>,
    pub auth_id: Option<String>,
    pub mac: Option<String>,
    pub model: Option<String>,
    /// `internal`, `local`, `national`, `international` or `unrestricted`; the
    /// `[dialplan]` default for its kind when absent.
    pub class_of_service: Option<String>,
    /// `udp`, `tcp` or `tls` for this extension's phones; the installation's
    /// `[provisioning] transport` when absent.
    pub transport: Option<String>,
    /// Seconds a call rings before voicemail answers, 0 to 300 (0: no voicemail);
    /// 20 when absent (0 for a fax extension).
    pub voicemail_after_secs: Option<String>,
    /// `on` or `off`: mail each new message to the extension's address; on when absent
    /// (it only takes effect while the extension has an address).
    pub voicemail_mail: Option<String>,
}

/// Changes to an extension: `Some` sets a field; for email, SIP ID, MAC and model an empty
/// string clears it.
#[derive(Clone, Debug, Default)]
pub struct ExtensionChange {
    pub kind: Option<ExtensionKind>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub password: Option<String>,
    pub pin: Option<String>,
    pub sip_id: Option<String>,
    pub auth_id: Option<String>,
    pub mac: Option<String>,
    pub model: Option<String>,
    /// An empty string resets it to the default for the extension's kind.
    pub class_of_service: Option<String>,
    /// `udp`, `tcp` or `tls`; an empty string follows the installation's setting again.
    pub transport: Option<String>,
    /// Seconds a call rings before voicemail answers, 0 to 300 (0: no voicemail).
    pub voicemail_after_secs: Option<String>,
    /// `on` or `off`: mail each new message to the extension's address.
    pub voicemail_mail: Option<String>,
    /// A new password or auth ID opens no grace window (a suspected compromise): the
    /// old credentials stop working everywhere at once, the phones' included.
    pub no_grace: bool,
}

impl ExtensionChange {
    /// The names of the fields this change gives, for the audit log (never their
    /// values: one may be a password). The CLI and the console log the same words.
    pub fn given_fields(&self) -> String {
        [
            ("kind", self.kind.is_some()),
            ("name", self.name.is_some()),
            ("email", self.email.is_some()),
            ("password", self.password.is_some()),
            ("pin", self.pin.is_some()),
            ("sip_id", self.sip_id.is_some()),
            ("auth_id", self.auth_id.is_some()),
            ("mac", self.mac.is_some()),
            ("model", self.model.is_some()),
            ("class_of_service", self.class_of_service.is_some()),
            ("transport", self.transport.is_some()),
            ("voicemail_after_secs", self.voicemail_after_secs.is_some()),
            ("voicemail_mail", self.voicemail_mail.is_some()),
            ("no_grace", self.no_grace),
        ]
        .iter()
        .filter(|(_, given)| *given)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// An extension as shown to operators: no secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExtensionView {
    pub number: String,
    pub kind: ExtensionKind,
    pub name: String,
    pub email: Option<String>,
    pub auth_id: String,
    pub sip_id: Option<String>,
    pub mac: Option<String>,
    pub model: Option<String>,
    /// The transport its phones are provisioned with when set for this extension
    /// (None: the installation's).
    pub transport: Option<String>,
    /// Seconds a call rings before voicemail answers (0: no voicemail).
    pub voicemail_after_secs: i64,
    /// Whether new messages are mailed (only while `email` is set).
    pub voicemail_mail: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<&ExtensionRow> for ExtensionView {
    fn from(r: &ExtensionRow) -> Self {
        Self {
            number: r.number.clone(),
            kind: if r.kind == "fax" {
                ExtensionKind::Fax
            } else {
                ExtensionKind::User
            },
            name: r.name.clone(),
            email: r.email.clone(),
            auth_id: r.auth_id.clone(),
            sip_id: r.sip_id.clone(),
            mac: r.mac.clone(),
            model: r.model.clone(),
            transport: r.phone_transport.clone(),
            voicemail_after_secs: r.voicemail_after_secs,
            voicemail_mail: r.voicemail_mail,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A phone registered to an extension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegistrationView {
    pub contact: String,
    pub expires_in: i64,
    pub source: String,
    pub transport: String,
}

/// The result of adding an extension.
#[derive(Debug)]
pub struct Added {
    pub extension: ExtensionView,
    pub generated: Generated,
    /// Weaknesses of explicitly given credentials (stored anyway, flagged).
    pub findings: Vec<policy::Finding>,
}

/// The result of changing an extension.
#[derive(Debug)]
pub struct Updated {
    pub extension: ExtensionView,
    /// Current weaknesses of the changed extension.
    pub findings: Vec<policy::Finding>,
    /// Where the old credentials keep working until the grace window ends (empty when
    /// the credentials did not change, or changed with `no_grace`).
    pub grace: GraceWindow,
}

/// Where a changed extension's old credentials keep working, and until when, so the
/// operator sees what is still open after a change.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GraceWindow {
    /// The old SIP password (from where phones were registered).
    pub sources: Vec<std::net::IpAddr>,
    /// The old provisioning login (from where it fetched the phone's file before).
    pub provisioning_sources: Vec<std::net::IpAddr>,
    /// Unix seconds; `None` when no window is open.
    pub until: Option<i64>,
}

/// A validated new extension ready to insert, with what was generated for it.
pub(crate) struct Prepared {
    pub row: ExtensionRow,
    pub generated: Generated,
    pub password: Secret,
}

/// An extension's secrets, opened for the operator who asked to see them.
#[derive(Debug)]
pub struct Revealed {
    pub password: Secret,
    pub pin: Secret,
}

fn optional<T>(
    value: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, policy::InvalidField>,
) -> Result<Option<T>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => Ok(Some(parse(v)?)),
    }
}

impl Registry {
    /// Validates a new extension and fills in generated credentials, without writing.
    /// Also checks that its number and auth ID are not used by another account.
    pub(crate) async fn prepare_new_extension(
        &self,
        number: &str,
        new: NewExtension,
        conn: &mut dyn Db,
    ) -> Result<Prepared> {
        let p = self.validate_new_extension(number, new)?;
        self.claim_new_extension(p, conn).await
    }

    /// The stored part of preparing an extension `validate_new_extension` made: its
    /// identifiers must be free (a generated auth ID is drawn again on a collision).
    /// Cheap queries only: the caller may hold the database's write lock, which the
    /// running server's group commit of registrations waits for.
    pub(crate) async fn claim_new_extension(
        &self,
        p: Prepared,
        conn: &mut dyn Db,
    ) -> Result<Prepared> {
        // Nothing stored may hold any of the new account's identifiers (its own may
        // repeat each other: a SIP ID equal to its number is only a finding).
        self.ensure_identity_free(conn, Identity::Number, &p.row.number, None)
            .await?;
        if let Some(sip_id) = p.row.sip_id.as_deref() {
            self.ensure_identity_free(conn, Identity::SipId, sip_id, None)
                .await?;
        }
        self.ensure_mac_free(conn, p.row.mac.as_deref(), None)
            .await?;
        if p.generated.auth_id.is_some() {
            // A generated auth ID is 12 random characters; a collision is vanishingly rare
            // but cheap to rule out.
            let mut p = p;
            while !q::identity_owners(conn, &p.row.auth_id).await?.is_empty() {
                let id = self.with_rng(|rng| generate::auth_id(rng));
                p.row.auth_id = id.into_string();
                p.generated.auth_id = Some(p.row.auth_id.clone());
                (p.row.ha1_md5_enc, p.row.ha1_sha256_enc) = self.sealed_ha1s(
                    Ha1Owner::Extension(&p.row.number),
                    &p.row.auth_id,
                    &p.password,
                );
            }
            return Ok(p);
        }
        self.ensure_identity_free(conn, Identity::AuthId, &p.row.auth_id, None)
            .await?;
        Ok(p)
    }

    /// The pure part of preparing an extension: validation, generation, sealing, HA1.
    /// `password_score` for given passwords is computed here (zxcvbn, ~0.4 ms).
    pub(crate) fn validate_new_extension(
        &self,
        number: &str,
        new: NewExtension,
    ) -> Result<Prepared> {
        let number = ExtensionNumber::parse(number.trim())?;
        let name = DisplayName::parse(new.name.as_deref().unwrap_or(""))?;
        let email = optional(new.email.as_deref(), Email::parse)?;
        let sip_id = match new.sip_id.as_deref() {
            Some(v) => SipId::parse(v)?,
            None => None,
        };
        let mac = optional(new.mac.as_deref(), Mac::parse)?;
        let model = optional(new.model.as_deref(), PhoneModel::parse)?;
        let transport = optional(new.transport.as_deref(), PhoneTransport::parse)?;
        let voicemail_after_secs = optional(
            new.voicemail_after_secs.as_deref(),
            voicemail::parse_after_secs,
        )?
        // A fax line answers its own calls: no voicemail unless asked for.
        .unwrap_or(match new.kind {
            ExtensionKind::Fax => 0,
            ExtensionKind::User => voicemail::DEFAULT_AFTER_SECS,
        });
        let voicemail_mail = optional(new.voicemail_mail.as_deref(), |v| {
            voicemail::parse_switch("voicemail mail", v)
        })?
        .unwrap_or(true);
        let mut generated = Generated::default();
        let auth_id = match optional(new.auth_id.as_deref(), AuthId::parse)? {
            Some(a) => a,
            None => {
                let a = self.with_rng(|rng| generate::auth_id(rng));
                generated.auth_id = Some(a.as_str().to_owned());
                a
            }
        };
        let (password, score) = match new.password.as_deref() {
            Some(p) => {
                let p = fields::parse_password("password", p)?;
                let score = password::strength_score(p.expose());
                (p, score)
            }
            None => {
                let p =
                    self.generated_password(&[number.as_str(), auth_id.as_str()], name.as_str());
                generated.password = Some(p.clone());
                (p, generate::GENERATED_PASSWORD_SCORE)
            }
        };
        let pin = match new.pin.as_deref() {
            Some(p) => fields::parse_pin(p)?,
            None => {
                let len = self.settings.policy.generated_pin_length;
                let p = self.with_rng(|rng| generate::pin(rng, len, number.as_str()));
                generated.pin = Some(p.clone());
                p
            }
        };
        let now = self.now();
        let (ha1_md5_enc, ha1_sha256_enc) = self.sealed_ha1s(
            Ha1Owner::Extension(number.as_str()),
            auth_id.as_str(),
            &password,
        );
        let row = ExtensionRow {
            password_enc: self.seal(&ext_aad(number.as_str(), "password"), password.expose()),
            pin_enc: self.seal(&ext_aad(number.as_str(), "pin"), pin.expose()),
            number: number.into_string(),
            kind: new.kind.as_str().to_owned(),
            name: name.into_string(),
            email: email.map(Email::into_string),
            auth_id: auth_id.into_string(),
            sip_id: sip_id.map(SipId::into_string),
            password_score: i64::from(score),
            ha1_md5_enc,
            ha1_sha256_enc,
            mac: mac.map(Mac::into_string),
            model: model.map(PhoneModel::into_string),
            created_at: now,
            updated_at: now,
            // Drawn by the store when the row is inserted.
            credential_generation: 0,
            phone_transport: transport.map(|t| t.as_str().to_owned()),
            voicemail_after_secs: i64::from(voicemail_after_secs),
            voicemail_mail,
        };
        Ok(Prepared {
            row,
            generated,
            password,
        })
    }

    /// Adds an extension. Explicit credentials are stored even when weak (a legacy system
    /// must be mirrored first); their findings are returned for a warning.
    pub async fn add_extension(&self, number: &str, new: NewExtension) -> Result<Added> {
        let class = optional(new.class_of_service.as_deref(), |v| {
            crate::class_of_service::parse_class(v).map_err(|e| match e {
                Error::Invalid(f) => f,
                other => policy::InvalidField {
                    field: "class of service",
                    reason: other.to_string(),
                },
            })
        })?;
        // Validation, generation, zxcvbn and sealing before the write lock is taken: a
        // running server's group commit waits for it, and a REGISTER's 200 with it.
        let prepared = self.validate_new_extension(number, new)?;
        let mut tx = self.store.begin().await?;
        let prepared = self.claim_new_extension(prepared, &mut tx).await?;
        q::insert_extension(&mut tx, &prepared.row).await?;
        if class.is_some() {
            self.set_class(&mut tx, &prepared.row.number, class).await?;
        }
        let phone = self.bump_provisioning(&mut tx, &prepared.row).await?;
        tx.commit().await?;
        if phone.is_some() {
            self.write_files(std::slice::from_ref(&prepared.row.number))
                .await?;
        }
        let findings = self.audit_extension_row(&prepared.row)?;
        Ok(Added {
            extension: ExtensionView::from(&prepared.row),
            generated: prepared.generated,
            findings,
        })
    }

    /// Changes some fields of an extension; returns its view, current findings and the
    /// grace window the change left open.
    ///
    /// A new password or auth ID revokes what the old credentials reached (bindings,
    /// the phone's provisioning login, queued mails; see [`crate::revocation`]). A new
    /// address or PIN withdraws the mails still waiting. Either way, when a credentials
    /// mail was withdrawn, one with what holds now is queued to the address that holds
    /// now: the old one is never sent.
    pub async fn update_extension(&self, number: &str, change: ExtensionChange) -> Result<Updated> {
        let number = ExtensionNumber::parse(number.trim())?;
        let mut tx = self.store.begin().await?;
        let old = q::get_extension(&mut tx, number.as_str())
            .await?
            .ok_or_else(|| Error::not_found(format!("extension {number}")))?;
        let mut row = old.clone();
        let subject = format!("ext:{number}");
        let mut password =
            self.open_secret(&ext_aad(&row.number, "password"), &row.password_enc)?;
        let mut rehash = false;

        if let Some(kind) = change.kind {
            row.kind = kind.as_str().to_owned();
        }
        if let Some(p) = self.apply_fields(&mut row, &change)? {
            password = p;
            rehash = true;
        }
        if let Some(class) = change.class_of_service.as_deref() {
            let class = match class.trim() {
                "" => None,
                c => Some(crate::class_of_service::parse_class(c)?),
            };
            self.set_class(&mut tx, &row.number, class).await?;
        }
        if let Some(auth_id) = change.auth_id.as_deref() {
            let auth_id = AuthId::parse(auth_id.trim())?;
            self.ensure_identity_free(&mut tx, Identity::AuthId, auth_id.as_str(), Some(&subject))
                .await?;
            rehash |= auth_id.as_str() != row.auth_id;
            row.auth_id = auth_id.into_string();
        }
        if rehash {
            (row.ha1_md5_enc, row.ha1_sha256_enc) =
                self.sealed_ha1s(Ha1Owner::Extension(&row.number), &row.auth_id, &password);
        }
        // Only what changes is checked: an existing collision (reported by the audit)
        // must not block an unrelated edit.
        if change.sip_id.is_some()
            && let Some(sip_id) = row.sip_id.as_deref()
        {
            self.ensure_identity_free(&mut tx, Identity::SipId, sip_id, Some(&subject))
                .await?;
        }
        self.ensure_mac_free(&mut tx, row.mac.as_deref(), Some(&subject))
            .await?;
        let now = self.now();
        row.updated_at = now;
        q::update_extension(&mut tx, &row).await?;
        // Sealed HA1s differ on every write (fresh nonce): the opened ones are compared.
        // An old HA1 that no longer opens counts as changed (revoke rather than keep).
        let credentials_changed = rehash && {
            let owner = Ha1Owner::Extension(&row.number);
            let was = self.open_ha1s(owner, (&old.ha1_md5_enc, &old.ha1_sha256_enc));
            let is = self.open_ha1s(owner, (&row.ha1_md5_enc, &row.ha1_sha256_enc))?;
            was.map_or(true, |(md5, _)| !md5.ct_eq(is.0.expose()))
        };
        let mut grace = GraceWindow::default();
        let withdrawn = if credentials_changed {
            let revoked = self
                .revoke_credentials(&mut tx, &old, &mut row, now, !change.no_grace)
                .await?;
            grace = GraceWindow {
                sources: revoked.grace_sources,
                provisioning_sources: revoked.provisioning_sources,
                until: revoked.grace_until,
            };
            revoked.mails_withdrawn
        } else if row.email != old.email || row.pin_enc != old.pin_enc {
            store::outbox::supersede_mail(&mut tx, &row.number).await?
        } else {
            0
        };
        let phone = self.bump_provisioning(&mut tx, &row).await?;
        if phone.is_some() {
            // Its registered phones (if any) fetch the changed file at once.
            store::provisioning::request_resync(&mut tx, &row.number, row.updated_at).await?;
        }
        if withdrawn > 0 && row.email.is_some() {
            let pin = self.open_secret(&ext_aad(&row.number, "pin"), &row.pin_enc)?;
            let templates = self.templates()?;
            let prov_path = self.provisioning_path_in(&mut tx).await?;
            let shown = match &phone {
                Some(p) => self.phone_of(&row, p)?,
                None => None,
            };
            self.queue_welcome(
                &mut tx,
                &templates,
                &prov_path,
                &row,
                &password,
                &pin,
                shown.as_ref(),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        if (old.mac.as_deref(), old.model.as_deref()) != (row.mac.as_deref(), row.model.as_deref())
        {
            self.remove_phone_files(old.mac.as_deref(), old.model.as_deref());
        }
        if phone.is_some() {
            self.write_files(std::slice::from_ref(&row.number)).await?;
        }
        let findings = self.audit_extension_row(&row)?;
        Ok(Updated {
            extension: ExtensionView::from(&row),
            findings,
            grace,
        })
    }

    /// Applies the fields of `change` that need no other row (name, email, SIP ID, MAC,
    /// model, password, PIN) to `row`; the new password when one was given.
    fn apply_fields(
        &self,
        row: &mut ExtensionRow,
        change: &ExtensionChange,
    ) -> Result<Option<Secret>> {
        if let Some(name) = change.name.as_deref() {
            row.name = DisplayName::parse(name)?.into_string();
        }
        if let Some(email) = change.email.as_deref() {
            row.email = optional(Some(email), Email::parse)?.map(Email::into_string);
        }
        if let Some(sip_id) = change.sip_id.as_deref() {
            row.sip_id = SipId::parse(sip_id)?.map(SipId::into_string);
        }
        if let Some(mac) = change.mac.as_deref() {
            row.mac = optional(Some(mac), Mac::parse)?.map(Mac::into_string);
        }
        if let Some(model) = change.model.as_deref() {
            row.model = optional(Some(model), PhoneModel::parse)?.map(PhoneModel::into_string);
        }
        if let Some(t) = change.transport.as_deref() {
            row.phone_transport =
                optional(Some(t), PhoneTransport::parse)?.map(|t| t.as_str().to_owned());
        }
        if let Some(v) = change.voicemail_after_secs.as_deref() {
            row.voicemail_after_secs = i64::from(voicemail::parse_after_secs(v)?);
        }
        if let Some(v) = change.voicemail_mail.as_deref() {
            row.voicemail_mail = voicemail::parse_switch("voicemail mail", v)?;
        }
        if let Some(p) = change.pin.as_deref() {
            let pin = fields::parse_pin(p)?;
            row.pin_enc = self.seal(&ext_aad(&row.number, "pin"), pin.expose());
        }
        let Some(p) = change.password.as_deref() else {
            return Ok(None);
        };
        let password = fields::parse_password("password", p)?;
        row.password_score = i64::from(password::strength_score(password.expose()));
        row.password_enc = self.seal(&ext_aad(&row.number, "password"), password.expose());
        Ok(Some(password))
    }

    /// The findings the extension would have with `change`'s fields applied; nothing is
    /// saved (the console's live check).
    pub async fn check_extension(
        &self,
        number: &str,
        change: &ExtensionChange,
    ) -> Result<Vec<policy::Finding>> {
        let number = ExtensionNumber::parse(number.trim())?;
        let mut conn = self.store.conn().await?;
        let mut row = q::get_extension(&mut conn, number.as_str())
            .await?
            .ok_or_else(|| Error::not_found(format!("extension {number}")))?;
        self.apply_fields(&mut row, change)?;
        self.audit_extension_row(&row)
    }

    pub async fn remove_extension(&self, number: &str) -> Result<()> {
        let number = ExtensionNumber::parse(number.trim())?;
        let mut tx = self.store.begin().await?;
        let row = q::get_extension(&mut tx, number.as_str()).await?;
        if !q::delete_extension(&mut tx, number.as_str()).await? {
            return Err(Error::not_found(format!("extension {number}")));
        }
        // Its bindings, grace window and phone secrets go with it (the store's
        // cascades); a welcome mail not yet sent, even one a sender claimed and never
        // finished, would describe an account that is gone.
        store::outbox::supersede_mail(&mut tx, number.as_str()).await?;
        tx.commit().await?;
        if let Some(row) = row {
            self.remove_phone_files(row.mac.as_deref(), row.model.as_deref());
        }
        // Its voicemail rows went with it; the recordings go too.
        self.remove_box_files(number.as_str());
        Ok(())
    }

    pub(crate) async fn extension_row(&self, number: &str) -> Result<ExtensionRow> {
        let number = ExtensionNumber::parse(number.trim())?;
        let mut conn = self.store.conn().await?;
        q::get_extension(&mut conn, number.as_str())
            .await?
            .ok_or_else(|| Error::not_found(format!("extension {number}")))
    }

    pub async fn get_extension(&self, number: &str) -> Result<ExtensionView> {
        Ok(ExtensionView::from(&self.extension_row(number).await?))
    }

    /// The extension's plaintext password and PIN, for an operator who explicitly asked.
    pub async fn reveal_extension(&self, number: &str) -> Result<Revealed> {
        let row = self.extension_row(number).await?;
        Ok(Revealed {
            password: self.open_secret(&ext_aad(&row.number, "password"), &row.password_enc)?,
            pin: self.open_secret(&ext_aad(&row.number, "pin"), &row.pin_enc)?,
        })
    }

    /// The extension's current registrations as last written by the running server
    /// (the server writes them behind within about a second).
    pub async fn registrations(&self, number: &str) -> Result<Vec<RegistrationView>> {
        let number = ExtensionNumber::parse(number.trim())?;
        let now = self.now();
        let mut conn = self.store.conn().await?;
        Ok(
            store::bindings::bindings_of(&mut conn, number.as_str(), now)
                .await?
                .into_iter()
                .map(|b| RegistrationView {
                    contact: b.contact,
                    expires_in: b.expires_at - now,
                    source: b.source,
                    transport: b.transport,
                })
                .collect(),
        )
    }

    pub async fn list_extensions(&self) -> Result<Vec<ExtensionView>> {
        let mut conn = self.store.conn().await?;
        Ok(q::list_extensions(&mut conn)
            .await?
            .iter()
            .map(ExtensionView::from)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::ExtensionChange;

    #[test]
    fn a_change_names_the_fields_it_gives_never_their_values() {
        let change = ExtensionChange {
            password: Some("Hunter2-secret".into()),
            voicemail_mail: Some("off".into()),
            no_grace: true,
            ..Default::default()
        };
        assert_eq!(change.given_fields(), "password, voicemail_mail, no_grace");
        assert_eq!(ExtensionChange::default().given_fields(), "");
    }
}
