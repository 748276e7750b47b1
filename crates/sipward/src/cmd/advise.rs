//! `sipward advise`: which ports the internet must reach, from the data dir's providers
//! and live registrations (see [`policy::exposure`]).

use std::net::SocketAddr;
use std::process::ExitCode;

use accounts::Registry;
use policy::exposure;

use crate::output::{self, Table};

pub async fn run(
    reg: &Registry,
    sip: SocketAddr,
    http: SocketAddr,
    remote_phones: bool,
    trusted_proxies: &[ipnet::IpNet],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut facts =
        accounts::exposure::facts(reg, sip, http, remote_phones, crate::clock::clock().now())
            .await?;
    facts.trusted_proxies = trusted_proxies.iter().map(ToString::to_string).collect();
    let advice = exposure::advise(&facts);
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
