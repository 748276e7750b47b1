//! Ban decisions, pure: how many failures within which window earn a ban, and how long
//! it lasts (escalating for repeat offenders); which signals prove the address they came
//! from and may therefore punish it ([`Proof`], [`may_ban`]); and what a ban covers, one
//! address or a network prefix ([`Source`]). The server counts; these rules decide.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// What a ban or a count covers: one address, or a network prefix (an IPv6 /64 by
/// default) when the traffic came from many addresses of one network. An attacker with
/// an IPv6 /64 holds 2^64 addresses: counting per address alone never bans it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpNet);

impl Source {
    /// One address.
    pub fn host(ip: IpAddr) -> Self {
        Self(IpNet::from(ip))
    }

    /// A network (host bits cleared); a full-length network is the address itself.
    pub fn net(net: IpNet) -> Self {
        Self(net.trunc())
    }

    /// An address (`192.0.2.7`, `2001:db8::1`) or a network in CIDR form
    /// (`2001:db8:1:2::/64`), as ban records and the CLI write them.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Some(Self::host(ip));
        }
        t.parse::<IpNet>().ok().map(Self::net)
    }

    pub fn network(&self) -> IpNet {
        self.0
    }

    /// Whether this is a prefix (more than one address).
    pub fn is_prefix(&self) -> bool {
        self.0.prefix_len() < self.0.max_prefix_len()
    }

    /// The address itself, for a single address.
    pub fn address(&self) -> Option<IpAddr> {
        (!self.is_prefix()).then(|| self.0.addr())
    }

    pub fn covers(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

/// An address prints bare (`192.0.2.7`), a prefix in CIDR form (`2001:db8:1:2::/64`).
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address() {
            Some(ip) => write!(f, "{ip}"),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Whether a signal proves that the packet really came from its source address. Only
/// proof may punish a source that has shown it is legitimate: a UDP source address is
/// whatever the sender wrote, so a spoofed datagram must never get an office banned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// Anything a forged UDP datagram can carry: a packet rate, a User-Agent, a bare-IP
    /// Request-URI, a malformed message.
    Spoofable,
    /// The packet came over a connection whose TCP handshake the source completed.
    Handshake,
    /// The request answered a digest nonce sent to that very address.
    Nonce,
}

impl Proof {
    pub fn proves_source(self) -> bool {
        !matches!(self, Proof::Spoofable)
    }
}

/// Why a source has shown it is legitimate: such a source is never banned on a signal
/// without [`Proof`], only silenced for that signal, briefly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// An account authenticated from it within the trust window (`trusted_secs`).
    Authenticated,
    /// A registration made from it is live.
    Registered,
}

impl Standing {
    /// Why a ban was withheld, in words (the security event's detail).
    pub fn describe(self) -> &'static str {
        match self {
            Standing::Authenticated => {
                "an account authenticated from this source within the trust window"
            }
            Standing::Registered => "a registration made from this source is live",
        }
    }
}

/// The rule: a signal may ban a source when it proves the source address, or when the
/// source has no standing. Otherwise the source is silenced for that signal only.
pub fn may_ban(proof: Proof, standing: Option<Standing>) -> bool {
    proof.proves_source() || standing.is_none()
}

