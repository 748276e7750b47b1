//! Re-Generate: new password and PIN for one or many extensions, their phones'
//! provisioning files rewritten, the registered phones told to re-fetch, a welcome mail
//! queued, and the old password kept alive for a while, but only where the phones are.
//!
//! Consistency: each extension's change (credentials, grace window, provisioning
//! generation, re-fetch request, queued mail) is written in one transaction, batches of
//! [`BATCH`] extensions at a time. Files are rendered from the database after the commit
//! and marked written; a crash in between leaves rows with `written < generation`, which
//! the next open of the data dir rewrites. So an extension is always fully old or fully
//! new, and its mail is queued exactly once with the change.

use std::collections::BTreeSet;
use std::net::IpAddr;

use policy::fields::ExtensionNumber;
use policy::{Secret, generate};
use serde::Serialize;
use store::Db;
use store::account::{self as q, ExtensionRow};
use store::provisioning::ProvisioningRow;

use crate::mail::{MailMessage, MailOutcome};
use crate::provisioning::{self, PhoneAccount, PhoneTransport, Templates, Vendor};
use crate::registry::{Ha1Owner, META_PROVISIONING_PATH, Registry, ext_aad};
use crate::{Error, Result};

/// Extensions changed per transaction.
pub const BATCH: usize = 50;

/// Length of generated phone admin and provisioning passwords.
const PHONE_SECRET_LEN: usize = 20;

/// Which extensions to Re-Generate.
#[derive(Clone, Debug)]
pub enum Selection {
    Numbers(Vec<String>),
    /// Every extension with a finding of warning or worse.
    Weak,
    All,
}

/// What happened to an extension's provisioning files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FilesOutcome {
    Written {
        vendor: Vendor,
        files: Vec<String>,
    },
    /// No MAC address: nothing to provision.
    NoPhone,
    /// A MAC but a model of no supported vendor.
    UnknownModel {
        model: Option<String>,
    },
    /// Neither `provisioning.server` nor `sip.domain` is set: phones would not know
    /// where to register.
    NoServer,
    Failed {
        reason: String,
    },
}

impl FilesOutcome {
    /// In words, for tables and pages.
    pub fn describe(&self) -> String {
        match self {
            FilesOutcome::Written { vendor, files } => {
                format!("{} {}", vendor.id(), files.join(" "))
            }
            FilesOutcome::NoPhone => "no phone (no MAC)".into(),
            FilesOutcome::UnknownModel { model } => {
                format!("unsupported model {}", model.as_deref().unwrap_or("(none)"))
            }
            FilesOutcome::NoServer => "not written: set provisioning.server or sip.domain".into(),
            FilesOutcome::Failed { reason } => format!("FAILED: {reason}"),
        }
    }
}

/// One extension's Re-Generate result. The password and PIN are shown this once.
#[derive(Debug)]
pub struct Regenerated {
    pub number: String,
    pub auth_id: String,
    pub password: Secret,
    pub pin: Secret,
    pub files: FilesOutcome,
    pub mail: MailOutcome,
    /// Addresses the old password keeps working from until the grace window ends.
    pub grace_sources: Vec<IpAddr>,
    /// Addresses the old provisioning login keeps working from (where it fetched the
    /// phone's file before) until the window ends.
    pub provisioning_sources: Vec<IpAddr>,
    pub grace_until: Option<i64>,
    /// Whether its registered phones were queued a NOTIFY to re-fetch their files.
    pub resync: bool,
}

/// Everything a phone's files and welcome mail are rendered from.
pub(crate) struct Phone {
    vendor: Vendor,
    mac: String,
    admin_password: Secret,
    http_password: Secret,
}

/// What the welcome mail says: enough to set a phone up by hand, never the
/// provisioning login (whoever reads an old mail must not be able to fetch the phone's
/// future files).
#[derive(Serialize)]
struct WelcomeContext<'a> {
    number: &'a str,
    name: &'a str,
    /// The user name to register (the SIP ID when set, else the number).
    user: &'a str,
    auth_id: &'a str,
    password: &'a str,
    pin: &'a str,
    voicemail: &'a str,
    server: &'a str,
    port: u16,
    transport: crate::provisioning::PhoneTransport,
    mac: Option<&'a str>,
    provisioning_url: Option<String>,
}

impl Registry {
    pub(crate) fn templates(&self) -> Result<Templates> {
        Ok(Templates::load(Some(&self.data.templates_dir()))?)
    }

    /// The SIP server phones are told to register to.
    fn phone_server(&self) -> Option<&str> {
        let p = &self.settings.provisioning;
        p.server.as_deref().or(self.settings.domain.as_deref())
    }

