//! RTP for the calls sipward answers itself: the pool of UDP ports they use, the guard
//! every received packet passes, and the socket pair (RTP on an even port, RTCP on the
//! next) of one call.
//!
//! The guard's rule, in full. A packet is taken only from the address the caller's SDP
//! named, or, once, from the caller's signalling IP: a phone behind NAT names its
//! private address in SDP but its packets arrive from the NAT's, which is the address
//! its INVITE came from. The first packet from the signalling flow's IP (any port)
//! latches the call to that address and port: from then on RTP is sent there and
//! taken only from there. A packet from the SDP's address before any latch is taken
//! and latches too. Nothing else is ever taken or answered, and it never moves the
//! call's media.
//!
//! When the SDP names the caller's own signalling IP, no NAT stands between (or one
//! rewrote the address and kept the port), so another port of that IP is a
//! neighbour behind the same address (an office, a carrier-grade NAT) or a spoofer
//! racing the caller's first packet. For [`LATCH_GRACE`] after the call's answer only
//! the SDP's exact port latches; after it, with nothing from that port, the first
//! packet from any port of the IP latches (a NAT or ALG that rewrites the address in
//! SDP but not the port mapping: such a caller loses the first two seconds of its
//! audio, which fall in the greeting, and still leaves its message). Once latched, the call's socket is connected to the peer, so the
//! kernel drops other sources' datagrams before they reach the socket's queue: a flood
//! to an open port then neither costs a `recv` nor crowds out the caller's audio
//! (before the latch, each costs one `recv` and a counter).
//!
//! Ports are bounded by the configured range and by a share per [`Share`]: a source
//! address holds at most `ports_per_source` pairs, so a caller who opens call after
//! call gets 503 at its limit, not the whole range. A trunk's calls all come from the
//! trunk's address whoever dials them, so they are shared per trunk instead, and all
//! trunks together hold at most `ports_per_trunk` (by default half the pool): four
//! callers from the PSTN then do not close every box to the PSTN, and the trunks'
//! callers, through one trunk or several, still cannot take the ports the extensions
//! need. A port is given back when its [`Lease`] drops (the call
//! ended).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// Why a packet was dropped (its index in [`crate::metrics::RTP_DROPS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtpDrop {
    /// Not from the negotiated or latched address.
    WrongSource = 0,
    /// Not an RTP (or RTCP) packet.
    Malformed = 1,
    /// A payload type the answer did not accept.
    UnexpectedPayload = 2,
}

impl Metrics {
    /// Counts a dropped RTP packet.
    pub fn rtp_dropped(&self, reason: RtpDrop) {
        Metrics::inc(&self.rtp_dropped[reason as usize]);
    }
}

/// `[media]`: where the ports come from and how many one source may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpConfig {
    /// Even ports in this range carry RTP, each with the next port for RTCP.
    pub ports: RangeInclusive<u16>,
    /// Calls (port pairs) one source address may hold at once.
    pub ports_per_source: usize,
    /// Calls (port pairs) the callers of one trunk may hold at once; `None`: half the
    /// pairs of the range (at least `ports_per_source`).
    pub ports_per_trunk: Option<usize>,
}

impl Default for RtpConfig {
    fn default() -> Self {
        RtpConfig {
            ports: 10000..=20000,
            ports_per_source: 4,
            ports_per_trunk: None,
        }
    }
}

impl RtpConfig {
    /// The pairs (even port, odd port) the range holds.
    pub fn pairs(&self) -> usize {
        let (lo, hi) = (*self.ports.start(), *self.ports.end());
        (lo..hi).filter(|p| p % 2 == 0 && *p != 0).count()
    }

    /// A trunk's share: as configured, else half the pool (at least a source's).
    pub fn trunk_share(&self) -> usize {
        self.ports_per_trunk
            .unwrap_or(self.pairs() / 2)
            .max(self.ports_per_source)
            .max(1)
    }
}

/// Who a call's ports are counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Share {
    /// A caller that sends from its own address (an extension's phone): the
    /// signalling source's IP.
    Source(IpAddr),
    /// A trunk's callers (`gateway:NAME`, `provider:NAME`), who all arrive from the
    /// trunk's address.
    Trunk(String),
}

