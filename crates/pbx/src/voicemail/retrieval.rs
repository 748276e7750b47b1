//! Voicemail retrieval on the wire: a call to `*97` (the provisioning
//! `voicemail_number`) or `*98` that sipward answers itself and drives through the
//! sans-IO [`Menu`], with digits by RFC 4733 or SIP INFO, prompts as audio, messages
//! played from their WAVs, and the box changed through [`Boxes`].
//!
//! Who may log in how is decided by the endpoint before a call gets here (see
//! [`Voicemail::retrieval_entry`]): every retrieval call is digest-authenticated as an
//! extension, and only a call authenticated as the box's own account *from one of its
//! registered flows* logs in without a PIN. A refused login waits [`REFUSAL_DELAY`]
//! from the moment the entry ended before its prompt, whatever the reason (wrong PIN,
//! locked box, no such box), and counts one failure of the caller's source in the
//! guard when [`Login::counts_against_source`] says so.
//!
//! Like the rest of the voicemail this places no call and sends no request: it plays
//! and records on the call's own RTP socket (`voicemail/call.rs`); answering, the BYE,
//! the REFER to the configured operator and the NOTIFYs are the parent module's, which
//! starts this menu and is told how it ended ([`Left`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use media::activity::SilenceDetector;
use media::jitter::{JitterBuffer, Playout};
use policy::Secret;
use policy::fields::ExtensionNumber;
use policy::voicemail::menu::{Action, DIGIT_TIMEOUT, Menu, Operator, Prompt};
use policy::voicemail::{Credential, Login, MessageView, PinChange};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

use super::call::{BoxFuture, FRAME, Heard, Session, Signal, tone};
use crate::metrics::Metrics;
use crate::signalling::Signalling;

/// How long after the end of an entry a refused login's prompt starts: the same for a
/// wrong PIN, a locked box and a number that is no box, so the answer's timing tells
/// nothing. Longer than a login takes (a database round trip).
pub const REFUSAL_DELAY: Duration = Duration::from_millis(1500);
/// The longest greeting recorded from the menu.
pub const MAX_GREETING: Duration = Duration::from_secs(60);
/// The longest retrieval call; the menu's own idle rules end most calls long before.
pub const MAX_RETRIEVAL: Duration = Duration::from_secs(30 * 60);
/// Silence between two prompts.
const GAP: usize = 1600;

/// The store side of retrieval. The server implements it with `accounts`' voicemail
/// (`login`, `messages`, `open_message`, `delete_message`, `save_message`,
/// `change_pin`, `set_greeting`); `source` is the caller's address, for the audit log
/// and the security events. A failure of the store answers like a refusal.
pub trait Boxes: Send + Sync + std::fmt::Debug {
    fn login(&self, mailbox: &str, credential: Credential, source: IpAddr) -> BoxFuture<'_, Login>;
    fn messages(&self, mailbox: &str) -> BoxFuture<'_, Option<Vec<MessageView>>>;
    /// A message's WAV.
    fn recording(&self, mailbox: &str, id: &str) -> BoxFuture<'_, Option<Vec<u8>>>;
    fn delete(&self, mailbox: &str, id: &str, source: IpAddr) -> BoxFuture<'_, bool>;
    fn save(&self, mailbox: &str, id: &str, source: IpAddr) -> BoxFuture<'_, bool>;
    fn change_pin(&self, mailbox: &str, pin: Secret, source: IpAddr) -> BoxFuture<'_, PinChange>;
    fn set_greeting(&self, mailbox: &str, wav: Vec<u8>, source: IpAddr) -> BoxFuture<'_, bool>;
}

/// The numbers that reach the menu.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrievalNumbers {
    /// The caller's own box (`*97`, the provisioning `voicemail_number`).
    pub own_box: String,
    /// Any box, its number then its PIN (`*98`).
    pub any_box: String,
}

impl Default for RetrievalNumbers {
    fn default() -> Self {
        RetrievalNumbers {
            own_box: "*97".into(),
            any_box: "*98".into(),
        }
    }
}

