//! The voicemail menu as a sans-IO state machine: fed the caller's DTMF digits and what
//! the call side reports (prompts played, recordings done, login and PIN-change results,
//! timeouts), it answers with [`Action`]s for the call side to carry out. It does no IO,
//! reads no clock and holds no secret longer than one action.
//!
//! **No way out.** No [`Action`] dials: none carries a number typed by a caller, and
//! the only one that leaves the box, [`Action::TransferToOperator`], carries an
//! [`Operator`], which only the administrator's configuration makes
//! ([`Operator::configured`]): an internal extension, fixed when the menu is built. With
//! no operator configured, `0` is an invalid choice like any other.
//!
//! How the call side drives it:
//! - [`Menu::start`] once, then one method per event; each returns the actions to carry
//!   out in order. After [`Action::Hangup`] the menu answers nothing more.
//! - [`Action::Play`] replaces whatever is playing (digits barge in: a digit typed
//!   during a prompt is handled at once). When the prompts have finished, call
//!   [`Menu::prompt_done`].
//! - Call [`Menu::timeout`] after [`DIGIT_TIMEOUT`] without a digit while nothing
//!   plays. Entering a PIN or a number, a timeout ends the entry like `#`; at a menu it
//!   repeats the menu, and the third timeout in a row says goodbye.
//! - [`Action::Login`]: call `Registry::login` and report with [`Menu::login_result`].
//!   Each `Refused` for a PIN also counts one failure of the caller's source in the
//!   guard. The refusal delay belongs to [`Prompt::LoginIncorrect`]: wait it before
//!   playing that prompt, every time, so a wrong PIN, a locked box, an unknown box and
//!   an entry that is no box number at all (which the menu refuses without a login)
//!   take the same time.
//! - [`Action::ListMessages`]: report the box's messages with [`Menu::messages`].
//! - [`Action::Record`]: record after a tone until `#`, silence or the maximum length,
//!   then [`Menu::recording_done`]. [`Action::SaveGreeting`] / [`Action::DiscardRecording`]
//!   say what becomes of it.
//! - [`Action::ChangePin`]: call `Registry::change_pin`, report with
//!   [`Menu::pin_change_result`].
//! - [`Action::Delete`], [`Action::Save`]: carry them out; the menu has already moved on.
//!
//! Keys (the familiar layout of Asterisk's `VoiceMailMain`, without its dial-out and
//! callback keys): main menu `1` listen, `5` record the greeting, `8` change the PIN,
//! `0` operator (only when configured), `*` repeat, `#` goodbye. While a message plays:
//! `4` previous, `5` repeat, `6` next, `7` delete, `9` save, `*` back to the main menu,
//! `#` goodbye.

use std::time::Duration;

use crate::Secret;
use crate::fields::ExtensionNumber;

use super::{Credential, Login, MessageView, PinChange};

/// How long the call side waits for a digit before [`Menu::timeout`].
pub const DIGIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Wrong logins one call may make before the menu hangs up (the box's own count goes on
/// across calls; this only ends one call sooner).
pub const LOGIN_TRIES_PER_CALL: u32 = 3;
/// Invalid choices or timeouts in a row before the menu says goodbye.
pub const MAX_IDLE: u32 = 3;
/// Digits a PIN entry takes at most (a PIN is 1 to 12 digits); more make it wrong.
pub const MAX_PIN_DIGITS: usize = 12;
/// Digits a mailbox number takes at most.
pub const MAX_MAILBOX_DIGITS: usize = crate::fields::MAX_NUMBER_DIGITS;

/// The one extension `0` reaches, as the administrator configured it (`[voicemail]
/// operator`). Not constructible from anything a caller types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator(ExtensionNumber);

impl Operator {
    /// The operator from the configuration: an internal extension number, validated by
    /// whoever loads the configuration (it must be an extension of this system).
    pub fn configured(extension: ExtensionNumber) -> Self {
        Self(extension)
    }

    pub fn extension(&self) -> &ExtensionNumber {
        &self.0
    }
}

/// What the menu is built with.
#[derive(Clone, Debug, Default)]
pub struct MenuConfig {
    /// Where `0` transfers to; None: `0` is invalid.
    pub operator: Option<Operator>,
}

/// How the call reached the menu.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `*97` from a phone: the box is the caller's own account's. With
    /// `authenticated_owner` (the INVITE was digest-authenticated as this account on one
    /// of its registered flows) no PIN is asked; otherwise the PIN is.
    OwnBox {
        mailbox: ExtensionNumber,
        authenticated_owner: bool,
    },
    /// `*98`: the caller types the mailbox number, then its PIN.
    AnyBox,
}

