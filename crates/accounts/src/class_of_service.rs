//! Outbound calling settings of extensions: class of service, suspension, and the
//! security alerts mailed to the administrator.

use policy::dialplan::{Breach, ClassOfService, DialPlan, FraudLimits};
use policy::fields::ExtensionNumber;
use serde::Serialize;
use store::Db;
use store::outbound as oq;

use crate::mail::MailMessage;
use crate::registry::Registry;
use crate::{Error, Result};
use store::outbound::CallingRow;

/// One extension's effective outbound settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    pub class: ClassOfService,
    pub limits: FraudLimits,
    pub suspended: bool,
}

impl Line {
    /// The effective settings of a stored row under `plan`'s defaults.
    pub fn from_row(row: &CallingRow, plan: &DialPlan) -> Line {
        let o = &row.outbound;
        let default_class = if row.kind == "fax" {
            plan.default_fax_class
        } else {
            plan.default_user_class
        };
        let pick = |v: Option<i64>, d: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(d);
        Line {
            class: o
                .class_of_service
                .as_deref()
                .and_then(ClassOfService::parse)
                .unwrap_or(default_class),
            limits: FraudLimits {
                concurrent_external: pick(o.concurrent_external, plan.limits.concurrent_external),
                attempts_per_minute: pick(o.attempts_per_minute, plan.limits.attempts_per_minute),
                international_per_day: pick(
                    o.international_per_day,
                    plan.limits.international_per_day,
                ),
            },
            suspended: o.suspended_at != 0,
        }
    }
}

/// An extension's effective outbound settings, as operators see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutboundView {
    pub class_of_service: ClassOfService,
    /// The class comes from `[dialplan]`'s default for the extension's kind.
    pub default_class: bool,
    pub limits: FraudLimits,
    pub suspended: bool,
    pub suspended_at: Option<i64>,
    pub suspend_reason: Option<String>,
}

/// Parses a class of service given by an operator.
pub(crate) fn parse_class(value: &str) -> Result<ClassOfService> {
    ClassOfService::parse(value).ok_or_else(|| {
        Error::Invalid(policy::InvalidField {
            field: "class of service",
            reason: "it must be internal, local, national, international or unrestricted".into(),
        })
    })
}

impl Registry {
    /// Sets (or, with `None`, resets to the default) an extension's class of service
    /// inside the caller's transaction.
    pub(crate) async fn set_class(
        &self,
        conn: &mut dyn Db,
        number: &str,
        class: Option<ClassOfService>,
    ) -> Result<()> {
        let mut row = oq::calling_of(conn, number)
            .await?
            .ok_or_else(|| Error::not_found(format!("extension {number}")))?;
        row.outbound.class_of_service = class.map(|c| c.as_str().to_owned());
        oq::put_outbound(conn, &row.outbound).await?;
        Ok(())
    }

    pub async fn outbound_of(&self, number: &str) -> Result<OutboundView> {
        let number = ExtensionNumber::parse(number.trim())?;
        let mut conn = self.store().conn().await?;
        let row = oq::calling_of(&mut conn, number.as_str())
            .await?
            .ok_or_else(|| Error::not_found(format!("extension {number}")))?;
        let line = Line::from_row(&row, &self.settings().dialplan);
        let o = &row.outbound;
        Ok(OutboundView {
            class_of_service: line.class,
            default_class: o.class_of_service.is_none(),
            limits: line.limits,
            suspended: line.suspended,
            suspended_at: (o.suspended_at != 0).then_some(o.suspended_at),
            suspend_reason: (o.suspended_at != 0).then(|| o.suspend_reason.clone()),
        })
    }

    /// Lifts a suspension; returns whether the extension was suspended.
    pub async fn resume(&self, number: &str) -> Result<bool> {
        let number = ExtensionNumber::parse(number.trim())?;
        let mut tx = self.store().begin().await?;
        let mut row = oq::calling_of(&mut tx, number.as_str())
            .await?
            .ok_or_else(|| Error::not_found(format!("extension {number}")))?;
        let was = row.outbound.suspended_at != 0;
        if was {
            row.outbound.suspended_at = 0;
            row.outbound.suspend_reason.clear();
            oq::put_outbound(&mut tx, &row.outbound).await?;
        }
        tx.commit().await?;
        Ok(was)
    }

