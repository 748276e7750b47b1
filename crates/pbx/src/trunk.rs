//! Trunks in the running server: where each gateway and provider is (resolved at load),
//! which route a dialled number takes, which source addresses are trunks (their INVITEs
//! are not challenged; they reach extensions only through DIDs), and the registration
//! client that keeps sipward registered at each VoIP provider (RFC 3261 §10.2 as a
//! UAC: digest answers to 401/407, refresh at half the granted time, backoff on failure,
//! Timer E/F retransmission over UDP).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use policy::secret::Secret;
use sip::header::addr::NameAddr;
use sip::header::auth::Challenge;
use sip::header::split_list;
use sip::header::via::Via;
use sip::msg::{Message, Name, StartLine};
use store::trunks::ProviderStatusRow;

use crate::notify::Tokens;
use crate::proxy::Send;
use accounts::trunks::TrunkSet;
use policy::trunk::{TrunkKind, normalize_did};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const TIMER_F: Duration = Duration::from_secs(32);
/// Registration branches start with this.
pub const REG_BRANCH_PREFIX: &str = "z9hG4bKswr";
/// What sipward asks a provider for.
const REQUESTED_EXPIRES: u32 = 3600;
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(600);

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
    pub addr: SocketAddr,
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

#[derive(Debug, Default)]
struct Loaded {
    set: TrunkSet,
    /// (kind, name) -> resolved address.
    addrs: HashMap<(&'static str, String), SocketAddr>,
    /// Source IP -> trunk label.
    ips: HashMap<IpAddr, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RegState {
    Idle,
    Registering,
    Registered,
    Failed,
}

#[derive(Debug)]
struct Registration {
    addr: SocketAddr,
    domain: String,
    auth_id: String,
    password: Secret,
    call_id: String,
    tag: String,
    cseq: u32,
    branch: String,
    bytes: Vec<u8>,
    state: RegState,
    /// Answered a challenge in this attempt already.
    answered: bool,
    /// Retransmission of the current request (None when not waiting).
    waiting: Option<(Instant, Duration, Instant)>,
    /// When the next REGISTER goes out.
    due: Instant,
    retry: Duration,
    expires: u32,
    detail: String,
    registered_until: i64,
    changed: bool,
}

/// The server's trunks.
#[derive(Debug)]
pub struct Trunks {
    loaded: RwLock<Arc<Loaded>>,
    regs: Mutex<HashMap<String, Registration>>,
    tokens: Tokens,
}

impl Trunks {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            loaded: RwLock::new(Arc::new(Loaded::default())),
            regs: Mutex::new(HashMap::new()),
            tokens: Tokens::new(key),
        }
    }