/// What a recording is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recording {
    Greeting,
}

/// Something the call side plays. A closed set of fixed prompts plus numbers read
/// out: nothing here is free text from a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    EnterMailbox,
    EnterPin,
    /// The same for a wrong PIN, a locked box and an unknown box.
    LoginIncorrect,
    /// "You have N new and M saved messages."
    MessageCount {
        new: u32,
        saved: u32,
    },
    /// The main menu's choices; `operator` says whether `0` is offered.
    MainMenu {
        operator: bool,
    },
    /// "Message N, received at T": `received_at` in Unix seconds.
    MessageHeader {
        index: u32,
        received_at: i64,
    },
    /// The recording of this message.
    Message {
        id: String,
    },
    /// The choices after a message.
    MessageMenu,
    NoMessages,
    NoMoreMessages,
    FirstMessage,
    MessageDeleted,
    MessageSaved,
    RecordGreetingAfterTone,
    /// "Press 1 to keep it, 2 to record again, * to cancel."
    GreetingReview,
    GreetingSaved,
    /// "Your PIN is easy to guess and must be changed now."
    PinMustChange,
    EnterNewPin,
    RepeatNewPin,
    PinsDiffer,
    /// The new PIN was refused (too weak or malformed).
    PinRefused,
    PinChanged,
    InvalidChoice,
    TransferringToOperator,
    Goodbye,
}

/// What the call side must do. None of these places a call but
/// `TransferToOperator`, whose target only the configuration can make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Play these prompts in order, replacing whatever plays.
    Play(Vec<Prompt>),
    /// Check a login (`Registry::login`), then [`Menu::login_result`].
    Login {
        mailbox: ExtensionNumber,
        credential: Credential,
    },
    /// Read the box's messages (`Registry::messages`), then [`Menu::messages`].
    ListMessages { mailbox: ExtensionNumber },
    /// Record after a tone, then [`Menu::recording_done`].
    Record(Recording),
    /// Keep the last recording as the box's greeting (`Registry::set_greeting`).
    SaveGreeting { mailbox: ExtensionNumber },
    /// Drop the last recording.
    DiscardRecording,
    /// Set this PIN (`Registry::change_pin`), then [`Menu::pin_change_result`].
    ChangePin {
        mailbox: ExtensionNumber,
        pin: Secret,
    },
    /// Delete this message (`Registry::delete_message`).
    Delete {
        mailbox: ExtensionNumber,
        id: String,
    },
    /// File this message as saved (`Registry::save_message`).
    Save {
        mailbox: ExtensionNumber,
        id: String,
    },
    /// Transfer the call to the configured operator extension.
    TransferToOperator(Operator),
    /// End the call.
    Hangup,
}

// `Credential` holds a `Secret`, whose equality is constant-time; tests compare actions.
impl PartialEq for Credential {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Credential::Pin(a), Credential::Pin(b)) => a == b,
            (Credential::AuthenticatedOwner, Credential::AuthenticatedOwner) => true,
            _ => false,
        }
    }
}
impl Eq for Credential {}

/// Where the menu is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Collecting the mailbox number (`*98`).
    Mailbox,
    /// Collecting the PIN.
    Pin,
    /// Waiting for the login's answer.
    CheckingLogin,
    /// Waiting for the message list.
    Loading,
    /// The main menu.
    Main,
    /// Playing or after message `cursor`.
    Listening,
    /// Told to play the record prompt; recording starts when it is done.
    GreetingPrompt,
    Recording,
    GreetingReview,
    /// Collecting a new PIN; `forced` until a weak PIN is replaced.
    NewPin,
    RepeatPin,
    CheckingPin,
    /// Playing a prompt that ends the call.
    Leaving,
    /// Transferred or hung up: nothing more.
    Done,
}