    /// Records a suspension (the server has applied it already) and alerts the
    /// administrator. Returns false when the extension no longer exists.
    pub async fn suspend_outbound(
        &self,
        number: &str,
        breach: Breach,
        dialled: &str,
        at: i64,
    ) -> Result<bool> {
        let reason = format!("{}: {}", breach.id(), breach.describe());
        let mut tx = self.store().begin().await?;
        if !oq::suspend(&mut tx, number, at, &reason).await? {
            return Ok(false);
        }
        let text = format!(
            "sipward suspended outbound calling of extension {number}: {}.\n\n\
             The attempt that broke the limit dialled {dialled}. Until an administrator runs\n\
             `sipward ext resume {number}`, the extension can call other extensions and\n\
             emergency numbers only. If nobody at that extension made these calls, its\n\
             password is known to someone else: Re-Generate it\n\
             (`sipward ext regenerate {number}`).\n",
            breach.describe()
        );
        self.queue_alert(
            &mut tx,
            number,
            &format!("Outbound calling of extension {number} suspended"),
            &text,
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Queues an alert for the administrator (`mail.admin`), if one is configured.
    pub(crate) async fn queue_alert(
        &self,
        conn: &mut dyn Db,
        number: &str,
        subject: &str,
        text: &str,
        now: i64,
    ) -> Result<Option<String>> {
        let Some(to) = self.settings().admin_email.clone() else {
            return Ok(None);
        };
        // Alerts never supersede each other or an extension's welcome mail.
        let mail = self.outbox_row(&alert_key(number), &to, &alert_message(subject, text), now)?;
        store::outbox::insert_mail(conn, &mail).await?;
        let id = mail.id;
        Ok(Some(id))
    }

    /// Queues an alert merged with the others of the same extension and `reason`: at
    /// most one mail per [`ALERT_WINDOW_SECS`], saying how many events it stands for.
    /// While a window's mail waits in the outbox, a new event rewrites it with the new
    /// count; once it has gone, the next mail waits for the next window. `message`
    /// gives the subject and text for a count.
    async fn merged_alert(
        &self,
        number: &str,
        reason: &str,
        now: i64,
        message: impl Fn(i64) -> (String, String),
    ) -> Result<()> {
        let Some(to) = self.settings().admin_email.clone() else {
            return Ok(());
        };
        let mut tx = self.store().begin().await?;
        let window = store::outbox::alert_window(&mut tx, number, reason).await?;
        let next = match window {
            Some(mut w) if now < w.window_start.saturating_add(ALERT_WINDOW_SECS) => {
                w.count += 1;
                let (subject, text) = message(w.count);
                let sealed = self.seal_mail(&w.mail_id, &alert_message(&subject, &text))?;
                if store::outbox::replace_queued_message(&mut tx, &w.mail_id, &sealed).await? {
                    Some(w)
                } else {
                    // Sent (or being sent) already: this event opens the next window,
                    // whose mail goes when that window begins.
                    let start = w.window_start.saturating_add(ALERT_WINDOW_SECS);
                    let (subject, text) = message(1);
                    let mut mail = self.outbox_row(
                        &alert_key(number),
                        &to,
                        &alert_message(&subject, &text),
                        now,
                    )?;
                    mail.next_attempt_at = start;
                    store::outbox::insert_mail(&mut tx, &mail).await?;
                    Some(store::outbox::AlertWindowRow {
                        window_start: start,
                        count: 1,
                        mail_id: mail.id,
                        ..w
                    })
                }
            }
            _ => None,
        };
        let window = match next {
            Some(w) => w,
            None => {
                let (subject, text) = message(1);
                let mail = self.outbox_row(
                    &alert_key(number),
                    &to,
                    &alert_message(&subject, &text),
                    now,
                )?;
                store::outbox::insert_mail(&mut tx, &mail).await?;
                store::outbox::AlertWindowRow {
                    number: number.to_owned(),
                    reason: reason.to_owned(),
                    window_start: now,
                    count: 1,
                    mail_id: mail.id,
                }
            }
        };
        store::outbox::put_alert_window(&mut tx, &window).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An emergency call went out: tell the administrator (merged: one mail per
    /// extension an hour, saying how many calls).
    pub async fn emergency_alert(&self, number: &str, dialled: &str, at: i64) -> Result<()> {
        self.merged_alert(number, "emergency", at, |count| {
            let subject = format!("Emergency call from extension {number}");
            let text = if count == 1 {
                format!(
                    "Extension {number} dialled the emergency number {dialled}.\n\
                     Emergency calls always go out, whatever the class of service or limits.\n"
                )
            } else {
                format!(
                    "Extension {number} dialled emergency numbers {count} times within the hour \
                     (the last: {dialled}).\n\
                     Emergency calls always go out, whatever the class of service or limits;\n\
                     each extension may hold one at a time. If nobody at that extension made\n\
                     these calls, its password is known to someone else: Re-Generate it\n\
                     (`sipward ext regenerate {number}`).\n"
                )
            };
            (subject, text)
        })
        .await
    }

    /// An emergency call was refused by the emergency limits (too many at once): tell
    /// the administrator, merged like every alert.
    pub async fn emergency_refused_alert(
        &self,
        number: &str,
        breach: policy::dialplan::EmergencyBreach,
        at: i64,
    ) -> Result<()> {
        self.merged_alert(number, breach.id(), at, |count| {
            (
                format!("Emergency calls from extension {number} refused"),
                format!(
                    "sipward refused {count} emergency call(s) from extension {number} within \
                     the hour: {}.\nOne emergency call at a time always goes through.\n",
                    breach.describe()
                ),
            )
        })
        .await
    }
}

/// How long one merged alert mail covers.
pub const ALERT_WINDOW_SECS: i64 = 3600;

/// The outbox key of an extension's alerts (never superseded by its welcome mails).
fn alert_key(number: &str) -> String {
    format!("alert:{number}")
}

fn alert_message(subject: &str, text: &str) -> MailMessage {
    MailMessage {
        subject: subject.to_owned(),
        text: text.to_owned(),
        html: format!(
            "<!DOCTYPE html><html><body><pre>{}</pre></body></html>",
            text.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        ),
        attachment: None,
    }
}
