//! `sipward gateway ...` and `sipward provider ...`

use std::process::ExitCode;

use accounts::Registry;
use accounts::audit_log::{Change, Setting};
use accounts::gateway::{GatewayChange, NewGateway};
use accounts::provider::{NewProvider, ProviderChange};
use policy::Finding;
use serde::Serialize;

use crate::cli::secrets_from_stdin;
use crate::cli::{GatewayCommand, ProviderCommand};
use crate::error::OperatorError;
use crate::output::{self, Table};

fn required(value: Option<String>, flag: &str, what: &str) -> anyhow::Result<String> {
    value.ok_or_else(|| OperatorError(format!("adding a {what} needs {flag}")).into())
}

#[derive(Serialize)]
struct WithFindings<'a, T: Serialize> {
    #[serde(flatten)]
    item: &'a T,
    findings: Vec<&'a Finding>,
}

fn findings_of<'a>(all: &'a [Finding], subject: &str) -> Vec<&'a Finding> {
    all.iter().filter(|f| f.subject == subject).collect()
}

fn print_findings(findings: &[&Finding]) {
    if findings.is_empty() {
        println!("findings   none");
    } else {
        println!("findings");
        for f in findings {
            println!("  {} {}: {}", f.severity.as_str(), f.rule, f.message);
        }
    }
}

fn weak_cell(findings: &[&Finding]) -> (String, bool) {
    let rules: Vec<&str> = findings
        .iter()
        .filter(|f| f.severity >= accounts::findings::WEAK_AT)
        .map(|f| f.rule.check.as_str())
        .collect();
    if rules.is_empty() {
        ("-".into(), false)
    } else {
        (rules.join(", "), true)
    }
}

/// A list of accounts with their findings: JSON, or a table whose last column names the
/// weak rules (rows in red on a terminal).
fn print_accounts<T: Serialize>(
    items: &[T],
    all: &[Finding],
    json: bool,
    subject: impl Fn(&T) -> String,
    headers: &[&'static str],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        let out: Vec<_> = items
            .iter()
            .map(|i| WithFindings {
                item: i,
                findings: findings_of(all, &subject(i)),
            })
            .collect();
        return output::json(&out);
    }
    let mut columns = headers.to_vec();
    columns.push("WEAK");
    let mut t = Table::new(&columns);
    for i in items {
        let (cell, alert) = weak_cell(&findings_of(all, &subject(i)));
        let mut row = cells(i);
        row.push(cell);
        t.row(row, alert);
    }
    t.print()
}

/// After an add or update: warns about weak credentials on stderr, then prints the
/// account (with its findings) as JSON, or the one-line summary.
fn saved<T: Serialize>(
    what: &str,
    item: &T,
    findings: &[Finding],
    json: bool,
    summary: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    output::warn_findings(what, findings);
    if json {
        output::json(&WithFindings {
            item,
            findings: findings.iter().collect(),
        })
    } else {
        println!("{}", summary());
        Ok(())
    }
}

