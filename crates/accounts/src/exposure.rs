//! What the exposure advisor ([`policy::exposure`]) looks at, read from the data dir:
//! the providers' registrars (resolved) and the extensions registered from public
//! addresses. Shared by `sipward advise` and the console's advisor page.

use std::net::SocketAddr;

use policy::exposure::{Facts, is_public};

use crate::Result;
use crate::registry::Registry;

/// The facts for a server listening on `sip` and `http`; `remote_declared` when the
/// administrator says phones outside the LAN will register.
pub async fn facts(
    reg: &Registry,
    sip: SocketAddr,
    http: SocketAddr,
    remote_declared: bool,
    now: i64,
) -> Result<Facts> {
    let mut providers = Vec::new();
    for p in reg.list_providers().await? {
        let addrs = crate::trunks::resolve(&p.registrar)
            .await
            .map(|a| a.ip())
            .into_iter()
            .collect();
        providers.push((p.name, addrs));
    }
    let mut conn = reg.store().conn().await?;
    let mut remote_seen: Vec<_> = store::bindings::live_bindings(&mut conn, now)
        .await?
        .into_iter()
        .filter_map(|b| {
            let ip = b.source.parse::<SocketAddr>().ok()?.ip();
            is_public(ip).then_some((b.number, ip))
        })
        .collect();
    remote_seen.sort();
    remote_seen.dedup();
    Ok(Facts {
        sip_port: sip.port(),
        http_port: http.port(),
        http_all_interfaces: http.ip().is_unspecified(),
        providers,
        remote_declared,
        remote_seen,
    })
}
