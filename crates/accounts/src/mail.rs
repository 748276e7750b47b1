//! The welcome-mail sender: SMTP through lettre (STARTTLS or implicit TLS, AUTH from the
//! config), fed by the durable outbox in the store. A mail is claimed with a lease before
//! it is sent, so a CLI command and the running server never send the same row at once;
//! a sender that dies leaves a lease that runs out and the mail is sent again later.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use policy::{Secret, generate};
use serde::{Deserialize, Serialize};
use store::outbox::OutboxRow;

use crate::provisioning::TemplateError;
use crate::registry::{Registry, mail_aad};
use crate::{Error, Result};

/// The message queued in the outbox (sealed: it carries the password).
#[derive(Debug, Serialize, Deserialize)]
pub struct MailMessage {
    pub subject: String,
    pub text: String,
    pub html: String,
    /// A file from the data dir to attach (a voicemail message), read when the mail is
    /// sent: the outbox holds a reference, not the audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<MailAttachment>,
}

/// A file attached to a mail, by its path relative to the data dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailAttachment {
    /// The name the recipient sees.
    pub file_name: String,
    /// Relative to the data dir (only files under `voicemail/` are read).
    pub path: String,
    pub content_type: String,
}

/// What happened to an extension's welcome mail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum MailOutcome {
    /// In the outbox; `sipward serve` (or the command that queued it) sends it.
    Queued {
        id: String,
    },
    Sent {
        id: String,
    },
    /// Will be retried (it stays in the outbox).
    Deferred {
        id: String,
        reason: String,
    },
    Failed {
        id: String,
        reason: String,
    },
    /// Withdrawn before sending: the extension's address, password or PIN changed since
    /// it was queued (or the extension is gone); a newer mail, if any, says what holds.
    Withdrawn {
        id: String,
    },
    /// The extension has no email address (reported, not a failure).
    NoEmail,
    /// `--no-email`.
    Skipped,
}

impl MailOutcome {
    /// In words, for tables and pages.
    pub fn describe(&self) -> String {
        match self {
            MailOutcome::Queued { .. } => "queued".into(),
            MailOutcome::Sent { .. } => "sent".into(),
            MailOutcome::Deferred { reason, .. } => format!("will retry: {reason}"),
            MailOutcome::Failed { reason, .. } => format!("FAILED: {reason}"),
            MailOutcome::Withdrawn { .. } => "withdrawn: the account changed since".into(),
            MailOutcome::NoEmail => "no email address".into(),
            MailOutcome::Skipped => "not sent (no mail asked for)".into(),
        }
    }
}

/// How a connection to the SMTP server is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS; refused when the server does not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption (a relay on the same host only).
    None,
}

/// `[mail]` in the config file.
#[derive(Clone, Debug)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    /// Extra CA certificate (PEM) to trust, for a relay with a private CA.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail.from {0:?} is not a mail address")]
    From(String),
    #[error("cannot read mail.ca_file {path}: {source}")]
    Ca {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mail TLS settings: {0}")]
    Tls(String),
}

/// A connection recipe to the SMTP server. Build it inside a tokio runtime.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// Why one send did not work.
#[derive(Debug)]
pub struct SendFailure {
    /// The server refused for good (5xx): retrying cannot help.
    pub permanent: bool,
    pub reason: String,
}

/// Attempts before a mail is given up.
pub const MAX_ATTEMPTS: i64 = 10;
/// Mails sent at once (lettre's pool keeps up to 10 connections).
const SEND_CONCURRENCY: usize = 8;
/// How long a claimed mail is reserved for its sender.
const LEASE_SECS: i64 = 120;

/// Seconds to wait before attempt number `attempts + 1`: 30 s doubling, at most an hour.
pub fn backoff_secs(attempts: i64) -> i64 {
    let shift = u32::try_from(attempts.clamp(0, 7)).unwrap_or(7);
    (30_i64 << shift).min(3600)
}