/// The menu of one call.
#[derive(Debug)]
pub struct Menu {
    config: MenuConfig,
    entry: Entry,
    state: State,
    mailbox: Option<ExtensionNumber>,
    /// Digits typed so far in an entry (mailbox, PIN, new PIN).
    digits: String,
    /// The first entry of a new PIN while it is repeated.
    first_pin: Option<Secret>,
    /// A weak PIN must be replaced before anything else.
    forced_change: bool,
    wrong_logins: u32,
    idle: u32,
    messages: Vec<MessageView>,
    cursor: usize,
    /// The box's counts as the caller changes them.
    new_count: u32,
    saved_count: u32,
}

impl Menu {
    pub fn new(config: MenuConfig, entry: Entry) -> Self {
        Self {
            config,
            entry,
            state: State::Done,
            mailbox: None,
            digits: String::new(),
            first_pin: None,
            forced_change: false,
            wrong_logins: 0,
            idle: 0,
            messages: Vec::new(),
            cursor: 0,
            new_count: 0,
            saved_count: 0,
        }
    }

    /// The first actions of the call.
    pub fn start(&mut self) -> Vec<Action> {
        match self.entry.clone() {
            Entry::AnyBox => {
                self.state = State::Mailbox;
                vec![Action::Play(vec![Prompt::EnterMailbox])]
            }
            Entry::OwnBox {
                mailbox,
                authenticated_owner: true,
            } => {
                self.mailbox = Some(mailbox.clone());
                self.state = State::CheckingLogin;
                vec![Action::Login {
                    mailbox,
                    credential: Credential::AuthenticatedOwner,
                }]
            }
            Entry::OwnBox {
                mailbox,
                authenticated_owner: false,
            } => {
                self.mailbox = Some(mailbox);
                self.state = State::Pin;
                vec![Action::Play(vec![Prompt::EnterPin])]
            }
        }
    }

    /// Whether the call is over for the menu (hung up or transferred).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// A DTMF digit: `0`-`9`, `*`, `#` (`A`-`D` and anything else are ignored).
    pub fn digit(&mut self, d: char) -> Vec<Action> {
        if !matches!(d, '0'..='9' | '*' | '#') {
            return Vec::new();
        }
        match self.state {
            State::Mailbox => self.entry_digit(d, MAX_MAILBOX_DIGITS, Self::mailbox_entered),
            State::Pin => self.entry_digit(d, MAX_PIN_DIGITS, Self::pin_entered),
            State::NewPin => self.entry_digit(d, MAX_PIN_DIGITS, Self::new_pin_entered),
            State::RepeatPin => self.entry_digit(d, MAX_PIN_DIGITS, Self::repeat_pin_entered),
            State::Main => self.main_choice(d),
            State::Listening => self.message_choice(d),
            State::GreetingReview => self.review_choice(d),
            // Recording ends on `#` at the call side; digits while waiting are dropped.
            State::CheckingLogin
            | State::Loading
            | State::GreetingPrompt
            | State::Recording
            | State::CheckingPin
            | State::Leaving
            | State::Done => Vec::new(),
        }
    }

    /// No digit within [`DIGIT_TIMEOUT`] while nothing played.
    pub fn timeout(&mut self) -> Vec<Action> {
        match self.state {
            State::Mailbox => self.mailbox_entered(),
            State::Pin => self.pin_entered(),
            State::NewPin => self.new_pin_entered(),
            State::RepeatPin => self.repeat_pin_entered(),
            State::Main | State::Listening | State::GreetingReview => {
                self.idle += 1;
                if self.idle >= MAX_IDLE {
                    return self.goodbye();
                }
                match self.state {
                    State::Main => self.main_menu(Vec::new()),
                    State::Listening => vec![Action::Play(vec![Prompt::MessageMenu])],
                    _ => vec![Action::Play(vec![Prompt::GreetingReview])],
                }
            }
            State::CheckingLogin
            | State::Loading
            | State::GreetingPrompt
            | State::Recording
            | State::CheckingPin
            | State::Leaving
            | State::Done => Vec::new(),
        }
    }

