//! Voicemail boxes, off the wire: messages and their files, the greeting, mailbox login
//! with its lockout, PIN changes, and the mails and audit entries they cause. The call
//! side (`pbx::voicemail`) plays, records and collects DTMF; it calls these functions
//! and drives [`menu::Menu`], which decides what a caller's digits do.
//!
//! The rules, in one place:
//! - **A box is its extension's.** Every box is an extension number; rows and files go
//!   with the extension. Files live in `<data dir>/voicemail/<number>/` (directories
//!   0700, files 0600), named by a random id, never by anything a caller sent.
//! - **Login without a PIN only for the owner's own phone.** [`Credential::AuthenticatedOwner`]
//!   may be passed ONLY for a call digest-authenticated as the mailbox's own account
//!   and arriving on one of that account's registered flows; never on caller ID, a
//!   From header or a P-Asserted-Identity. That login ignores the lock (the lock guards
//!   the PIN, and none is used), so an attacker who locks a box cannot lock its owner
//!   out of it.
//! - **PIN failures are counted per mailbox, across calls and sources, persisted.**
//!   [`policy::voicemail::Lockout`]: 5 wrong PINs in 15 minutes lock the box for an
//!   hour; the third lock in a row (each within a day of the end of the last) lasts a
//!   day. While locked, every PIN is refused (the right one too, which does not unlock
//!   it), and [`Login::Refused`] is returned exactly as for a wrong PIN: the call side
//!   must give both the same prompts and the same delay. An unknown mailbox answers
//!   `Refused` too.
//! - **Failures also count per source in the guard.** Every [`Login::Refused`] for a
//!   [`Credential::Pin`] is one failed authentication of the caller's source address:
//!   the call side feeds it to `pbx::guard` (the RTP/SIP source of the call, which the
//!   INVITE's digest or the dialog proved), so one address guessing many boxes is
//!   banned like one guessing many SIP passwords.
//! - **A weak PIN must be changed at the first login** ([`Login::Granted`] says
//!   `must_change_pin`; the menu allows nothing else until it is), and a new PIN is held
//!   to the same rules as the audit's ([`policy::voicemail::pin_weakness`]).
//! - **Every change is recorded and told.** A PIN or greeting change, a delete or save
//!   from the menu, and a lock go to the audit log; a PIN or greeting change and a lock
//!   mail the owner (when the extension has an address), so a greeting re-recorded by
//!   someone else (the collect-call "yes" trick) does not go unnoticed.
//! - **Nothing here places a call.** No function dials, calls back or transfers; the
//!   menu's only way out of the box is `TransferToOperator`, to the one internal
//!   extension the administrator configured.

pub mod limits;

pub use policy::voicemail::menu;
pub use policy::voicemail::{Credential, Folder, Login, MessageView, PinChange};

pub use limits::{
    MAX_CALLER_CHARS, MAX_GREETING_BYTES, MAX_MESSAGE_BYTES, MAX_MESSAGES, VoicemailError,
};

use std::fs;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use policy::fields::{self, ExtensionNumber};
use policy::voicemail::{LockState, Lockout, pin_weakness};
use policy::{Secret, generate};
use serde::Serialize;
use store::account::ExtensionRow;
use store::voicemail::{self as q, BoxRow, MessageRow};

use crate::audit_log::LogEntry;
use crate::extension::ExtensionChange;
use crate::mail::{MailAttachment, MailMessage};
use crate::registry::{Registry, ext_aad};
use crate::{Error, Result};

/// A box's messages in numbers: what the message-waiting NOTIFY (RFC 3842
/// `Voice-Message: new/old`) and the menu's count say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub new: u32,
    pub saved: u32,
}

/// A stored message as the menu and the console see it.
fn message_view(r: &MessageRow) -> MessageView {
    MessageView {
        id: r.id.clone(),
        received_at: r.received_at,
        duration_ms: r.duration_ms,
        caller: r.caller.clone(),
        folder: if r.folder == "saved" {
            Folder::Saved
        } else {
            Folder::New
        },
    }
}

