//! Who an HTTP request comes from: the TCP peer, or, when the peer is a trusted reverse
//! proxy (`[http] trusted_proxies`), the client the proxy names in `Forwarded`
//! (RFC 7239) or `X-Forwarded-For`. Such headers are honoured only from listed proxies,
//! and only up to the rightmost hop that is not itself a listed proxy: everything to its
//! left was written by someone we do not trust. Bans, provisioning probe counting, the
//! console's allow list, the login lockout and the audit log all use this address.
//!
//! A trusted proxy writes one of the two headers; the other, when there is one, may
//! come from the client unchanged. So when both are present and name different
//! clients, or when the hop to the left of our last proxy is no address (`unknown`, an
//! obfuscated node, junk), the proxy's client is unknown. It is then judged as a
//! stand-in address of that proxy in the RFC 6666 discard prefix `100::/64` (see
//! [`stand_in`]): never the proxy's own address, which a ban would take from every
//! client behind it, and never an address a client chose.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

/// The real client of a request (inserted by [`crate::entry`] into every request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    /// The address requests are judged by.
    pub ip: IpAddr,
    /// The TCP peer (the proxy, when one forwarded the request).
    pub peer: SocketAddr,
    /// Whether `ip` came from a trusted proxy's forwarding header.
    pub forwarded: bool,
}

/// What the forwarding headers of a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// No `Forwarded` or `X-Forwarded-For` header.
    None,
    /// From a trusted proxy: honoured.
    Honoured,
    /// From an address that is not a trusted proxy: ignored (and worth a warning: a
    /// proxy not listed, or someone posing as another client).
    Untrusted,
}

/// The addresses a request passed through, leftmost (the original client) first, as
/// `Forwarded` lists them. `None` marks a hop that is not an address (`unknown`, an
/// obfuscated name): nothing to its left can be trusted.
pub fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("forwarded")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .flat_map(|v| v.split(','))
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, v)| node_address(v.trim()))
        })
        .collect()
}

/// [`forwarded_chain`] for `X-Forwarded-For`.
pub fn x_forwarded_for_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .flat_map(|v| v.split(','))
        .map(|hop| node_address(hop.trim()))
        .collect()
}

/// The address an unknown client of the trusted proxy `proxy` is judged by: in the
/// RFC 6666 discard-only prefix `100::/64`, with the proxy's address (IPv4) or its low
/// 64 bits (IPv6) below it. Probes and failed logins of such clients are counted, and
/// banned, under it: no real host has it, and the proxy's own address is untouched.
pub fn stand_in(proxy: IpAddr) -> IpAddr {
    let low: [u16; 4] = match proxy.to_canonical() {
        IpAddr::V4(a) => {
            let o = a.octets();
            [
                0,
                0,
                u16::from_be_bytes([o[0], o[1]]),
                u16::from_be_bytes([o[2], o[3]]),
            ]
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            [s[4], s[5], s[6], s[7]]
        }
    };
    IpAddr::V6(std::net::Ipv6Addr::new(
        0x100, 0, 0, 0, low[0], low[1], low[2], low[3],
    ))
}

/// Who one forwarding header says the client is, walking from the right past our own
/// proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    /// The first hop that is not a trusted proxy.
    Client(IpAddr),
    /// The hop left of the trusted proxy `.0` is no address: its client is unknown.
    Unknown(IpAddr),
    /// Every hop is a trusted proxy: the leftmost of them.
    Proxy(IpAddr),
}

fn walk(chain: &[Option<IpAddr>], peer: IpAddr, is_trusted: impl Fn(&IpAddr) -> bool) -> Hop {
    let mut last_trusted = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip) => last_trusted = ip.to_canonical(),
            Some(ip) => return Hop::Client(ip.to_canonical()),
            None => return Hop::Unknown(last_trusted),
        }
    }
    Hop::Proxy(last_trusted)
}

