//! `sipward route ...`, `sipward did ...` and `sipward calls`.

use std::process::ExitCode;

use accounts::Registry;
use accounts::audit_log::{Change, Setting};
use accounts::trunks::NewRoute;
use serde::Serialize;

use crate::cli::{DidCommand, RouteCommand};
use crate::output::{self, Table};

pub async fn route(reg: &Registry, cmd: RouteCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RouteCommand::Add {
            name,
            pattern,
            trunk,
            strip,
            prepend,
            priority,
            out,
        } => {
            let r = reg
                .add_route(
                    &name,
                    NewRoute {
                        pattern,
                        trunk,
                        strip,
                        prepend,
                        priority,
                    },
                )
                .await?;
            super::audit_log::logged(reg, Setting::Route, Change::Added, &r.name, "").await?;
            if out.json {
                output::json(&r)?;
            } else {
                println!(
                    "added route {} ({} -> {} {}, priority {})",
                    r.name, r.pattern, r.trunk_kind, r.trunk, r.priority
                );
            }
        }
        RouteCommand::Remove { name } => {
            reg.remove_route(&name).await?;
            super::audit_log::logged(reg, Setting::Route, Change::Removed, name.trim(), "").await?;
            println!("removed route {}", name.trim());
        }
        RouteCommand::List { out } => {
            let list = reg.list_routes().await?;
            if out.json {
                return output::json(&list).map(|()| ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["PRIORITY", "NAME", "PATTERN", "TRUNK", "STRIP", "PREPEND"]);
            for r in &list {
                t.row(
                    vec![
                        r.priority.to_string(),
                        r.name.clone(),
                        r.pattern.clone(),
                        format!("{}:{}", r.trunk_kind, r.trunk),
                        r.strip.to_string(),
                        r.prepend.clone(),
                    ],
                    false,
                );
            }
            t.print()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn did(reg: &Registry, cmd: DidCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DidCommand::Add { did, number, out } => {
            let d = reg.add_did(&did, &number).await?;
            super::audit_log::logged(reg, Setting::Did, Change::Added, &d.did, "").await?;
            if out.json {
                output::json(&d)?;
            } else {
                println!("added DID {} -> extension {}", d.did, d.number);
            }
        }
        DidCommand::Remove { did } => {
            reg.remove_did(&did).await?;
            let id = policy::trunk::normalize_did(&did).unwrap_or_default();
            super::audit_log::logged(reg, Setting::Did, Change::Removed, &id, "").await?;
            println!("removed DID {}", did.trim());
        }
        DidCommand::List { out } => {
            let list = reg.list_dids().await?;
            if out.json {
                return output::json(&list).map(|()| ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["DID", "EXTENSION"]);
            for d in &list {
                t.row(vec![d.did.clone(), d.number.clone()], false);
            }
            t.print()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct CallsOut {
    /// When the running server last wrote the list (epoch seconds; 0: no server runs).
    written_at: i64,
    calls: Vec<CallOut>,
}

#[derive(Serialize)]
struct CallOut {
    id: String,
    caller: String,
    callee: String,
    kind: String,
    trunk: String,
    state: String,
    started_at: i64,
    answered_at: Option<i64>,
}

pub async fn calls(reg: &Registry, json: bool) -> anyhow::Result<ExitCode> {
    let (rows, written_at) = reg.active_calls().await?;
    let calls: Vec<CallOut> = rows
        .into_iter()
        .map(|c| CallOut {
            id: c.id,
            caller: c.caller,
            callee: c.callee,
            kind: c.kind,
            trunk: c.trunk,
            state: c.state,
            started_at: c.started_at,
            answered_at: (c.answered_at != 0).then_some(c.answered_at),
        })
        .collect();
    if json {
        output::json(&CallsOut { written_at, calls })?;
        return Ok(ExitCode::SUCCESS);
    }
    if written_at == 0 {
        eprintln!("no server is running on this data dir (or it has not written its calls yet)");
    }
    let mut t = Table::new(&["CALLER", "DIALLED", "KIND", "TRUNK", "STATE", "STARTED"]);
    for c in &calls {
        t.row(
            vec![
                c.caller.clone(),
                c.callee.clone(),
                c.kind.clone(),
                c.trunk.clone(),
                c.state.clone(),
                c.started_at.to_string(),
            ],
            false,
        );
    }
    t.print()?;
    Ok(ExitCode::SUCCESS)
}