impl Mailer {
    pub fn new(s: &SmtpSettings) -> Result<Self, MailError> {
        let from: Mailbox = s
            .from
            .parse()
            .map_err(|_| MailError::From(s.from.clone()))?;
        let tls = match s.security {
            Security::None => Tls::None,
            Security::Starttls | Security::Tls => {
                let mut b = TlsParameters::builder(s.host.clone());
                if let Some(path) = &s.ca_file {
                    let pem = std::fs::read(path).map_err(|source| MailError::Ca {
                        path: path.clone(),
                        source,
                    })?;
                    let cert =
                        Certificate::from_pem(&pem).map_err(|e| MailError::Tls(e.to_string()))?;
                    b = b.add_root_certificate(cert);
                }
                let params = b
                    .build_rustls()
                    .map_err(|e| MailError::Tls(e.to_string()))?;
                if s.security == Security::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(s.port)
            .tls(tls)
            .timeout(Some(s.timeout));
        if let (Some(user), Some(pw)) = (&s.username, &s.password) {
            builder = builder.credentials(Credentials::new(user.clone(), pw.expose().to_owned()));
        }
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }

    /// Sends one message (text and HTML alternatives, and `attached` when given) to `to`.
    pub async fn send(
        &self,
        to: &str,
        id: &str,
        m: &MailMessage,
        attached: Option<Vec<u8>>,
    ) -> Result<(), SendFailure> {
        let to: Mailbox = to.parse().map_err(|_| SendFailure {
            permanent: true,
            reason: "the recipient is not a mail address".into(),
        })?;
        let alternative = MultiPart::alternative()
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(m.text.clone()),
            )
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(m.html.clone()),
            );
        let body = match (&m.attachment, attached) {
            (Some(a), Some(bytes)) => {
                let kind = ContentType::parse(&a.content_type).map_err(|_| SendFailure {
                    permanent: true,
                    reason: "the attachment's content type is not valid".into(),
                })?;
                MultiPart::mixed()
                    .multipart(alternative)
                    .singlepart(Attachment::new(a.file_name.clone()).body(bytes, kind))
            }
            _ => alternative,
        };
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&m.subject)
            // Derived from the outbox row: a mail sent twice after a crash is recognisably one.
            .message_id(Some(format!("<{id}@sipward.outbox>")))
            .multipart(body)
            .map_err(|e| SendFailure {
                permanent: true,
                reason: format!("cannot build the message: {e}"),
            })?;
        self.transport
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| SendFailure {
                permanent: e.is_permanent(),
                reason: smtp_reason(&e),
            })
    }
}

/// A sentence about an SMTP error that never quotes the message (it holds a password).
fn smtp_reason(e: &lettre::transport::smtp::Error) -> String {
    if e.is_permanent() || e.is_transient() {
        match e.status() {
            Some(code) => format!("the SMTP server answered {code}"),
            None => "the SMTP server refused".into(),
        }
    } else if e.is_timeout() {
        "the SMTP server did not answer in time".into()
    } else if e.is_tls() {
        "TLS with the SMTP server failed (certificate or STARTTLS)".into()
    } else {
        let text = e.to_string();
        format!("cannot talk to the SMTP server: {text}")
    }
}

/// What a credentials mail to `recipient` about `row` is made from: a digest of the
/// recipient, the auth ID and the sealed password and PIN (a sealed value changes
/// whenever its secret is set anew). Whoever sends the mail compares it with the
/// extension as it is then: a mail whose address or credentials changed since is
/// withdrawn, never sent.
pub(crate) fn credentials_basis(row: &store::account::ExtensionRow, recipient: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        recipient,
        &row.number,
        &row.auth_id,
        &row.password_enc,
        &row.pin_enc,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The extension whose state decides whether a claimed mail still goes out: the row's
/// own number for a credentials mail, the box's for a voicemail mail (`vm:NUMBER`),
/// none for an alert (`alert:NUMBER`).
fn checked_extension(row: &OutboxRow) -> Option<&str> {
    if row.number.starts_with("alert:") {
        None
    } else {
        Some(row.number.strip_prefix("vm:").unwrap_or(&row.number))
    }
}

/// Why a claimed mail must not go out, if it must not: alerts (`alert:NUMBER`) always
/// go; a voicemail mail (`vm:NUMBER`) only while its extension still has the address;
/// a credentials mail only while its extension still has the address and the
/// credentials it was made from.
fn stale_reason(
    row: &OutboxRow,
    ext: Option<&store::account::ExtensionRow>,
) -> Option<&'static str> {
    if row.number.starts_with("alert:") {
        return None;
    }
    let Some(ext) = ext else {
        return Some("withdrawn: the extension was removed");
    };
    if ext.email.as_deref() != Some(row.recipient.as_str()) {
        return Some("withdrawn: the extension's address changed");
    }
    if row.number.starts_with("vm:") {
        return None;
    }
    if row.basis.is_empty() || row.basis != credentials_basis(ext, &row.recipient) {
        return Some("withdrawn: the extension's credentials changed");
    }
    None
}

