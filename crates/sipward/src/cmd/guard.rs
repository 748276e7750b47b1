//! `sipward ban ...`, `sipward allow ...` and `sipward guard ...`

use std::process::ExitCode;

use accounts::Registry;
use accounts::audit_log::{Change, Setting};
use accounts::bans::FOREVER;

use crate::cli::{AllowCommand, BanCommand, GuardCommand};
use crate::error::OperatorError;
use crate::output::{self, Table};

/// `30m`, `12h`, `7d`, `90s`, or `forever` (None).
fn parse_duration(text: &str) -> anyhow::Result<Option<i64>> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    let bad = || {
        OperatorError(format!(
            "--for {t:?}: use a number with s, m, h or d (like 30m or 7d), or forever"
        ))
    };
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad().into()),
    };
    let secs = n.checked_mul(factor).filter(|s| *s > 0).ok_or_else(bad)?;
    Ok(Some(secs))
}

fn until(expires_at: i64) -> String {
    if expires_at >= FOREVER {
        "never".into()
    } else {
        format!("{expires_at} (epoch s)")
    }
}

pub async fn ban(reg: &Registry, cmd: BanCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BanCommand::List { all, out } => {
            let bans = reg.bans(all).await?;
            if out.json {
                output::json(&bans)?;
            } else {
                let mut t = Table::new(&["SOURCE", "REASON", "TIMES", "EXPIRES", "DETAIL"]);
                for b in &bans {
                    t.row(
                        vec![
                            b.source.clone(),
                            b.reason.clone(),
                            b.times.to_string(),
                            until(b.expires_at),
                            b.detail.clone(),
                        ],
                        false,
                    );
                }
                t.print()?;
            }
        }
        BanCommand::Add {
            address,
            reason,
            duration,
            out,
        } => {
            let seconds = parse_duration(&duration)?;
            let b = reg.ban(&address, &reason, seconds, None).await?;
            super::audit_log::logged(reg, Setting::Ban, Change::Added, &b.source, &reason).await?;
            if out.json {
                output::json(&b)?;
            } else {
                println!("banned {} until {}", b.source, until(b.expires_at));
            }
        }
        BanCommand::Remove { address } => {
            let source = reg.unban(&address).await?;
            super::audit_log::logged(reg, Setting::Ban, Change::Removed, &source, "").await?;
            println!("lifted the ban of {}", address.trim());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn allow(reg: &Registry, cmd: AllowCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AllowCommand::List { out } => {
            let list = reg.allow_list().await?;
            if out.json {
                output::json(&list)?;
            } else {
                let mut t = Table::new(&["NETWORK", "NOTE"]);
                for a in &list {
                    t.row(vec![a.network.clone(), a.note.clone()], false);
                }
                t.print()?;
            }
        }
        AllowCommand::Add { network, note, out } => {
            let a = reg.allow(&network, &note).await?;
            super::audit_log::logged(reg, Setting::Allow, Change::Added, &a.network, &note).await?;
            if out.json {
                output::json(&a)?;
            } else {
                println!("allow-listed {}", a.network);
            }
        }
        AllowCommand::Remove { network } => {
            let network = reg.disallow(&network).await?;
            super::audit_log::logged(reg, Setting::Allow, Change::Removed, &network, "").await?;
            println!("removed {} from the allow list", network.trim());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sipward guard show|set|reset`.
pub async fn thresholds(reg: &Registry, cmd: GuardCommand) -> anyhow::Result<ExitCode> {
    let json = match cmd {
        GuardCommand::Show { out } => out.json,
        GuardCommand::Set { key, value, out } => {
            reg.set_guard(&super::audit_log::actor(), &[(&key, Some(&value))])
                .await?;
            out.json
        }
        GuardCommand::Reset { key, out } => {
            reg.set_guard(&super::audit_log::actor(), &[(&key, None)])
                .await?;
            out.json
        }
    };
    let view = reg.guard_view().await?;
    if json {
        output::json(&view)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(why) = &view.refused {
        eprintln!("warning: the changed settings are not in force, the config file's are: {why}");
    }
    let policy = serde_json::to_value(&view.policy)?;
    let mut t = Table::new(&["SETTING", "VALUE", "FROM"]);
    for key in view.editable {
        let from = if view.overrides.contains_key(*key) {
            "changed here"
        } else {
            "config file"
        };
        t.row(
            vec![(*key).to_owned(), policy[*key].to_string(), from.to_owned()],
            false,
        );
    }
    t.print()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("forever").expect("ok"), None);
        assert_eq!(parse_duration("90s").expect("ok"), Some(90));
        assert_eq!(parse_duration("30m").expect("ok"), Some(1800));
        assert_eq!(parse_duration("7d").expect("ok"), Some(604_800));
        for bad in ["", "h", "10", "10w", "-5m", "0m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