/// Why no port was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every port of the range is in use or could not be bound (answered 503).
    #[error("no free RTP port in the configured range")]
    Exhausted,
    /// The source (an address, or a trunk's callers) already holds its share of ports
    /// (answered 503; counted as `per_source` in the metrics).
    #[error("the source holds as many RTP ports as it may")]
    PerSource,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Even ports free to try, in order (lowest first, so tests and operators see a
    /// predictable port; the pool never hands out one in use).
    free: BTreeSet<u16>,
    /// Pairs held per source address; an entry lives while it holds one (bounded by
    /// the pool).
    per_share: HashMap<Share, usize>,
    /// Pairs held by all trunks' callers together.
    trunks: usize,
    in_use: usize,
}

/// The RTP ports of the server. Every call holds one even port and the odd one after.
#[derive(Debug)]
pub struct PortPool {
    ip: IpAddr,
    per_source: usize,
    per_trunk: usize,
    state: Mutex<PoolState>,
    metrics: Arc<Metrics>,
}

/// Two bound sockets (RTP, RTCP) and the place they hold in the pool until dropped.
#[derive(Debug)]
pub struct Lease {
    pub rtp: std::net::UdpSocket,
    pub rtcp: std::net::UdpSocket,
    pub port: u16,
    share: Share,
    pool: Arc<PortPool>,
}

impl std::ops::Drop for Lease {
    fn drop(&mut self) {
        self.pool.give_back(self.port, &self.share);
    }
}

impl PortPool {
    /// A pool of the even ports of `config.ports` (with their odd neighbour inside the
    /// range), bound on `ip`.
    pub fn new(ip: IpAddr, config: &RtpConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let (lo, hi) = (*config.ports.start(), *config.ports.end());
        let free = (lo..hi)
            .filter(|p| p % 2 == 0)
            .filter(|p| *p != 0)
            .collect();
        Arc::new(PortPool {
            ip,
            per_source: config.ports_per_source.max(1),
            per_trunk: config.trunk_share(),
            state: Mutex::new(PoolState {
                free,
                ..PoolState::default()
            }),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pairs in use now.
    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// A port pair for a call counted against `share`. A port another program holds
    /// is skipped (and tried again once a lease is given back).
    pub fn lease(self: &Arc<Self>, share: Share) -> Result<Lease, PoolError> {
        let mut s = self.lock();
        // A source holds its own share; every trunk's callers together hold at most
        // the trunks' part: two trunks (or one under many names) never take the
        // extensions' ports.
        let full = match share {
            Share::Source(_) => s.per_share.get(&share).copied().unwrap_or(0) >= self.per_source,
            Share::Trunk(_) => s.trunks >= self.per_trunk,
        };
        if full {
            Metrics::inc(&self.metrics.rtp_ports_refused[1]);
            return Err(PoolError::PerSource);
        }
        let mut busy = Vec::new();
        let found = loop {
            let Some(port) = s.free.pop_first() else {
                break None;
            };
            let bind = |p: u16| std::net::UdpSocket::bind(SocketAddr::new(self.ip, p));
            match (bind(port), bind(port + 1)) {
                (Ok(rtp), Ok(rtcp)) => break Some((port, rtp, rtcp)),
                _ => busy.push(port),
            }
        };
        // Ports another program held go back to be tried later.
        s.free.extend(busy);
        let Some((port, rtp, rtcp)) = found else {
            Metrics::inc(&self.metrics.rtp_ports_refused[0]);
            return Err(PoolError::Exhausted);
        };
        match share {
            Share::Source(_) => *s.per_share.entry(share.clone()).or_insert(0) += 1,
            Share::Trunk(_) => s.trunks += 1,
        }
        s.in_use += 1;
        self.metrics
            .rtp_ports_in_use
            .store(s.in_use as u64, Ordering::Relaxed);
        Ok(Lease {
            rtp,
            rtcp,
            port,
            share,
            pool: self.clone(),
        })
    }

    fn give_back(&self, port: u16, share: &Share) {
        let mut s = self.lock();
        s.free.insert(port);
        if matches!(share, Share::Trunk(_)) {
            s.trunks = s.trunks.saturating_sub(1);
        } else if let Some(n) = s.per_share.get_mut(share) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_share.remove(share);
            }
        }
        s.in_use = s.in_use.saturating_sub(1);
        self.metrics
            .rtp_ports_in_use
            .store(s.in_use as u64, Ordering::Relaxed);
    }
}

/// How long after the answer only the SDP's exact port latches a call whose SDP names
/// the caller's own IP (the rule at the top). Two seconds: a phone sends its first
/// packet within a frame or two of the answer, and the greeting (which plays longer)
/// hides what a NAT-rewritten caller loses.
pub const LATCH_GRACE: Duration = Duration::from_secs(2);

/// Where a call's RTP goes and from where it is taken (the rule at the top).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpPeer {
    negotiated: SocketAddr,
    signalling: IpAddr,
    latched: Option<SocketAddr>,
    /// When the call was answered (on the call's clock): the grace window's start.
    answered: Option<Instant>,
    /// Only the SDP's exact address ever latches (see [`RtpPeer::exact_only`]).
    exact: bool,
}

