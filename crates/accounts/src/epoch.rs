//! Security epochs applied to a data dir (see [`policy::epoch`]): each change goes
//! through the same workflows an administrator would use (Re-Generate, extension update)
//! and lands in the audit log. Applying them again finds nothing left to change.

use policy::audit::{Check, Kind};
use policy::epoch::{self, CURRENT};
use serde::Serialize;

use crate::Result;
use crate::audit_log::LogEntry;
use crate::extension::{ExtensionChange, ExtensionKind};
use crate::regenerate::{Regenerated, Selection};
use crate::registry::{META_EPOCH, Registry};

/// Who the audit log names for changes made by an epoch.
pub const ACTOR: &str = "sipward (security epoch)";

/// One change an epoch made (or, for gateways, a finding it reports).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hardening {
    pub epoch: u32,
    /// `regenerated`, `sip_id_blanked` or `reported`.
    pub action: &'static str,
    /// `ext:1001`, `gateway:NAME`.
    pub subject: String,
    pub detail: String,
}

impl Registry {
    /// The last security epoch applied to this data dir.
    pub async fn security_epoch(&self) -> Result<u32> {
        let mut conn = self.store().conn().await?;
        let v = store::meta::get_meta(&mut conn, META_EPOCH).await?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Applies every epoch newer than the data dir's, then records [`CURRENT`]. The
    /// Re-Generated extensions (new passwords, shown once) come back with the changes.
    pub async fn harden(
        &self,
        email: bool,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<(Vec<Hardening>, Vec<Regenerated>)> {
        let from = self.security_epoch().await?;
        let mut changes = Vec::new();
        let mut regenerated = Vec::new();
        for e in epoch::pending(from) {
            if e.number == 1 {
                let (c, r) = self.epoch_1(email, progress).await?;
                changes.extend(c);
                regenerated.extend(r);
            }
        }
        let now = self.now();
        let mut tx = self.store().begin().await?;
        for c in &changes {
            let action = format!("epoch{}.{}", c.epoch, c.action);
            let entry = LogEntry {
                actor: ACTOR,
                action: &action,
                subject: &c.subject,
                detail: &c.detail,
            };
            self.log_in(&mut tx, now, entry).await?;
        }
        if from < CURRENT {
            let detail = format!("security epoch {from} -> {CURRENT}");
            let entry = LogEntry {
                actor: ACTOR,
                action: "epoch.applied",
                subject: "data dir",
                detail: &detail,
            };
            self.log_in(&mut tx, now, entry).await?;
        }
        store::meta::set_meta(&mut tx, META_EPOCH, &CURRENT.to_string()).await?;
        tx.commit().await?;
        Ok((changes, regenerated))
    }

    async fn epoch_1(
        &self,
        email: bool,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<(Vec<Hardening>, Vec<Regenerated>)> {
        let change = |action, subject: String, detail: &str| Hardening {
            epoch: 1,
            action,
            subject,
            detail: detail.to_owned(),
        };
        let findings = self.audit().await?;
        let number_of = |subject: &str| subject.strip_prefix("ext:").map(str::to_owned);
        let mut changes = Vec::new();

        // SIP IDs first: a Re-Generate below then starts from the blanked row.
        for f in &findings {
            if f.rule.kind == Kind::Ext
                && f.rule.check == Check::SipIdEqualsNumber
                && let Some(number) = number_of(&f.subject)
            {
                self.update_extension(
                    &number,
                    ExtensionChange {
                        sip_id: Some(String::new()),
                        ..Default::default()
                    },
                )
                .await?;
                changes.push(change(
                    "sip_id_blanked",
                    f.subject.clone(),
                    "the SIP ID was the extension number",
                ));
            }
        }

        let mut numbers: Vec<(String, &str)> = self
            .list_extensions()
            .await?
            .into_iter()
            .filter(|e| e.kind == ExtensionKind::Fax)
            .map(|e| (e.number, "fax extension"))
            .collect();
        for f in &findings {
            let why = match f.rule.check {
                Check::PasswordEqualsNumber => "the password was the extension number",
                Check::PinEqualsNumber => "the voicemail PIN was the extension number",
                _ => continue,
            };
            if f.rule.kind == Kind::Ext
                && let Some(number) = number_of(&f.subject)
                && !numbers.iter().any(|(n, _)| *n == number)
            {
                numbers.push((number, why));
            }
        }
        let regenerated = if numbers.is_empty() {
            Vec::new()
        } else {
            let selection = Selection::Numbers(numbers.iter().map(|(n, _)| n.clone()).collect());
            self.regenerate(&selection, email, progress).await?
        };
        for r in &regenerated {
            let why = numbers
                .iter()
                .find(|(n, _)| *n == r.number)
                .map_or("", |(_, w)| *w);
            changes.push(change(
                "regenerated",
                Kind::Ext.subject(&r.number),
                &format!("{why}: new password and PIN"),
            ));
        }

        for f in &findings {
            if f.rule.kind == Kind::Gateway
                && matches!(
                    f.rule.check,
                    Check::FactoryDefaultLogin
                        | Check::PasswordEqualsAuthId
                        | Check::PasswordEqualsNumber
                )
            {
                changes.push(change("reported", f.subject.clone(), &f.message));
            }
        }
        Ok((changes, regenerated))
    }
}