/// The message-waiting light of a box whose messages the menu changed (a delete or a
/// save): the voicemail's NOTIFYs, which this file does not send itself.
pub(super) trait Indicator: Send + Sync {
    fn box_changed<'a>(&'a self, mailbox: &'a str) -> BoxFuture<'a, ()>;
}

/// What switches retrieval on.
#[derive(Clone, Debug)]
pub struct Retrieval {
    pub boxes: Arc<dyn Boxes>,
    pub numbers: RetrievalNumbers,
    /// Where a refused PIN is counted against its source.
    pub guard: Arc<crate::guard::Guard>,
}

/// The menu's prompts, decoded once (see `prompts/README.md`).
#[derive(Debug, Default)]
pub(super) struct Prompts {
    clips: Vec<Vec<i16>>,
}

/// The shipped prompt files, in the order of [`Clip`].
const FILES: [&[u8]; 37] = [
    include_bytes!("../../prompts/menu/enter_mailbox.wav"),
    include_bytes!("../../prompts/menu/enter_pin.wav"),
    include_bytes!("../../prompts/menu/login_incorrect.wav"),
    include_bytes!("../../prompts/menu/you_have.wav"),
    include_bytes!("../../prompts/menu/new_and.wav"),
    include_bytes!("../../prompts/menu/saved_messages.wav"),
    include_bytes!("../../prompts/menu/main_menu.wav"),
    include_bytes!("../../prompts/menu/operator.wav"),
    include_bytes!("../../prompts/menu/message.wav"),
    include_bytes!("../../prompts/menu/message_menu.wav"),
    include_bytes!("../../prompts/menu/no_messages.wav"),
    include_bytes!("../../prompts/menu/no_more.wav"),
    include_bytes!("../../prompts/menu/first_message.wav"),
    include_bytes!("../../prompts/menu/deleted.wav"),
    include_bytes!("../../prompts/menu/saved.wav"),
    include_bytes!("../../prompts/menu/record_greeting.wav"),
    include_bytes!("../../prompts/menu/greeting_review.wav"),
    include_bytes!("../../prompts/menu/greeting_saved.wav"),
    include_bytes!("../../prompts/menu/pin_must_change.wav"),
    include_bytes!("../../prompts/menu/enter_new_pin.wav"),
    include_bytes!("../../prompts/menu/repeat_new_pin.wav"),
    include_bytes!("../../prompts/menu/pins_differ.wav"),
    include_bytes!("../../prompts/menu/pin_refused.wav"),
    include_bytes!("../../prompts/menu/pin_changed.wav"),
    include_bytes!("../../prompts/menu/invalid.wav"),
    include_bytes!("../../prompts/menu/transferring.wav"),
    include_bytes!("../../prompts/menu/goodbye.wav"),
    include_bytes!("../../prompts/menu/digit_0.wav"),
    include_bytes!("../../prompts/menu/digit_1.wav"),
    include_bytes!("../../prompts/menu/digit_2.wav"),
    include_bytes!("../../prompts/menu/digit_3.wav"),
    include_bytes!("../../prompts/menu/digit_4.wav"),
    include_bytes!("../../prompts/menu/digit_5.wav"),
    include_bytes!("../../prompts/menu/digit_6.wav"),
    include_bytes!("../../prompts/menu/digit_7.wav"),
    include_bytes!("../../prompts/menu/digit_8.wav"),
    include_bytes!("../../prompts/menu/digit_9.wav"),
];

/// A prompt file, indexing [`FILES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clip {
    EnterMailbox,
    EnterPin,
    LoginIncorrect,
    YouHave,
    NewAnd,
    SavedMessages,
    MainMenu,
    Operator,
    Message,
    MessageMenu,
    NoMessages,
    NoMore,
    FirstMessage,
    Deleted,
    Saved,
    RecordGreeting,
    GreetingReview,
    GreetingSaved,
    PinMustChange,
    EnterNewPin,
    RepeatNewPin,
    PinsDiffer,
    PinRefused,
    PinChanged,
    Invalid,
    Transferring,
    Goodbye,
    /// `Digit0` + n is the digit n.
    Digit0,
}

