//! `sipward vm list|show|reset-pin`: voicemail boxes for the administrator. No command
//! plays or exports a recording: the owner hears messages from the phone, and an
//! administrator through the console with a recorded reason.

use std::process::ExitCode;

use accounts::Registry;
use accounts::regenerate::Selection;
use console::timestamp::iso8601;
use serde::Serialize;

use crate::cli::VmCommand;
use crate::config::Config;
use crate::output::{self, Table};

fn secs(ms: i64) -> String {
    format!("{}:{:02}", ms / 60_000, (ms / 1000) % 60)
}

pub async fn run(reg: &Registry, cmd: VmCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::List { out } => {
            let boxes = reg.voicemail_boxes().await?;
            if out.json {
                output::json(&boxes)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["BOX", "NAME", "NEW", "SAVED", "LENGTH", "LATEST", "STATE"]);
            for b in &boxes {
                let mut state = if b.voicemail_after_secs == 0 {
                    "no voicemail".to_owned()
                } else {
                    format!("after {} s", b.voicemail_after_secs)
                };
                if let Some(until) = b.locked_until {
                    state.push_str(&format!(", LOCKED until {}", iso8601(until)));
                }
                if b.must_change_pin {
                    state.push_str(", PIN change due");
                }
                t.row(
                    vec![
                        b.number.clone(),
                        b.name.clone(),
                        b.new.to_string(),
                        b.saved.to_string(),
                        secs(b.total_ms),
                        b.latest.map(iso8601).unwrap_or_else(|| "-".into()),
                        state,
                    ],
                    b.locked_until.is_some(),
                );
            }
            t.print()?;
        }
        VmCommand::Show { number, out } => {
            let b = reg.voicemail_box(&number).await?;
            let messages = reg.messages(&number).await?;
            if out.json {
                #[derive(Serialize)]
                struct Out<'a> {
                    #[serde(rename = "box")]
                    b: &'a accounts::voicemail::BoxView,
                    messages: &'a [accounts::voicemail::MessageView],
                }
                output::json(&Out {
                    b: &b,
                    messages: &messages,
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("box        {} ({})", b.number, b.name);
            println!(
                "messages   {} new, {} saved, {} in all",
                b.new,
                b.saved,
                secs(b.total_ms)
            );
            println!(
                "answers    {}",
                if b.voicemail_after_secs == 0 {
                    "never (no voicemail)".to_owned()
                } else {
                    format!("after {} s of ringing", b.voicemail_after_secs)
                }
            );
            println!(
                "mail       {}",
                if b.mails_messages {
                    "each message to the owner"
                } else {
                    "none"
                }
            );
            println!(
                "greeting   {}",
                if b.has_greeting {
                    "the owner's own"
                } else {
                    "the default"
                }
            );
            match b.locked_until {
                Some(until) => println!(
                    "login      LOCKED until {} (`sipward vm reset-pin {}` gives a new PIN and unlocks)",
                    iso8601(until),
                    b.number
                ),
                None => println!("login      open ({} wrong PINs counted)", b.failures),
            }
            if b.must_change_pin {
                println!("PIN        weak: the owner must change it at the next login");
            }
            let mut t = Table::new(&["RECEIVED", "FROM", "LENGTH", "FOLDER", "ID"]);
            for m in &messages {
                t.row(
                    vec![
                        iso8601(m.received_at),
                        m.caller.clone(),
                        secs(m.duration_ms),
                        match m.folder {
                            accounts::voicemail::Folder::New => "new".into(),
                            accounts::voicemail::Folder::Saved => "saved".into(),
                        },
                        m.id.clone(),
                    ],
                    false,
                );
            }
            if !messages.is_empty() {
                t.print()?;
            }
        }
        VmCommand::ResetPin {
            number,
            no_email,
            out,
        } => {
            // Checked first: Re-Generate of a number that is no extension says so itself,
            // but the unlock below must not run for one.
            reg.voicemail_box(&number).await?;
            let selection = Selection::Numbers(vec![number.clone()]);
            let code =
                super::regenerate::run(reg, selection, !no_email, true, out.json, config).await?;
            if code == ExitCode::SUCCESS {
                reg.unlock_box(&number, "sipward vm reset-pin").await?;
            }
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}