/// Why a source was banned: the stable ids that ban records, security events and the
/// `sipward_bans_total{reason}` metric carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    AuthFailures,
    Flood,
    Scanner,
    Decoy,
    ProvisioningProbe,
    Manual,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::AuthFailures,
        Reason::Flood,
        Reason::Scanner,
        Reason::Decoy,
        Reason::ProvisioningProbe,
        Reason::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AuthFailures => "auth.failures",
            Reason::Flood => "flood.requests",
            Reason::Scanner => "scanner.user_agent",
            Reason::Decoy => "decoy.auth",
            Reason::ProvisioningProbe => "provisioning.probe",
            Reason::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The `[guard]` table of the config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BanPolicy {
    /// Failed authentications (answering a nonce issued to that source) that earn a ban...
    pub auth_failures: u32,
    /// ...within this many seconds.
    pub auth_window_secs: i64,
    /// Length of a ban.
    pub ban_secs: i64,
    /// A source banned this many times...
    pub repeat_bans: u32,
    /// ...within this many seconds...
    pub repeat_window_secs: i64,
    /// ...is banned this long.
    pub repeat_ban_secs: i64,
    /// An address where an auth ID authenticated successfully stays trusted for that
    /// auth ID this long: its failures there (a phone with a stale password) do not
    /// count toward banning the address.
    pub trusted_secs: i64,
    /// Ban a source whose User-Agent names a known scanner, at its first request.
    pub ban_scanners: bool,
    /// Length of a scanner ban.
    pub scanner_ban_secs: i64,
    /// A source that has never authenticated and sends more than this many requests
    /// within `flood_window_secs` is banned for `flood_ban_secs` (`"off"` turns flood
    /// limits off; 0 in memory)...
    #[serde(with = "crate::switch::count_or_off")]
    pub flood_requests: u32,
    /// ...and above this many it is not answered until its rate falls again.
    pub silence_requests: u32,
    pub flood_window_secs: i64,
    pub flood_ban_secs: i64,
    /// Sources where some account authenticated get limits this many times higher.
    pub trusted_factor: u32,
    /// A gateway's or trunk's address is never banned by a flood (a forged flood in its
    /// name must not cut the office off the PSTN), but it is held to this many requests
    /// within `flood_window_secs`, counted per gateway address: beyond it, each second
    /// lets only its share through and the rest is dropped unread and counted. A UDP
    /// source address is whatever the sender wrote, so without this limit anyone could
    /// make sipward parse, look up and answer (404) every packet forged in a trunk's
    /// name. The default (10,000 per 10 s: 1,000 a second) is far above what a small
    /// or mid-sized office's trunk sends.
    pub gateway_requests: u32,
    /// Per-gateway exceptions to `gateway_requests`, by address
    /// (`gateway_limits = { "192.0.2.10" = 50000 }`), for a trunk that carries more.
    pub gateway_limits: BTreeMap<String, u32>,
    /// An account that collects this many failures within `extension_window_secs` from
    /// sources it never authenticated from can no longer authenticate from such sources
    /// until the failures age out (`"off"` turns this off; 0 in memory). Distributed
    /// guessing is stopped here: per-source bans never see a botnet that rotates
    /// addresses.
    #[serde(with = "crate::switch::count_or_off")]
    pub extension_failures: u32,
    pub extension_window_secs: i64,
    /// Accounts with weak passwords (zxcvbn below `policy.min_strength_score`, or equal to
    /// the number or auth ID) authenticate only from allow-listed networks or from
    /// addresses they are registered from: `trusted-only` (default) or `allow`.
    pub weak_credentials: WeakCredentials,
    /// User names that are no account here: an authentication attempt with one of them
    /// bans its source at once, for `decoy_ban_secs`.
    pub decoys: Vec<String>,
    pub decoy_ban_secs: i64,
    /// Drop requests whose Request-URI host is an IP address (scanners address servers
    /// by IP; phones configured with the domain never do). Needs `[sip] domain`.
    pub refuse_ip_request_uri: bool,
    /// A source that asks the provisioning server this many times within
    /// `provisioning_window_secs` for files no phone has, or with a wrong login, is
    /// probing MAC addresses: banned for `provisioning_ban_secs`.
    pub provisioning_probes: u32,
    pub provisioning_window_secs: i64,
    pub provisioning_ban_secs: i64,
    /// Flood limits, failures and bans also count per network prefix of this length:
    /// an IPv6 /64 is one site (one subscriber, one office LAN), however many addresses
    /// it uses. 128 counts per address only.
    pub ipv6_prefix: u8,
    /// The same for IPv4 (32: per address only, the default; one IPv4 address is
    /// usually one site already).
    pub ipv4_prefix: u8,
    /// A prefix is held to limits this many times an address's, so one misbehaving
    /// host is banned alone and a prefix is banned when many of its addresses add up.
    pub prefix_factor: u32,
    /// Trusted (address, auth ID) pairs kept per account: one credential used from
    /// thousands of addresses cannot push other accounts' trust out of the table.
    pub trusted_per_account: u32,
}