    /// The prompts of the last [`Action::Play`] finished.
    pub fn prompt_done(&mut self) -> Vec<Action> {
        match self.state {
            State::GreetingPrompt => {
                self.state = State::Recording;
                vec![Action::Record(Recording::Greeting)]
            }
            State::Leaving => {
                self.state = State::Done;
                vec![Action::Hangup]
            }
            _ => Vec::new(),
        }
    }

    /// The recording asked for ended (`#`, silence or the maximum length).
    pub fn recording_done(&mut self) -> Vec<Action> {
        if self.state != State::Recording {
            return Vec::new();
        }
        self.state = State::GreetingReview;
        self.idle = 0;
        vec![Action::Play(vec![Prompt::GreetingReview])]
    }

    /// The answer to the last [`Action::Login`].
    pub fn login_result(&mut self, login: Login) -> Vec<Action> {
        if self.state != State::CheckingLogin {
            return Vec::new();
        }
        match login {
            Login::Granted { must_change_pin } => {
                self.forced_change = must_change_pin;
                self.wrong_logins = 0;
                self.idle = 0;
                if must_change_pin {
                    self.state = State::NewPin;
                    self.digits.clear();
                    return vec![Action::Play(vec![
                        Prompt::PinMustChange,
                        Prompt::EnterNewPin,
                    ])];
                }
                self.load()
            }
            Login::Refused => {
                self.wrong_logins += 1;
                self.digits.clear();
                if self.wrong_logins >= LOGIN_TRIES_PER_CALL {
                    self.state = State::Leaving;
                    return vec![Action::Play(vec![Prompt::LoginIncorrect, Prompt::Goodbye])];
                }
                match self.entry {
                    Entry::AnyBox => {
                        // The box number is asked again: a refusal says nothing about it.
                        self.mailbox = None;
                        self.state = State::Mailbox;
                        vec![Action::Play(vec![
                            Prompt::LoginIncorrect,
                            Prompt::EnterMailbox,
                        ])]
                    }
                    Entry::OwnBox { .. } => {
                        self.state = State::Pin;
                        vec![Action::Play(vec![Prompt::LoginIncorrect, Prompt::EnterPin])]
                    }
                }
            }
        }
    }

    /// The box's messages, after [`Action::ListMessages`] (new before saved).
    pub fn messages(&mut self, messages: Vec<MessageView>) -> Vec<Action> {
        if self.state != State::Loading {
            return Vec::new();
        }
        self.new_count = count(&messages, super::Folder::New);
        self.saved_count = count(&messages, super::Folder::Saved);
        self.messages = messages;
        self.cursor = 0;
        self.main_menu(vec![Prompt::MessageCount {
            new: self.new_count,
            saved: self.saved_count,
        }])
    }

    /// The answer to the last [`Action::ChangePin`].
    pub fn pin_change_result(&mut self, result: PinChange) -> Vec<Action> {
        if self.state != State::CheckingPin {
            return Vec::new();
        }
        match result {
            PinChange::Changed => {
                self.idle = 0;
                let was_forced = std::mem::take(&mut self.forced_change);
                if was_forced {
                    let mut actions = vec![Action::Play(vec![Prompt::PinChanged])];
                    actions.extend(self.load());
                    return actions;
                }
                self.main_menu(vec![Prompt::PinChanged])
            }
            PinChange::Refused { .. } => {
                self.idle += 1;
                if self.idle >= MAX_IDLE {
                    return self.goodbye();
                }
                self.state = State::NewPin;
                self.digits.clear();
                vec![Action::Play(vec![Prompt::PinRefused, Prompt::EnterNewPin])]
            }
        }
    }

    // ---- entries ----

    /// A digit of an entry: `#` ends it, `*` starts it again, a digit adds to it (an
    /// entry longer than `max` is ended and fails its check).
    fn entry_digit(
        &mut self,
        d: char,
        max: usize,
        done: fn(&mut Self) -> Vec<Action>,
    ) -> Vec<Action> {
        match d {
            '#' => done(self),
            '*' => {
                self.digits.clear();
                Vec::new()
            }
            _ => {
                self.digits.push(d);
                if self.digits.len() > max {
                    done(self)
                } else {
                    Vec::new()
                }
            }
        }
    }