/// The address of an RFC 7239 node (`192.0.2.7`, `"[2001:db8::1]:4711"`,
/// `192.0.2.7:80`); `None` for `unknown`, obfuscated identifiers and junk.
fn node_address(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// The real client of a request from `peer` with these headers.
pub fn client_of(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> (Client, Forwarding) {
    let direct = Client {
        ip: peer.ip().to_canonical(),
        peer,
        forwarded: false,
    };
    let rfc = forwarded_chain(headers);
    let xff = x_forwarded_for_chain(headers);
    if rfc.is_empty() && xff.is_empty() {
        return (direct, Forwarding::None);
    }
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    if !is_trusted(&direct.ip) {
        return (direct, Forwarding::Untrusted);
    }
    // From the right: skip our own proxies; the first hop that is not one is the client.
    let hop = match (rfc.is_empty(), xff.is_empty()) {
        (false, true) => walk(&rfc, direct.ip, is_trusted),
        (true, false) => walk(&xff, direct.ip, is_trusted),
        // Both: our proxy wrote one, the client may have written the other, and we
        // cannot tell which. Agreeing, they name the client; otherwise it is unknown.
        _ => {
            let (a, b) = (
                walk(&rfc, direct.ip, is_trusted),
                walk(&xff, direct.ip, is_trusted),
            );
            if a == b { a } else { Hop::Unknown(direct.ip) }
        }
    };
    let ip = match hop {
        Hop::Client(ip) | Hop::Proxy(ip) => ip,
        Hop::Unknown(proxy) => stand_in(proxy),
    };
    let client = Client {
        ip,
        peer,
        forwarded: ip != direct.ip,
    };
    (client, Forwarding::Honoured)
}

/// The real client's address of a request: the [`Client`] the entry layer found, or
/// the TCP peer where that layer did not run.
pub fn client_ip(parts: &Parts) -> IpAddr {
    if let Some(c) = parts.extensions.get::<Client>() {
        return c.ip;
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |c| {
            c.0.ip().to_canonical()
        })
}

/// The extractor for handlers: the real client's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    const PROXY: &str = "10.0.0.5:41000";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let peer: SocketAddr = PROXY.parse().expect("addr");
        let xff = headers(&[("x-forwarded-for", "203.0.113.9")]);
        let (c, f) = client_of(peer, &xff, &[]);
        assert_eq!((c.ip, f), (ip("10.0.0.5"), Forwarding::Untrusted));
        let (c, f) = client_of(peer, &xff, &nets(&["10.0.0.0/24"]));
        assert_eq!(
            (c.ip, c.forwarded, f),
            (ip("203.0.113.9"), true, Forwarding::Honoured)
        );
        assert_eq!(c.peer, peer);
        let (c, f) = client_of(peer, &HeaderMap::new(), &nets(&["10.0.0.0/24"]));
        assert_eq!((c.ip, f), (ip("10.0.0.5"), Forwarding::None));
    }

    #[test]
    fn the_rightmost_hop_that_is_not_our_proxy_is_the_client() {
        let peer: SocketAddr = PROXY.parse().expect("addr");
        let trusted = nets(&["10.0.0.0/24"]);
        // The client wrote a fake first hop; the proxy appended the address it saw.
        let spoof = headers(&[("x-forwarded-for", "192.0.2.1, 198.51.100.7")]);
        assert_eq!(client_of(peer, &spoof, &trusted).0.ip, ip("198.51.100.7"));
        // Two proxies of ours in a row, the header split over two fields.
        let two = headers(&[
            ("x-forwarded-for", "192.0.2.1, 198.51.100.7"),
            ("x-forwarded-for", "10.0.0.9"),
        ]);
        assert_eq!(client_of(peer, &two, &trusted).0.ip, ip("198.51.100.7"));
        // RFC 7239.
        let rfc = headers(&[
            ("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43"),
            (
                "forwarded",
                "for=\"[2001:db8:cafe::17]:4711\", for=10.0.0.9",
            ),
        ]);
        assert_eq!(
            client_of(peer, &rfc, &trusted).0.ip,
            ip("2001:db8:cafe::17")
        );
        // Both headers, naming different clients: one was the client's own, and
        // which one cannot be told, so neither is believed.
        let both = headers(&[
            ("forwarded", "for=198.51.100.7"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        let (c, _) = client_of(peer, &both, &trusted);
        assert_eq!((c.ip, c.forwarded), (ip("100::a00:5"), true));
        // Both, agreeing: that client.
        let agree = headers(&[
            ("forwarded", "for=203.0.113.9"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(client_of(peer, &agree, &trusted).0.ip, ip("203.0.113.9"));
        // A hop that is not an address: the client of the proxy that wrote it is
        // unknown, judged as that proxy's stand-in, never as the proxy.
        let hidden = headers(&[("forwarded", "for=192.0.2.1, for=_hidden, for=10.0.0.9")]);
        let (c, _) = client_of(peer, &hidden, &trusted);
        assert_eq!((c.ip, c.forwarded), (ip("100::a00:9"), true));
        let unknown = headers(&[
            ("forwarded", "for=unknown"),
            ("x-forwarded-for", "203.0.113.77"),
        ]);
        assert_eq!(client_of(peer, &unknown, &trusted).0.ip, ip("100::a00:5"));
        // Every hop ours: the leftmost.
        let ours = headers(&[("x-forwarded-for", "10.0.0.7, 10.0.0.8")]);
        assert_eq!(client_of(peer, &ours, &trusted).0.ip, ip("10.0.0.7"));
        // Junk is not an address: unknown.
        let junk = headers(&[("x-forwarded-for", "<script>, 10.0.0.8")]);
        assert_eq!(client_of(peer, &junk, &trusted).0.ip, ip("100::a00:8"));
        assert_eq!(
            stand_in(ip("2001:db8::1:2:3:4")),
            ip("100::1:2:3:4"),
            "IPv6 proxies keep their low 64 bits"
        );
        // IPv4-mapped peers (a dual-stack listener) match IPv4 networks.
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:41000".parse().expect("addr");
        let xff = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_of(mapped, &xff, &trusted).0.ip, ip("203.0.113.9"));
    }
}