/// A box as an administrator sees it: counts, lengths, lock state; no audio, no PIN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BoxView {
    pub number: String,
    pub name: String,
    pub new: u32,
    pub saved: u32,
    /// The messages' total length.
    pub total_ms: i64,
    /// The newest message (Unix seconds), if any.
    pub latest: Option<i64>,
    /// Locked until then (Unix seconds), if locked now.
    pub locked_until: Option<i64>,
    /// Wrong PINs counted in the current window.
    pub failures: u32,
    /// The PIN was found weak at a login and not changed since.
    pub must_change_pin: bool,
    /// The owner recorded a greeting (else the default one plays).
    pub has_greeting: bool,
    /// Seconds a call rings before voicemail answers (0: no voicemail).
    pub voicemail_after_secs: i64,
    /// New messages are mailed to the extension's address.
    pub mails_messages: bool,
}

/// A message being recorded: its file exists (empty, 0600) until [`Registry::commit_message`]
/// files it or [`Registry::discard`] removes it.
#[derive(Debug)]
pub struct PendingMessage {
    mailbox: String,
    id: String,
    /// Relative to the data dir.
    file: String,
    path: PathBuf,
    received_at: i64,
}

impl PendingMessage {
    /// Where to write the WAV (the file exists; open it for writing).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mailbox(&self) -> &str {
        &self.mailbox
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Opens the file for writing, from its start.
    pub fn open(&self) -> std::io::Result<fs::File> {
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.path)
    }
}

/// The audit log's actor for a change made from the voicemail menu by a caller at
/// `source`.
pub fn caller_actor(source: IpAddr) -> String {
    format!("voicemail menu (caller at {source})")
}

/// Keeps a caller's identity to printable text of bounded length (it is shown in the
/// console, the CLI and mails; it is hostile input).
fn clean_caller(caller: &str) -> String {
    let cleaned: String = caller
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_CALLER_CHARS)
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        "unknown".into()
    } else {
        cleaned.to_owned()
    }
}

/// Whether `bytes` start like a RIFF/WAVE file.
fn is_wav(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE"
}

fn lock_state(b: &BoxRow) -> LockState {
    let u = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
    LockState {
        failures: u(b.failures),
        window_start: b.failure_window_start,
        locked_until: b.locked_until,
        lock_level: u(b.lock_level),
        last_locked_at: b.last_locked_at,
    }
}

fn apply_lock_state(b: &mut BoxRow, s: &LockState) {
    b.failures = i64::from(s.failures);
    b.failure_window_start = s.window_start;
    b.locked_until = s.locked_until;
    b.lock_level = i64::from(s.lock_level);
    b.last_locked_at = s.last_locked_at;
}

