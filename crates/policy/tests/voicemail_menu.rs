//! The voicemail menu against every key in every menu and against random DTMF
//! sequences: no action ever leaves the box but `TransferToOperator` to the configured
//! operator, nothing touches a box before a login opened it, and nothing follows the
//! end of the call.

use policy::Secret;
use policy::fields::ExtensionNumber;
use policy::voicemail::menu::{Action, Entry, Menu, MenuConfig, Operator};
use policy::voicemail::{Credential, Folder, Login, MessageView, PinChange};
use proptest::prelude::*;

const KEYS: [char; 12] = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#'];

fn n(s: &str) -> ExtensionNumber {
    ExtensionNumber::parse(s).expect("number")
}

/// One thing that happens to the call.
#[derive(Clone, Debug)]
enum Step {
    Digit(char),
    Timeout,
    PromptDone,
    RecordingDone,
    /// Answers the menu's last request (login, list, PIN change); the byte picks the answer.
    Answer(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::sample::select(KEYS.to_vec()).prop_map(Step::Digit),
        1 => prop::sample::select(vec!['A', 'D', 'x', '\0', 'é']).prop_map(Step::Digit),
        1 => Just(Step::Timeout),
        2 => Just(Step::PromptDone),
        1 => Just(Step::RecordingDone),
        3 => any::<u8>().prop_map(Step::Answer),
    ]
}

fn entries() -> Vec<Entry> {
    vec![
        Entry::AnyBox,
        Entry::OwnBox {
            mailbox: n("1001"),
            authenticated_owner: true,
        },
        Entry::OwnBox {
            mailbox: n("1001"),
            authenticated_owner: false,
        },
    ]
}

fn configs() -> Vec<MenuConfig> {
    vec![
        MenuConfig { operator: None },
        MenuConfig {
            operator: Some(Operator::configured(n("100"))),
        },
    ]
}

/// What the menu asked for and has not been answered yet.
#[derive(Clone, Debug, PartialEq)]
enum Request {
    Login,
    List,
    Pin,
}

/// Drives one menu and checks every action it returns.
struct Harness {
    menu: Menu,
    entry: Entry,
    operator: Option<Operator>,
    pending: Option<Request>,
    /// Boxes a login opened (the menu may act on these only).
    opened: Vec<ExtensionNumber>,
    /// A login was granted (the last login's box is then open).
    granted: bool,
    ended: bool,
    pub transfers: usize,
    pub actions: usize,
}

impl Harness {
    fn new(config: MenuConfig, entry: Entry) -> Self {
        let operator = config.operator.clone();
        let mut h = Self {
            menu: Menu::new(config, entry.clone()),
            entry,
            operator,
            pending: None,
            opened: Vec::new(),
            granted: false,
            ended: false,
            transfers: 0,
            actions: 0,
        };
        let first = h.menu.start();
        h.check(first);
        h
    }

    fn check(&mut self, actions: Vec<Action>) {
        assert!(
            actions.len() <= 3,
            "one event, a handful of actions: {actions:?}"
        );
        if self.ended {
            assert!(actions.is_empty(), "after the end: {actions:?}");
        }
        for a in actions {
            self.actions += 1;
            assert!(!self.ended, "an action after the end: {a:?}");
            match &a {
                Action::Play(prompts) => assert!(!prompts.is_empty() && prompts.len() <= 4),
                Action::Login {
                    mailbox,
                    credential,
                } => {
                    if let Entry::OwnBox { mailbox: own, .. } = &self.entry {
                        assert_eq!(mailbox, own, "an own-box call logs in to its own box only");
                    }
                    if matches!(credential, Credential::AuthenticatedOwner) {
                        assert_eq!(
                            self.entry,
                            Entry::OwnBox {
                                mailbox: mailbox.clone(),
                                authenticated_owner: true
                            },
                            "no PIN only for the authenticated owner's own box"
                        );
                    }
                    self.opened.clear();
                    self.opened.push(mailbox.clone());
                    self.granted = false;
                    self.pending = Some(Request::Login);
                }
                Action::ListMessages { mailbox } => {
                    self.opened_box(mailbox);
                    self.pending = Some(Request::List);
                }
                Action::ChangePin { mailbox, pin } => {
                    self.opened_box(mailbox);
                    assert!(!pin.expose().is_empty() && pin.expose().len() <= 13);
                    assert!(pin.expose().bytes().all(|b| b.is_ascii_digit()));
                    self.pending = Some(Request::Pin);
                }
                Action::Delete { mailbox, .. }
                | Action::Save { mailbox, .. }
                | Action::SaveGreeting { mailbox } => self.opened_box(mailbox),
                Action::Record(_) | Action::DiscardRecording => {}
                Action::TransferToOperator(op) => {
                    assert_eq!(
                        Some(op),
                        self.operator.as_ref(),
                        "only to the configured operator"
                    );
                    assert_eq!(op.extension().as_str(), "100");
                    self.transfers += 1;
                    self.ended = true;
                }
                Action::Hangup => self.ended = true,
            }
        }
        if self.menu.is_done() {
            self.ended = true;
        }
    }

    /// The menu acts on a box only after a login granted it.
    fn opened_box(&self, mailbox: &ExtensionNumber) {
        assert!(
            self.granted && self.opened.contains(mailbox),
            "acted on {mailbox} without a login"
        );
    }

