//! Any bytes as a call to the voicemail menu: DTMF digits (and junk), timeouts, prompt
//! and recording ends, and answers to what the menu asked (logins granted, weak or
//! refused; message lists; PIN changes). Nothing panics, no action leaves the box but
//! `TransferToOperator` to the configured operator, and nothing follows the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::fields::ExtensionNumber;
use policy::voicemail::menu::{Action, Entry, Menu, MenuConfig, Operator};
use policy::voicemail::{Folder, Login, MessageView, PinChange};

fn number(s: &str) -> ExtensionNumber {
    ExtensionNumber::parse(s).expect("valid literal")
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let operator = (head & 1 == 1).then(|| Operator::configured(number("100")));
    let entry = match (head >> 1) % 3 {
        0 => Entry::AnyBox,
        1 => Entry::OwnBox {
            mailbox: number("1001"),
            authenticated_owner: true,
        },
        _ => Entry::OwnBox {
            mailbox: number("1001"),
            authenticated_owner: false,
        },
    };
    let mut menu = Menu::new(
        MenuConfig {
            operator: operator.clone(),
        },
        entry,
    );
    let mut ended = false;
    let check = |actions: Vec<Action>, ended: &mut bool| {
        for a in actions {
            assert!(!*ended, "an action after the end: {a:?}");
            match a {
                Action::TransferToOperator(op) => {
                    assert_eq!(Some(&op), operator.as_ref());
                    *ended = true;
                }
                Action::Hangup => *ended = true,
                _ => {}
            }
        }
    };
    let first = menu.start();
    check(first, &mut ended);
    for &b in rest {
        let actions = match b >> 5 {
            0..=3 => menu.digit(char::from(b"0123456789*#AD\0x"[usize::from(b & 15)])),
            4 => menu.timeout(),
            5 => menu.prompt_done(),
            6 => menu.recording_done(),
            _ => match b & 7 {
                0 => menu.login_result(Login::Refused),
                1 => menu.login_result(Login::Granted { must_change_pin: false }),
                2 => menu.login_result(Login::Granted { must_change_pin: true }),
                3 => menu.pin_change_result(PinChange::Changed),
                4 => menu.pin_change_result(PinChange::Refused { reason: String::new() }),
                n => menu.messages(
                    (0..n)
                        .map(|i| MessageView {
                            id: format!("m{i}"),
                            received_at: i64::from(i),
                            duration_ms: 1,
                            caller: String::new(),
                            folder: if i % 2 == 0 { Folder::New } else { Folder::Saved },
                        })
                        .collect(),
                ),
            },
        };
        check(actions, &mut ended);
    }
});