impl Registry {
    /// A new outbox row for `message` (sealed: mails carry passwords).
    pub(crate) fn outbox_row(
        &self,
        number: &str,
        recipient: &str,
        message: &MailMessage,
        now: i64,
    ) -> Result<OutboxRow> {
        let id = self.with_rng(|rng| generate::auth_id(rng)).into_string();
        Ok(OutboxRow {
            message_enc: self.seal_mail(&id, message)?,
            id,
            number: number.to_owned(),
            recipient: recipient.to_owned(),
            state: "queued".into(),
            attempts: 0,
            next_attempt_at: now,
            lease_until: 0,
            last_error: String::new(),
            created_at: now,
            sent_at: 0,
            basis: String::new(),
        })
    }

    /// `message` sealed for the outbox row `id` (bound to it by the AAD).
    pub(crate) fn seal_mail(&self, id: &str, message: &MailMessage) -> Result<String> {
        let json = serde_json::to_string(message).map_err(|e| {
            Error::Template(TemplateError::Render {
                name: "mail".into(),
                detail: e.to_string(),
            })
        })?;
        Ok(self.seal(&mail_aad(id), &json))
    }

    /// Opens a queued mail.
    pub(crate) fn open_mail(&self, row: &OutboxRow) -> Result<MailMessage> {
        let json = self.open_secret(&mail_aad(&row.id), &row.message_enc)?;
        serde_json::from_str(json.expose()).map_err(|e| {
            Error::Template(TemplateError::Render {
                name: "outbox message".into(),
                detail: e.to_string(),
            })
        })
    }
}

impl Registry {
    /// Sends the outbox's due mails once each (only `ids` when given) and records every
    /// outcome. Returns (id, outcome) for the mails this call tried.
    pub async fn send_due_mail(
        &self,
        mailer: &Mailer,
        ids: Option<&HashSet<String>>,
    ) -> Result<Vec<(String, MailOutcome)>> {
        let mut out = Vec::new();
        loop {
            let now = self.now();
            let mut conn = self.store().conn().await?;
            let due: Vec<_> = store::outbox::due_mail(&mut conn, now, 200)
                .await?
                .into_iter()
                .filter(|m| ids.is_none_or(|s| s.contains(&m.id)))
                .filter(|m| !out.iter().any(|(id, _)| id == &m.id))
                .collect();
            if due.is_empty() {
                return Ok(out);
            }
            // Several mails at once: lettre writes a message and its final dot in two
            // writes without TCP_NODELAY, so each mail waits ~40 ms for the server's
            // delayed ACK; parallel connections (its pool) hide that wait.
            for chunk in due.chunks(SEND_CONCURRENCY) {
                let mut claimed = Vec::with_capacity(chunk.len());
                for row in chunk {
                    let now = self.now();
                    if !store::outbox::claim_mail(&mut conn, &row.id, now, now + LEASE_SECS).await?
                    {
                        continue;
                    }
                    // Checked against the extension as it is now, after the claim: a
                    // change made before this point has withdrawn it or shows here; one
                    // made later withdraws it (a send in flight still finishes).
                    let ext = match checked_extension(row) {
                        None => None,
                        Some(number) => store::account::get_extension(&mut conn, number).await?,
                    };
                    let stale = stale_reason(row, ext.as_ref()).or_else(|| {
                        self.attachment_gone(row)
                            .then_some("withdrawn: the voicemail message was deleted")
                    });
                    if let Some(reason) = stale {
                        store::outbox::withdraw_mail(&mut conn, &row.id, reason).await?;
                        out.push((
                            row.id.clone(),
                            MailOutcome::Withdrawn { id: row.id.clone() },
                        ));
                        continue;
                    }
                    claimed.push(row.clone());
                }
                let mut sends = tokio::task::JoinSet::new();
                for row in claimed {
                    let (reg, mailer) = (self.clone(), mailer.clone());
                    sends.spawn(async move {
                        let result = match reg.open_mail(&row) {
                            Ok(m) => match m.attachment.as_ref().map(|a| reg.attachment_bytes(a)) {
                                None => mailer.send(&row.recipient, &row.id, &m, None).await,
                                Some(Ok(Some(bytes))) => {
                                    mailer.send(&row.recipient, &row.id, &m, Some(bytes)).await
                                }
                                // The message was deleted before its mail went out.
                                Some(Ok(None)) => Err(SendFailure {
                                    permanent: true,
                                    reason: "withdrawn: the voicemail message was deleted".into(),
                                }),
                                Some(Err(e)) => Err(SendFailure {
                                    permanent: true,
                                    reason: format!("cannot read the attachment: {e}"),
                                }),
                            },
                            Err(e) => Err(SendFailure {
                                permanent: true,
                                reason: format!("cannot open the queued message: {e}"),
                            }),
                        };
                        (row, result)
                    });
                }
                while let Some(joined) = sends.join_next().await {
                    let Ok((row, result)) = joined else { continue };
                    let now = self.now();
                    let outcome = match result {
                        Ok(()) => {
                            store::outbox::finish_mail(&mut conn, &row.id, "sent", 0, "", now)
                                .await?;
                            MailOutcome::Sent { id: row.id.clone() }
                        }
                        Err(f) if f.permanent || row.attempts + 1 >= MAX_ATTEMPTS => {
                            store::outbox::finish_mail(
                                &mut conn, &row.id, "failed", 0, &f.reason, now,
                            )
                            .await?;
                            MailOutcome::Failed {
                                id: row.id.clone(),
                                reason: f.reason,
                            }
                        }
                        Err(f) => {
                            let next = now + backoff_secs(row.attempts);
                            store::outbox::finish_mail(
                                &mut conn, &row.id, "queued", next, &f.reason, now,
                            )
                            .await?;
                            MailOutcome::Deferred {
                                id: row.id.clone(),
                                reason: f.reason,
                            }
                        }
                    };
                    out.push((row.id, outcome));
                }
            }
        }
    }