impl Prompts {
    pub(super) fn load() -> Self {
        Prompts {
            clips: FILES
                .iter()
                .map(|f| media::wav::decode(f, 8000 * 20).unwrap_or_default())
                .collect(),
        }
    }

    fn clip(&self, c: Clip) -> &[i16] {
        self.clips.get(c as usize).map_or(&[], Vec::as_slice)
    }

    fn digit(&self, d: u32) -> &[i16] {
        self.clips
            .get(Clip::Digit0 as usize + (d % 10) as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// A number read digit by digit.
    fn number(&self, n: u32, out: &mut Vec<i16>) {
        for d in n.to_string().chars().filter_map(|c| c.to_digit(10)) {
            out.extend_from_slice(self.digit(d));
        }
    }

    /// The audio of a fixed prompt (every one but [`Prompt::Message`]).
    fn say(&self, p: &Prompt, out: &mut Vec<i16>) {
        let clips: &[Clip] = match p {
            Prompt::EnterMailbox => &[Clip::EnterMailbox],
            Prompt::EnterPin => &[Clip::EnterPin],
            Prompt::LoginIncorrect => &[Clip::LoginIncorrect],
            Prompt::MessageCount { new, saved } => {
                out.extend_from_slice(self.clip(Clip::YouHave));
                self.number(*new, out);
                out.extend_from_slice(self.clip(Clip::NewAnd));
                self.number(*saved, out);
                &[Clip::SavedMessages]
            }
            Prompt::MainMenu { operator: false } => &[Clip::MainMenu],
            Prompt::MainMenu { operator: true } => &[Clip::MainMenu, Clip::Operator],
            // The time of day is not read out: "message N".
            Prompt::MessageHeader { index, .. } => {
                out.extend_from_slice(self.clip(Clip::Message));
                self.number(*index, out);
                &[]
            }
            Prompt::Message { .. } => &[],
            Prompt::MessageMenu => &[Clip::MessageMenu],
            Prompt::NoMessages => &[Clip::NoMessages],
            Prompt::NoMoreMessages => &[Clip::NoMore],
            Prompt::FirstMessage => &[Clip::FirstMessage],
            Prompt::MessageDeleted => &[Clip::Deleted],
            Prompt::MessageSaved => &[Clip::Saved],
            Prompt::RecordGreetingAfterTone => &[Clip::RecordGreeting],
            Prompt::GreetingReview => &[Clip::GreetingReview],
            Prompt::GreetingSaved => &[Clip::GreetingSaved],
            Prompt::PinMustChange => &[Clip::PinMustChange],
            Prompt::EnterNewPin => &[Clip::EnterNewPin],
            Prompt::RepeatNewPin => &[Clip::RepeatNewPin],
            Prompt::PinsDiffer => &[Clip::PinsDiffer],
            Prompt::PinRefused => &[Clip::PinRefused],
            Prompt::PinChanged => &[Clip::PinChanged],
            Prompt::InvalidChoice => &[Clip::Invalid],
            Prompt::TransferringToOperator => &[Clip::Transferring],
            Prompt::Goodbye => &[Clip::Goodbye],
        };
        for c in clips {
            out.extend_from_slice(self.clip(*c));
        }
    }
}

/// How a retrieval call ended (for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Left {
    /// The caller hung up.
    HungUp,
    /// The menu said goodbye.
    Goodbye,
    /// The caller chose the configured operator: the call side refers the caller there.
    Operator(Operator),
    NoMedia,
    TooLong,
}

/// What a menu call is driven with besides its RTP session and the menu.
pub(super) struct MenuCall<'a> {
    pub(super) prompts: &'a Prompts,
    pub(super) indicator: &'a dyn Indicator,
    pub(super) retrieval: &'a Retrieval,
    /// The caller's address (the audit log, the guard's count of refused PINs).
    pub(super) source: IpAddr,
    /// Silence this long ends a greeting's recording.
    pub(super) silence: Duration,
}

