//! Trunks in the running server: where each gateway and provider is (resolved at load),
//! which route a dialled number takes and what number then leaves, which source
//! addresses are trunks (their INVITEs are not challenged; they reach extensions only
//! through DIDs), and the trunk addresses the egress rule lets calls and provider
//! REGISTERs go to.
//!
//! A gateway is a trunk, not an extension: its registration (on its virtual number)
//! only tells sipward where it is, and a call reaches it only through a route.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use accounts::trunks::TrunkSet;
use policy::secret::Secret;
use policy::trunk::{TrunkKind, normalize_did};

use crate::flow::Flow;

/// The host part of `host[:port]` (brackets kept for IPv6), for URIs.
pub fn domain_of(host_port: &str) -> &str {
    if host_port.starts_with('[') {
        return host_port.split_inclusive(']').next().unwrap_or(host_port);
    }
    host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
}

/// Where a call to a trunk goes and how sipward identifies itself there.
#[derive(Clone, Debug)]
pub struct Target {
    /// `gateway:NAME` or `provider:NAME`.
    pub label: String,
    pub flow: Flow,
    /// The host for the Request-URI, From and To.
    pub domain: String,
    /// The user part of our From: the account at a provider, the calling extension at
    /// a gateway (its caller ID).
    pub from_user: String,
    pub auth_id: String,
    pub password: Secret,
}

/// Where an external number goes.
#[derive(Debug)]
pub enum Routed {
    /// No route matches it (`404`).
    NoRoute,
    /// The route's trunk has no address now: its host did not resolve (`503`).
    NoAddress,
    /// This trunk, with the number as the route rewrote it.
    To(Target, String),
}

/// A provider account the registration client keeps registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderAccount {
    pub name: String,
    pub addr: SocketAddr,
    pub domain: String,
    pub auth_id: String,
    pub password: Secret,
}

#[derive(Debug, Default)]
struct Loaded {
    set: TrunkSet,
    /// Label (`gateway:NAME`, `provider:NAME`) -> resolved address.
    addrs: HashMap<String, SocketAddr>,
    /// Source IP -> trunk label.
    ips: HashMap<IpAddr, String>,
}

/// The trunk set in force, swapped whole on every reload.
#[derive(Debug, Default)]
pub struct Trunks {
    loaded: RwLock<Arc<Loaded>>,
}

