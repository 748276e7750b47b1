//! `sipward advise`: which ports the internet must reach, from the data dir's providers
//! and live registrations (see [`policy::exposure`]), and the config's settings that
//! weaken a defence (see [`policy::weakening`]).

use std::net::SocketAddr;
use std::process::ExitCode;

use accounts::Registry;
use policy::exposure;

use crate::config::Config;
use crate::output::{self, Table};

/// The advice with the weakened settings beside it (`--json`).
#[derive(serde::Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    advice: &'a exposure::Advice,
    findings: &'a [policy::Finding],
}

pub async fn run(
    reg: &Registry,
    config: &Config,
    sip: SocketAddr,
    http: SocketAddr,
    remote_phones: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // SIP over TLS as `serve` would listen for it with this config.
    let tls = config.tls.enabled.then(|| {
        config
            .tls
            .listen
            .unwrap_or_else(|| super::serve::next_port(sip))
    });
    let mut facts = accounts::exposure::facts(
        reg,
        (sip, tls),
        http,
        remote_phones,
        crate::clock::clock().now(),
    )
    .await?;
    facts.trusted_proxies = config
        .http
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    let advice = exposure::advise(&facts);
    let guard = reg.guard_view().await?.policy;
    let findings = config.findings_with(&guard);
    if json {
        output::json(&Report {
            advice: &advice,
            findings: &findings,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["PORT", "SERVICE", "INTERNET", "WHY"]);
    for p in &advice.ports {
        let reach = match (p.open, p.from.is_empty()) {
            (false, _) => "closed".to_owned(),
            (true, true) => "open".to_owned(),
            (true, false) => format!(
                "from {}",
                p.from
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        t.row(
            vec![
                format!("{}/{}", p.port, p.protocol),
                p.service.to_owned(),
                reach,
                p.why.clone(),
            ],
            false,
        );
    }
    t.print()?;
    for w in &advice.warnings {
        println!("warning {}: {}", w.id, w.message);
    }
    for f in &findings {
        println!(
            "{} {} ({}): {}",
            f.severity.as_str(),
            f.rule,
            f.field,
            f.message
        );
    }
    println!("\n# nftables rule set matching this advice (nft -f FILE):");
    print!("{}", advice.nftables);
    Ok(ExitCode::SUCCESS)
}