fn summary_of(counts: (i64, i64)) -> Summary {
    let u = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
    Summary {
        new: u(counts.0),
        saved: u(counts.1),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// The outbox key of an extension's voicemail mails: never superseded by its welcome
/// mails (nor they by these), checked against the extension's address when sent.
pub(crate) fn mail_key(number: &str) -> String {
    format!("vm:{number}")
}

/// A plain-text mail with the same text as HTML.
fn plain_mail(subject: String, text: String, attachment: Option<MailAttachment>) -> MailMessage {
    MailMessage {
        html: format!(
            "<!DOCTYPE html><html><body><pre>{}</pre></body></html>",
            text.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        ),
        subject,
        text,
        attachment,
    }
}

impl Registry {
    /// The lockout rules in force.
    pub fn lockout(&self) -> Lockout {
        Lockout::default()
    }

    /// `<data dir>/voicemail/<number>`, created 0700 (with its parent) when absent.
    fn box_dir(&self, number: &str) -> Result<PathBuf> {
        let dir = self.data.voicemail_dir().join(number);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error(&dir, e))?;
        Ok(dir)
    }

    /// A new file (0600, created here and nowhere else) in the box's directory, with a
    /// random name: (id, path relative to the data dir, absolute path).
    fn new_box_file(&self, number: &str, prefix: &str) -> Result<(String, String, PathBuf)> {
        let dir = self.box_dir(number)?;
        loop {
            let id = self.with_rng(|rng| generate::auth_id(rng)).into_string();
            let name = format!("{prefix}{id}.wav");
            let path = dir.join(&name);
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => return Ok((id, format!("voicemail/{number}/{name}"), path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(&path, e)),
            }
        }
    }

    /// A path relative to the data dir, refused unless it stays under `voicemail/`.
    fn stored_file(&self, relative: &str) -> Option<PathBuf> {
        let rel = Path::new(relative);
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        (plain && rel.starts_with("voicemail")).then(|| self.data.root().join(rel))
    }

    /// Reads a stored file of at most `max` bytes; None when it is gone.
    fn read_stored(&self, relative: &str, max: u64, what: &'static str) -> Result<Option<Vec<u8>>> {
        let Some(path) = self.stored_file(relative) else {
            return Ok(None);
        };
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path, e)),
        };
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_error(&path, e))?;
        if bytes.len() as u64 > max {
            return Err(VoicemailError::TooLarge { what, max }.into());
        }
        Ok(Some(bytes))
    }

    fn remove_stored(&self, relative: &str) {
        if let Some(path) = self.stored_file(relative)
            && let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a voicemail file");
        }
    }

    /// The extension behind a mailbox number.
    async fn mailbox_row(&self, mailbox: &str) -> Result<ExtensionRow> {
        self.extension_row(mailbox).await
    }

    /// Starts a message for `mailbox`: a new, empty WAV file (0600) under
    /// `<data dir>/voicemail/<number>/`. Refused when the extension does not exist or
    /// has no voicemail (`voicemail_after_secs` 0), or its box is full.
    pub async fn begin_message(&self, mailbox: &str) -> Result<PendingMessage> {
        let row = self.mailbox_row(mailbox).await?;
        if row.voicemail_after_secs == 0 {
            return Err(Error::not_found(format!(
                "the voicemail box of extension {}",
                row.number
            )));
        }
        let mut conn = self.store.conn().await?;
        let (new, saved) = q::counts(&mut conn, &row.number).await?;
        if usize::try_from(new + saved).unwrap_or(usize::MAX) >= MAX_MESSAGES {
            return Err(VoicemailError::BoxFull {
                number: row.number,
                max: MAX_MESSAGES,
            }
            .into());
        }
        drop(conn);
        let (id, file, path) = self.new_box_file(&row.number, "msg-")?;
        Ok(PendingMessage {
            mailbox: row.number,
            id,
            file,
            path,
            received_at: self.now(),
        })
    }

    /// Files a recorded message as new and returns the box's counts for the
    /// message-waiting NOTIFY. `caller` is kept as display text (control characters
    /// removed, at most 128 characters). When the extension has an address and
    /// `voicemail_mail` is on, a mail with the WAV attached is queued in the outbox (it
    /// reads the file when it is sent, and is withdrawn if the message was deleted or
    /// the address changed by then). A file larger than [`MAX_MESSAGE_BYTES`] or not a
    /// WAV is refused and removed.
    pub async fn commit_message(
        &self,
        pending: PendingMessage,
        caller: &str,
        duration_ms: u64,
    ) -> Result<Summary> {
        let head = match self.read_head(&pending.path) {
            Ok(h) => h,
            Err(e) => {
                self.discard(pending);
                return Err(e);
            }
        };
        let size = fs::metadata(&pending.path)
            .map(|m| m.len())
            .map_err(|e| io_error(&pending.path, e))?;
        if size > MAX_MESSAGE_BYTES || !is_wav(&head) {
            self.discard(pending);
            return Err(if size > MAX_MESSAGE_BYTES {
                VoicemailError::TooLarge {
                    what: "message",
                    max: MAX_MESSAGE_BYTES,
                }
                .into()
            } else {
                VoicemailError::NotWav { what: "message" }.into()
            });
        }
        let caller = clean_caller(caller);
        let mut tx = self.store.begin().await?;
        let Some(row) = store::account::get_extension(&mut tx, &pending.mailbox).await? else {
            drop(tx);
            let number = pending.mailbox.clone();
            self.discard(pending);
            return Err(Error::not_found(format!("extension {number}")));
        };
        let msg = MessageRow {
            id: pending.id.clone(),
            number: row.number.clone(),
            received_at: pending.received_at,
            duration_ms: i64::try_from(duration_ms).unwrap_or(i64::MAX),
            caller: caller.clone(),
            folder: Folder::New.as_str().into(),
            file: pending.file.clone(),
        };
        q::insert_message(&mut tx, &msg).await?;
        if row.voicemail_mail
            && let Some(to) = row.email.as_deref()
        {
            let secs = msg.duration_ms / 1000;
            let text = format!(
                "A new voicemail message for extension {number} ({name}).\n\n\
                 From: {caller}\nLength: {m}:{s:02}\n\nThe recording is attached. \
                 It also waits in your voicemail box: dial {code} from your phone.\n",
                number = row.number,
                name = row.name,
                m = secs / 60,
                s = secs % 60,
                code = self.settings.provisioning.voicemail_number,
            );
            let message = plain_mail(
                format!("Voicemail for {} from {caller}", row.number),
                text,
                Some(MailAttachment {
                    file_name: format!("voicemail-{}.wav", pending.id),
                    path: pending.file.clone(),
                    content_type: "audio/wav".into(),
                }),
            );
            let mail = self.outbox_row(&mail_key(&row.number), to, &message, self.now())?;
            store::outbox::insert_mail(&mut tx, &mail).await?;
        }
        let counts = q::counts(&mut tx, &row.number).await?;
        tx.commit().await?;
        Ok(summary_of(counts))
    }

    fn read_head(&self, path: &Path) -> Result<Vec<u8>> {
        let mut head = Vec::with_capacity(12);
        fs::File::open(path)
            .and_then(|f| f.take(12).read_to_end(&mut head))
            .map_err(|e| io_error(path, e))?;
        Ok(head)
    }

    /// Drops a message that is not kept (the caller hung up before speaking, or the
    /// recording failed): its file is removed.
    pub fn discard(&self, pending: PendingMessage) {
        if let Err(e) = fs::remove_file(&pending.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %pending.path.display(), error = %e, "cannot remove a discarded voicemail file");
        }
    }

    /// The box's counts.
    pub async fn summary(&self, mailbox: &str) -> Result<Summary> {
        let number = ExtensionNumber::parse(mailbox.trim())?;
        let mut conn = self.store.conn().await?;
        Ok(summary_of(q::counts(&mut conn, number.as_str()).await?))
    }

    /// The box's messages: new before saved, oldest first within each.
    pub async fn messages(&self, mailbox: &str) -> Result<Vec<MessageView>> {
        let number = ExtensionNumber::parse(mailbox.trim())?;
        let mut conn = self.store.conn().await?;
        Ok(q::messages_of(&mut conn, number.as_str())
            .await?
            .iter()
            .map(message_view)
            .collect())
    }

    /// A message's WAV. Only for its box's owner after a login, or an administrator who
    /// gave a reason (the console records it); the caller of this function decides.
    pub async fn open_message(&self, mailbox: &str, id: &str) -> Result<Vec<u8>> {
        let number = ExtensionNumber::parse(mailbox.trim())?;
        let mut conn = self.store.conn().await?;
        let row = q::get_message(&mut conn, number.as_str(), id)
            .await?
            .ok_or_else(|| Error::not_found(format!("message {id} of box {number}")))?;
        drop(conn);
        self.read_stored(&row.file, MAX_MESSAGE_BYTES, "message")?
            .ok_or_else(|| Error::not_found(format!("the recording of message {id}")))
    }

    /// Deletes a message and its file; false when the box has no such message.
    pub async fn delete_message(&self, mailbox: &str, id: &str, actor: &str) -> Result<bool> {
        let number = ExtensionNumber::parse(mailbox.trim())?;
        let mut tx = self.store.begin().await?;
        let Some(row) = q::get_message(&mut tx, number.as_str(), id).await? else {
            return Ok(false);
        };
        q::delete_message(&mut tx, number.as_str(), id).await?;
        let now = self.now();
        self.log_in(
            &mut tx,
            now,
            LogEntry {
                actor,
                action: "voicemail.message_deleted",
                subject: &format!("ext:{number}"),
                detail: &format!("message {id}"),
            },
        )
        .await?;
        tx.commit().await?;
        self.remove_stored(&row.file);
        Ok(true)
    }

    /// Files a message as saved (listened to and kept); false when the box has no such
    /// message.
    pub async fn save_message(&self, mailbox: &str, id: &str, actor: &str) -> Result<bool> {
        self.file_message(mailbox, id, Folder::Saved, actor).await
    }

    /// Moves a message to `folder`; false when the box has no such message.
    pub async fn file_message(
        &self,
        mailbox: &str,
        id: &str,
        folder: Folder,
        actor: &str,
    ) -> Result<bool> {
        let number = ExtensionNumber::parse(mailbox.trim())?;
        let mut tx = self.store.begin().await?;
        if !q::set_folder(&mut tx, number.as_str(), id, folder.as_str()).await? {
            return Ok(false);
        }
        self.log_in(
            &mut tx,
            self.now(),
            LogEntry {
                actor,
                action: "voicemail.message_filed",
                subject: &format!("ext:{number}"),
                detail: &format!("message {id} to {}", folder.as_str()),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces the box's greeting with `wav` (a WAV file of at most
    /// [`MAX_GREETING_BYTES`]), audit-logged; the owner is mailed that it changed.
    pub async fn set_greeting(&self, mailbox: &str, wav: &[u8], actor: &str) -> Result<()> {
        if wav.len() > MAX_GREETING_BYTES {
            return Err(VoicemailError::TooLarge {
                what: "greeting",
                max: MAX_GREETING_BYTES as u64,
            }
            .into());
        }
        if !is_wav(wav) {
            return Err(VoicemailError::NotWav { what: "greeting" }.into());
        }
        let row = self.mailbox_row(mailbox).await?;
        let (_, file, path) = self.new_box_file(&row.number, "greeting-")?;
        let written = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(wav).and_then(|()| f.sync_all()));
        if let Err(e) = written {
            self.remove_stored(&file);
            return Err(io_error(&path, e));
        }
        let old = self
            .set_greeting_row(&row, Some(file.clone()), actor, "voicemail.greeting_set")
            .await;
        match old {
            Ok(old) => {
                if let Some(old) = old {
                    self.remove_stored(&old);
                }
                Ok(())
            }
            Err(e) => {
                self.remove_stored(&file);
                Err(e)
            }
        }
    }

    /// Returns the box to the default greeting, audit-logged; the owner is mailed.
    pub async fn remove_greeting(&self, mailbox: &str, actor: &str) -> Result<()> {
        let row = self.mailbox_row(mailbox).await?;
        if let Some(old) = self
            .set_greeting_row(&row, None, actor, "voicemail.greeting_removed")
            .await?
        {
            self.remove_stored(&old);
        }
        Ok(())
    }

    /// Writes the greeting's file name, logs and mails; returns the previous file.
    async fn set_greeting_row(
        &self,
        row: &ExtensionRow,
        file: Option<String>,
        actor: &str,
        action: &str,
    ) -> Result<Option<String>> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let mut b = q::get_box(&mut tx, &row.number)
            .await?
            .unwrap_or_else(|| BoxRow {
                number: row.number.clone(),
                ..Default::default()
            });
        let old = std::mem::replace(&mut b.greeting, file);
        b.updated_at = now;
        q::save_box(&mut tx, &b).await?;
        self.log_in(
            &mut tx,
            now,
            LogEntry {
                actor,
                action,
                subject: &format!("ext:{}", row.number),
                detail: "",
            },
        )
        .await?;
        self.mail_owner(
            &mut tx,
            row,
            format!(
                "Your voicemail greeting (extension {}) was changed",
                row.number
            ),
            format!(
                "The greeting of the voicemail box of extension {} was {} by {actor}.\n\
                 If you did not do this, tell your administrator: a changed greeting can be \
                 used to accept collect calls in your name.\n",
                row.number,
                if b.greeting.is_some() {
                    "re-recorded"
                } else {
                    "reset to the default"
                },
            ),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(old)
    }

    /// The box's own greeting, None when it plays the default one.
    pub async fn greeting(&self, mailbox: &str) -> Result<Option<Vec<u8>>> {
        let number = ExtensionNumber::parse(mailbox.trim())?;
        let mut conn = self.store.conn().await?;
        let Some(file) = q::get_box(&mut conn, number.as_str())
            .await?
            .and_then(|b| b.greeting)
        else {
            return Ok(None);
        };
        drop(conn);
        self.read_stored(&file, MAX_GREETING_BYTES as u64, "greeting")
    }

    /// Queues a notice to the extension's address (nothing when it has none). Never
    /// carries a secret.
    async fn mail_owner(
        &self,
        db: &mut dyn store::Db,
        row: &ExtensionRow,
        subject: String,
        text: String,
        now: i64,
    ) -> Result<()> {
        let Some(to) = row.email.as_deref() else {
            return Ok(());
        };
        let message = plain_mail(subject, text, None);
        let mail = self.outbox_row(&mail_key(&row.number), to, &message, now)?;
        store::outbox::insert_mail(db, &mail).await?;
        Ok(())
    }

    /// Opens a box, or refuses; see the module's rules. `source` is the caller's
    /// address (for the security event and the audit log; the call side feeds the
    /// guard). Time comes from the registry's clock.
    pub async fn login(
        &self,
        mailbox: &str,
        credential: Credential,
        source: IpAddr,
    ) -> Result<Login> {
        // The same work, whatever the box: a stand-in PIN is compared when there is no
        // box to compare against.
        let stand_in = Secret::new("0000000000000000");
        let Ok(number) = ExtensionNumber::parse(mailbox.trim()) else {
            if let Credential::Pin(p) = &credential {
                let _ = stand_in.ct_eq(p.expose());
            }
            return Ok(Login::Refused);
        };
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let Some(row) = store::account::get_extension(&mut tx, number.as_str()).await? else {
            if let Credential::Pin(p) = &credential {
                let _ = stand_in.ct_eq(p.expose());
            }
            return Ok(Login::Refused);
        };
        let mut b = q::get_box(&mut tx, &row.number)
            .await?
            .unwrap_or_else(|| BoxRow {
                number: row.number.clone(),
                ..Default::default()
            });
        let stored = self.open_secret(&ext_aad(&row.number, "pin"), &row.pin_enc)?;
        let weak = pin_weakness(stored.expose(), &row.number).is_some();
        let typed = match credential {
            Credential::AuthenticatedOwner => {
                // The owner's own phone: no PIN, so no lock and no count. Weakness is
                // judged on the PIN as it is now (a Re-Generate since may have fixed it).
                let must_change_pin = weak;
                if must_change_pin != b.must_change_pin {
                    b.must_change_pin = must_change_pin;
                    b.updated_at = now;
                    q::save_box(&mut tx, &b).await?;
                    tx.commit().await?;
                }
                return Ok(Login::Granted { must_change_pin });
            }
            Credential::Pin(p) => p,
        };
        let lockout = self.lockout();
        let state = lock_state(&b);
        let matches = stored.ct_eq(typed.expose());
        if lockout.is_locked(&state, now) {
            // The right PIN too: refused, and the lock stays.
            drop(tx);
            self.refused_event(&row.number, source, true, false);
            return Ok(Login::Refused);
        }
        if matches {
            apply_lock_state(&mut b, &lockout.after_success(&state));
            b.must_change_pin = weak;
            b.updated_at = now;
            q::save_box(&mut tx, &b).await?;
            tx.commit().await?;
            return Ok(Login::Granted {
                must_change_pin: b.must_change_pin,
            });
        }
        let next = lockout.after_failure(&state, now);
        apply_lock_state(&mut b, &next);
        b.updated_at = now;
        q::save_box(&mut tx, &b).await?;
        let locked_now = lockout.is_locked(&next, now);
        if locked_now {
            let until = next.locked_until;
            self.log_in(
                &mut tx,
                now,
                LogEntry {
                    actor: &caller_actor(source),
                    action: "voicemail.locked",
                    subject: &format!("ext:{}", row.number),
                    detail: &format!(
                        "{} wrong PINs; locked for {} s (lock {} in a row)",
                        lockout.failures,
                        until - now,
                        next.lock_level
                    ),
                },
            )
            .await?;
            self.mail_owner(
                &mut tx,
                &row,
                format!("Your voicemail box (extension {}) was locked", row.number),
                format!(
                    "The voicemail box of extension {} was locked after {} wrong PINs, the \
                     last from {source}. It opens again with the PIN in {} minutes; you can \
                     still listen from your own phone.\nIf you did not mistype your PIN, \
                     someone is guessing it: ask your administrator for a new one.\n",
                    row.number,
                    lockout.failures,
                    (until - now) / 60,
                ),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        self.refused_event(&row.number, source, false, locked_now);
        Ok(Login::Refused)
    }

    fn refused_event(&self, number: &str, source: IpAddr, was_locked: bool, locked_now: bool) {
        crate::event::emit(&serde_json::json!({
            "event": "voicemail_login_refused",
            "mailbox": number,
            "source": source.to_string(),
            "locked": was_locked || locked_now,
            "locked_now": locked_now,
        }));
    }

    /// Sets a new PIN chosen by the box's owner (from the menu, after a login). It must
    /// be 1 to 12 digits and pass the audit's PIN rules
    /// ([`policy::voicemail::pin_weakness`]); a refused PIN leaves the old one. The
    /// change goes through the extension's ordinary update (welcome mails with the old
    /// PIN are withdrawn and re-queued), clears the forced change and the counted
    /// failures, is audit-logged and mailed to the owner (without the PIN).
    pub async fn change_pin(&self, mailbox: &str, new: &Secret, actor: &str) -> Result<PinChange> {
        let row = self.mailbox_row(mailbox).await?;
        if let Err(e) = fields::parse_pin(new.expose()) {
            return Ok(PinChange::Refused { reason: e.reason });
        }
        if let Some(why) = pin_weakness(new.expose(), &row.number) {
            return Ok(PinChange::Refused {
                reason: why.to_owned(),
            });
        }
        self.update_extension(
            &row.number,
            ExtensionChange {
                pin: Some(new.expose().to_owned()),
                ..Default::default()
            },
        )
        .await?;
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let mut b = q::get_box(&mut tx, &row.number)
            .await?
            .unwrap_or_else(|| BoxRow {
                number: row.number.clone(),
                ..Default::default()
            });
        b.must_change_pin = false;
        b.failures = 0;
        b.failure_window_start = 0;
        b.updated_at = now;
        q::save_box(&mut tx, &b).await?;
        self.log_in(
            &mut tx,
            now,
            LogEntry {
                actor,
                action: "voicemail.pin_changed",
                subject: &format!("ext:{}", row.number),
                detail: "",
            },
        )
        .await?;
        self.mail_owner(
            &mut tx,
            &row,
            format!("Your voicemail PIN (extension {}) was changed", row.number),
            format!(
                "The PIN of the voicemail box of extension {} was changed by {actor}.\n\
                 If you did not do this, tell your administrator at once.\n",
                row.number
            ),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(PinChange::Changed)
    }

    /// Ends a box's lock and clears its counted failures (an administrator, after
    /// Re-Generate gave the box a new PIN); audit-logged.
    pub async fn unlock_box(&self, mailbox: &str, actor: &str) -> Result<()> {
        let row = self.mailbox_row(mailbox).await?;
        let now = self.now();
        let mut tx = self.store.begin().await?;
        if let Some(mut b) = q::get_box(&mut tx, &row.number).await? {
            b.failures = 0;
            b.failure_window_start = 0;
            b.locked_until = 0;
            b.updated_at = now;
            q::save_box(&mut tx, &b).await?;
        }
        self.log_in(
            &mut tx,
            now,
            LogEntry {
                actor,
                action: "voicemail.unlocked",
                subject: &format!("ext:{}", row.number),
                detail: "",
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One box as an administrator sees it.
    pub async fn voicemail_box(&self, mailbox: &str) -> Result<BoxView> {
        let row = self.mailbox_row(mailbox).await?;
        let mut conn = self.store.conn().await?;
        let b = q::get_box(&mut conn, &row.number).await?;
        let messages = q::messages_of(&mut conn, &row.number).await?;
        let totals = store::voicemail::BoxTotals {
            number: row.number.clone(),
            new: messages.iter().filter(|m| m.folder == "new").count() as i64,
            saved: messages.iter().filter(|m| m.folder == "saved").count() as i64,
            total_ms: messages.iter().map(|m| m.duration_ms).sum(),
            latest: messages.iter().map(|m| m.received_at).max().unwrap_or(0),
        };
        Ok(self.box_view(&row, b.as_ref(), Some(&totals)))
    }

    /// Every extension's box, in number order.
    pub async fn voicemail_boxes(&self) -> Result<Vec<BoxView>> {
        let mut conn = self.store.conn().await?;
        let rows = store::account::list_extensions(&mut conn).await?;
        let boxes: std::collections::HashMap<String, BoxRow> = q::list_boxes(&mut conn)
            .await?
            .into_iter()
            .map(|b| (b.number.clone(), b))
            .collect();
        let totals: std::collections::HashMap<String, store::voicemail::BoxTotals> =
            q::totals(&mut conn)
                .await?
                .into_iter()
                .map(|t| (t.number.clone(), t))
                .collect();
        Ok(rows
            .iter()
            .map(|r| self.box_view(r, boxes.get(&r.number), totals.get(&r.number)))
            .collect())
    }

    fn box_view(
        &self,
        row: &ExtensionRow,
        b: Option<&BoxRow>,
        t: Option<&store::voicemail::BoxTotals>,
    ) -> BoxView {
        let now = self.now();
        let u = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        BoxView {
            number: row.number.clone(),
            name: row.name.clone(),
            new: t.map_or(0, |t| u(t.new)),
            saved: t.map_or(0, |t| u(t.saved)),
            total_ms: t.map_or(0, |t| t.total_ms),
            latest: t.map(|t| t.latest).filter(|&l| l > 0),
            locked_until: b.map(|b| b.locked_until).filter(|&l| l > now),
            failures: b.map_or(0, |b| u(b.failures)),
            must_change_pin: b.is_some_and(|b| b.must_change_pin),
            has_greeting: b.is_some_and(|b| b.greeting.is_some()),
            voicemail_after_secs: row.voicemail_after_secs,
            mails_messages: row.voicemail_mail && row.email.is_some(),
        }
    }

    /// Removes a box's files (its extension was removed; the rows went with it).
    pub(crate) fn remove_box_files(&self, number: &str) {
        let dir = self.data.voicemail_dir().join(number);
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %dir.display(), error = %e, "cannot remove a voicemail box's files");
        }
    }

    /// Whether a voicemail mail's recording was deleted before the mail went out (it is
    /// then withdrawn: the owner deleted the message, or an administrator did).
    pub(crate) fn attachment_gone(&self, row: &store::outbox::OutboxRow) -> bool {
        if !row.number.starts_with("vm:") {
            return false;
        }
        match self.open_mail(row) {
            Ok(MailMessage {
                attachment: Some(a),
                ..
            }) => !self.stored_file(&a.path).is_some_and(|p| p.is_file()),
            _ => false,
        }
    }

    /// A voicemail mail's attachment, read when the mail is sent; None when the message
    /// is gone (deleted since), so the mail is withdrawn.
    pub(crate) fn attachment_bytes(&self, a: &MailAttachment) -> Result<Option<Vec<u8>>> {
        self.read_stored(&a.path, MAX_MESSAGE_BYTES, "message")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_are_kept_as_bounded_printable_text() {
        assert_eq!(
            clean_caller("\"Bob\" <sip:1002@pbx>"),
            "\"Bob\" <sip:1002@pbx>"
        );
        assert_eq!(clean_caller("a\r\nb\u{1b}[31m"), "ab[31m");
        assert_eq!(clean_caller("  \t"), "unknown");
        assert_eq!(clean_caller(&"x".repeat(1000)).len(), MAX_CALLER_CHARS);
    }

    #[test]
    fn wav_headers() {
        assert!(is_wav(b"RIFF\x24\0\0\0WAVEfmt "));
        assert!(!is_wav(b"RIFF\x24\0\0\0AVI "));
        assert!(!is_wav(b"RIFF"));
    }
}