    fn mailbox_entered(&mut self) -> Vec<Action> {
        let typed = std::mem::take(&mut self.digits);
        match ExtensionNumber::parse(&typed) {
            Ok(n) => {
                self.mailbox = Some(n);
                self.state = State::Pin;
                vec![Action::Play(vec![Prompt::EnterPin])]
            }
            Err(_) if typed.is_empty() => {
                self.idle += 1;
                if self.idle >= MAX_IDLE {
                    return self.goodbye();
                }
                vec![Action::Play(vec![Prompt::EnterMailbox])]
            }
            // Not a box number: asked for a PIN all the same, and refused like a wrong
            // one (a caller learns nothing about which boxes exist).
            Err(_) => {
                self.mailbox = None;
                self.state = State::Pin;
                vec![Action::Play(vec![Prompt::EnterPin])]
            }
        }
    }

    fn pin_entered(&mut self) -> Vec<Action> {
        let pin = Secret::new(std::mem::take(&mut self.digits));
        match self.mailbox.clone() {
            Some(mailbox) => {
                self.state = State::CheckingLogin;
                vec![Action::Login {
                    mailbox,
                    credential: Credential::Pin(pin),
                }]
            }
            None => {
                // No such box was typed: refused here, the same prompts as a wrong PIN.
                // The call side must still apply its refusal delay to this answer.
                self.state = State::CheckingLogin;
                self.login_result(Login::Refused)
            }
        }
    }

    fn new_pin_entered(&mut self) -> Vec<Action> {
        let pin = std::mem::take(&mut self.digits);
        if pin.is_empty() {
            return self.leave_pin_change();
        }
        self.first_pin = Some(Secret::new(pin));
        self.state = State::RepeatPin;
        vec![Action::Play(vec![Prompt::RepeatNewPin])]
    }

    fn repeat_pin_entered(&mut self) -> Vec<Action> {
        let again = Secret::new(std::mem::take(&mut self.digits));
        let first = self.first_pin.take();
        let (Some(first), Some(mailbox)) = (first, self.mailbox.clone()) else {
            return self.goodbye();
        };
        if first != again {
            self.idle += 1;
            if self.idle >= MAX_IDLE {
                return self.goodbye();
            }
            self.state = State::NewPin;
            return vec![Action::Play(vec![Prompt::PinsDiffer, Prompt::EnterNewPin])];
        }
        self.state = State::CheckingPin;
        vec![Action::ChangePin {
            mailbox,
            pin: first,
        }]
    }

    /// An empty new PIN: back to the main menu, or, when the change is forced, goodbye
    /// after the third time.
    fn leave_pin_change(&mut self) -> Vec<Action> {
        if self.forced_change {
            self.idle += 1;
            if self.idle >= MAX_IDLE {
                return self.goodbye();
            }
            return vec![Action::Play(vec![
                Prompt::PinMustChange,
                Prompt::EnterNewPin,
            ])];
        }
        self.main_menu(Vec::new())
    }

    // ---- menus ----

    fn load(&mut self) -> Vec<Action> {
        let Some(mailbox) = self.mailbox.clone() else {
            return self.goodbye();
        };
        self.state = State::Loading;
        vec![Action::ListMessages { mailbox }]
    }

    fn main_menu(&mut self, mut before: Vec<Prompt>) -> Vec<Action> {
        self.state = State::Main;
        before.push(Prompt::MainMenu {
            operator: self.config.operator.is_some(),
        });
        vec![Action::Play(before)]
    }

    fn invalid(&mut self) -> Vec<Action> {
        self.idle += 1;
        if self.idle >= MAX_IDLE {
            return self.goodbye();
        }
        let again = match self.state {
            State::Listening => Prompt::MessageMenu,
            State::GreetingReview => Prompt::GreetingReview,
            _ => Prompt::MainMenu {
                operator: self.config.operator.is_some(),
            },
        };
        vec![Action::Play(vec![Prompt::InvalidChoice, again])]
    }