pub async fn gateway(reg: &Registry, cmd: GatewayCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GatewayCommand::Add {
            name,
            mut fields,
            out,
        } => {
            secrets_from_stdin([&mut fields.password])?;
            let new = NewGateway {
                vendor: required(fields.vendor, "--vendor", "gateway")?,
                number: required(fields.number, "--ext", "gateway")?,
                auth_id: required(fields.auth_id, "--auth-id", "gateway")?,
                password: required(fields.password, "--password", "gateway")?,
                host: required(fields.host, "--host", "gateway")?,
            };
            let (view, findings) = reg.add_gateway(&name, new).await?;
            super::audit_log::logged(reg, Setting::Gateway, Change::Added, &view.name, "").await?;
            saved(
                &format!("gateway {}", view.name),
                &view,
                &findings,
                out.json,
                || {
                    format!(
                        "added gateway {} ({}, number {}, host {})",
                        view.name, view.vendor, view.number, view.host
                    )
                },
            )?;
        }
        GatewayCommand::Update {
            name,
            mut fields,
            out,
        } => {
            secrets_from_stdin([&mut fields.password])?;
            let change = GatewayChange {
                vendor: fields.vendor,
                number: fields.number,
                auth_id: fields.auth_id,
                password: fields.password,
                host: fields.host,
            };
            let detail = super::audit_log::given(&[
                ("vendor", change.vendor.is_some()),
                ("number", change.number.is_some()),
                ("auth_id", change.auth_id.is_some()),
                ("password", change.password.is_some()),
                ("host", change.host.is_some()),
            ]);
            let (view, findings) = reg.update_gateway(&name, change).await?;
            super::audit_log::logged(reg, Setting::Gateway, Change::Updated, &view.name, &detail)
                .await?;
            saved(
                &format!("gateway {}", view.name),
                &view,
                &findings,
                out.json,
                || format!("updated gateway {}", view.name),
            )?;
        }
        GatewayCommand::Remove { name } => {
            reg.remove_gateway(&name).await?;
            super::audit_log::logged(reg, Setting::Gateway, Change::Removed, name.trim(), "")
                .await?;
            println!("removed gateway {}", name.trim());
        }
        GatewayCommand::List { out } => {
            let list = reg.list_gateways().await?;
            let all = reg.audit().await?;
            print_accounts(
                &list,
                &all,
                out.json,
                |g| format!("gateway:{}", g.name),
                &["NAME", "VENDOR", "NUMBER", "AUTH ID", "HOST"],
                |g| {
                    vec![
                        g.name.clone(),
                        g.vendor.clone(),
                        g.number.clone(),
                        g.auth_id.clone(),
                        g.host.clone(),
                    ]
                },
            )?;
        }
        GatewayCommand::Show { name, out } => {
            let g = reg.get_gateway(&name).await?;
            let all = reg.audit().await?;
            let findings = findings_of(&all, &format!("gateway:{}", g.name));
            if out.json {
                output::json(&WithFindings { item: &g, findings })?;
            } else {
                println!(
                    "gateway    {}\nvendor     {}\nnumber     {}\nauth ID    {}\nhost       {}",
                    g.name, g.vendor, g.number, g.auth_id, g.host
                );
                print_findings(&findings);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn provider(reg: &Registry, cmd: ProviderCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ProviderCommand::Add {
            name,
            mut fields,
            out,
        } => {
            secrets_from_stdin([&mut fields.password])?;
            let new = NewProvider {
                registrar: required(fields.registrar, "--registrar", "provider")?,
                auth_id: required(fields.auth_id, "--auth-id", "provider")?,
                password: required(fields.password, "--password", "provider")?,
            };
            let (view, findings) = reg.add_provider(&name, new).await?;
            super::audit_log::logged(reg, Setting::Provider, Change::Added, &view.name, "").await?;
            saved(
                &format!("provider {}", view.name),
                &view,
                &findings,
                out.json,
                || {
                    format!(
                        "added provider {} (registrar {})",
                        view.name, view.registrar
                    )
                },
            )?;
        }
        ProviderCommand::Update {
            name,
            mut fields,
            out,
        } => {
            secrets_from_stdin([&mut fields.password])?;
            let change = ProviderChange {
                registrar: fields.registrar,
                auth_id: fields.auth_id,
                password: fields.password,
            };
            let detail = super::audit_log::given(&[
                ("registrar", change.registrar.is_some()),
                ("auth_id", change.auth_id.is_some()),
                ("password", change.password.is_some()),
            ]);
            let (view, findings) = reg.update_provider(&name, change).await?;
            super::audit_log::logged(reg, Setting::Provider, Change::Updated, &view.name, &detail)
                .await?;
            saved(
                &format!("provider {}", view.name),
                &view,
                &findings,
                out.json,
                || format!("updated provider {}", view.name),
            )?;
        }
        ProviderCommand::Remove { name } => {
            reg.remove_provider(&name).await?;
            super::audit_log::logged(reg, Setting::Provider, Change::Removed, name.trim(), "")
                .await?;
            println!("removed provider {}", name.trim());
        }
        ProviderCommand::List { out } => {
            let list = reg.list_providers().await?;
            let all = reg.audit().await?;
            print_accounts(
                &list,
                &all,
                out.json,
                |p| format!("provider:{}", p.name),
                &["NAME", "REGISTRAR", "AUTH ID"],
                |p| vec![p.name.clone(), p.registrar.clone(), p.auth_id.clone()],
            )?;
        }
        ProviderCommand::Show { name, out } => {
            let p = reg.get_provider(&name).await?;
            let all = reg.audit().await?;
            let findings = findings_of(&all, &format!("provider:{}", p.name));
            let status = reg.provider_status(&p.name).await?;
            if out.json {
                #[derive(Serialize)]
                struct Registration {
                    state: String,
                    detail: String,
                    registered_until: i64,
                    updated_at: i64,
                }
                #[derive(Serialize)]
                struct Shown<'a> {
                    #[serde(flatten)]
                    item: WithFindings<'a, accounts::provider::ProviderView>,
                    registration: Option<Registration>,
                }
                output::json(&Shown {
                    item: WithFindings { item: &p, findings },
                    registration: status.map(|s| Registration {
                        state: s.state,
                        detail: s.detail,
                        registered_until: s.registered_until,
                        updated_at: s.updated_at,
                    }),
                })?;
            } else {
                println!(
                    "provider   {}\nregistrar  {}\nauth ID    {}",
                    p.name, p.registrar, p.auth_id
                );
                match status {
                    Some(s) => println!("register   {} ({})", s.state, s.detail),
                    None => {
                        println!("register   not attempted (no server has run since it was added)")
                    }
                }
                print_findings(&findings);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
