//! `sipward advise`: which ports the internet must reach, from the data dir's providers
//! and live registrations (see [`policy::exposure`]).

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use pbx::Registry;
use policy::exposure::{self, Facts};

use crate::output::{self, Table};

pub async fn run(
    reg: &Registry,
    sip: SocketAddr,
    http: SocketAddr,
    remote_phones: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut providers = Vec::new();
    for p in reg.list_providers().await? {
        let addrs: Vec<IpAddr> = pbx::server::resolve(&p.registrar)
            .await
            .map(|a| a.ip())
            .into_iter()
            .collect();
        providers.push((p.name, addrs));
    }
    let mut conn = reg.store().pool().acquire().await?;
    let now = crate::clock().now();
    let mut remote_seen: Vec<(String, IpAddr)> = store::registrar::live_bindings(&mut conn, now)
        .await?
        .into_iter()
        .filter_map(|b| {
            let ip = b.source.parse::<SocketAddr>().ok()?.ip();
            exposure::is_public(ip).then_some((b.number, ip))
        })
        .collect();
    remote_seen.sort();
    remote_seen.dedup();
    let advice = exposure::advise(&Facts {
        sip_port: sip.port(),
        http_port: http.port(),
        http_all_interfaces: http.ip().is_unspecified(),
        providers,
        remote_declared: remote_phones,
        remote_seen,
    });
    if json {
        output::json(&advice)?;
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
    println!("\n# nftables rule set matching this advice (nft -f FILE):");
    print!("{}", advice.nftables);
    Ok(ExitCode::SUCCESS)
}
