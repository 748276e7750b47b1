//! `sipward mail ...`: the welcome-mail outbox.

use std::process::ExitCode;

use accounts::Registry;
use accounts::mail::MailOutcome;
use accounts::mail::Mailer;
use serde::Serialize;

use crate::cli::MailCommand;
use crate::config::Config;
use crate::error::OperatorError;
use crate::output::{self, Table};

#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    number: &'a str,
    recipient: &'a str,
    state: &'a str,
    attempts: i64,
    last_error: &'a str,
    created_at: i64,
    sent_at: Option<i64>,
    next_attempt_at: Option<i64>,
}

pub async fn run(reg: &Registry, cmd: MailCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match cmd {
        MailCommand::List { out } => {
            let rows = reg.outbox().await?;
            if out.json {
                let items: Vec<Row<'_>> = rows
                    .iter()
                    .map(|m| Row {
                        id: &m.id,
                        number: &m.number,
                        recipient: &m.recipient,
                        state: &m.state,
                        attempts: m.attempts,
                        last_error: &m.last_error,
                        created_at: m.created_at,
                        sent_at: (m.state == "sent").then_some(m.sent_at),
                        next_attempt_at: (m.state == "queued").then_some(m.next_attempt_at),
                    })
                    .collect();
                output::json(&items)?;
            } else {
                let mut t = Table::new(&["ID", "EXTENSION", "TO", "STATE", "TRIES", "LAST ERROR"]);
                for m in &rows {
                    t.row(
                        vec![
                            m.id.clone(),
                            m.number.clone(),
                            m.recipient.clone(),
                            m.state.clone(),
                            m.attempts.to_string(),
                            m.last_error.clone(),
                        ],
                        m.state == "failed",
                    );
                }
                t.print()?;
            }
            Ok(ExitCode::SUCCESS)
        }
        MailCommand::Send { out } => {
            let settings = config.mail.as_ref().ok_or_else(|| {
                OperatorError("no [mail] SMTP server is configured in the config file".into())
            })?;
            let mailer = Mailer::new(settings).map_err(|e| OperatorError(e.to_string()))?;
            let results = reg.send_due_mail(&mailer, None).await?;
            let failed = results
                .iter()
                .any(|(_, o)| matches!(o, MailOutcome::Failed { .. }));
            if out.json {
                #[derive(Serialize)]
                struct Item<'a> {
                    id: &'a str,
                    #[serde(flatten)]
                    outcome: &'a MailOutcome,
                }
                let items: Vec<Item<'_>> = results
                    .iter()
                    .map(|(id, outcome)| Item { id, outcome })
                    .collect();
                output::json(&items)?;
            } else {
                println!("{} mails tried", results.len());
                for (id, o) in &results {
                    println!("  {id}: {o:?}");
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
