//! `sipward ext regenerate`: the Re-Generate workflow, then the welcome mails sent at once
//! when `[mail]` is configured (they stay queued for `serve` otherwise).

use std::collections::HashSet;
use std::process::ExitCode;

use accounts::Registry;
use accounts::mail::MailOutcome;
use accounts::mail::Mailer;
use accounts::regenerate::{FilesOutcome, Regenerated, Selection};
use serde::Serialize;

use crate::config::Config;
use crate::output::{self, Table};

#[derive(Serialize)]
struct Item<'a> {
    number: &'a str,
    auth_id: &'a str,
    password: &'a str,
    pin: &'a str,
    files: &'a FilesOutcome,
    mail: &'a MailOutcome,
    /// Registered phones were asked (NOTIFY) to re-fetch their files.
    resync: bool,
    grace: Grace<'a>,
}

/// Where the old credentials keep working until `until`, so the operator sees it.
#[derive(Serialize)]
struct Grace<'a> {
    /// The old SIP password (where phones were registered).
    sources: Vec<String>,
    /// The old provisioning login (where it fetched the phone's file before).
    provisioning_sources: Vec<String>,
    until: &'a Option<i64>,
}

pub async fn run(
    reg: &Registry,
    selection: Selection,
    email: bool,
    keep_grace: bool,
    json: bool,
    config: &Config,
) -> anyhow::Result<ExitCode> {
    let mut results = reg
        .regenerate_with(
            &selection,
            email,
            keep_grace,
            &mut crate::output::regenerate_progress,
        )
        .await?;
    for r in &results {
        super::audit_log::logged(
            reg,
            accounts::audit_log::Setting::Extension,
            accounts::audit_log::Change::Regenerated,
            &r.number,
            "new password and PIN",
        )
        .await?;
    }

    let queued: HashSet<String> = results
        .iter()
        .filter_map(|r| match &r.mail {
            MailOutcome::Queued { id } => Some(id.clone()),
            _ => None,
        })
        .collect();
    if !queued.is_empty() {
        match &config.mail {
            Some(settings) => {
                let mailer = Mailer::new(settings)
                    .map_err(|e| crate::error::OperatorError(e.to_string()))?;
                let sent = reg.send_due_mail(&mailer, Some(&queued)).await?;
                for r in &mut results {
                    if let MailOutcome::Queued { id } = &r.mail
                        && let Some((_, o)) = sent.iter().find(|(i, _)| i == id)
                    {
                        r.mail = o.clone();
                    }
                }
            }
            None => eprintln!(
                "{} welcome mails queued: no [mail] SMTP server is configured; `sipward serve` sends them once one is",
                queued.len()
            ),
        }
    }

    let failed = results.iter().any(|r| {
        matches!(r.mail, MailOutcome::Failed { .. })
            || matches!(r.files, FilesOutcome::Failed { .. })
    });
    if json {
        let items: Vec<Item<'_>> = results.iter().map(item).collect();
        #[derive(Serialize)]
        struct Out<'a> {
            regenerated: Vec<Item<'a>>,
        }
        output::json(&Out { regenerated: items })?;
    } else {
        let mut t = Table::new(&[
            "EXTENSION",
            "PASSWORD",
            "PIN",
            "PHONE FILES",
            "MAIL",
            "PHONES",
        ]);
        for r in &results {
            let alert = matches!(r.mail, MailOutcome::Failed { .. })
                || matches!(r.files, FilesOutcome::Failed { .. });
            t.row(
                vec![
                    r.number.clone(),
                    r.password.expose().to_owned(),
                    r.pin.expose().to_owned(),
                    r.files.describe(),
                    r.mail.describe(),
                    phones_text(r),
                ],
                alert,
            );
        }
        t.print()?;
        println!(
            "{} extensions re-generated (passwords and PINs are shown only now)",
            results.len()
        );
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn item(r: &Regenerated) -> Item<'_> {
    Item {
        number: &r.number,
        auth_id: &r.auth_id,
        password: r.password.expose(),
        pin: r.pin.expose(),
        files: &r.files,
        mail: &r.mail,
        resync: r.resync,
        grace: Grace {
            sources: r.grace_sources.iter().map(|s| s.to_string()).collect(),
            provisioning_sources: r
                .provisioning_sources
                .iter()
                .map(|s| s.to_string())
                .collect(),
            until: &r.grace_until,
        },
    }
}

fn phones_text(r: &Regenerated) -> String {
    let mut parts = Vec::new();
    if r.resync {
        parts.push("told to re-fetch".to_owned());
    }
    if !r.grace_sources.is_empty() {
        let list: Vec<String> = r.grace_sources.iter().map(|s| s.to_string()).collect();
        parts.push(format!("old password ok from {}", list.join(",")));
    }
    if !r.provisioning_sources.is_empty() {
        let list: Vec<String> = r
            .provisioning_sources
            .iter()
            .map(|s| s.to_string())
            .collect();
        parts.push(format!("old phone login ok from {}", list.join(",")));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}