    /// The secret path segment phones fetch their files under: `/prov/<this>/<file>`.
    pub async fn provisioning_path(&self) -> Result<String> {
        let mut conn = self.store.conn().await?;
        self.provisioning_path_in(&mut conn).await
    }

    /// [`Registry::provisioning_path`], read through the caller's handle.
    pub(crate) async fn provisioning_path_in(&self, conn: &mut dyn Db) -> Result<String> {
        store::meta::get_meta(conn, META_PROVISIONING_PATH)
            .await?
            .ok_or_else(|| Error::not_found("the provisioning path"))
    }

    /// The URL a phone's configuration is fetched from, when `provisioning.base_url` is set.
    fn provisioning_url(&self, path: &str, file: &str) -> Option<String> {
        let base = self.settings.provisioning.base_url.as_deref()?;
        Some(format!("{}/prov/{path}/{file}", base.trim_end_matches('/')))
    }

    /// Resolves a selection to extension numbers; an unknown number fails the whole
    /// request before anything changes.
    async fn select(&self, sel: &Selection) -> Result<Vec<String>> {
        let mut conn = self.store.conn().await?;
        let all: BTreeSet<String> = q::list_extensions(&mut conn)
            .await?
            .into_iter()
            .map(|r| r.number)
            .collect();
        drop(conn);
        Ok(match sel {
            Selection::All => all.into_iter().collect(),
            Selection::Numbers(list) => {
                let mut out = Vec::new();
                for n in list {
                    let n = ExtensionNumber::parse(n.trim())?.into_string();
                    if !all.contains(&n) {
                        return Err(Error::not_found(format!("extension {n}")));
                    }
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                out
            }
            Selection::Weak => {
                let weak: BTreeSet<String> = self
                    .audit()
                    .await?
                    .into_iter()
                    .filter(|f| f.severity >= crate::findings::WEAK_AT)
                    .filter_map(|f| f.subject.strip_prefix("ext:").map(str::to_owned))
                    .collect();
                weak.into_iter().filter(|n| all.contains(n)).collect()
            }
        })
    }

    pub(crate) fn new_phone_secret(&self) -> Secret {
        self.with_rng(|rng| generate::password(rng, PHONE_SECRET_LEN, &[]))
    }

    /// The phone behind an extension row, if it has a MAC and a supported model.
    pub(crate) fn phone_of(
        &self,
        row: &ExtensionRow,
        prov: &ProvisioningRow,
    ) -> Result<Option<Phone>> {
        let (Some(mac), Some(vendor)) = (
            row.mac.as_deref(),
            row.model.as_deref().and_then(Vendor::from_model),
        ) else {
            return Ok(None);
        };
        Ok(Some(Phone {
            vendor,
            mac: mac.to_owned(),
            admin_password: self.open_secret(
                &ext_aad(&row.number, "phone_admin"),
                &prov.admin_password_enc,
            )?,
            http_password: self
                .open_secret(&ext_aad(&row.number, "phone_http"), &prov.http_password_enc)?,
        }))
    }

    /// Moves the extension's provisioning generation on (creating its phone secrets on
    /// first use), inside the caller's transaction. None when there is no phone.
    pub(crate) async fn bump_provisioning(
        &self,
        conn: &mut dyn Db,
        row: &ExtensionRow,
    ) -> Result<Option<ProvisioningRow>> {
        if row.mac.is_none() {
            return Ok(None);
        }
        let prov = match store::provisioning::get_provisioning(conn, &row.number).await? {
            Some(mut p) => {
                p.generation = p.generation.max(p.written) + 1;
                p
            }
            None => ProvisioningRow {
                number: row.number.clone(),
                admin_password_enc: self.seal(
                    &ext_aad(&row.number, "phone_admin"),
                    self.new_phone_secret().expose(),
                ),
                http_password_enc: self.seal(
                    &ext_aad(&row.number, "phone_http"),
                    self.new_phone_secret().expose(),
                ),
                generation: 1,
                written: 0,
            },
        };
        store::provisioning::put_provisioning(conn, &prov).await?;
        Ok(Some(prov))
    }

    /// Renders and writes the files of the given extensions from their stored state,
    /// then marks them written. Per-extension outcomes; a failure of one does not stop
    /// the others (its row stays unwritten and is retried at the next open).
    pub(crate) async fn write_files(
        &self,
        numbers: &[String],
    ) -> Result<Vec<(String, FilesOutcome)>> {
        let mut conn = self.store.conn().await?;
        let mut phones = Vec::with_capacity(numbers.len());
        let mut out = Vec::new();
        for number in numbers {
            let Some(row) = q::get_extension(&mut conn, number).await? else {
                continue;
            };
            match store::provisioning::get_provisioning(&mut conn, number).await? {
                Some(prov) => phones.push((row, prov)),
                None => out.push((number.clone(), FilesOutcome::NoPhone)),
            }
        }
        drop(conn);
        out.extend(self.write_rows(&phones).await?);
        Ok(out)
    }

    /// Writes the files of phones whose rows the caller holds, on two threads (each
    /// file is synced before its rename: the waits overlap), then marks them written.
    async fn write_rows(
        &self,
        phones: &[(ExtensionRow, ProvisioningRow)],
    ) -> Result<Vec<(String, FilesOutcome)>> {
        if phones.is_empty() {
            return Ok(Vec::new());
        }
        // Files are derived: a broken operator template or a full disk fails the phones
        // (their rows stay unwritten, retried at every open), never the command that
        // changed the database.
        let dir = self.data.provisioning_dir();
        let prepared = self.templates().map_err(|e| e.to_string()).and_then(|t| {
            provisioning::ensure_dir(&dir)
                .map(|()| t)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))
        });
        let templates = match prepared {
            Ok(t) => t,
            Err(reason) => {
                return Ok(phones
                    .iter()
                    .map(|(row, _)| {
                        let failed = FilesOutcome::Failed {
                            reason: reason.clone(),
                        };
                        (row.number.clone(), failed)
                    })
                    .collect());
            }
        };
        // Where the phones fetch their files, when known: the files tell the phones
        // (with their provisioning login, which Re-Generate rotates).
        let prov_dir = match self.provisioning_path().await {
            Ok(path) => self.provisioning_url(&path, ""),
            Err(_) => None,
        };
        let (reg, owned, dir2) = (self.clone(), phones.to_vec(), dir.clone());
        // Two threads: each file is synced before its rename, and the waits overlap.
        let out: Vec<(String, FilesOutcome)> = tokio::task::spawn_blocking(move || {
            crate::registry::parallel_map(&owned, 2, |(row, prov)| {
                (
                    row.number.clone(),
                    reg.write_phone(&templates, &dir2, prov_dir.as_deref(), row, prov),
                )
            })
        })
        .await
        .map_err(|e| Error::Io {
            path: dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        // Without a durable directory entry a file may vanish in a crash: then the rows
        // stay unwritten.
        if provisioning::sync_dir(&dir).is_err() {
            return Ok(out);
        }
        let mut tx = self.store.begin().await?;
        for ((number, outcome), (_, prov)) in out.iter().zip(phones) {
            // A failed write stays unwritten and is retried at the next open.
            if !matches!(outcome, FilesOutcome::Failed { .. }) {
                store::provisioning::mark_written(&mut tx, number, prov.generation).await?;
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    fn write_phone(
        &self,
        templates: &Templates,
        dir: &std::path::Path,
        prov_dir: Option<&str>,
        row: &ExtensionRow,
        prov: &ProvisioningRow,
    ) -> FilesOutcome {
        let phone = match self.phone_of(row, prov) {
            Ok(Some(p)) => p,
            Ok(None) if row.mac.is_none() => return FilesOutcome::NoPhone,
            Ok(None) => {
                return FilesOutcome::UnknownModel {
                    model: row.model.clone(),
                };
            }
            Err(e) => {
                return FilesOutcome::Failed {
                    reason: e.to_string(),
                };
            }
        };
        let Some(server) = self.phone_server() else {
            return FilesOutcome::NoServer;
        };
        let password = match self.open_secret(&ext_aad(&row.number, "password"), &row.password_enc)
        {
            Ok(p) => p,
            Err(e) => {
                return FilesOutcome::Failed {
                    reason: e.to_string(),
                };
            }
        };
        let p = &self.settings.provisioning;
        let (transport, port) = p.for_phone(row.phone_transport.as_deref());
        let ca = p
            .ca_pem
            .as_deref()
            .filter(|_| transport == PhoneTransport::Tls);
        let ca_url = match (ca, prov_dir) {
            (Some(_), Some(dir)) => Some(format!("{dir}{}", provisioning::ca_file(&phone.mac))),
            _ => None,
        };
        let account = PhoneAccount {
            number: &row.number,
            display_name: &row.name,
            user: row.sip_id.as_deref().unwrap_or(&row.number),
            auth_id: &row.auth_id,
            password: password.expose(),
            admin_password: phone.admin_password.expose(),
            server,
            port,
            transport,
            voicemail: &p.voicemail_number,
            mac: &phone.mac,
            provisioning_url: prov_dir,
            provisioning_password: phone.http_password.expose(),
            ca_url: ca_url.as_deref(),
        };
        let files = match templates.phone_files(phone.vendor, &account) {
            Ok(mut f) => {
                if let Some(ca) = ca {
                    f.push((provisioning::ca_file(&phone.mac), ca.to_owned()));
                }
                f
            }
            Err(e) => {
                return FilesOutcome::Failed {
                    reason: e.to_string(),
                };
            }
        };
        let mut names = Vec::new();
        for (name, content) in files {
            if let Err(e) = provisioning::write_atomic(dir, &name, content.as_bytes()) {
                return FilesOutcome::Failed {
                    reason: format!("cannot write {name}: {e}"),
                };
            }
            names.push(name);
        }
        FilesOutcome::Written {
            vendor: phone.vendor,
            files: names,
        }
    }

    /// Rewrites every phone whose files are behind the database; returns how many.
    /// Returns how many were rewritten, and the ones that still fail with why.
    pub(crate) async fn write_unwritten_files(&self) -> Result<(usize, Vec<(String, String)>)> {
        let mut conn = self.store.conn().await?;
        let rows = store::provisioning::unwritten_provisioning(&mut conn).await?;
        drop(conn);
        if rows.is_empty() {
            return Ok((0, Vec::new()));
        }
        let numbers: Vec<String> = rows.into_iter().map(|r| r.number).collect();
        let failed: Vec<(String, String)> = self
            .write_files(&numbers)
            .await?
            .into_iter()
            .filter_map(|(n, o)| match o {
                FilesOutcome::Failed { reason } => Some((n, reason)),
                _ => None,
            })
            .collect();
        Ok((numbers.len() - failed.len(), failed))
    }

    /// Removes the files a phone with this MAC and model had (after a MAC change or
    /// the extension's removal). Best effort: a missing file is fine.
    pub(crate) fn remove_phone_files(&self, mac: Option<&str>, model: Option<&str>) {
        let (Some(mac), Some(vendor)) = (mac, model.and_then(Vendor::from_model)) else {
            return;
        };
        let dir = self.data.provisioning_dir();
        for (name, _) in vendor.files(mac) {
            match std::fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    crate::background::failed(
                        crate::background::Task::Cleanup,
                        "removing an old provisioning file",
                        &e,
                    );
                }
                _ => {}
            }
        }
    }

    /// Re-Generates the selected extensions. `progress(done, total)` is called after
    /// each committed batch.
    pub async fn regenerate(
        &self,
        selection: &Selection,
        email: bool,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Vec<Regenerated>> {
        self.regenerate_with(selection, email, true, progress).await
    }

    /// [`Registry::regenerate`], with `keep_grace` false for a suspected compromise: no
    /// grace window, the old password and provisioning login die everywhere at once
    /// (the phones re-provision by hand or with their new login).
    pub async fn regenerate_with(
        &self,
        selection: &Selection,
        email: bool,
        keep_grace: bool,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Vec<Regenerated>> {
        let numbers = self.select(selection).await?;
        let templates = self.templates()?;
        let prov_path = self.provisioning_path().await?;
        let total = numbers.len();
        let mut results = Vec::with_capacity(total);
        for batch in numbers.chunks(BATCH) {
            let mut tx = self.store.begin().await?;
            let mut changed = Vec::with_capacity(batch.len());
            let mut phones = Vec::new();
            for number in batch {
                let Some(row) = q::get_extension(&mut tx, number).await? else {
                    continue; // removed meanwhile
                };
                let (r, phone) = self
                    .regenerate_one(&mut tx, &templates, &prov_path, row, email, keep_grace)
                    .await?;
                changed.push(r);
                phones.extend(phone);
            }
            tx.commit().await?;
            let mut written: std::collections::HashMap<String, FilesOutcome> =
                self.write_rows(&phones).await?.into_iter().collect();
            for mut r in changed {
                if let Some(f) = written.remove(&r.number) {
                    r.files = f;
                }
                results.push(r);
            }
            progress(results.len(), total);
        }
        Ok(results)
    }

    async fn regenerate_one(
        &self,
        conn: &mut dyn Db,
        templates: &Templates,
        prov_path: &str,
        old: ExtensionRow,
        email: bool,
        keep_grace: bool,
    ) -> Result<(Regenerated, Option<(ExtensionRow, ProvisioningRow)>)> {
        let now = self.now();
        let mut row = old.clone();
        let password = self.generated_password(&[&row.number, &row.auth_id], &row.name);
        let pin_len = self.settings.policy.generated_pin_length;
        let pin = self.with_rng(|rng| generate::pin(rng, pin_len, &row.number));
        row.password_enc = self.seal(&ext_aad(&row.number, "password"), password.expose());
        row.pin_enc = self.seal(&ext_aad(&row.number, "pin"), pin.expose());
        row.password_score = i64::from(generate::GENERATED_PASSWORD_SCORE);
        (row.ha1_md5_enc, row.ha1_sha256_enc) =
            self.sealed_ha1s(Ha1Owner::Extension(&row.number), &row.auth_id, &password);
        row.updated_at = now;
        q::update_extension(conn, &row).await?;
        // Bindings, grace window (the old HA1s re-sealed as the window's), provisioning
        // login, queued mails: all in this transaction.
        let revoked = self
            .revoke_credentials(conn, &old, &mut row, now, keep_grace)
            .await?;

        let prov = self.bump_provisioning(conn, &row).await?;
        let phone = match &prov {
            Some(p) => self.phone_of(&row, p)?,
            None => None,
        };
        let resync = phone.is_some() && revoked.registered;
        if resync {
            store::provisioning::request_resync(conn, &row.number, now).await?;
        }

        let mail = match (&row.email, email) {
            (_, false) => MailOutcome::Skipped,
            (None, true) => MailOutcome::NoEmail,
            (Some(_), true) => {
                let id = self
                    .queue_welcome(
                        conn,
                        templates,
                        prov_path,
                        &row,
                        &password,
                        &pin,
                        phone.as_ref(),
                        now,
                    )
                    .await?;
                MailOutcome::Queued { id }
            }
        };
        let result = Regenerated {
            number: row.number.clone(),
            auth_id: row.auth_id.clone(),
            password,
            pin,
            files: FilesOutcome::NoPhone,
            mail,
            grace_sources: revoked.grace_sources,
            provisioning_sources: revoked.provisioning_sources,
            grace_until: revoked.grace_until,
            resync,
        };
        Ok((result, prov.map(|p| (row, p))))
    }

    /// Queues the welcome mail with the extension's current credentials (superseding
    /// any mail of the extension still waiting); returns its id. The mail never carries
    /// the provisioning login: the phone gets that through provisioning.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn queue_welcome(
        &self,
        conn: &mut dyn Db,
        templates: &Templates,
        prov_path: &str,
        row: &ExtensionRow,
        password: &Secret,
        pin: &Secret,
        phone: Option<&Phone>,
        now: i64,
    ) -> Result<String> {
        let Some(to) = row.email.as_deref() else {
            return Err(Error::not_found(format!(
                "the email address of extension {}",
                row.number
            )));
        };
        let file = phone.map(|p| p.vendor.files(&p.mac).remove(0).0);
        let (transport, port) = self
            .settings
            .provisioning
            .for_phone(row.phone_transport.as_deref());
        let ctx = WelcomeContext {
            number: &row.number,
            name: &row.name,
            user: row.sip_id.as_deref().unwrap_or(&row.number),
            auth_id: &row.auth_id,
            password: password.expose(),
            pin: pin.expose(),
            voicemail: &self.settings.provisioning.voicemail_number,
            server: self.phone_server().unwrap_or("(ask your administrator)"),
            port,
            transport,
            mac: phone.map(|p| p.mac.as_str()),
            provisioning_url: file.and_then(|f| self.provisioning_url(prov_path, &f)),
        };
        let message = MailMessage {
            subject: format!("Your phone extension {}: new credentials", row.number),
            text: templates.render("welcome.txt", &ctx)?,
            html: templates.render("welcome.html", &ctx)?,
            attachment: None,
        };
        let mut mail = self.outbox_row(&row.number, to, &message, now)?;
        mail.basis = crate::mail::credentials_basis(row, to);
        store::outbox::queue_mail(conn, &mail).await?;
        Ok(mail.id)
    }

    /// A phone's provisioning login (user = MAC, password), for `ext show --reveal`.
    pub async fn phone_login(&self, number: &str) -> Result<Option<(String, Secret)>> {
        let row = self.extension_row(number).await?;
        let mut conn = self.store.conn().await?;
        let Some(prov) = store::provisioning::get_provisioning(&mut conn, &row.number).await?
        else {
            return Ok(None);
        };
        let Some(mac) = row.mac else { return Ok(None) };
        let pw = self.open_secret(&ext_aad(&row.number, "phone_http"), &prov.http_password_enc)?;
        Ok(Some((mac, pw)))
    }
}