/// What a weak account may do (see [`BanPolicy::weak_credentials`]).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WeakCredentials {
    TrustedOnly,
    Allow,
}

/// User names scanners and dictionary attacks try that no PBX account should have.
pub const DEFAULT_DECOYS: &[&str] = &[
    "admin",
    "administrator",
    "asterisk",
    "guest",
    "operator",
    "root",
    "support",
    "test",
    "voip",
];

impl Default for BanPolicy {
    fn default() -> Self {
        Self {
            auth_failures: 10,
            auth_window_secs: 600,
            ban_secs: 3600,
            repeat_bans: 3,
            repeat_window_secs: 86_400,
            repeat_ban_secs: 604_800,
            trusted_secs: 604_800,
            ban_scanners: true,
            scanner_ban_secs: 604_800,
            flood_requests: 50,
            silence_requests: 30,
            flood_window_secs: 10,
            flood_ban_secs: 86_400,
            trusted_factor: 100,
            gateway_requests: 10_000,
            gateway_limits: BTreeMap::new(),
            extension_failures: 20,
            extension_window_secs: 3600,
            weak_credentials: WeakCredentials::TrustedOnly,
            decoys: DEFAULT_DECOYS.iter().map(|d| (*d).to_owned()).collect(),
            decoy_ban_secs: 604_800,
            refuse_ip_request_uri: false,
            provisioning_probes: 10,
            provisioning_window_secs: 600,
            provisioning_ban_secs: 86_400,
            ipv6_prefix: 64,
            ipv4_prefix: 32,
            prefix_factor: 4,
            trusted_per_account: 64,
        }
    }
}

/// The longest counting window: a window longer than a day lets the counts of a slow,
/// patient attacker and of yesterday's office add up, and far beyond it the arithmetic
/// itself breaks (a window of 2^63 seconds silenced calm traffic).
pub const MAX_WINDOW_SECS: i64 = 86_400;
/// The highest gateway limit per flood window (`guard.gateway_requests`).
pub const GATEWAY_REQUESTS_MAX: u32 = 10_000_000;
/// The longest ban: a year.
pub const MAX_BAN_SECS: i64 = 365 * 86_400;
/// How long a source stays trusted for an account at most: 30 days.
pub const MAX_TRUSTED_SECS: i64 = 30 * 86_400;

