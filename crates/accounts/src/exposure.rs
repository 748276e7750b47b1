//! What the exposure advisor ([`policy::exposure`]) looks at, read from the data dir:
//! the providers' registrars (resolved), the extensions registered from public
//! addresses, and the running server's note of forwarding headers from addresses that
//! are not trusted proxies. Shared by `sipward advise` and the console's advisor page.

use std::net::SocketAddr;

use policy::exposure::{Facts, is_public};

use crate::Result;
use crate::registry::Registry;

/// The facts for a server listening on `sip`, `tls` (SIP over TLS, if served) and
/// `http`; `remote_declared` when the administrator says phones outside the LAN will
/// register.
pub async fn facts(
    reg: &Registry,
    (sip, tls): (SocketAddr, Option<SocketAddr>),
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
    let remote: Vec<_> = store::bindings::live_bindings(&mut conn, now)
        .await?
        .into_iter()
        .filter_map(|b| {
            let ip = b.source.parse::<SocketAddr>().ok()?.ip();
            is_public(ip).then_some((b.number, ip, b.transport == "tls"))
        })
        .collect();
    let list = |keep: fn(bool) -> bool| {
        let mut v: Vec<_> = remote
            .iter()
            .filter(|(_, _, tls)| keep(*tls))
            .map(|(n, ip, _)| (n.clone(), *ip))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let remote_seen = list(|_| true);
    // Registered in clear text: UDP or TCP.
    let remote_clear = list(|tls| !tls);
    let forwarded_untrusted = store::meta::get_meta(&mut conn, META_FORWARDED_UNTRUSTED)
        .await?
        .and_then(|t| serde_json::from_str::<ForwardedNote>(&t).ok())
        .filter(|n| now - n.at <= FORWARDED_NOTE_KEPT_SECS)
        .map(|n| (n.count, n.from));
    Ok(Facts {
        sip_port: sip.port(),
        http_port: http.port(),
        http_all_interfaces: http.ip().is_unspecified(),
        providers,
        remote_declared,
        remote_seen,
        remote_clear,
        tls_port: tls.map(|a| a.port()),
        trusted_proxies: Vec::new(),
        forwarded_untrusted,
    })
}

/// The meta key where a running server notes forwarding headers from an address that
/// is not a trusted proxy.
pub const META_FORWARDED_UNTRUSTED: &str = "http_forwarded_untrusted";
/// Such a note is shown for a week.
const FORWARDED_NOTE_KEPT_SECS: i64 = 7 * 86_400;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ForwardedNote {
    at: i64,
    from: std::net::IpAddr,
    count: u64,
}

/// Notes (for `sipward advise` and the console's advisor) that requests with forwarding
/// headers came from `from`, which is not a trusted proxy: `count` of them so far.
pub async fn note_forwarded_untrusted(
    reg: &Registry,
    from: std::net::IpAddr,
    count: u64,
    now: i64,
) -> Result<()> {
    let note = ForwardedNote {
        at: now,
        from,
        count,
    };
    let text = serde_json::to_string(&note).unwrap_or_default();
    let mut conn = reg.store().conn().await?;
    store::meta::set_meta(&mut conn, META_FORWARDED_UNTRUSTED, &text).await?;
    Ok(())
}