/// What the menu's call side knows besides the menu.
struct Driver<'a> {
    sig: Arc<Signalling>,
    prompts: &'a Prompts,
    indicator: &'a dyn Indicator,
    boxes: Arc<dyn Boxes>,
    guard: Arc<crate::guard::Guard>,
    source: IpAddr,
    /// The box the menu works on (from its last login or listing).
    mailbox: Option<ExtensionNumber>,
    /// The last login was the authenticated owner's (its refusal counts nowhere).
    owner_login: bool,
    /// When the event that led to the actions being carried out arrived.
    event_at: TokioInstant,
    /// The last greeting recorded, until saved or dropped.
    greeting: Option<Vec<i16>>,
    /// The operator the caller chose, once the menu said so.
    operator: Option<Operator>,
}

/// What the call plays now.
#[derive(Default)]
struct Player {
    audio: Vec<i16>,
    at: usize,
    /// A recording starts when this audio (the tone) has played.
    then_record: bool,
}

impl Player {
    fn playing(&self) -> bool {
        self.at < self.audio.len()
    }
}

impl Driver<'_> {
    /// Carries out `actions` in order; the menu's answers to the store's results are
    /// carried out too. Returns false when the call is to end.
    async fn carry_out(
        &mut self,
        menu: &mut Menu,
        actions: Vec<Action>,
        player: &mut Player,
    ) -> bool {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Play(prompts) => self.play(&prompts, player).await,
                Action::Login {
                    mailbox,
                    credential,
                } => {
                    self.owner_login = matches!(credential, Credential::AuthenticatedOwner);
                    let login = self
                        .boxes
                        .login(mailbox.as_str(), credential, self.source)
                        .await;
                    self.mailbox = Some(mailbox);
                    queue.extend(menu.login_result(login));
                }
                Action::ListMessages { mailbox } => {
                    let list = self
                        .boxes
                        .messages(mailbox.as_str())
                        .await
                        .unwrap_or_default();
                    self.mailbox = Some(mailbox);
                    queue.extend(menu.messages(list));
                }
                Action::Record(_) => {
                    *player = Player {
                        audio: tone(),
                        at: 0,
                        then_record: true,
                    };
                }
                Action::SaveGreeting { mailbox } => {
                    if let Some(samples) = self.greeting.take() {
                        let wav = media::wav::encode(&samples);
                        if !self
                            .boxes
                            .set_greeting(mailbox.as_str(), wav, self.source)
                            .await
                        {
                            tracing::warn!(mailbox = %mailbox, "cannot keep a recorded greeting");
                        }
                    }
                }
                Action::DiscardRecording => self.greeting = None,
                Action::ChangePin { mailbox, pin } => {
                    let r = self
                        .boxes
                        .change_pin(mailbox.as_str(), pin, self.source)
                        .await;
                    queue.extend(menu.pin_change_result(r));
                }
                Action::Delete { mailbox, id } => {
                    if self.boxes.delete(mailbox.as_str(), &id, self.source).await {
                        self.light(&mailbox).await;
                    }
                }
                Action::Save { mailbox, id } => {
                    if self.boxes.save(mailbox.as_str(), &id, self.source).await {
                        self.light(&mailbox).await;
                    }
                }
                // The menu offers `0` only with a configured operator; the call side
                // refers the caller there once the prompt has played (the voicemail
                // itself places no call).
                Action::TransferToOperator(op) => self.operator = Some(op),
                Action::Hangup => return false,
            }
        }
        true
    }

    /// The message-waiting light follows the box after a delete or a save.
    async fn light(&self, mailbox: &ExtensionNumber) {
        self.indicator.box_changed(mailbox.as_str()).await;
    }

    /// Replaces what plays with `prompts`. A refusal's prompt starts only
    /// [`REFUSAL_DELAY`] after the entry ended, and counts against the source.
    async fn play(&mut self, prompts: &[Prompt], player: &mut Player) {
        if prompts.first() == Some(&Prompt::LoginIncorrect) {
            Metrics::inc(&self.sig.metrics.voicemail_logins_refused);
            // Every refusal of a PIN, the box wrong, locked or unknown (the menu refuses
            // a non-number without a login): `counts_against_source`. A retrieval call
            // is always an extension's own authenticated call, never a trunk's.
            let pin = Credential::Pin(Secret::new(String::new()));
            if !self.owner_login && Login::Refused.counts_against_source(&pin) {
                self.guard
                    .voicemail_pin_failure(self.source, self.sig.clock.now());
            }
            tokio::time::sleep_until(self.event_at + REFUSAL_DELAY).await;
        }
        self.owner_login = false;
        let prompts_audio = self.prompts;
        let mut audio = Vec::new();
        for p in prompts {
            if let Prompt::MessageCount { new, saved } = p {
                // What the caller hears after a login, for the log (never the PIN).
                tracing::info!(mailbox = ?self.mailbox.as_ref().map(ExtensionNumber::as_str), new, saved, "voicemail login: message count played");
            }
            if let Prompt::Message { id } = p {
                let wav = match &self.mailbox {
                    Some(m) => self.boxes.recording(m.as_str(), id).await,
                    None => None,
                };
                if let Some(samples) = wav.and_then(|w| media::wav::decode(&w, 8000 * 600).ok()) {
                    audio.extend(samples);
                }
            } else {
                prompts_audio.say(p, &mut audio);
            }
            audio.extend(std::iter::repeat_n(0, GAP));
        }
        *player = Player {
            audio,
            at: 0,
            then_record: false,
        };
    }
}