impl BanPolicy {
    /// Refuses values out of their sane range, with one sentence naming the range.
    pub fn validate(&self) -> Result<(), String> {
        let within = |name: &str, value: i64, lo: i64, hi: i64, unit: &str| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(format!("guard.{name} must be between {lo} and {hi}{unit}"))
            }
        };
        within("auth_failures", i64::from(self.auth_failures), 1, 100, "")?;
        for (name, value) in [
            ("auth_window_secs", self.auth_window_secs),
            ("repeat_window_secs", self.repeat_window_secs),
            ("flood_window_secs", self.flood_window_secs),
            ("extension_window_secs", self.extension_window_secs),
            ("provisioning_window_secs", self.provisioning_window_secs),
        ] {
            within(name, value, 1, MAX_WINDOW_SECS, " seconds (a day)")?;
        }
        for (name, value) in [
            ("ban_secs", self.ban_secs),
            ("repeat_ban_secs", self.repeat_ban_secs),
            ("scanner_ban_secs", self.scanner_ban_secs),
            ("flood_ban_secs", self.flood_ban_secs),
            ("decoy_ban_secs", self.decoy_ban_secs),
            ("provisioning_ban_secs", self.provisioning_ban_secs),
        ] {
            within(
                name,
                value,
                60,
                MAX_BAN_SECS,
                " seconds (a minute to a year)",
            )?;
        }
        within(
            "trusted_secs",
            self.trusted_secs,
            60,
            MAX_TRUSTED_SECS,
            " seconds (a minute to 30 days)",
        )?;
        within("repeat_bans", i64::from(self.repeat_bans), 1, 100, "")?;
        within(
            "trusted_factor",
            i64::from(self.trusted_factor),
            1,
            1000,
            "",
        )?;
        within(
            "provisioning_probes",
            i64::from(self.provisioning_probes),
            1,
            1000,
            "",
        )?;
        if self.flood_requests > 100_000 {
            return Err("guard.flood_requests must be between 1 and 100000, or \"off\"".into());
        }
        if self.flood_requests > 0 && !(1..=self.flood_requests).contains(&self.silence_requests) {
            return Err("guard.silence_requests must be between 1 and guard.flood_requests".into());
        }
        let gateway_range = 10..=GATEWAY_REQUESTS_MAX;
        if !gateway_range.contains(&self.gateway_requests) {
            return Err(format!(
                "guard.gateway_requests must be between 10 and {GATEWAY_REQUESTS_MAX}"
            ));
        }
        if self.gateway_limits.len() > 1000 {
            return Err("guard.gateway_limits may name at most 1000 addresses".into());
        }
        for (address, limit) in &self.gateway_limits {
            if address.trim().parse::<IpAddr>().is_err() {
                return Err(format!(
                    "guard.gateway_limits: {address:?} is not an IP address"
                ));
            }
            if !gateway_range.contains(limit) {
                return Err(format!(
                    "guard.gateway_limits: the limit for {address} must be between 10 and {GATEWAY_REQUESTS_MAX}"
                ));
            }
        }
        if self.extension_failures > 10_000 {
            return Err("guard.extension_failures must be between 1 and 10000, or \"off\"".into());
        }
        if self.decoys.len() > 100 {
            return Err("guard.decoys may name at most 100 user names".into());
        }
        if !(32..=128).contains(&self.ipv6_prefix) {
            return Err("guard.ipv6_prefix must be between 32 and 128".into());
        }
        if !(16..=32).contains(&self.ipv4_prefix) {
            return Err("guard.ipv4_prefix must be between 16 and 32".into());
        }
        if !(1..=1000).contains(&self.prefix_factor) {
            return Err("guard.prefix_factor must be between 1 and 1000".into());
        }
        if !(1..=65_536).contains(&self.trusted_per_account) {
            return Err("guard.trusted_per_account must be between 1 and 65536".into());
        }
        if let Some(d) = self.decoys.iter().find(|d| {
            d.is_empty() || d.len() > 64 || d.chars().any(|c| c.is_whitespace() || c.is_control())
        }) {
            return Err(format!(
                "guard.decoys: {d:?} is not a user name (1 to 64 characters, no spaces)"
            ));
        }
        Ok(())
    }

    /// The request limits (silence, ban) per flood window for a source; `trusted` when
    /// some account authenticated from it.
    pub fn flood_limits(&self, trusted: bool) -> (u32, u32) {
        let f = if trusted { self.trusted_factor } else { 1 };
        (
            self.silence_requests.saturating_mul(f),
            self.flood_requests.saturating_mul(f),
        )
    }

    /// The request limit per flood window of the gateway at `ip`: its own entry in
    /// `gateway_limits`, or `gateway_requests`.
    pub fn gateway_limit(&self, ip: IpAddr) -> u32 {
        self.gateway_limits
            .iter()
            .find(|(a, _)| a.trim().parse::<IpAddr>().ok() == Some(ip))
            .map_or(self.gateway_requests, |(_, l)| *l)
    }

    /// The prefix `ip` is counted under besides itself, when the configured length is
    /// shorter than an address (`None` for IPv4 by default).
    pub fn prefix_of(&self, ip: IpAddr) -> Option<Source> {
        let len = match ip {
            IpAddr::V4(_) => self.ipv4_prefix,
            IpAddr::V6(_) => self.ipv6_prefix,
        };
        let net = IpNet::new(ip, len).ok()?;
        let s = Source::net(net);
        s.is_prefix().then_some(s)
    }

    /// A count limit for `source`: as configured for an address, times
    /// `prefix_factor` for a prefix.
    pub fn scaled(&self, limit: u32, source: &Source) -> u32 {
        if source.is_prefix() {
            limit.saturating_mul(self.prefix_factor)
        } else {
            limit
        }
    }

    /// How many bans this source has had in the repeat window, counting the new one.
    pub fn ban_number(&self, previous: Option<(u32, i64)>, now: i64) -> u32 {
        match previous {
            Some((times, last)) if now - last <= self.repeat_window_secs => times.saturating_add(1),
            _ => 1,
        }
    }

    /// The length of the `n`th ban within the repeat window.
    pub fn ban_length(&self, n: u32) -> i64 {
        if n >= self.repeat_bans {
            self.repeat_ban_secs
        } else {
            self.ban_secs
        }
    }
}