    fn get(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the trunk set; `resolve` gives each `host[:port]` its address (None:
    /// not resolvable now; calls to it fail with 503 until the next load).
    pub fn replace(&self, set: TrunkSet, resolve: impl Fn(&str) -> Option<SocketAddr>) {
        let mut addrs = HashMap::new();
        let mut ips = HashMap::new();
        for g in &set.gateways {
            if let Some(a) = resolve(&g.host) {
                addrs.insert(("gateway", g.name.clone()), a);
                ips.insert(a.ip(), format!("gateway:{}", g.name));
            }
        }
        for p in &set.providers {
            if let Some(a) = resolve(&p.registrar) {
                addrs.insert(("provider", p.name.clone()), a);
                ips.insert(a.ip(), format!("provider:{}", p.name));
            }
        }
        // Registrations follow the providers: new ones start at once, changed ones
        // start again, removed ones stop.
        let now = Instant::now();
        let mut regs = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        regs.retain(|name, r| {
            set.providers.iter().any(|p| {
                &p.name == name
                    && addrs.get(&("provider", p.name.clone())) == Some(&r.addr)
                    && p.auth_id == r.auth_id
                    && p.password == r.password
            })
        });
        for p in &set.providers {
            let Some(addr) = addrs.get(&("provider", p.name.clone())).copied() else {
                continue;
            };
            regs.entry(p.name.clone()).or_insert_with(|| Registration {
                addr,
                domain: domain_of(&p.registrar).to_owned(),
                auth_id: p.auth_id.clone(),
                password: p.password.clone(),
                call_id: format!("{}@sipward", self.tokens.next("reg-call-id")),
                tag: self.tokens.next("reg-tag"),
                cseq: 0,
                branch: String::new(),
                bytes: Vec::new(),
                state: RegState::Idle,
                answered: false,
                waiting: None,
                due: now,
                retry: RETRY_FIRST,
                expires: REQUESTED_EXPIRES,
                detail: "not registered yet".into(),
                registered_until: 0,
                changed: true,
            });
        }
        drop(regs);
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Loaded { set, addrs, ips });
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

    /// The route for an external number dialled by `caller`. `registered` gives a
    /// gateway's registered address by its number (preferred over its configured host).
    pub fn route(
        &self,
        dialled: &str,
        caller: &str,
        registered: impl Fn(&str) -> Option<SocketAddr>,
    ) -> Routed {
        self.route_to(dialled, caller, registered)
            .unwrap_or(Routed::NoRoute)
    }

    fn route_to(
        &self,
        dialled: &str,
        caller: &str,
        registered: impl Fn(&str) -> Option<SocketAddr>,
    ) -> Option<Routed> {
        let l = self.get();
        let (route, number) =
            policy::route::pick(&l.set.routes, dialled, |r| (&r.pattern, &r.rewrite))?;
        let target = match route.kind {
            TrunkKind::Gateway => {
                let g = l.set.gateways.iter().find(|g| g.name == route.trunk)?;
                let addr = registered(&g.number)
                    .or_else(|| l.addrs.get(&("gateway", g.name.clone())).copied());
                let Some(addr) = addr else {
                    return Some(Routed::NoAddress);
                };
                Target {
                    label: format!("gateway:{}", g.name),
                    addr,
                    domain: domain_of(&g.host).to_owned(),
                    from_user: caller.to_owned(),
                    auth_id: g.auth_id.clone(),
                    password: g.password.clone(),
                }
            }
            TrunkKind::Provider => {
                let p = l.set.providers.iter().find(|p| p.name == route.trunk)?;
                let Some(addr) = l.addrs.get(&("provider", p.name.clone())).copied() else {
                    return Some(Routed::NoAddress);
                };
                Target {
                    label: format!("provider:{}", p.name),
                    addr,
                    domain: domain_of(&p.registrar).to_owned(),
                    from_user: p.auth_id.clone(),
                    auth_id: p.auth_id.clone(),
                    password: p.password.clone(),
                }
            }
        };
        Some(Routed::To(target, number))
    }

    fn register_request(
        &self,
        r: &mut Registration,
        local: SocketAddr,
        auth: Option<(&str, String)>,
    ) {
        r.cseq += 1;
        r.branch = format!("{REG_BRANCH_PREFIX}{}", self.tokens.next("reg-branch"));
        let domain = &r.domain;
        let user = &r.auth_id;
        let mut text = format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={}\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: {}\r\n\
             CSeq: {} REGISTER\r\n\
             Contact: <sip:{user}@{local}>\r\n\
             Expires: {REQUESTED_EXPIRES}\r\n\
             User-Agent: sipward\r\n",
            r.branch, r.tag, r.call_id, r.cseq
        );
        if let Some((name, value)) = auth {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        r.bytes = text.into_bytes();
        let now = Instant::now();
        r.waiting = Some((now + T1, T1, now));
        r.state = if r.state == RegState::Registered {
            RegState::Registered
        } else {
            RegState::Registering
        };
    }

    fn failed(r: &mut Registration, detail: String) {
        r.state = RegState::Failed;
        r.detail = detail;
        r.waiting = None;
        r.registered_until = 0;
        r.due = Instant::now() + r.retry;
        r.retry = (r.retry * 2).min(RETRY_MAX);
        r.changed = true;
    }

    /// Registration work due now: new and refreshing REGISTERs, retransmissions,
    /// give-ups. `local` is the address a peer sees us at.
    pub fn tick(
        &self,
        now: Instant,
        local: impl Fn(SocketAddr) -> Option<SocketAddr>,
    ) -> Vec<Send> {
        let mut out = Vec::new();
        let mut regs = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        for r in regs.values_mut() {
            if let Some((next, interval, started)) = r.waiting {
                if now.duration_since(started) >= TIMER_F {
                    Self::failed(r, "no answer from the provider's registrar".into());
                } else if now >= next {
                    let interval = (interval * 2).min(T2);
                    r.waiting = Some((now + interval, interval, started));
                    out.push(Send {
                        bytes: r.bytes.clone(),
                        target: r.addr,
                    });
                }
                continue;
            }
            if now >= r.due {
                let Some(l) = local(r.addr) else { continue };
                r.answered = false;
                self.register_request(r, l, None);
                out.push(Send {
                    bytes: r.bytes.clone(),
                    target: r.addr,
                });
            }
        }
        out
    }

    /// A response whose top Via branch is a registration's: true when it was ours, with
    /// what to send (an answer to a challenge).
    pub fn response(
        &self,
        m: &Message<'_>,
        wall_now: i64,
        local: impl Fn(SocketAddr) -> Option<SocketAddr>,
    ) -> Option<Vec<Send>> {
        let StartLine::Response { code, reason, .. } = m.start else {
            return None;
        };
        let branch = m.header(Name::Via).and_then(Via::parse_top)?.branch?;
        if !branch.starts_with(REG_BRANCH_PREFIX) {
            return None;
        }
        let mut regs = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        let r = regs.values_mut().find(|r| r.branch == branch)?;
        if r.waiting.is_none() {
            return Some(Vec::new()); // a late retransmission
        }
        if code < 200 {
            // Provisional: keep waiting, retransmit only at T2 (RFC 3261 §17.1.2.2).
            if let Some((_, _, started)) = r.waiting {
                r.waiting = Some((Instant::now() + T2, T2, started));
            }
            return Some(Vec::new());
        }
        let status = format!(
            "{code} {}",
            reason
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        );
        r.waiting = None;
        match code {
            200..=299 => {
                let granted = granted_expires(m, &r.auth_id).unwrap_or(r.expires);
                r.expires = granted.max(1);
                r.state = RegState::Registered;
                r.detail = status;
                r.registered_until = wall_now + i64::from(r.expires);
                // Refresh at half the granted time (never more often than every 15 s).
                r.due = Instant::now() + Duration::from_secs(u64::from((r.expires / 2).max(15)));
                r.retry = RETRY_FIRST;
                r.changed = true;
                Some(Vec::new())
            }
            401 | 407 => {
                let (header, answer) = if code == 401 {
                    (Name::WwwAuthenticate, "Authorization")
                } else {
                    (Name::ProxyAuthenticate, "Proxy-Authorization")
                };
                let challenge = m.header(header).and_then(|v| Challenge::parse(v).ok());
                let stale = challenge.as_ref().is_some_and(|c| c.stale);
                let Some(ch) = challenge.filter(|_| !r.answered || stale) else {
                    Self::failed(
                        r,
                        format!("{status}: the provider refused sipward's credentials"),
                    );
                    return Some(Vec::new());
                };
                let uri = format!("sip:{}", r.domain);
                let cnonce = self.tokens.next("cnonce");
                let Some(value) =
                    ch.answer("REGISTER", &uri, &r.auth_id, r.password.expose(), &cnonce)
                else {
                    Self::failed(
                        r,
                        format!(
                            "{status}: the provider asks for a digest algorithm sipward does not speak"
                        ),
                    );
                    return Some(Vec::new());
                };
                let Some(l) = local(r.addr) else {
                    return Some(Vec::new());
                };
                r.answered = true;
                self.register_request(r, l, Some((answer, value)));
                Some(vec![Send {
                    bytes: r.bytes.clone(),
                    target: r.addr,
                }])
            }
            423 => {
                // Interval Too Brief: ask again with the provider's minimum.
                let min = m
                    .other_header("Min-Expires")
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .filter(|v| *v <= 86_400);
                match min {
                    Some(min) => {
                        r.expires = min;
                        r.due = Instant::now();
                    }
                    None => Self::failed(r, status),
                }
                Some(Vec::new())
            }
            _ => {
                Self::failed(r, status);
                Some(Vec::new())
            }
        }
    }

    /// Registration states that changed since the last call (for the store).
    pub fn take_status(&self, wall_now: i64) -> Vec<ProviderStatusRow> {
        let mut regs = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        regs.iter_mut()
            .filter_map(|(name, r)| std::mem::take(&mut r.changed).then_some((name, r)))
            .map(|(name, r)| ProviderStatusRow {
                name: name.clone(),
                state: match r.state {
                    RegState::Idle | RegState::Registering => "registering",
                    RegState::Registered => "registered",
                    RegState::Failed => "failed",
                }
                .into(),
                detail: r.detail.clone(),
                registered_until: r.registered_until,
                updated_at: wall_now,
            })
            .collect()
    }

    /// Whether the provider's registration is up (for tests and the console).
    pub fn registered(&self, name: &str) -> bool {
        self.regs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|r| r.state == RegState::Registered)
    }
}

/// The expiry the registrar granted our contact: the Contact's `expires` parameter for
/// our user, else the Expires header.
fn granted_expires(m: &Message<'_>, user: &str) -> Option<u32> {
    let from_contact = m
        .headers_named(Name::Contact)
        .flat_map(split_list)
        .filter_map(NameAddr::parse)
        .find(|a| sip::header::addr::SipUri::parse(a.uri).and_then(|u| u.user) == Some(user))
        .and_then(|a| a.param("expires").flatten())
        .and_then(|v| v.trim().parse().ok());
    from_contact.or_else(|| m.header(Name::Expires).and_then(|v| v.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_drop_the_port() {
        assert_eq!(domain_of("sip.example.net:5080"), "sip.example.net");
        assert_eq!(domain_of("192.0.2.1"), "192.0.2.1");
        assert_eq!(domain_of("[2001:db8::1]:5060"), "[2001:db8::1]");
    }
}