impl Session {
    /// Drives `menu` until the caller hangs up, the menu ends the call, or the caller
    /// chose the operator and heard that it is being transferred.
    pub(super) async fn retrieve(
        mut self,
        call: MenuCall<'_>,
        mut menu: Menu,
        mut signals: mpsc::Receiver<Signal>,
    ) -> Left {
        let silence_limit = call.silence;
        let mut driver = Driver {
            sig: self.sig.clone(),
            prompts: call.prompts,
            indicator: call.indicator,
            boxes: call.retrieval.boxes.clone(),
            guard: call.retrieval.guard.clone(),
            source: call.source,
            mailbox: None,
            owner_login: false,
            event_at: TokioInstant::now(),
            greeting: None,
            operator: None,
        };
        let mut player = Player::default();
        let mut recording: Option<(Vec<i16>, SilenceDetector)> = None;
        let max_greeting = MAX_GREETING.as_millis() as usize * 8;
        let mut jitter: JitterBuffer<Vec<u8>> = JitterBuffer::new(3, 64);
        let mut idle_since = TokioInstant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 1500];
        let metrics = self.sig.metrics.clone();
        let first = menu.start();
        if !driver.carry_out(&mut menu, first, &mut player).await {
            self.close().await;
            return Left::Goodbye;
        }
        // The digits of one event: the menu's answers, or the end of a recording.
        let left = loop {
            let mut digits: Vec<char> = Vec::new();
            tokio::select! {
                _ = tick.tick() => {
                    if player.playing() {
                        let end = (player.at + FRAME).min(player.audio.len());
                        let frame = player.audio[player.at..end].to_vec();
                        self.send_frame(&frame, player.at == 0).await;
                        player.at = end;
                        if !player.playing() {
                            idle_since = TokioInstant::now();
                            if let Some(op) = driver.operator.take() {
                                // "Transferring you to the operator" has played.
                                break Left::Operator(op);
                            }
                            if std::mem::take(&mut player.then_record) {
                                recording = Some((
                                    Vec::new(),
                                    SilenceDetector::new(300, silence_limit),
                                ));
                                while jitter.pop().is_some() {}
                            } else {
                                driver.event_at = TokioInstant::now();
                                let next = menu.prompt_done();
                                if !driver.carry_out(&mut menu, next, &mut player).await {
                                    break Left::Goodbye;
                                }
                            }
                        }
                    }
                    let mut ended = false;
                    if let Some((samples, silence)) = recording.as_mut() {
                        while let Some(p) = jitter.pop() {
                            if let Playout::Packet(bytes) = p {
                                let before = samples.len();
                                self.law.decode_into(&bytes, samples);
                                samples.truncate(max_greeting);
                                silence.feed(&samples[before..]);
                            }
                        }
                        ended = samples.len() >= max_greeting
                            || silence.silent_for() >= silence_limit;
                    } else {
                        while jitter.pop().is_some() {}
                    }
                    if ended {
                        driver.greeting = recording.take().map(|(s, _)| s);
                        driver.event_at = TokioInstant::now();
                        let next = menu.recording_done();
                        if !driver.carry_out(&mut menu, next, &mut player).await {
                            break Left::Goodbye;
                        }
                    }
                    if !player.playing()
                        && recording.is_none()
                        && idle_since.elapsed() >= DIGIT_TIMEOUT
                    {
                        idle_since = TokioInstant::now();
                        driver.event_at = idle_since;
                        let next = menu.timeout();
                        if !driver.carry_out(&mut menu, next, &mut player).await {
                            break Left::Goodbye;
                        }
                    }
                    if self.media_expired() {
                        break Left::NoMedia;
                    }
                    if self.elapsed() >= MAX_RETRIEVAL {
                        break Left::TooLong;
                    }
                }
                r = self.rtp.recv_from(&mut buf) => {
                    match self.hear_rtp(r, &buf).await {
                        Heard::Audio { sequence, payload } => {
                            if recording.is_some() {
                                let _ = jitter.push(sequence, payload.to_vec());
                            }
                        }
                        Heard::Digits(mut got) => digits.append(&mut got),
                        Heard::Nothing => {}
                    }
                }
                r = self.rtcp.recv_from(&mut rtcp_buf) => self.hear_rtcp(r, &rtcp_buf),
                s = signals.recv() => match s {
                    Some(Signal::HungUp) | None => break Left::HungUp,
                    Some(Signal::Digit(d)) => digits.push(d),
                },
            }
            let mut go_on = true;
            for d in digits {
                Metrics::inc(&metrics.voicemail_digits);
                idle_since = TokioInstant::now();
                driver.event_at = idle_since;
                if let Some((samples, _)) = recording.as_ref().filter(|_| d == '#') {
                    driver.greeting = Some(samples.clone());
                    recording = None;
                    let next = menu.recording_done();
                    go_on = driver.carry_out(&mut menu, next, &mut player).await;
                } else if recording.is_none() && !player.then_record {
                    let next = menu.digit(d);
                    go_on = driver.carry_out(&mut menu, next, &mut player).await;
                }
                if !go_on {
                    break;
                }
            }
            if !go_on {
                break Left::Goodbye;
            }
        };
        self.close().await;
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prompt_is_shipped_and_speaks() {
        let p = Prompts::load();
        assert_eq!(p.clips.len(), FILES.len());
        for (i, c) in p.clips.iter().enumerate() {
            assert!(c.len() > 800, "prompt {i} is over 0.1 s");
            assert!(
                c.iter().any(|v| v.unsigned_abs() > 2000),
                "prompt {i} is not silence"
            );
        }
        assert_eq!(Clip::Digit0 as usize + 10, FILES.len());
    }

    #[test]
    fn a_count_is_read_digit_by_digit() {
        let p = Prompts::load();
        let mut out = Vec::new();
        p.say(&Prompt::MessageCount { new: 12, saved: 0 }, &mut out);
        let expected = p.clip(Clip::YouHave).len()
            + p.digit(1).len()
            + p.digit(2).len()
            + p.clip(Clip::NewAnd).len()
            + p.digit(0).len()
            + p.clip(Clip::SavedMessages).len();
        assert_eq!(out.len(), expected);
    }
}