/// What to do with a received packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Take,
    /// Taken, and the call is latched to its source from now on.
    Latch,
    Refuse,
}

impl RtpPeer {
    /// `negotiated`: the SDP's address; `signalling`: the IP of the flow the INVITE
    /// came on.
    pub fn new(negotiated: SocketAddr, signalling: IpAddr) -> Self {
        RtpPeer {
            negotiated,
            signalling,
            latched: None,
            answered: None,
            exact: false,
        }
    }

    /// Only the SDP's exact address latches: no NAT fallback, no fallback after the
    /// grace. For a call whose media is worth more than a deposit — the owner's
    /// PIN-less `*97` menu: there a device sharing the phone's public address (an
    /// office or carrier NAT) that spoke first after the grace would hear the box and
    /// drive it with no PIN at all.
    #[must_use]
    pub fn exact_only(mut self) -> Self {
        self.exact = true;
        self
    }

    /// Whether the SDP's address is on the caller's signalling IP, where a phone
    /// that is not behind a NAT sends from (the only case [`RtpPeer::exact_only`]
    /// can latch a real phone).
    pub fn sdp_on_caller_ip(&self) -> bool {
        self.negotiated.ip() == self.signalling
    }

    /// The call was answered at `at` (read from the call's injected clock): the grace
    /// window in which only the SDP's port latches starts here. A call whose answer
    /// was never recorded starts it at the first packet judged, so the window always
    /// ends.
    pub fn answered(&mut self, at: Instant) {
        self.answered = Some(at);
    }

    /// Judges an RTP packet from `from`, received at `now` (the call's clock).
    pub fn judge(&mut self, from: SocketAddr, now: Instant) -> Verdict {
        match self.latched {
            Some(l) if l == from => Verdict::Take,
            Some(_) => Verdict::Refuse,
            None if from == self.negotiated => self.latch(from),
            None if self.exact => Verdict::Refuse,
            None if from.ip() == self.signalling => {
                if self.negotiated.ip() != self.signalling {
                    // Behind NAT: the SDP names a private address, the packets come
                    // from the NAT's.
                    return self.latch(from);
                }
                let start = *self.answered.get_or_insert(now);
                if now.saturating_duration_since(start) >= LATCH_GRACE {
                    self.latch(from)
                } else {
                    Verdict::Refuse
                }
            }
            None => Verdict::Refuse,
        }
    }

    fn latch(&mut self, from: SocketAddr) -> Verdict {
        self.latched = Some(from);
        Verdict::Latch
    }

    /// Where RTP is sent: the latched source; before a packet came, the SDP's address
    /// only when it is on the IP the INVITE came from (the caller's own), else nowhere.
    /// The SDP's address is what the caller *says*: anyone may name a victim (or
    /// sipward's own SIP port) there, and a greeting sent to another host before it
    /// proved the address by sending from it is a reflected flood (138 datagrams from
    /// one 180-byte INVITE). A caller behind a media gateway (SDP on another IP) hears
    /// the greeting from its first packet on.
    pub fn target(&self) -> Option<SocketAddr> {
        let own = self.negotiated.ip() == self.signalling
            && !self.negotiated.ip().is_unspecified()
            && !self.negotiated.ip().is_multicast()
            && self.negotiated.port() != 0;
        self.latched.or(own.then_some(self.negotiated))
    }