/// A source's request rate as a sliding-window estimate over two fixed windows: the
/// current window's count plus the previous one's, weighted by how much of it still
/// overlaps the sliding window. `elapsed` is the time into the current window.
pub fn sliding_count(current: u32, previous: u32, elapsed: i64, window: i64) -> u32 {
    let overlap = (window - elapsed.clamp(0, window)) as u64;
    let carried = u64::from(previous) * overlap / window.max(1) as u64;
    current.saturating_add(u32::try_from(carried).unwrap_or(u32::MAX))
}

/// Failure times of one source within the window.
#[derive(Clone, Debug, Default)]
pub struct FailureWindow {
    times: VecDeque<i64>,
}

impl FailureWindow {
    /// Records a failure at `now`; returns how many fall within the window, counting at
    /// most `cap` (only the newest `cap` times are kept: memory stays bounded however
    /// many failures arrive, and "at least `cap` within the window" stays exact).
    pub fn record(&mut self, now: i64, window_secs: i64, cap: u32) -> u32 {
        self.expire(now, window_secs);
        self.times.push_back(now);
        while self.times.len() > cap.max(1) as usize {
            self.times.pop_front();
        }
        u32::try_from(self.times.len()).unwrap_or(u32::MAX)
    }

    /// How many failures fall within the window at `now`.
    pub fn count(&mut self, now: i64, window_secs: i64) -> u32 {
        self.expire(now, window_secs);
        u32::try_from(self.times.len()).unwrap_or(u32::MAX)
    }

    pub fn clear(&mut self) {
        self.times.clear();
    }

    fn expire(&mut self, now: i64, window_secs: i64) {
        while self.times.front().is_some_and(|t| now - t >= window_secs) {
            self.times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_ids_are_stable_distinct_and_parse_back() {
        let ids: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            ids,
            [
                "auth.failures",
                "flood.requests",
                "scanner.user_agent",
                "decoy.auth",
                "provisioning.probe",
                "manual"
            ]
        );
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(Reason::ALL[r as usize], r, "metrics index by discriminant");
        }
        assert_eq!(Reason::parse("Manual"), None);
        assert_eq!(Reason::parse(""), None);
    }

    #[test]
    fn failures_count_within_the_window_only() {
        let mut w = FailureWindow::default();
        for i in 0..9 {
            assert_eq!(w.record(i, 600, 10), (i + 1) as u32);
        }
        assert_eq!(w.record(599, 600, 10), 10, "the tenth within ten minutes");
        assert_eq!(w.record(599, 600, 10), 10, "capped: memory stays bounded");
        assert_eq!(
            w.count(605, 600),
            5,
            "those from before minute -10 aged out"
        );
        let mut slow = FailureWindow::default();
        for i in 0..20 {
            assert_eq!(
                slow.record(i * 700, 600, 10),
                1,
                "one every 11.7 minutes never accumulates"
            );
        }
    }

