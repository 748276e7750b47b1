//! The exposure advisor: which of sipward's ports must be reachable from the internet,
//! from where, and why; warnings about risky set-ups; and an nftables rule set that
//! does exactly what the advice says. Pure: the facts come in, the advice goes out.

use std::net::IpAddr;

use serde::Serialize;

/// What the advice is based on.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub sip_port: u16,
    pub http_port: u16,
    /// The console and provisioning listen on every interface (0.0.0.0 or ::).
    pub http_all_interfaces: bool,
    /// VoIP providers: (name, resolved registrar addresses).
    pub providers: Vec<(String, Vec<IpAddr>)>,
    /// The administrator says phones outside the LAN register (`--remote-phones`).
    pub remote_declared: bool,
    /// Extensions registered right now from public addresses: (number, address).
    pub remote_seen: Vec<(String, IpAddr)>,
    /// Those of them registered over clear-text UDP or TCP (not TLS).
    pub remote_clear: Vec<(String, IpAddr)>,
    /// SIP over TLS is served on this port (None: no TLS).
    pub tls_port: Option<u16>,
    /// `[http] trusted_proxies`, as configured.
    pub trusted_proxies: Vec<String>,
    /// Requests with `Forwarded` / `X-Forwarded-For` from an address not among them,
    /// seen lately by the running server: (how many, the last such address).
    pub forwarded_untrusted: Option<(u64, IpAddr)>,
}

/// One port and whether the internet must reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Port {
    pub port: u16,
    /// `udp` or `tcp`.
    pub protocol: &'static str,
    /// `sip`, `sips` (SIP over TLS), `provisioning` or `console`.
    pub service: &'static str,
    /// Whether to open it to the internet.
    pub open: bool,
    /// Only from these addresses (empty with `open`: from anywhere).
    pub from: Vec<IpAddr>,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// A stable id, such as `sip.default_port`.
    pub id: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Advice {
    pub ports: Vec<Port>,
    pub warnings: Vec<Warning>,
    pub nftables: String,
}

/// Whether an address is on the public internet (not loopback, private, link-local,
/// carrier-grade NAT, documentation or unique-local).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || v4.is_documentation())
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