    fn run(&mut self, s: &Step) {
        let actions = match s {
            Step::Digit(d) => self.menu.digit(*d),
            Step::Timeout => self.menu.timeout(),
            Step::PromptDone => self.menu.prompt_done(),
            Step::RecordingDone => self.menu.recording_done(),
            Step::Answer(b) => match self.pending.take() {
                Some(Request::Login) => {
                    let login = match b % 3 {
                        0 => Login::Refused,
                        1 => Login::Granted {
                            must_change_pin: false,
                        },
                        _ => Login::Granted {
                            must_change_pin: true,
                        },
                    };
                    if login != Login::Refused {
                        self.granted = true;
                    }
                    self.menu.login_result(login)
                }
                Some(Request::List) => {
                    let messages = (0..b % 5)
                        .map(|i| MessageView {
                            id: format!("m{i}"),
                            received_at: i64::from(i),
                            duration_ms: 1000,
                            caller: "c".into(),
                            folder: if i % 2 == 0 {
                                Folder::New
                            } else {
                                Folder::Saved
                            },
                        })
                        .collect();
                    self.menu.messages(messages)
                }
                Some(Request::Pin) => self.menu.pin_change_result(if b % 2 == 0 {
                    PinChange::Changed
                } else {
                    PinChange::Refused {
                        reason: "weak".into(),
                    }
                }),
                // Answers nobody asked for are ignored.
                None => {
                    let mut a = self.menu.login_result(Login::Granted {
                        must_change_pin: false,
                    });
                    a.extend(self.menu.messages(Vec::new()));
                    a.extend(self.menu.pin_change_result(PinChange::Changed));
                    assert!(a.is_empty(), "an unasked answer was taken: {a:?}");
                    a
                }
            },
        };
        self.check(actions);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn no_digit_sequence_leaves_the_box_but_to_the_configured_operator(
        steps in prop::collection::vec(step(), 0..120),
        entry in prop::sample::select(entries()),
        config in prop::sample::select(configs()),
    ) {
        let mut h = Harness::new(config, entry);
        for s in &steps {
            h.run(s);
        }
    }
}

/// Scripted ways into each menu: the steps after `start`.
fn menus() -> Vec<(&'static str, Vec<Step>)> {
    use Step::*;
    let granted = Answer(1);
    let weak = Answer(2);
    let two_messages = Answer(2);
    let d = |s: &str| s.chars().map(Digit).collect::<Vec<_>>();
    let mut login = d("1001#482913#");
    login.push(granted.clone());
    let with = |extra: Vec<Step>| {
        let mut v = login.clone();
        v.push(two_messages.clone());
        v.extend(extra);
        v
    };
    vec![
        ("mailbox entry", vec![]),
        ("pin entry", d("1001#")),
        ("waiting for the login", d("1001#1#")),
        ("forced pin change", {
            let mut v = d("1001#1#");
            v.push(weak);
            v
        }),
        ("waiting for the list", login.clone()),
        ("main menu", with(vec![])),
        ("listening", with(d("1"))),
        ("after a delete", with(d("17"))),
        ("greeting prompt", with(d("5"))),
        ("recording", with(vec![Digit('5'), PromptDone])),
        (
            "greeting review",
            with(vec![Digit('5'), PromptDone, RecordingDone]),
        ),
        ("new pin", with(d("8"))),
        ("repeat pin", with(d("8739164#"))),
        ("waiting for the pin change", with(d("8739164#739164#"))),
        ("leaving", with(d("#"))),
    ]
}

#[test]
fn every_key_in_every_menu_stays_in_the_box() {
    for config in configs() {
        for (name, prefix) in menus() {
            for first in KEYS {
                for second in KEYS {
                    let mut h = Harness::new(config.clone(), Entry::AnyBox);
                    for s in &prefix {
                        h.run(s);
                    }
                    h.run(&Step::Digit(first));
                    h.run(&Step::Answer(1));
                    h.run(&Step::Digit(second));
                    h.run(&Step::PromptDone);
                    if config.operator.is_none() {
                        assert_eq!(h.transfers, 0, "{name}: {first}{second}");
                    }
                }
            }
        }
    }
}

#[test]
fn zero_in_the_main_menu_is_the_only_way_to_the_operator() {
    let config = MenuConfig {
        operator: Some(Operator::configured(n("100"))),
    };
    let mut reached = 0;
    for (name, prefix) in menus() {
        for key in KEYS {
            let mut h = Harness::new(config.clone(), Entry::AnyBox);
            for s in &prefix {
                h.run(s);
            }
            h.run(&Step::Digit(key));
            if h.transfers > 0 {
                assert_eq!((name, key), ("main menu", '0'));
                reached += 1;
            }
        }
    }
    assert_eq!(
        reached, 1,
        "the positive control: 0 does reach the operator"
    );
}

#[test]
fn a_pin_is_never_kept_after_it_was_handed_over() {
    // The secret leaves the menu in the action; nothing of it prints.
    let mut m = Menu::new(MenuConfig::default(), Entry::AnyBox);
    m.start();
    for d in "1001#482913#".chars() {
        for a in m.digit(d) {
            assert!(!format!("{a:?}").contains("482913"), "{a:?}");
            if let Action::Login {
                credential: Credential::Pin(p),
                ..
            } = a
            {
                assert_eq!(p, Secret::new("482913"));
            }
        }
    }
}