    #[test]
    fn bans_escalate_for_repeat_offenders() {
        let p = BanPolicy::default();
        assert_eq!(p.ban_number(None, 0), 1);
        assert_eq!(p.ban_length(1), 3600);
        assert_eq!(p.ban_number(Some((1, 0)), 7200), 2);
        assert_eq!(p.ban_length(2), 3600);
        assert_eq!(p.ban_number(Some((2, 7200)), 14_400), 3);
        assert_eq!(
            p.ban_length(3),
            604_800,
            "the third ban in 24 h lasts a week"
        );
        assert_eq!(
            p.ban_number(Some((2, 0)), 86_401),
            1,
            "old bans are forgiven"
        );
    }

    #[test]
    fn the_sliding_count_carries_the_overlapping_part_of_the_previous_window() {
        assert_eq!(
            sliding_count(5, 40, 0, 10),
            45,
            "all of the previous window overlaps"
        );
        assert_eq!(sliding_count(5, 40, 5, 10), 25);
        assert_eq!(sliding_count(5, 40, 10, 10), 5);
        assert_eq!(sliding_count(u32::MAX, u32::MAX, 0, 10), u32::MAX);
        let p = BanPolicy::default();
        assert_eq!(p.flood_limits(false), (30, 50));
        assert_eq!(p.flood_limits(true), (3000, 5000));
    }

    #[test]
    fn only_proof_punishes_a_source_with_standing() {
        for standing in [Some(Standing::Authenticated), Some(Standing::Registered)] {
            assert!(
                !may_ban(Proof::Spoofable, standing),
                "a spoofable signal never bans a source with {standing:?}"
            );
            assert!(may_ban(Proof::Handshake, standing));
            assert!(may_ban(Proof::Nonce, standing));
        }
        assert!(
            may_ban(Proof::Spoofable, None),
            "a source with no history is banned as before"
        );
        assert!(Standing::Registered.describe().contains("registration"));
    }