    fn goodbye(&mut self) -> Vec<Action> {
        self.state = State::Leaving;
        self.first_pin = None;
        self.digits.clear();
        vec![Action::Play(vec![Prompt::Goodbye])]
    }

    fn main_choice(&mut self, d: char) -> Vec<Action> {
        let actions = match d {
            '1' => {
                if self.messages.is_empty() {
                    self.main_menu(vec![Prompt::NoMessages])
                } else {
                    self.cursor = 0;
                    self.play_current(Vec::new())
                }
            }
            '5' => {
                self.state = State::GreetingPrompt;
                vec![Action::Play(vec![Prompt::RecordGreetingAfterTone])]
            }
            '8' => {
                self.state = State::NewPin;
                self.digits.clear();
                vec![Action::Play(vec![Prompt::EnterNewPin])]
            }
            '0' => match self.config.operator.clone() {
                Some(op) => {
                    self.state = State::Done;
                    vec![
                        Action::Play(vec![Prompt::TransferringToOperator]),
                        Action::TransferToOperator(op),
                    ]
                }
                None => return self.invalid(),
            },
            '*' => self.main_menu(Vec::new()),
            '#' => return self.goodbye(),
            _ => return self.invalid(),
        };
        self.idle = 0;
        actions
    }

    fn play_current(&mut self, mut before: Vec<Prompt>) -> Vec<Action> {
        self.state = State::Listening;
        let Some(m) = self.messages.get(self.cursor) else {
            return self.main_menu(vec![Prompt::NoMoreMessages]);
        };
        before.extend([
            Prompt::MessageHeader {
                index: u32::try_from(self.cursor + 1).unwrap_or(u32::MAX),
                received_at: m.received_at,
            },
            Prompt::Message { id: m.id.clone() },
            Prompt::MessageMenu,
        ]);
        vec![Action::Play(before)]
    }

    fn message_choice(&mut self, d: char) -> Vec<Action> {
        let Some(mailbox) = self.mailbox.clone() else {
            return self.goodbye();
        };
        let actions = match d {
            '4' => {
                if self.cursor == 0 {
                    self.play_current(vec![Prompt::FirstMessage])
                } else {
                    self.cursor -= 1;
                    self.play_current(Vec::new())
                }
            }
            '5' => self.play_current(Vec::new()),
            '6' => {
                if self.cursor + 1 >= self.messages.len() {
                    self.main_menu(vec![Prompt::NoMoreMessages])
                } else {
                    self.cursor += 1;
                    self.play_current(Vec::new())
                }
            }
            '7' => {
                if self.cursor >= self.messages.len() {
                    return self.invalid();
                }
                let m = self.messages.remove(self.cursor);
                match m.folder {
                    super::Folder::New => self.new_count = self.new_count.saturating_sub(1),
                    super::Folder::Saved => self.saved_count = self.saved_count.saturating_sub(1),
                }
                let mut actions = vec![Action::Delete { mailbox, id: m.id }];
                if self.cursor >= self.messages.len() {
                    actions.extend(
                        self.main_menu(vec![Prompt::MessageDeleted, Prompt::NoMoreMessages]),
                    );
                } else {
                    actions.extend(self.play_current(vec![Prompt::MessageDeleted]));
                }
                actions
            }
            '9' => {
                let Some(m) = self.messages.get_mut(self.cursor) else {
                    return self.invalid();
                };
                if m.folder == super::Folder::New {
                    m.folder = super::Folder::Saved;
                    self.new_count = self.new_count.saturating_sub(1);
                    self.saved_count = self.saved_count.saturating_add(1);
                }
                let mut actions = vec![Action::Save {
                    mailbox,
                    id: m.id.clone(),
                }];
                if self.cursor + 1 >= self.messages.len() {
                    actions
                        .extend(self.main_menu(vec![Prompt::MessageSaved, Prompt::NoMoreMessages]));
                } else {
                    self.cursor += 1;
                    actions.extend(self.play_current(vec![Prompt::MessageSaved]));
                }
                actions
            }
            '*' => self.main_menu(Vec::new()),
            '#' => return self.goodbye(),
            _ => return self.invalid(),
        };
        self.idle = 0;
        actions
    }