    /// Whether RTCP from `from` is the peer's: from the latched IP, or before the latch
    /// from the SDP's or the signalling IP.
    pub fn rtcp_from(&self, from: SocketAddr) -> bool {
        match self.latched {
            Some(l) => from.ip() == l.ip(),
            None => from.ip() == self.negotiated.ip() || from.ip() == self.signalling,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(range: RangeInclusive<u16>, per_source: usize) -> (Arc<PortPool>, Arc<Metrics>) {
        let config = RtpConfig {
            ports: range,
            ports_per_source: per_source,
            ports_per_trunk: None,
        };
        pool_of(&config)
    }

    fn pool_of(config: &RtpConfig) -> (Arc<PortPool>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (
            PortPool::new("127.0.0.1".parse().expect("ip"), config, metrics.clone()),
            metrics,
        )
    }

    /// A free range of `n` pairs: bind an ephemeral port and use the ports after it
    /// (another test or program may take one; the pool skips what it cannot bind).
    fn free_range(n: u16) -> RangeInclusive<u16> {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let p = probe.local_addr().expect("addr").port();
        let start = (p.min(60000) + 2) & !1;
        start..=start + 2 * n - 1
    }

    #[test]
    fn leases_even_pairs_bounded_and_given_back() {
        let range = free_range(2);
        let (pool, metrics) = pool(range.clone(), 8);
        let a = Share::Source("192.0.2.1".parse().expect("ip"));
        let first = pool.lease(a.clone()).expect("free");
        assert_eq!(first.port % 2, 0);
        assert!(range.contains(&first.port) && range.contains(&(first.port + 1)));
        assert_eq!(
            first.rtcp.local_addr().expect("addr").port(),
            first.port + 1
        );
        let second = pool.lease(a.clone()).expect("free");
        assert_eq!(pool.lease(a.clone()).err(), Some(PoolError::Exhausted));
        assert_eq!(pool.in_use(), 2);
        assert_eq!(metrics.rtp_ports_in_use.load(Ordering::Relaxed), 2);
        let port = first.port;
        drop(first);
        assert_eq!(pool.in_use(), 1);
        let again = pool.lease(a.clone()).expect("given back");
        assert_eq!(again.port, port);
        drop((second, again));
        assert_eq!(pool.in_use(), 0);
        assert!(
            metrics
                .render()
                .contains("sipward_rtp_ports_refused_total{reason=\"exhausted\"} 1")
        );
    }

    #[test]
    fn one_source_holds_at_most_its_share() {
        let (pool, metrics) = pool(free_range(4), 2);
        let a = Share::Source("192.0.2.1".parse().expect("ip"));
        let b = Share::Source("192.0.2.2".parse().expect("ip"));
        let held = [
            pool.lease(a.clone()).expect("1"),
            pool.lease(a.clone()).expect("2"),
        ];
        assert_eq!(pool.lease(a.clone()).err(), Some(PoolError::PerSource));
        let other = pool
            .lease(b.clone())
            .expect("another source still gets one");
        drop(held);
        assert!(pool.lease(a.clone()).is_ok());
        drop(other);
        assert!(
            metrics
                .render()
                .contains("sipward_rtp_ports_refused_total{reason=\"per_source\"} 1")
        );
    }

    #[test]
    fn a_trunks_callers_share_the_trunks_part_and_a_plain_source_keeps_its_limit() {
        let config = RtpConfig {
            ports: free_range(12),
            ports_per_source: 4,
            ports_per_trunk: None,
        };
        assert_eq!(config.trunk_share(), 6, "by default half the pool");
        let (pool, metrics) = pool_of(&config);
        let trunk = Share::Trunk("gateway:pstn".into());
        let phone = Share::Source("192.0.2.1".parse().expect("ip"));
        let callers: Vec<Lease> = (0..6)
            .map(|n| {
                pool.lease(trunk.clone())
                    .unwrap_or_else(|e| panic!("{n}: {e}"))
            })
            .collect();
        assert_eq!(
            pool.lease(trunk.clone()).err(),
            Some(PoolError::PerSource),
            "a seventh caller through the trunk"
        );
        let another = Share::Trunk("provider:carrier".into());
        assert_eq!(
            pool.lease(another.clone()).err(),
            Some(PoolError::PerSource),
            "another trunk: the trunks' part is shared by every trunk"
        );
        let phones: Vec<Lease> = (0..4)
            .map(|n| {
                pool.lease(phone.clone())
                    .unwrap_or_else(|e| panic!("{n}: {e}"))
            })
            .collect();
        assert_eq!(
            pool.lease(phone.clone()).err(),
            Some(PoolError::PerSource),
            "a fifth call from one address"
        );
        drop(callers);
        let held = pool
            .lease(another)
            .expect("given back: another trunk's caller");
        assert!(pool.lease(trunk).is_ok(), "given back");
        drop((held, phones));
        assert!(
            metrics
                .render()
                .contains("sipward_rtp_ports_refused_total{reason=\"per_source\"} 3")
        );
        let set = RtpConfig {
            ports_per_trunk: Some(2),
            ..config
        };
        assert_eq!(set.trunk_share(), 4, "never below a plain source's");
    }

    #[test]
    fn a_port_held_elsewhere_is_skipped() {
        let range = free_range(2);
        let squatter = std::net::UdpSocket::bind(("127.0.0.1", *range.start()));
        let (pool, _) = pool(range.clone(), 8);
        let a = Share::Source("192.0.2.1".parse().expect("ip"));
        let lease = pool.lease(a.clone()).expect("the other pair");
        if squatter.is_ok() {
            assert_eq!(lease.port, range.start() + 2);
            assert_eq!(pool.lease(a.clone()).err(), Some(PoolError::Exhausted));
        }
    }

    #[test]
    fn latches_once_to_the_signalling_ip_and_refuses_everyone_else() {
        let sdp: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let nat: IpAddr = "198.51.100.7".parse().expect("ip");
        let mut peer = RtpPeer::new(sdp, nat);
        assert_eq!(
            peer.target(),
            None,
            "nothing is sent to an SDP address off the caller's IP"
        );
        let own: SocketAddr = "198.51.100.7:4000".parse().expect("addr");
        assert_eq!(
            RtpPeer::new(own, nat).target(),
            Some(own),
            "the caller's own IP"
        );
        let attacker: SocketAddr = "203.0.113.9:4000".parse().expect("addr");
        let now = Instant::now();
        peer.answered(now);
        assert_eq!(peer.judge(attacker, now), Verdict::Refuse);
        assert_eq!(peer.target(), None, "a refused packet moves nothing");
        let natted: SocketAddr = "198.51.100.7:61000".parse().expect("addr");
        assert_eq!(
            peer.judge(natted, now),
            Verdict::Latch,
            "behind NAT, at once"
        );
        assert_eq!(peer.target(), Some(natted));
        assert_eq!(peer.judge(natted, now), Verdict::Take);
        // Latched once: another port of the same IP, and the SDP address, are refused.
        assert_eq!(
            peer.judge("198.51.100.7:61002".parse().expect("addr"), now),
            Verdict::Refuse
        );
        assert_eq!(peer.judge(sdp, now), Verdict::Refuse);
        assert_eq!(peer.target(), Some(natted));
        assert!(peer.rtcp_from("198.51.100.7:61001".parse().expect("addr")));
        assert!(!peer.rtcp_from("203.0.113.9:61001".parse().expect("addr")));
    }

    #[test]
    fn the_sdp_address_latches_too() {
        let sdp: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let mut peer = RtpPeer::new(sdp, "198.51.100.7".parse().expect("ip"));
        let now = Instant::now();
        assert_eq!(peer.judge(sdp, now), Verdict::Latch);
        assert_eq!(
            peer.judge("198.51.100.7:4000".parse().expect("addr"), now),
            Verdict::Refuse
        );
    }

    #[test]
    fn an_exact_only_peer_latches_the_sdps_address_and_nothing_else_ever() {
        let sdp: SocketAddr = "198.51.100.7:4000".parse().expect("addr");
        let neighbour: SocketAddr = "198.51.100.7:4002".parse().expect("addr");
        let (peer, answer) = answered_peer(sdp);
        let mut peer = peer.exact_only();
        let long_after = answer + LATCH_GRACE * 10;
        assert_eq!(
            peer.judge(neighbour, long_after),
            Verdict::Refuse,
            "another port of the caller's IP, long after the grace"
        );
        assert_eq!(peer.judge(sdp, long_after), Verdict::Latch, "control");
        // Behind a NAT (SDP on a private address): nothing from the public IP latches.
        let private: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let mut nat = RtpPeer::new(private, sdp.ip()).exact_only();
        assert!(!nat.sdp_on_caller_ip());
        assert_eq!(nat.judge(sdp, answer), Verdict::Refuse);
        let mut plain = RtpPeer::new(private, sdp.ip());
        assert_eq!(
            plain.judge(sdp, answer),
            Verdict::Latch,
            "control: NAT latch"
        );
    }

    /// The clock the call reads, moved by the test (as `policy::clock::ManualClock`).
    fn answered_peer(sdp: SocketAddr) -> (RtpPeer, Instant) {
        let mut peer = RtpPeer::new(sdp, sdp.ip());
        let answer = Instant::now();
        peer.answered(answer);
        (peer, answer)
    }

    #[test]
    fn an_sdp_on_the_callers_own_ip_latches_on_its_port_only_within_the_grace() {
        let sdp: SocketAddr = "198.51.100.7:4000".parse().expect("addr");
        let neighbour: SocketAddr = "198.51.100.7:4002".parse().expect("addr");
        let (mut peer, answer) = answered_peer(sdp);
        let just_before = answer + LATCH_GRACE - Duration::from_millis(1);
        assert_eq!(
            peer.judge(neighbour, answer),
            Verdict::Refuse,
            "another port of that IP, at the answer"
        );
        assert_eq!(
            peer.judge(neighbour, just_before),
            Verdict::Refuse,
            "another port of that IP, a millisecond before the grace ends"
        );
        assert_eq!(
            peer.judge(sdp, just_before),
            Verdict::Latch,
            "the SDP's port"
        );
        assert_eq!(
            peer.judge(neighbour, answer + LATCH_GRACE * 10),
            Verdict::Refuse,
            "latched: the grace's end moves nothing"
        );
        assert_eq!(peer.target(), Some(sdp));
    }

    #[test]
    fn after_the_grace_another_port_of_the_callers_ip_latches() {
        // A NAT or ALG that rewrote the SDP's address and not the port: the caller's
        // packets come from another port of its own IP, and nothing from the SDP's.
        let sdp: SocketAddr = "198.51.100.7:4000".parse().expect("addr");
        let rewritten: SocketAddr = "198.51.100.7:61000".parse().expect("addr");
        let (mut peer, answer) = answered_peer(sdp);
        assert_eq!(peer.judge(rewritten, answer), Verdict::Refuse);
        assert_eq!(
            peer.judge(rewritten, answer + LATCH_GRACE),
            Verdict::Latch,
            "the grace is over"
        );
        assert_eq!(peer.target(), Some(rewritten));
        assert_eq!(
            peer.judge(sdp, answer + LATCH_GRACE),
            Verdict::Refuse,
            "latched once"
        );
        // Another IP never latches, grace or not.
        let (mut peer, answer) = answered_peer(sdp);
        assert_eq!(
            peer.judge(
                "203.0.113.9:4000".parse().expect("addr"),
                answer + LATCH_GRACE * 5
            ),
            Verdict::Refuse
        );
    }

    #[test]
    fn a_call_whose_answer_was_not_recorded_starts_the_grace_at_its_first_packet() {
        let sdp: SocketAddr = "198.51.100.7:4000".parse().expect("addr");
        let other: SocketAddr = "198.51.100.7:4002".parse().expect("addr");
        let mut peer = RtpPeer::new(sdp, sdp.ip());
        let first = Instant::now();
        assert_eq!(peer.judge(other, first), Verdict::Refuse);
        assert_eq!(
            peer.judge(other, first + LATCH_GRACE - Duration::from_millis(1)),
            Verdict::Refuse
        );
        assert_eq!(peer.judge(other, first + LATCH_GRACE), Verdict::Latch);
    }
}