impl Trunks {
    fn get(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the trunk set; `resolve` gives each `host[:port]` its address (None:
    /// not resolvable now; calls to it fail with 503 until the next load). Returns the
    /// labels of the trunks the operator withdrew: removed, or moved to another
    /// configured host. Their calls have lost their way and must end; a host that
    /// merely fails to resolve this time withdraws nothing.
    pub fn replace(
        &self,
        set: TrunkSet,
        resolve: impl Fn(&str) -> Option<SocketAddr>,
    ) -> Vec<String> {
        let configured = |set: &TrunkSet| -> HashMap<String, String> {
            set.gateways
                .iter()
                .map(|g| (format!("gateway:{}", g.name), g.host.clone()))
                .chain(
                    set.providers
                        .iter()
                        .map(|p| (format!("provider:{}", p.name), p.registrar.clone())),
                )
                .collect()
        };
        let now = configured(&set);
        let mut withdrawn: Vec<String> = configured(&self.get().set)
            .into_iter()
            .filter(|(label, host)| now.get(label) != Some(host))
            .map(|(label, _)| label)
            .collect();
        withdrawn.sort();
        let mut addrs = HashMap::new();
        let mut ips = HashMap::new();
        for g in &set.gateways {
            if let Some(a) = resolve(&g.host) {
                let label = format!("gateway:{}", g.name);
                ips.insert(a.ip(), label.clone());
                addrs.insert(label, a);
            }
        }
        for p in &set.providers {
            if let Some(a) = resolve(&p.registrar) {
                let label = format!("provider:{}", p.name);
                ips.insert(a.ip(), label.clone());
                addrs.insert(label, a);
            }
        }
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Loaded { set, addrs, ips });
        withdrawn
    }

    /// The provider accounts with an address now (what the registration client keeps
    /// registered).
    pub fn providers(&self) -> Vec<ProviderAccount> {
        let l = self.get();
        l.set
            .providers
            .iter()
            .filter_map(|p| {
                Some(ProviderAccount {
                    addr: *l.addrs.get(&format!("provider:{}", p.name))?,
                    name: p.name.clone(),
                    domain: domain_of(&p.registrar).to_owned(),
                    auth_id: p.auth_id.clone(),
                    password: p.password.clone(),
                })
            })
            .collect()
    }

    /// The trunk a source address belongs to (gateway hosts, provider registrars).
    pub fn trunk_at(&self, ip: IpAddr) -> Option<String> {
        self.get().ips.get(&ip).cloned()
    }

    /// Every trunk's address (never limited or banned by the guard).
    pub fn ips(&self) -> Vec<IpAddr> {
        self.get().ips.keys().copied().collect()
    }

    /// The extension a DID (Request-URI or To user) reaches.
    pub fn did(&self, user: &str) -> Option<String> {
        let d = normalize_did(user)?;
        self.get().set.dids.get(&d).cloned()
    }

    /// The label (`gateway:NAME`) of the gateway with this virtual number.
    pub fn gateway_label(&self, number: &str) -> Option<String> {
        self.get()
            .set
            .gateways
            .iter()
            .find(|g| g.number == number)
            .map(|g| format!("gateway:{}", g.name))
    }

    /// Whether the number is a gateway's virtual number (never dialled as a user).
    pub fn is_gateway_number(&self, number: &str) -> bool {
        self.get().set.gateways.iter().any(|g| g.number == number)
    }

    /// The egress rule for a call to the trunk `label`: `flow` is its resolved address
    /// or, for a gateway, a flow its registration came on (`registered` asks the
    /// registrar for the gateway's number).
    pub fn reaches(&self, label: &str, flow: &Flow, registered: impl Fn(&str) -> bool) -> bool {
        let l = self.get();
        let configured = flow.transport == crate::flow::TransportKind::Udp
            && l.addrs.get(label) == Some(&flow.remote);
        configured
            || label.strip_prefix("gateway:").is_some_and(|name| {
                l.set
                    .gateways
                    .iter()
                    .any(|g| g.name == name && registered(&g.number))
            })
    }

    /// The egress rule for REGISTER: `addr` is a configured provider's registrar.
    pub fn is_provider_registrar(&self, addr: SocketAddr) -> bool {
        let l = self.get();
        l.set
            .providers
            .iter()
            .any(|p| l.addrs.get(&format!("provider:{}", p.name)) == Some(&addr))
    }

    /// The route for an external number dialled by `caller`, and the number as it will
    /// leave. `registered` gives a gateway's registration flow by its number
    /// (preferred over its configured host).
    pub fn route(
        &self,
        dialled: &str,
        caller: &str,
        registered: impl Fn(&str) -> Option<Flow>,
    ) -> Routed {
        self.route_to(dialled, caller, registered)
            .unwrap_or(Routed::NoRoute)
    }

    fn route_to(
        &self,
        dialled: &str,
        caller: &str,
        registered: impl Fn(&str) -> Option<Flow>,
    ) -> Option<Routed> {
        let l = self.get();
        let (route, number) =
            policy::route::pick(&l.set.routes, dialled, |r| (&r.pattern, &r.rewrite))?;
        let target = match route.kind {
            TrunkKind::Gateway => {
                let g = l.set.gateways.iter().find(|g| g.name == route.trunk)?;
                let label = format!("gateway:{}", g.name);
                let flow =
                    registered(&g.number).or_else(|| l.addrs.get(&label).copied().map(Flow::udp));
                let Some(flow) = flow else {
                    return Some(Routed::NoAddress);
                };
                Target {
                    label,
                    flow,
                    domain: domain_of(&g.host).to_owned(),
                    from_user: caller.to_owned(),
                    auth_id: g.auth_id.clone(),
                    password: g.password.clone(),
                }
            }
            TrunkKind::Provider => {
                let p = l.set.providers.iter().find(|p| p.name == route.trunk)?;
                let label = format!("provider:{}", p.name);
                let Some(addr) = l.addrs.get(&label).copied() else {
                    return Some(Routed::NoAddress);
                };
                Target {
                    label,
                    flow: Flow::udp(addr),
                    domain: domain_of(&p.registrar).to_owned(),
                    from_user: p.auth_id.clone(),
                    auth_id: p.auth_id.clone(),
                    password: p.password.clone(),
                }
            }
        };
        Some(Routed::To(target, number))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use accounts::trunks::{GatewayTrunk, LoadedRoute, ProviderTrunk};
    use policy::route::{Pattern, Rewrite};

    /// A gateway `pstn` (number 800) at 192.0.2.7, a provider `voip` at 192.0.2.8, and
    /// routes `1NXXNXXXXXX` (gateway) and `011.` (provider).
    pub(crate) fn trunks() -> Trunks {
        let t = Trunks::default();
        let route = |name: &str, pattern: &str, kind, trunk: &str| LoadedRoute {
            name: name.into(),
            pattern: Pattern::parse(pattern).expect("pattern"),
            rewrite: Rewrite::parse(0, "").expect("rewrite"),
            kind,
            trunk: trunk.into(),
        };
        t.replace(
            TrunkSet {
                gateways: vec![GatewayTrunk {
                    name: "pstn".into(),
                    number: "800".into(),
                    auth_id: "gw".into(),
                    password: Secret::new("Gw7-secret"),
                    host: "192.0.2.7".into(),
                }],
                providers: vec![ProviderTrunk {
                    name: "voip".into(),
                    registrar: "192.0.2.8:5060".into(),
                    auth_id: "acct".into(),
                    password: Secret::new("Pv9-secret"),
                }],
                routes: vec![
                    route("us", "1NXXNXXXXXX", TrunkKind::Gateway, "pstn"),
                    route("world", "011.", TrunkKind::Provider, "voip"),
                ],
                dids: [("4930123".to_string(), "1001".to_string())].into(),
            },
            |h| {
                let h = if h.contains(':') {
                    h.to_owned()
                } else {
                    format!("{h}:5060")
                };
                h.parse().ok()
            },
        );
        t
    }

    #[test]
    fn only_a_trunk_removed_or_moved_is_withdrawn_never_one_that_fails_to_resolve() {
        let t = trunks();
        let set = t.get().set.clone();
        // A DNS failure at this reload: no address now, but nothing withdrawn.
        assert!(t.replace(set.clone(), |_| None).is_empty());
        // The same hosts again: nothing withdrawn.
        let resolve = |h: &str| format!("{h}:5060").parse().ok().or_else(|| h.parse().ok());
        assert!(t.replace(set.clone(), resolve).is_empty());
        // The gateway moved to another configured host.
        let mut moved = set.clone();
        moved.gateways[0].host = "192.0.2.70".into();
        assert_eq!(t.replace(moved, resolve), ["gateway:pstn"]);
        // Both removed.
        assert_eq!(
            t.replace(TrunkSet::default(), resolve),
            ["gateway:pstn", "provider:voip"]
        );
    }

    #[test]
    fn domains_drop_the_port() {
        assert_eq!(domain_of("sip.example.net:5080"), "sip.example.net");
        assert_eq!(domain_of("192.0.2.1"), "192.0.2.1");
        assert_eq!(domain_of("[2001:db8::1]:5060"), "[2001:db8::1]");
    }

    #[test]
    fn calls_reach_a_trunk_only_through_a_route_and_only_its_address() {
        let t = trunks();
        let gw = Flow::udp("192.0.2.7:5060".parse().expect("addr"));
        let elsewhere = Flow::udp("192.0.2.66:5060".parse().expect("addr"));
        match t.route("12125550123", "1001", |_| None) {
            Routed::To(target, number) => {
                assert_eq!(target.label, "gateway:pstn");
                assert_eq!(target.flow, gw);
                assert_eq!(number, "12125550123");
                assert_eq!(target.from_user, "1001");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(t.route("800", "1001", |_| None), Routed::NoRoute));
        assert!(t.is_gateway_number("800") && !t.is_gateway_number("1001"));
        // A registered gateway is reached where it registered from.
        match t.route("12125550123", "1001", |n| (n == "800").then_some(elsewhere)) {
            Routed::To(target, _) => assert_eq!(target.flow, elsewhere),
            other => panic!("{other:?}"),
        }
        assert!(t.reaches("gateway:pstn", &gw, |_| false));
        assert!(!t.reaches("gateway:pstn", &elsewhere, |_| false));
        assert!(t.reaches("gateway:pstn", &elsewhere, |n| n == "800"));
        assert!(!t.reaches("provider:voip", &gw, |_| true));
        assert!(t.is_provider_registrar("192.0.2.8:5060".parse().expect("addr")));
        assert!(!t.is_provider_registrar("192.0.2.7:5060".parse().expect("addr")));
        assert_eq!(t.did("4930123").as_deref(), Some("1001"));
        assert_eq!(t.providers().len(), 1);
        assert_eq!(
            t.trunk_at("192.0.2.8".parse().expect("ip")).as_deref(),
            Some("provider:voip")
        );
    }
}