pub fn advise(f: &Facts) -> Advice {
    let remote = f.remote_declared || !f.remote_seen.is_empty();
    let provider_ips: Vec<IpAddr> = {
        let mut v: Vec<IpAddr> = f.providers.iter().flat_map(|(_, a)| a.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let mut ports = Vec::new();
    let mut warnings = Vec::new();

    let sip = |protocol, open, from: Vec<IpAddr>, why: String| Port {
        port: f.sip_port,
        protocol,
        service: "sip",
        open,
        from,
        why,
    };
    if remote {
        let who = if f.remote_seen.is_empty() {
            "phones outside the LAN register (--remote-phones)".to_owned()
        } else {
            let list: Vec<String> = f
                .remote_seen
                .iter()
                .take(5)
                .map(|(n, ip)| format!("{n} from {ip}"))
                .collect();
            format!(
                "extensions register from public addresses ({})",
                list.join(", ")
            )
        };
        match f.tls_port {
            Some(tls) => {
                ports.push(Port {
                    port: tls,
                    protocol: "tcp",
                    service: "sips",
                    open: true,
                    from: vec![],
                    why: format!("{who}: over TLS; they can move, so from anywhere"),
                });
                if f.remote_clear.is_empty() {
                    // Every remote phone is on TLS: clear-text SIP is for providers only.
                    let why = if f.providers.is_empty() {
                        "remote phones use TLS: clear-text SIP stays on the LAN".to_owned()
                    } else {
                        "remote phones use TLS: clear-text SIP only from the VoIP providers' addresses".to_owned()
                    };
                    if f.providers.is_empty() {
                        for protocol in ["udp", "tcp"] {
                            ports.push(sip(protocol, false, vec![], why.clone()));
                        }
                    } else {
                        ports.push(sip("udp", true, provider_ips.clone(), why));
                    }
                } else {
                    let list: Vec<String> = f
                        .remote_clear
                        .iter()
                        .take(5)
                        .map(|(n, ip)| format!("{n} from {ip}"))
                        .collect();
                    for protocol in ["udp", "tcp"] {
                        ports.push(sip(
                            protocol,
                            true,
                            vec![],
                            format!(
                                "remote phones still register in clear text ({}); close it to all but the providers once they use TLS",
                                list.join(", ")
                            ),
                        ));
                    }
                    warnings.push(Warning {
                        id: "sip.udp_for_remote_phones",
                        message: format!(
                            "remote phones register over UDP or TCP in clear text ({}): their digest logins and call set-ups cross the internet unencrypted; provision them with TLS (`sipward ext update NUMBER --transport tls`, or [provisioning] transport = \"tls\")",
                            list.join(", ")
                        ),
                    });
                }
            }
            None => {
                for protocol in ["udp", "tcp"] {
                    ports.push(sip(
                        protocol,
                        true,
                        vec![],
                        format!("{who}; they can move, so from anywhere"),
                    ));
                }
                warnings.push(Warning {
                    id: "sip.udp_for_remote_phones",
                    message: "remote phones use SIP over UDP or TCP in clear text: their digest logins and call set-ups cross the internet unencrypted; serve SIP over TLS ([tls] enabled = true) and provision them with it".into(),
                });
            }
        }
    } else if !f.providers.is_empty() {
        let names: Vec<&str> = f.providers.iter().map(|(n, _)| n.as_str()).collect();
        let why = format!(
            "VoIP provider(s) {} send inbound calls here; only from their addresses",
            names.join(", ")
        );
        if provider_ips.is_empty() {
            warnings.push(Warning {
                id: "sip.provider_unresolved",
                message: "no provider registrar address resolves: the SIP rule below opens to nobody until one does".into(),
            });
        }
        ports.push(sip("udp", true, provider_ips.clone(), why));
    } else {
        for protocol in ["udp", "tcp"] {
            ports.push(sip(
                protocol,
                false,
                vec![],
                "no VoIP provider and no remote phones: SIP stays on the LAN".into(),
            ));
        }
    }
    if remote && !f.providers.is_empty() {
        // Already open from anywhere; say why providers need it too.
        for p in ports
            .iter_mut()
            .filter(|p| p.service == "sip" && p.from.is_empty() && p.open)
        {
            p.why
                .push_str("; VoIP providers send inbound calls here too");
        }
    }
    if f.sip_port == 5060 && ports.iter().any(|p| p.service == "sip" && p.open) {
        warnings.push(Warning {
            id: "sip.default_port",
            message: "SIP is on the default port 5060, the first port every scanner tries; a different port (for example 5062 or a high port) cuts the scanning noise (it is no protection by itself)".into(),
        });
    }

    ports.push(Port {
        port: f.http_port,
        protocol: "tcp",
        service: "provisioning",
        open: false,
        from: vec![],
        why: if remote {
            "remote phones fetch their files under /prov/: publish only that path through an HTTPS reverse proxy, never this port itself (it also serves /metrics and the console), and list the proxy in [http] trusted_proxies".into()
        } else {
            "phones on the LAN fetch their files here; nothing outside needs it".into()
        },
    });
    ports.push(Port {
        port: f.http_port,
        protocol: "tcp",
        service: "console",
        open: false,
        from: vec![],
        why: "the web console and /metrics are for administrators: reach them over the LAN or a VPN, never from the internet".into(),
    });
    if f.http_all_interfaces {
        warnings.push(Warning {
            id: "http.all_interfaces",
            message: "the console listens on every interface: bind --http to a LAN or loopback address so a firewall mistake cannot expose it".into(),
        });
    }
    if f.http_port == 80 || f.http_port == 8080 {
        warnings.push(Warning {
            id: "http.default_port",
            message: format!(
                "the console listens on the common port {}; keep it off the internet",
                f.http_port
            ),
        });
    }
    if remote && f.trusted_proxies.is_empty() {
        warnings.push(Warning {
            id: "http.trusted_proxies",
            message: "remote phones reach provisioning through a reverse proxy, so every request comes from the proxy's address: list it in [http] trusted_proxies = [\"ADDRESS\"], so that bans, provisioning probe counting, the console's allow list and the audit log see each phone's real address (Forwarded / X-Forwarded-For are honoured only from listed proxies). Without it, a few bad requests from anywhere ban the proxy and every remote phone with it, and allow-listing the proxy turns probe detection off".into(),
        });
    }
    if let Some((count, from)) = f.forwarded_untrusted {
        warnings.push(Warning {
            id: "http.forwarded_untrusted",
            message: format!(
                "{count} HTTP requests carried Forwarded / X-Forwarded-For from addresses not in [http] trusted_proxies (the last from {from}); they were judged by that address, not the one they name. If {from} is your reverse proxy, list it; if not, someone is posing as other clients"
            ),
        });
    }
    let nftables = nftables(&ports, remote);
    Advice {
        ports,
        warnings,
        nftables,
    }
}

/// An inet-family table that drops everything new from outside except what `ports` opens
/// (the LAN's private ranges and loopback are always let in).
fn nftables(ports: &[Port], remote: bool) -> String {
    let mut s = String::from(
        "table inet sipward {\n  chain input {\n    type filter hook input priority 0; policy drop;\n    ct state established,related accept\n    iif lo accept\n    ip saddr { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 } accept\n    ip6 saddr { fc00::/7, fe80::/10 } accept\n    icmp type echo-request accept\n    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, echo-request } accept\n",
    );
    for p in ports.iter().filter(|p| p.open) {
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = p.from.iter().partition(|a| a.is_ipv4());
        let list = |v: &[IpAddr]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if p.from.is_empty() {
            s.push_str(&format!(
                "    {} dport {} accept  # {}\n",
                p.protocol, p.port, p.service
            ));
        } else {
            if !v4.is_empty() {
                s.push_str(&format!(
                    "    ip saddr {{ {} }} {} dport {} accept  # {} (providers)\n",
                    list(&v4),
                    p.protocol,
                    p.port,
                    p.service
                ));
            }
            if !v6.is_empty() {
                s.push_str(&format!(
                    "    ip6 saddr {{ {} }} {} dport {} accept  # {} (providers)\n",
                    list(&v6),
                    p.protocol,
                    p.port,
                    p.service
                ));
            }
        }
    }
    if remote {
        s.push_str("    tcp dport 443 accept  # HTTPS reverse proxy publishing /prov/ only\n");
    }
    s.push_str("  }\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            sip_port: 5060,
            http_port: 8080,
            ..Facts::default()
        }
    }

    fn open(a: &Advice, service: &str) -> Vec<(&'static str, Vec<IpAddr>)> {
        a.ports
            .iter()
            .filter(|p| p.service == service && p.open)
            .map(|p| (p.protocol, p.from.clone()))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_advisor_explains_trusted_proxies_and_warns_about_unlisted_forwarding() {
        let mut f = facts();
        f.remote_declared = true;
        let a = advise(&f);
        let w = a
            .warnings
            .iter()
            .find(|w| w.id == "http.trusted_proxies")
            .expect("explained");
        assert!(
            w.message.contains("[http] trusted_proxies"),
            "{}",
            w.message
        );
        f.trusted_proxies = vec!["192.0.2.10/32".into()];
        assert!(
            advise(&f)
                .warnings
                .iter()
                .all(|w| w.id != "http.trusted_proxies")
        );
        f.forwarded_untrusted = Some((3, ip("198.51.100.9")));
        let a = advise(&f);
        let w = a
            .warnings
            .iter()
            .find(|w| w.id == "http.forwarded_untrusted")
            .expect("warned");
        assert!(w.message.starts_with("3 HTTP requests") && w.message.contains("198.51.100.9"));
        assert!(
            advise(&facts())
                .warnings
                .iter()
                .all(|w| !w.id.starts_with("http.t") && w.id != "http.forwarded_untrusted"),
            "nothing to say on a LAN-only set-up without such requests"
        );
    }

    #[test]
    fn lan_only_opens_nothing() {
        let a = advise(&facts());
        assert!(a.ports.iter().all(|p| !p.open));
        assert!(a.warnings.iter().all(|w| w.id != "sip.default_port"));
        assert!(!a.nftables.contains("dport 5060"));
        assert!(a.nftables.contains("policy drop"));
    }

    #[test]
    fn a_provider_opens_sip_from_its_addresses_only() {
        let mut f = facts();
        f.providers = vec![(
            "carrier".into(),
            vec![ip("198.51.100.7"), ip("2001:db8::7")],
        )];
        let a = advise(&f);
        assert_eq!(
            open(&a, "sip"),
            vec![("udp", vec![ip("198.51.100.7"), ip("2001:db8::7")])]
        );
        assert!(open(&a, "console").is_empty() && open(&a, "provisioning").is_empty());
        assert!(
            a.nftables
                .contains("ip saddr { 198.51.100.7 } udp dport 5060 accept")
        );
        assert!(
            a.nftables
                .contains("ip6 saddr { 2001:db8::7 } udp dport 5060 accept")
        );
        assert!(a.warnings.iter().any(|w| w.id == "sip.default_port"));
    }

    #[test]
    fn remote_phones_open_sip_to_all_and_warn_about_udp() {
        let mut f = facts();
        f.sip_port = 5062;
        f.remote_seen = vec![("1001".into(), ip("203.0.113.9"))];
        let a = advise(&f);
        assert_eq!(open(&a, "sip"), vec![("udp", vec![]), ("tcp", vec![])]);
        assert!(
            a.warnings
                .iter()
                .any(|w| w.id == "sip.udp_for_remote_phones")
        );
        assert!(a.warnings.iter().all(|w| w.id != "sip.default_port"));
        assert!(a.nftables.contains("udp dport 5062 accept"));
        assert!(a.nftables.contains("tcp dport 443 accept"));
        assert!(!a.nftables.contains("dport 8080"), "never the console");
        assert!(
            a.ports
                .iter()
                .any(|p| p.service == "sip" && p.why.contains("1001 from 203.0.113.9"))
        );
    }

    #[test]
    fn with_tls_remote_phones_get_the_tls_port_and_clear_sip_only_the_providers() {
        let mut f = facts();
        f.tls_port = Some(5061);
        f.remote_seen = vec![("1001".into(), ip("203.0.113.9"))];
        f.providers = vec![("carrier".into(), vec![ip("198.51.100.7")])];
        // 1001 still registers over UDP: 5060 stays open to all, with the warning.
        f.remote_clear = f.remote_seen.clone();
        let a = advise(&f);
        assert_eq!(
            open(&a, "sips"),
            vec![("tcp", vec![])],
            "the TLS port is open to the world"
        );
        assert_eq!(open(&a, "sip"), vec![("udp", vec![]), ("tcp", vec![])]);
        let w = a
            .warnings
            .iter()
            .find(|w| w.id == "sip.udp_for_remote_phones")
            .expect("clear-text warning");
        assert!(w.message.contains("1001 from 203.0.113.9"), "{}", w.message);
        // Once it registers over TLS: the warning goes, 5060 only from the provider.
        f.remote_clear.clear();
        let a = advise(&f);
        assert!(
            a.warnings
                .iter()
                .all(|w| w.id != "sip.udp_for_remote_phones")
        );
        assert_eq!(open(&a, "sips"), vec![("tcp", vec![])]);
        assert_eq!(open(&a, "sip"), vec![("udp", vec![ip("198.51.100.7")])]);
        assert!(
            a.nftables.contains("tcp dport 5061 accept  # sips"),
            "{}",
            a.nftables
        );
        assert!(
            a.nftables
                .contains("ip saddr { 198.51.100.7 } udp dport 5060 accept  # sip (providers)"),
            "{}",
            a.nftables
        );
        assert!(
            !a.nftables.contains("\n    udp dport 5060 accept"),
            "{}",
            a.nftables
        );
        // Without providers, clear-text SIP stays closed.
        f.providers.clear();
        let a = advise(&f);
        assert!(open(&a, "sip").is_empty());
        assert_eq!(open(&a, "sips"), vec![("tcp", vec![])]);
    }

    #[test]
    fn both_open_sip_to_all_and_name_the_providers() {
        let mut f = facts();
        f.remote_declared = true;
        f.providers = vec![("carrier".into(), vec![ip("198.51.100.7")])];
        let a = advise(&f);
        assert_eq!(open(&a, "sip"), vec![("udp", vec![]), ("tcp", vec![])]);
        assert!(a.ports.iter().any(|p| p.why.contains("providers")));
    }

    #[test]
    fn a_console_on_every_interface_is_a_warning() {
        let mut f = facts();
        f.http_all_interfaces = true;
        let a = advise(&f);
        assert!(a.warnings.iter().any(|w| w.id == "http.all_interfaces"));
        assert!(!a.nftables.contains("8080"));
    }

    #[test]
    fn public_addresses() {
        for p in ["203.0.113.9", "8.8.8.8", "2a00:1450::1"] {
            let public = !p.starts_with("203.0.113");
            assert_eq!(is_public(ip(p)), public, "{p}");
        }
        for private in [
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "127.0.0.1",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
            "::1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
    }
}