    fn review_choice(&mut self, d: char) -> Vec<Action> {
        let Some(mailbox) = self.mailbox.clone() else {
            return self.goodbye();
        };
        let actions = match d {
            '1' => {
                let mut a = vec![Action::SaveGreeting { mailbox }];
                a.extend(self.main_menu(vec![Prompt::GreetingSaved]));
                a
            }
            '2' => {
                self.state = State::GreetingPrompt;
                vec![
                    Action::DiscardRecording,
                    Action::Play(vec![Prompt::RecordGreetingAfterTone]),
                ]
            }
            '*' => {
                let mut a = vec![Action::DiscardRecording];
                a.extend(self.main_menu(Vec::new()));
                a
            }
            _ => return self.invalid(),
        };
        self.idle = 0;
        actions
    }
}

fn count(messages: &[MessageView], folder: super::Folder) -> u32 {
    u32::try_from(messages.iter().filter(|m| m.folder == folder).count()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voicemail::Folder;

    fn n(s: &str) -> ExtensionNumber {
        ExtensionNumber::parse(s).expect("number")
    }

    fn msg(id: &str, folder: Folder) -> MessageView {
        MessageView {
            id: id.into(),
            received_at: 1,
            duration_ms: 1000,
            caller: "c".into(),
            folder,
        }
    }

    fn typed(menu: &mut Menu, digits: &str) -> Vec<Action> {
        digits.chars().flat_map(|d| menu.digit(d)).collect()
    }

    #[test]
    fn any_box_asks_the_number_then_the_pin_and_lists_after_a_login() {
        let mut m = Menu::new(MenuConfig::default(), Entry::AnyBox);
        assert_eq!(m.start(), [Action::Play(vec![Prompt::EnterMailbox])]);
        assert_eq!(
            typed(&mut m, "1001#"),
            [Action::Play(vec![Prompt::EnterPin])]
        );
        assert_eq!(
            typed(&mut m, "482913#"),
            [Action::Login {
                mailbox: n("1001"),
                credential: Credential::Pin(Secret::new("482913")),
            }]
        );
        assert_eq!(
            m.login_result(Login::Granted {
                must_change_pin: false
            }),
            [Action::ListMessages { mailbox: n("1001") }]
        );
        assert_eq!(
            m.messages(vec![msg("a", Folder::New), msg("b", Folder::Saved)]),
            [Action::Play(vec![
                Prompt::MessageCount { new: 1, saved: 1 },
                Prompt::MainMenu { operator: false }
            ])]
        );
        let listen = m.digit('1');
        assert!(
            matches!(&listen[..], [Action::Play(p)] if p.contains(&Prompt::Message { id: "a".into() }))
        );
        let deleted = m.digit('7');
        assert_eq!(
            deleted[0],
            Action::Delete {
                mailbox: n("1001"),
                id: "a".into()
            }
        );
        let saved = m.digit('9');
        assert_eq!(
            saved[0],
            Action::Save {
                mailbox: n("1001"),
                id: "b".into()
            }
        );
        assert_eq!(m.digit('#'), [Action::Play(vec![Prompt::Goodbye])]);
        assert_eq!(m.prompt_done(), [Action::Hangup]);
        assert!(m.is_done());
        assert!(typed(&mut m, "0123456789*#").is_empty());
    }

    #[test]
    fn three_refusals_end_the_call_and_a_refusal_says_nothing_about_the_box() {
        let mut m = Menu::new(MenuConfig::default(), Entry::AnyBox);
        m.start();
        for round in 0..3 {
            typed(&mut m, "1001#1111#");
            let got = m.login_result(Login::Refused);
            if round < 2 {
                assert_eq!(
                    got,
                    [Action::Play(vec![
                        Prompt::LoginIncorrect,
                        Prompt::EnterMailbox
                    ])]
                );
            } else {
                assert_eq!(
                    got,
                    [Action::Play(vec![Prompt::LoginIncorrect, Prompt::Goodbye])]
                );
            }
        }
        // A number that is no box: the same prompts, without a login.
        let mut m = Menu::new(MenuConfig::default(), Entry::AnyBox);
        m.start();
        assert_eq!(typed(&mut m, "1#"), [Action::Play(vec![Prompt::EnterPin])]);
        assert_eq!(
            typed(&mut m, "1111#"),
            [Action::Play(vec![
                Prompt::LoginIncorrect,
                Prompt::EnterMailbox
            ])]
        );
    }

    #[test]
    fn a_weak_pin_is_changed_before_anything_else() {
        let mut m = Menu::new(
            MenuConfig::default(),
            Entry::OwnBox {
                mailbox: n("1001"),
                authenticated_owner: true,
            },
        );
        assert_eq!(
            m.start(),
            [Action::Login {
                mailbox: n("1001"),
                credential: Credential::AuthenticatedOwner
            }]
        );
        assert_eq!(
            m.login_result(Login::Granted {
                must_change_pin: true
            }),
            [Action::Play(vec![
                Prompt::PinMustChange,
                Prompt::EnterNewPin
            ])]
        );
        // Menu keys are PIN digits here: nothing is listed or played.
        assert_eq!(
            typed(&mut m, "1#"),
            [Action::Play(vec![Prompt::RepeatNewPin])]
        );
        assert_eq!(
            typed(&mut m, "2#"),
            [Action::Play(vec![Prompt::PinsDiffer, Prompt::EnterNewPin])]
        );
        typed(&mut m, "1234#");
        assert_eq!(
            typed(&mut m, "1234#"),
            [Action::ChangePin {
                mailbox: n("1001"),
                pin: Secret::new("1234")
            }]
        );
        assert_eq!(
            m.pin_change_result(PinChange::Refused {
                reason: "weak".into()
            }),
            [Action::Play(vec![Prompt::PinRefused, Prompt::EnterNewPin])]
        );
        typed(&mut m, "739164#739164#");
        assert_eq!(
            m.pin_change_result(PinChange::Changed),
            [
                Action::Play(vec![Prompt::PinChanged]),
                Action::ListMessages { mailbox: n("1001") }
            ]
        );
    }

    #[test]
    fn zero_reaches_the_operator_only_when_one_is_configured() {
        for operator in [None, Some(Operator::configured(n("100")))] {
            let mut m = Menu::new(
                MenuConfig {
                    operator: operator.clone(),
                },
                Entry::OwnBox {
                    mailbox: n("1001"),
                    authenticated_owner: true,
                },
            );
            m.start();
            m.login_result(Login::Granted {
                must_change_pin: false,
            });
            m.messages(Vec::new());
            let got = m.digit('0');
            match operator {
                Some(op) => {
                    assert_eq!(got.last(), Some(&Action::TransferToOperator(op)));
                    assert!(m.is_done());
                }
                None => assert_eq!(
                    got,
                    [Action::Play(vec![
                        Prompt::InvalidChoice,
                        Prompt::MainMenu { operator: false }
                    ])]
                ),
            }
        }
    }

    #[test]
    fn a_greeting_is_recorded_after_its_prompt_and_kept_on_one() {
        let mut m = Menu::new(
            MenuConfig::default(),
            Entry::OwnBox {
                mailbox: n("1001"),
                authenticated_owner: true,
            },
        );
        m.start();
        m.login_result(Login::Granted {
            must_change_pin: false,
        });
        m.messages(Vec::new());
        assert_eq!(
            m.digit('5'),
            [Action::Play(vec![Prompt::RecordGreetingAfterTone])]
        );
        assert_eq!(m.prompt_done(), [Action::Record(Recording::Greeting)]);
        assert_eq!(
            m.recording_done(),
            [Action::Play(vec![Prompt::GreetingReview])]
        );
        assert_eq!(m.digit('1')[0], Action::SaveGreeting { mailbox: n("1001") });
    }

    #[test]
    fn idle_callers_are_said_goodbye_to() {
        let mut m = Menu::new(MenuConfig::default(), Entry::AnyBox);
        m.start();
        m.timeout();
        m.timeout();
        assert_eq!(m.timeout(), [Action::Play(vec![Prompt::Goodbye])]);
        assert_eq!(m.prompt_done(), [Action::Hangup]);
    }
}