    #[test]
    fn sources_are_addresses_or_prefixes_and_print_as_ban_records_do() {
        let p = BanPolicy::default();
        let v6: IpAddr = "2001:db8:1:2:aaaa::7".parse().expect("ip");
        let prefix = p.prefix_of(v6).expect("a /64");
        assert_eq!(prefix.to_string(), "2001:db8:1:2::/64");
        assert!(prefix.is_prefix() && prefix.covers(v6));
        assert!(!prefix.covers("2001:db8:1:3::1".parse().expect("ip")));
        assert_eq!(
            p.prefix_of("::1".parse().expect("ip"))
                .map(|s| s.to_string())
                .as_deref(),
            Some("::/64")
        );
        assert_eq!(
            p.prefix_of("192.0.2.7".parse().expect("ip")),
            None,
            "IPv4 counts per address by default"
        );
        let p24 = BanPolicy {
            ipv4_prefix: 24,
            ..Default::default()
        };
        assert_eq!(
            p24.prefix_of("192.0.2.7".parse().expect("ip"))
                .map(|s| s.to_string())
                .as_deref(),
            Some("192.0.2.0/24")
        );
        let host = Source::host(v6);
        assert_eq!(host.to_string(), "2001:db8:1:2:aaaa::7");
        assert_eq!(host.address(), Some(v6));
        assert_eq!(Source::parse("2001:db8:1:2::/64"), Some(prefix));
        assert_eq!(
            Source::parse("2001:db8:1:2:1::/64"),
            Some(prefix),
            "host bits cleared"
        );
        assert_eq!(
            Source::parse(" 192.0.2.7 "),
            Some(Source::host("192.0.2.7".parse().expect("ip")))
        );
        assert_eq!(
            Source::parse("192.0.2.7/32"),
            Source::parse("192.0.2.7"),
            "a /32 is the address"
        );
        for bad in ["", "x", "192.0.2.0/33", "2001:db8::/129"] {
            assert_eq!(Source::parse(bad), None, "{bad}");
        }
        assert_eq!(p.scaled(10, &prefix), 40);
        assert_eq!(p.scaled(10, &host), 10);
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            BanPolicy {
                silence_requests: 60,
                ..Default::default()
            },
            BanPolicy {
                trusted_factor: 0,
                ..Default::default()
            },
            BanPolicy {
                decoys: vec!["two words".into()],
                ..Default::default()
            },
            BanPolicy {
                ipv6_prefix: 8,
                ..Default::default()
            },
            BanPolicy {
                ipv4_prefix: 33,
                ..Default::default()
            },
            BanPolicy {
                prefix_factor: 0,
                ..Default::default()
            },
            BanPolicy {
                trusted_per_account: 0,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(
            BanPolicy {
                flood_requests: 0,
                silence_requests: 0,
                ..Default::default()
            }
            .validate()
            .is_ok(),
            "flood limits may be turned off"
        );
        assert!(BanPolicy::default().validate().is_ok());
        assert!(
            BanPolicy {
                auth_failures: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            BanPolicy {
                ban_secs: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn gateways_have_their_own_limit_with_exceptions_by_address() {
        let mut p = BanPolicy::default();
        let (gw, big) = ("192.0.2.10".parse().expect("ip"), "2001:db8::5");
        assert_eq!(p.gateway_limit(gw), 10_000);
        p.gateway_limits.insert(big.into(), 50_000);
        assert!(p.validate().is_ok());
        assert_eq!(p.gateway_limit(big.parse().expect("ip")), 50_000);
        assert_eq!(p.gateway_limit(gw), 10_000, "only the address named");
        for (bad, says) in [
            (
                ("gateway_requests", 5),
                "gateway_requests must be between 10 and",
            ),
            (("nonsense", 100), "\"nonsense\" is not an IP address"),
            (
                ("192.0.2.1", 0),
                "the limit for 192.0.2.1 must be between 10 and",
            ),
        ] {
            let mut p = BanPolicy::default();
            match bad {
                ("gateway_requests", n) => p.gateway_requests = n,
                (a, n) => {
                    p.gateway_limits.insert(a.into(), n);
                }
            }
            let e = p.validate().expect_err("refused");
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_range() {
        let refused = |p: BanPolicy| p.validate().expect_err("refused");
        let e = refused(BanPolicy {
            flood_window_secs: i64::MAX,
            ..Default::default()
        });
        assert_eq!(
            e,
            "guard.flood_window_secs must be between 1 and 86400 seconds (a day)"
        );
        for (p, names) in [
            (
                BanPolicy {
                    auth_window_secs: 86_401,
                    ..Default::default()
                },
                "auth_window_secs",
            ),
            (
                BanPolicy {
                    auth_failures: 10_000,
                    ..Default::default()
                },
                "auth_failures must be between 1 and 100",
            ),
            (
                BanPolicy {
                    ban_secs: 1,
                    ..Default::default()
                },
                "ban_secs must be between 60",
            ),
            (
                BanPolicy {
                    trusted_secs: 365 * 86_400,
                    ..Default::default()
                },
                "trusted_secs",
            ),
            (
                BanPolicy {
                    trusted_factor: 1_000_000,
                    ..Default::default()
                },
                "trusted_factor",
            ),
            (
                BanPolicy {
                    flood_requests: 1_000_000,
                    ..Default::default()
                },
                "or \"off\"",
            ),
            (
                BanPolicy {
                    extension_failures: 1_000_000,
                    ..Default::default()
                },
                "extension_failures",
            ),
        ] {
            let e = refused(p);
            assert!(e.contains(names), "{e}");
            assert!(
                !e.contains('\n') && e.starts_with("guard."),
                "one sentence: {e}"
            );
        }
        // The config file's own words: 0 is refused, "off" is taken.
        let parse = |t: &str| toml::from_str::<BanPolicy>(t).map_err(|e| e.message().to_owned());
        assert!(parse("flood_requests = 0").is_err());
        assert!(parse("extension_failures = 0").is_err());
        assert_eq!(
            parse("flood_requests = \"off\"")
                .expect("off")
                .flood_requests,
            0
        );
        assert_eq!(
            parse("extension_failures = \"off\"")
                .expect("off")
                .extension_failures,
            0
        );
    }
}