    /// The outbox, newest first (no message bodies).
    pub async fn outbox(&self) -> Result<Vec<store::outbox::OutboxRow>> {
        let mut conn = self.store().conn().await?;
        Ok(store::outbox::list_mail(&mut conn).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(number: &str, recipient: &str) -> OutboxRow {
        OutboxRow {
            id: "m1".into(),
            number: number.into(),
            recipient: recipient.into(),
            message_enc: String::new(),
            state: "queued".into(),
            attempts: 0,
            next_attempt_at: 0,
            lease_until: 0,
            last_error: String::new(),
            created_at: 0,
            sent_at: 0,
            basis: String::new(),
        }
    }

    #[test]
    fn a_voicemail_mail_goes_while_its_extension_has_the_address() {
        let vm = outbox("vm:1001", "ann@example.com");
        assert_eq!(checked_extension(&vm), Some("1001"));
        assert_eq!(checked_extension(&outbox("alert:1001", "a@b.c")), None);
        assert_eq!(checked_extension(&outbox("1001", "a@b.c")), Some("1001"));
        let mut ext = store::account::ExtensionRow {
            number: "1001".into(),
            kind: "user".into(),
            name: String::new(),
            email: Some("ann@example.com".into()),
            auth_id: "a".into(),
            sip_id: None,
            password_enc: String::new(),
            password_score: 4,
            pin_enc: String::new(),
            ha1_md5_enc: String::new(),
            ha1_sha256_enc: String::new(),
            mac: None,
            model: None,
            created_at: 0,
            updated_at: 0,
            credential_generation: 1,
            phone_transport: None,
            voicemail_after_secs: 20,
            voicemail_mail: true,
        };
        // No credentials basis needed: it carries none.
        assert_eq!(stale_reason(&vm, Some(&ext)), None);
        // Control: a credentials mail without its basis is withdrawn.
        assert!(stale_reason(&outbox("1001", "ann@example.com"), Some(&ext)).is_some());
        ext.email = Some("other@example.com".into());
        assert!(stale_reason(&vm, Some(&ext)).is_some());
        assert!(stale_reason(&vm, None).is_some());
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff_secs(0), 30);
        assert_eq!(backoff_secs(1), 60);
        assert_eq!(backoff_secs(5), 960);
        assert_eq!(backoff_secs(7), 3600);
        assert_eq!(backoff_secs(50), 3600);
        assert_eq!(backoff_secs(-3), 30);
    }
}
