//! UDP, TCP and TLS transports (RFC 3261 §18, §26): they move bytes between sockets and
//! the endpoint and do nothing else. Received messages are handed on with the [`Flow`]
//! they came on; written messages come only as [`Cleared`] values, which only the egress
//! rule can make: the UDP socket and the connections' writers are private to this
//! module, and [`Transports`]' one writing method takes nothing else.
//!
//! TCP and TLS share one accept loop and one connection loop, generic over the stream:
//! framed by Content-Length; connections and message sizes are bounded. Every live
//! connection has an entry in one bounded registry (its id, its peer, its writer
//! channel), so that sipward can send a request on a connection a phone opened (a call,
//! a check-sync NOTIFY: RFC 5626 flows, and RFC 5923's reuse, since sipward never opens
//! a connection of its own to a phone); an entry goes with its connection, and the
//! endpoint is told so the bindings made on it stop being reached. No source can hold
//! connections open for nothing (issue #17): each address and each network prefix may
//! hold only so many ([`TcpLimits`]), counted across the TCP and TLS ports together; a
//! new connection must deliver a complete message
//! within a deadline, and one that sends no complete message for a while is closed
//! (bytes alone keep nothing open); a ban closes the source's connections within a
//! tick; a stream that cannot be framed or a message that does not parse closes its
//! connection and counts toward the source's flood limit. At the file-descriptor limit
//! the accept loop backs off. A TLS handshake must finish within a few seconds, and
//! each source may have only so many in flight: a half-open flood costs one timer per
//! connection; every handshake, completed or not, counts toward the source's flood
//! limit. A double-CRLF keep-alive ping is answered with a CRLF pong (RFC 5626
//! §4.4.1), counted, and from a source with no live registration counted toward its
//! flood limit. Unfinished requests (bytes that do not yet make a whole message) are capped
//! per address and per prefix, and each must be finished within a deadline: a source
//! cannot hold many half-sent requests, each costing a buffer, on its connections.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accounts::background::{self, Task};
use policy::places::{Place, PlaceCaps, Places};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::egress::{Cleared, Undeliverable, Wire};
use crate::flow::{ConnId, Flow, TransportKind};
use crate::guard::Admission;
use crate::tls::ServerIdentity;

/// The largest SIP message accepted on a stream, by default (`[sip] max_message_tcp`).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The largest datagram accepted, by default (`[sip] max_message_udp`): RFC 3261 §18.1.1
/// keeps requests that may exceed the path MTU off UDP, so nothing a phone sends over
/// UDP legitimately comes near it.
pub const MAX_DATAGRAM: usize = 16 * 1024;

/// The largest message accepted per transport; a larger one is answered `513 Message
/// Too Large` when its head can be read (RFC 3261 §21.5.14), otherwise dropped, and
/// counted either way. The limit is checked before the message is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageLimits {
    pub datagram: usize,
    pub stream: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            datagram: MAX_DATAGRAM,
            stream: MAX_MESSAGE,
        }
    }
}

impl MessageLimits {
    pub fn of(&self, transport: TransportKind) -> usize {
        match transport {
            TransportKind::Udp | TransportKind::Hop => self.datagram,
            TransportKind::Tcp | TransportKind::Tls => self.stream,
        }
    }
}
/// Concurrent TCP and TLS connections (the registry's bound): 5,000 idle phones and
/// room beside them. Each takes a file descriptor; the binary raises the open-file limit
/// to fit and says so when it cannot.
pub const MAX_TCP_CONNECTIONS: usize = 8192;
/// TLS handshakes in flight on a listener, whatever their sources (allow-listed ones
/// too), counted from the client's first bytes to the end of the handshake. A handshake
/// is the one expensive thing a connection costs before it has proved anything; without
/// a total bound a flood of them shares the CPU until none finishes within its deadline
/// (a collapse). Over the bound, a connection is closed before any cryptography: the
/// excess is refused cheaply and the handshakes admitted finish. A half-open connection
/// (one that never speaks) takes no place here, so such a flood cannot shut others out:
/// it costs one timer each, under the per-source caps.
pub const MAX_HANDSHAKES: usize = 256;
/// At the bound, a new handshake takes the place of the oldest one in flight if that
/// one has waited at least this long: a real client finishes in a few round trips, so
/// the oldest place is most likely held by one that sent a byte and stalled. Holding
/// every place then takes a fresh connection per place and per this interval (256 a
/// second), which the per-source handshake caps and flood limits spread over more than
/// a hundred addresses, instead of 32 addresses each stalling 8 for the whole deadline.
pub const HANDSHAKE_YIELDS_AFTER: Duration = Duration::from_secs(1);
/// Messages read from one connection and not yet handled: the reader keeps reading while
/// earlier messages are handled, but one connection cannot hold more of the handling
/// than this (its reader waits, and TCP pushes back on the peer).
pub const IN_FLIGHT_PER_CONNECTION: usize = 32;
/// Messages waiting for one handling lane (shared by every connection of a listener).
const LANE_QUEUE: usize = 1024;
/// A write to a peer must make progress within this: a peer that stops reading cannot
/// hold its connection (and its place under the total bound) open for ever.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// After its reader ends, a connection's writer gets this long to write what is queued
/// and the close (a TLS close_notify), then it is cut.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(2);
/// How long a closing connection waits for its messages still being handled, so their
/// answers go out and the bindings they make are let go with the connection.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);
/// A busy connection reads into its framing buffer in steps of this (many pipelined
/// messages in one read); the buffer is given back whenever it holds nothing.
const READ_STEP: usize = 16 * 1024;
/// What a connection that is not busy offers a read: a message or two. An idle
/// connection waits with this much buffer, not [`READ_STEP`] (5,000 idle phones).
const READ_FIRST: usize = 2 * 1024;
/// A TCP connection that carries a live registration and sends no complete message
/// (nor a keep-alive) for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(900);
/// Messages waiting to be written on one connection; a peer that reads no faster is
/// cut off rather than buffered without bound. The queue allocates as it fills (an
/// idle connection holds none of it).
pub const TCP_QUEUE: usize = 2048;
/// Room a connection's reader wants in its writer's queue before it hands on the next
/// message: half of it. A lane never waits on one connection (it drops an answer that
/// does not fit), so the reader waits instead, and a peer that reads its answers slowly
/// is pushed back on by TCP. The half left free takes the answers of requests still
/// being handled, which the per-connection bound on messages in flight does not count
/// once they wait on the store: the group commit answers a burst of REGISTERs at once
/// (a few hundred at 20,000/s; 256 places in all dropped 44 of 225,000 answers).
const ROOM: usize = TCP_QUEUE / 2;
/// The first wait of the accept loop after an accept error; it doubles up to
/// [`ACCEPT_BACKOFF_MAX`].
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What the TCP transport enforces per connection and per source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpLimits {
    /// Open connections per address (`[sip] tcp_connections_per_source`).
    pub per_source: u32,
    /// Open connections per network prefix (per_source × `guard.prefix_factor`).
    pub per_prefix: u32,
    /// The prefix lengths (`guard.ipv4_prefix`, `guard.ipv6_prefix`).
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// A new connection's first complete message must arrive within this
    /// (`[sip] tcp_first_message_secs`).
    pub first_message: Duration,
    /// A connection with no live registration from its source is closed after this long
    /// without a complete message (`[sip] tcp_idle_secs`).
    pub idle: Duration,
    /// The same for a source with a live registration (`[sip] tcp_idle_registered_secs`,
    /// [`TCP_IDLE`] by default). Only a complete message or a keep-alive restarts it,
    /// never a byte alone.
    pub idle_registered: Duration,
    /// Connections holding an unfinished request, per address
    /// (`[sip] tcp_unfinished_per_source`) and per prefix (times `guard.prefix_factor`).
    pub unfinished_per_source: u32,
    pub unfinished_per_prefix: u32,
    /// An unfinished request must be complete this long after its first byte
    /// (`[sip] tcp_message_secs`).
    pub message: Duration,
    /// How often an open connection looks whether its source has been banned.
    pub ban_check: Duration,
    /// A TLS handshake must be complete within this (`[tls] handshake_secs`).
    pub handshake: Duration,
    /// TLS handshakes in flight per address (`[tls] handshakes_per_source`); per
    /// prefix, times the same factor as connections.
    pub handshakes_per_source: u32,
    /// TLS handshakes in flight on the listener, all sources together
    /// ([`MAX_HANDSHAKES`]).
    pub handshakes: usize,
    /// Messages of one connection being handled at once ([`IN_FLIGHT_PER_CONNECTION`]).
    pub in_flight: usize,
    /// The tasks a listener's messages are handled on (the server gives one per core,
    /// as many as UDP receivers). A connection's messages with one Call-ID always take
    /// the same lane, so they are handled in the order they came; messages of other
    /// calls on the same connection are handled beside them.
    pub lanes: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self {
            per_source: 32,
            per_prefix: 32 * 4,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            first_message: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            idle_registered: TCP_IDLE,
            unfinished_per_source: 8,
            unfinished_per_prefix: 8 * 4,
            message: Duration::from_secs(10),
            ban_check: Duration::from_secs(1),
            handshake: Duration::from_secs(5),
            handshakes_per_source: 8,
            handshakes: MAX_HANDSHAKES,
            in_flight: IN_FLIGHT_PER_CONNECTION,
            lanes: 2,
        }
    }
}

impl TcpLimits {
    fn caps(&self) -> PlaceCaps {
        PlaceCaps {
            per_source: self.per_source,
            per_prefix: self.per_prefix,
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
        }
    }

    fn unfinished_caps(&self) -> PlaceCaps {
        PlaceCaps {
            per_source: self.unfinished_per_source,
            per_prefix: self.unfinished_per_prefix,
            ..self.caps()
        }
    }

    fn handshake_caps(&self) -> PlaceCaps {
        let factor = self
            .per_prefix
            .checked_div(self.per_source)
            .unwrap_or(1)
            .max(1);
        PlaceCaps {
            per_source: self.handshakes_per_source,
            per_prefix: self.handshakes_per_source.saturating_mul(factor),
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
        }
    }
}

/// A listener's TLS handshakes in flight ([`MAX_HANDSHAKES`]), oldest first, each with
/// the signal that tells it its place was given to a newcomer
/// ([`HANDSHAKE_YIELDS_AFTER`]).
struct HandshakeBound {
    cap: usize,
    state: Mutex<HandshakesInFlight>,
}

#[derive(Default)]
struct HandshakesInFlight {
    next: u64,
    /// By the order they were admitted: the first is the oldest.
    live: std::collections::BTreeMap<u64, (Instant, Arc<Notify>)>,
}

/// One handshake's place; given back when dropped.
struct HandshakePlace {
    bound: Arc<HandshakeBound>,
    id: u64,
    /// Notified when the place was given to a newer handshake: this one is cut.
    yielded: Arc<Notify>,
}

impl Drop for HandshakePlace {
    fn drop(&mut self) {
        self.bound
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .remove(&self.id);
    }
}

impl HandshakeBound {
    fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            state: Mutex::new(HandshakesInFlight::default()),
        })
    }

    /// A place for a handshake starting `now`: a free one, else the oldest one's if it
    /// has waited [`HANDSHAKE_YIELDS_AFTER`] (that handshake is told to stop), else none.
    fn take(self: &Arc<Self>, now: Instant) -> Option<HandshakePlace> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.live.len() >= self.cap {
            let (&oldest, (started, _)) = st.live.iter().next()?;
            if now.saturating_duration_since(*started) < HANDSHAKE_YIELDS_AFTER {
                return None;
            }
            if let Some((_, yielded)) = st.live.remove(&oldest) {
                yielded.notify_one();
            }
        }
        let id = st.next;
        st.next += 1;
        let yielded = Arc::new(Notify::new());
        st.live.insert(id, (now, yielded.clone()));
        Some(HandshakePlace {
            bound: self.clone(),
            id,
            yielded,
        })
    }
}

/// Why a connection was closed by the transport (for the metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// Over a per-source, per-prefix or total cap: closed at accept.
    Refused,
    /// No complete message by the first-message deadline, or idle too long.
    TimedOut,
    /// Its source was banned while it was open.
    Banned,
    /// It held an unfinished request over the per-source or per-prefix cap, or past the
    /// deadline to finish it.
    Unfinished,
    /// Its TLS handshake failed (a protocol version or suite refused, not TLS at all).
    HandshakeFailed,
    /// Its TLS handshake was not complete by the deadline (a half-open connection).
    HandshakeTimedOut,
    /// Refused at accept, before any cryptography: the listener's handshakes in flight
    /// were at their bound ([`TcpLimits::handshakes`]).
    HandshakesFull,
    /// Its handshake had waited past [`HANDSHAKE_YIELDS_AFTER`] when the bound was full,
    /// and a newer one took its place.
    HandshakeYielded,
}

/// What the transports hand received messages to (the endpoint).
pub trait Inbound: Send + Sync + 'static {
    /// Whether a datagram from `ip` is read at all (the guard, before parsing).
    fn admit(&self, ip: IpAddr) -> Admission;
    /// Whether a message on a connection from `ip` is read: the handshake proved the
    /// source, so a flood from it bans whatever its standing.
    fn admit_on_connection(&self, ip: IpAddr) -> Admission;
    /// Whether a connection from `ip` is accepted.
    fn admits_connection(&self, ip: IpAddr) -> bool;
    /// A TLS handshake from `ip` is about to begin: it costs the server a key exchange
    /// and a signature whether it completes or not, so it counts toward the source's
    /// flood limit like a message (the TCP handshake proved the source). Anything but
    /// [`Admission::Admit`] refuses the connection.
    fn handshake(&self, ip: IpAddr) -> Admission;
    /// One RFC 5626 double-CRLF ping on a connection from `ip`: counted, and for a
    /// source with no live registration counted toward its flood limit (a registered
    /// phone's keep-alives are never limited).
    fn keepalive(&self, ip: IpAddr) -> Admission;
    /// Whether `ip` is banned now (an open connection's periodic look; counts nothing).
    fn banned(&self, ip: IpAddr) -> bool;
    /// Whether `ip` is exempt from the per-source connection caps (allow-listed: a
    /// trunk, or an office NAT the operator vouches for).
    fn uncapped(&self, ip: IpAddr) -> bool;
    /// Whether a registration made from `ip` is live (its connections get the long
    /// idle timeout).
    fn registered_from(&self, ip: IpAddr) -> bool;
    /// One message, as it came on `flow`; false when it did not parse.
    fn received(&self, bytes: &[u8], flow: Flow) -> bool;
    /// The largest message taken on `transport` (see [`MessageLimits`]).
    fn max_message(&self, transport: TransportKind) -> usize;
    /// A message over that limit (`bytes` holds at least its start): answered 513 when
    /// its head can be read, otherwise dropped; counted either way.
    fn oversized(&self, bytes: &[u8], flow: Flow);
    /// A stream from `ip` could not be framed (it is closed).
    fn unframed(&self, ip: IpAddr);
    /// A connection was refused or closed by a limit.
    fn connection(&self, closed: ConnectionEnd);
    /// A connection ended, whatever the reason: what was reached on `flow` no longer is.
    fn closed(&self, flow: Flow);
    /// The accept loop waits `delay` after `error`; `first` for the first wait of a run.
    fn accept_backoff(&self, error: &std::io::Error, delay: Duration, first: bool);
}

/// The writing end of one connection: messages queued for its writer task.
type Writer = mpsc::Sender<Arc<[u8]>>;

/// The live connections: id -> peer and writer.
#[derive(Debug, Default)]
struct Connections {
    by_id: HashMap<ConnId, (SocketAddr, Writer)>,
}

/// The places the stream listeners take connections from: one set for TCP and TLS
/// together, so a source holds its per-source cap (and all sources the total bound)
/// once across both ports, never once per listener.
#[derive(Debug, Clone)]
struct StreamPlaces {
    /// The total bound on open connections ([`MAX_TCP_CONNECTIONS`]).
    permits: Arc<Semaphore>,
    /// Open connections per address and prefix.
    open: Places,
    /// Connections holding an unfinished request.
    unfinished: Places,
    /// TLS handshakes in flight.
    handshakes: Places,
}

impl Default for StreamPlaces {
    fn default() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS)),
            open: Places::default(),
            unfinished: Places::default(),
            handshakes: Places::default(),
        }
    }
}

/// The sockets sipward writes to, behind the egress rule.
#[derive(Debug)]
pub struct Transports {
    udp: Arc<UdpSocket>,
    /// The internal hop socket (`[cluster] internal`, issue 21), bound when hops are on.
    internal: std::sync::OnceLock<Arc<UdpSocket>>,
    connections: Mutex<Connections>,
    next_conn: AtomicU64,
    places: StreamPlaces,
}

impl Transports {
    /// Binds UDP and TCP on the same address (see [`bind_pair`]). The UDP socket stays in
    /// here: nothing outside this module can write to it.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<(Arc<Self>, TcpListener)> {
        let (udp, tcp) = bind_pair(addr).await?;
        let transports = Self {
            udp: Arc::new(udp),
            internal: std::sync::OnceLock::new(),
            connections: Mutex::new(Connections::default()),
            next_conn: AtomicU64::new(0),
            places: StreamPlaces::default(),
        };
        Ok((Arc::new(transports), tcp))
    }

    /// The UDP socket's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Binds the internal hop socket on `addr` (once; a second call is refused as
    /// `AddrInUse`). Returns the bound address.
    pub async fn bind_internal(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let socket = UdpSocket::bind(addr).await?;
        let local = socket.local_addr()?;
        self.internal
            .set(Arc::new(socket))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::AddrInUse))?;
        Ok(local)
    }

    /// Has the kernel drop datagrams from `sources` (see [`set_kernel_drop`]).
    pub fn kernel_drop(&self, sources: &[std::net::Ipv4Addr]) -> std::io::Result<()> {
        set_kernel_drop(&self.udp, sources)
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live connections (a gauge).
    pub fn connection_count(&self) -> usize {
        self.connections().by_id.len()
    }

    fn open(&self, peer: SocketAddr, writer: Writer) -> ConnId {
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed) + 1);
        self.connections().by_id.insert(id, (peer, writer));
        id
    }

    fn close(&self, id: ConnId) {
        self.connections().by_id.remove(&id);
    }
}

impl Wire for Transports {
    fn send(&self, message: Cleared) -> Result<(), Undeliverable> {
        let flow = *message.flow();
        match flow.transport {
            TransportKind::Udp => {
                // A full send buffer or an unreachable peer is the peer's problem: UDP
                // is best effort, and transactions retransmit. Counted, not logged: under
                // load this comes by the thousand.
                if self.udp.try_send_to(message.bytes(), flow.remote).is_err() {
                    background::count(Task::UdpSend);
                }
                Ok(())
            }
            TransportKind::Hop => {
                // Only from the internal socket: a node reads hops (and their answers)
                // there, from this node's published address. Without one, nowhere.
                let Some(internal) = self.internal.get() else {
                    background::count(Task::UdpSend);
                    return Err(Undeliverable);
                };
                if internal.try_send_to(message.bytes(), flow.remote).is_err() {
                    background::count(Task::UdpSend);
                }
                Ok(())
            }
            TransportKind::Tcp | TransportKind::Tls => {
                let writer = flow.conn.and_then(|id| {
                    self.connections()
                        .by_id
                        .get(&id)
                        .filter(|(peer, _)| *peer == flow.remote)
                        .map(|(_, w)| w.clone())
                });
                // The connection is gone or its queue is full: the caller may not look
                // (retransmissions, best-effort answers), so it is counted here.
                let Some(writer) = writer else {
                    background::count(Task::TcpWrite);
                    return Err(Undeliverable);
                };
                writer.try_send(Arc::from(message.bytes())).map_err(|_| {
                    background::count(Task::TcpWrite);
                    Undeliverable
                })
            }
        }
    }
}

/// Receives datagrams until shutdown. Several of these may share one socket: each
/// datagram goes to exactly one of them, so both cores work.
pub async fn serve_udp(
    transports: Arc<Transports>,
    inbound: Arc<dyn Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket = &transports.udp;
    // Room for the largest datagram UDP carries (65,507 bytes over IPv4, 65,527 over
    // IPv6): one over the size limit is seen whole, answered 513 or counted, never cut
    // short and misread.
    let mut buf = vec![0u8; 65_535];
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, src)) => {
                    // A banned or silenced source costs a lookup or two: nothing is
                    // parsed or allocated.
                    if inbound.admit(src.ip()) != Admission::Admit {
                        continue;
                    }
                    inbound.received(&buf[..n], Flow::udp(src));
                }
                // ICMP errors from earlier sends surface here on Linux; keep serving.
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Where a datagram read on the internal hop socket from a live node goes.
pub type HopInbound = Arc<dyn Fn(&[u8], Flow) + Send + Sync>;

/// Receives datagrams on the internal hop socket until shutdown (issue 21). A datagram
/// from anything but a live node's published internal address (`nodes`) is dropped
/// unread and counted: a hop's MAC is only looked at when its source is a node. What
/// comes from a node goes to `hop`.
pub async fn serve_internal(
    transports: Arc<Transports>,
    nodes: Arc<crate::hop::Targets>,
    metrics: Arc<crate::metrics::Metrics>,
    hop: HopInbound,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(socket) = transports.internal.get().cloned() else {
        return;
    };
    let mut buf = vec![0u8; 65_535];
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, src)) => {
                    if !nodes.is_node(src) {
                        metrics.hops_refused[0].fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    hop(&buf[..n], Flow::hop(src));
                }
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Whether an accept error is about this one connection (it went away before we took
/// it) rather than about us (no file descriptors, no memory): only the latter is waited on.
fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
}

/// Accepts TCP connections until shutdown, under `limits`.
pub async fn serve_tcp(
    listener: TcpListener,
    transports: Arc<Transports>,
    inbound: Arc<dyn Inbound>,
    limits: TcpLimits,
    shutdown: watch::Receiver<bool>,
) {
    serve_stream(listener, None, transports, inbound, limits, shutdown).await;
}

/// Accepts TLS connections until shutdown, under `limits`: each handshake is made with
/// the certificate in force at its accept.
pub async fn serve_tls(
    listener: TcpListener,
    identity: Arc<ServerIdentity>,
    transports: Arc<Transports>,
    inbound: Arc<dyn Inbound>,
    limits: TcpLimits,
    shutdown: watch::Receiver<bool>,
) {
    serve_stream(
        listener,
        Some(identity),
        transports,
        inbound,
        limits,
        shutdown,
    )
    .await;
}

/// The accept loop of both stream transports: the guard, the per-source places, the
/// total bound, back-off at the file-descriptor limit, and for TLS the handshake.
async fn serve_stream(
    listener: TcpListener,
    tls: Option<Arc<ServerIdentity>>,
    transports: Arc<Transports>,
    inbound: Arc<dyn Inbound>,
    limits: TcpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let StreamPlaces {
        permits,
        open: places,
        unfinished,
        handshakes,
    } = transports.places.clone();
    let caps = limits.caps();
    let handshake_caps = limits.handshake_caps();
    let in_flight = HandshakeBound::new(limits.handshakes);
    let lanes = Lanes::start(inbound.clone(), limits.lanes);
    let limits = Arc::new(limits);
    let mut backoff: Option<Duration> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = None;
                a
            }
            Err(e) if transient(&e) => continue,
            Err(e) => {
                // Out of file descriptors: accept fails at once, every time, until a
                // connection closes. Wait, longer each time, instead of spinning.
                let delay = backoff.map_or(ACCEPT_BACKOFF_MIN, |d| (d * 2).min(ACCEPT_BACKOFF_MAX));
                inbound.accept_backoff(&e, delay, backoff.is_none());
                backoff = Some(delay);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        if !inbound.admits_connection(peer.ip()) {
            continue;
        }
        // Over a limit: refuse by closing at once.
        let uncapped = inbound.uncapped(peer.ip());
        let place = if uncapped {
            Some(places.exempt())
        } else {
            places.take(peer.ip(), &caps)
        };
        let Some(slot) = place else {
            inbound.connection(ConnectionEnd::Refused);
            continue;
        };
        // Handshakes in flight are the expensive part of a TLS flood: capped per source
        // and prefix here, and on the whole listener once the client speaks (below).
        // Each handshake also counts toward the source's flood limit (a rate): one
        // address completing handshakes and sending nothing is silenced, then banned.
        let handshake = match (&tls, uncapped) {
            (None, _) => None,
            (Some(_), true) => Some(handshakes.exempt()),
            (Some(_), false) => match handshakes.take(peer.ip(), &handshake_caps) {
                Some(h) if inbound.handshake(peer.ip()) == Admission::Admit => Some(h),
                _ => {
                    inbound.connection(ConnectionEnd::Refused);
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            inbound.connection(ConnectionEnd::Refused);
            continue;
        };
        background::checked(
            Task::SocketSetup,
            "setting TCP_NODELAY",
            stream.set_nodelay(true),
        );
        let (transports, inbound, limits, mut shutdown, tls, lanes, in_flight) = (
            transports.clone(),
            inbound.clone(),
            limits.clone(),
            shutdown.clone(),
            tls.clone(),
            lanes.clone(),
            in_flight.clone(),
        );
        let unfinished = Unfinished {
            places: unfinished.clone(),
            uncapped,
            held: None,
        };
        tokio::spawn(async move {
            match tls {
                None => {
                    let kind = TransportKind::Tcp;
                    let link = Link {
                        peer,
                        kind,
                        transports,
                        inbound,
                        lanes,
                    };
                    connection(stream, link, &limits, unfinished, shutdown).await;
                }
                Some(identity) => {
                    let deadline = Instant::now() + limits.handshake;
                    // A half-open connection (nothing sent) costs this wait and nothing
                    // more: it takes no place among the handshakes in flight.
                    // (A peek, not `readable`, which may report readiness that is
                    // not there.)
                    let mut first = [0u8; 1];
                    let spoke = tokio::select! {
                        r = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => r,
                        _ = shutdown.changed() => return,
                    };
                    match spoke {
                        Ok(Ok(1..)) => {}
                        Ok(Ok(0) | Err(_)) => {
                            return inbound.connection(ConnectionEnd::HandshakeFailed);
                        }
                        Err(_) => return inbound.connection(ConnectionEnd::HandshakeTimedOut),
                    }
                    // The listener's bound on handshakes in flight, whatever their
                    // sources (allow-listed ones too: a bound on the CPU, not a judgement
                    // of the source). Over it the connection is closed now, before any
                    // cryptography: the excess is refused cheaply and the handshakes
                    // admitted finish within their deadline instead of all missing it.
                    // At the bound the oldest handshake gives way if it has waited
                    // long enough (see HANDSHAKE_YIELDS_AFTER).
                    let Some(handshake_slot) = in_flight.take(Instant::now()) else {
                        return inbound.connection(ConnectionEnd::HandshakesFull);
                    };
                    // The acceptor is read once, here: a reload during the handshake
                    // or later never touches this connection.
                    let accept = identity.acceptor().accept(stream);
                    let done = tokio::select! {
                        r = tokio::time::timeout_at(deadline, accept) => r,
                        () = handshake_slot.yielded.notified() => {
                            return inbound.connection(ConnectionEnd::HandshakeYielded);
                        }
                        _ = shutdown.changed() => return,
                    };
                    drop(handshake);
                    drop(handshake_slot);
                    match done {
                        Ok(Ok(stream)) => {
                            let link = Link {
                                peer,
                                kind: TransportKind::Tls,
                                transports,
                                inbound,
                                lanes,
                            };
                            connection(stream, link, &limits, unfinished, shutdown).await;
                        }
                        // Counted toward the flood limit at accept, like every
                        // handshake; here it is only told apart on /metrics.
                        Ok(Err(_)) => inbound.connection(ConnectionEnd::HandshakeFailed),
                        Err(_) => inbound.connection(ConnectionEnd::HandshakeTimedOut),
                    }
                }
            }
            drop(slot);
            drop(permit);
        });
    }
}

/// A connection's claim on the unfinished-request table while it holds part of a
/// message: taken at the first byte of a message, given back when the message is whole.
struct Unfinished {
    places: Places,
    /// An allow-listed source: counted against nothing.
    uncapped: bool,
    /// The place held, and when the unfinished message began.
    held: Option<(Place, Instant)>,
}

impl Unfinished {
    /// Notes whether `buf` holds part of a message now; false when a new unfinished
    /// message finds its source (or prefix) at the cap.
    fn holding(&mut self, ip: IpAddr, partial: bool, caps: &PlaceCaps) -> bool {
        if !partial {
            self.held = None;
            return true;
        }
        if self.held.is_some() {
            return true;
        }
        let place = if self.uncapped {
            Some(self.places.exempt())
        } else {
            self.places.take(ip, caps)
        };
        match place {
            Some(p) => {
                self.held = Some((p, Instant::now()));
                true
            }
            None => false,
        }
    }

    /// When the unfinished message must be whole by.
    fn deadline(&self, within: Duration) -> Option<Instant> {
        self.held.as_ref().map(|(_, since)| *since + within)
    }
}

/// A double CRLF between messages: an RFC 5626 keep-alive ping.
const PING: usize = 4;
/// The pong that answers it (RFC 5626 §4.4.1).
const PONG: &[u8] = b"\r\n";

/// What a connection is, beside its stream: its peer, its transport, where its messages
/// go and where they are handled.
struct Link {
    peer: SocketAddr,
    kind: TransportKind,
    transports: Arc<Transports>,
    inbound: Arc<dyn Inbound>,
    lanes: Lanes,
}

/// One connection's share of the handling: its messages in flight, and whether one of
/// them failed to parse (then nothing more on the stream can be trusted).
#[derive(Debug)]
struct Share {
    slots: Semaphore,
    spoiled: std::sync::atomic::AtomicBool,
    spoiled_now: Notify,
}

impl Share {
    fn spoil(&self) {
        self.spoiled.store(true, Ordering::Relaxed);
        self.spoiled_now.notify_one();
    }

    fn spoiled(&self) -> bool {
        self.spoiled.load(Ordering::Relaxed)
    }
}

/// One framed message on its way to a lane, holding one of its connection's slots.
struct Job {
    bytes: Vec<u8>,
    flow: Flow,
    share: Arc<Share>,
}

/// The tasks a listener's stream messages are handled on: the same handling as a
/// datagram's (`Inbound::received`), on as many tasks as the server has UDP receivers, so
/// one busy connection's messages are handled on every core while its reader keeps
/// reading. A message goes to the lane its connection and Call-ID pick: one call's
/// messages (a 180 and the 200 behind it, an INVITE and its CANCEL) are handled in the
/// order they came.
#[derive(Clone)]
struct Lanes {
    queues: Arc<[mpsc::Sender<Job>]>,
    hasher: std::hash::RandomState,
}

impl Lanes {
    /// Starts `n` lanes; each ends when every sender (the listener and its connections)
    /// is gone.
    fn start(inbound: Arc<dyn Inbound>, n: usize) -> Self {
        let queues: Vec<mpsc::Sender<Job>> = (0..n.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Job>(LANE_QUEUE);
                let inbound = inbound.clone();
                tokio::spawn(async move {
                    while let Some(job) = rx.recv().await {
                        // A message that framed but does not parse: the stream is closed
                        // by its reader (it was counted toward the flood limit at the
                        // door).
                        // A source banned while its messages waited (a guesser
                        // pipelining past its tenth failure) has the rest dropped and
                        // its connection cut, as when each was read after the last.
                        if !job.share.spoiled() && inbound.banned(job.flow.remote.ip()) {
                            job.share.spoil();
                        }
                        if !job.share.spoiled() && !inbound.received(&job.bytes, job.flow) {
                            job.share.spoil();
                        }
                        job.share.slots.add_permits(1);
                    }
                });
                tx
            })
            .collect();
        Self {
            queues: queues.into(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// The lane for a message of connection `id`: by its Call-ID, or the connection's
    /// first lane when none is found (such a message fails to parse anyway).
    fn pick(&self, id: ConnId, message: &[u8]) -> &mpsc::Sender<Job> {
        use std::hash::BuildHasher;
        let n = self.queues.len();
        let i = match call_id(message) {
            Some(c) => self.hasher.hash_one((id, c)),
            None => self.hasher.hash_one(id),
        };
        let i = usize::try_from(i % n as u64).unwrap_or(0);
        &self.queues[i.min(n - 1)]
    }
}

/// The Call-ID header's value in a message's head (`Call-ID` or its compact form `i`,
/// any case), as the parse reads it: trimmed, folded lines joined by one space, a
/// continuation line never taken for a header. None when there is none. A scan, not a
/// parse: it only picks a lane, and the message is parsed in full there; it reads the
/// value as the parse does so that one call's messages keep to one lane however they
/// fold it.
fn call_id(message: &[u8]) -> Option<Cow<'_, [u8]>> {
    let head = &message[..sip::msg::head_end(message).unwrap_or(message.len())];
    let folded = |l: &&[u8]| l.first().is_some_and(|b| matches!(b, b' ' | b'\t'));
    // A header value's trim in the parse: spaces and tabs only.
    fn value(l: &[u8]) -> &[u8] {
        let blank = |b: &u8| matches!(b, b' ' | b'\t');
        let front = l.iter().take_while(|b| blank(b)).count();
        let l = &l[front..];
        let back = l.iter().rev().take_while(|b| blank(b)).count();
        &l[..l.len() - back]
    }
    let mut lines = head
        .split(|b| *b == b'\n')
        .skip(1)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    while let Some(line) = lines.next() {
        if folded(&line) {
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !(name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i")) {
            continue;
        }
        let mut id = Cow::Borrowed(value(&line[colon + 1..]));
        for more in lines.take_while(folded) {
            let id = id.to_mut();
            id.push(b' ');
            id.extend_from_slice(value(more));
        }
        return Some(id);
    }
    None
}

/// Writes what is queued for one connection until every sender is gone, then closes the
/// stream (a TLS close_notify; a TCP shutdown for writing). Messages queued together go
/// out in one write (one TLS record, one system call). Every write must be done within
/// [`WRITE_DEADLINE`]: a peer that stops reading is cut off, never waited on for ever.
async fn write_queued<W>(mut writer: W, mut rx: mpsc::Receiver<Arc<[u8]>>, taken: Arc<Notify>)
where
    W: AsyncWrite + Unpin,
{
    // However the writer ends, a reader waiting for room hears of it.
    struct Wake(Arc<Notify>);
    impl Drop for Wake {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }
    let _wake = Wake(taken.clone());
    while let Some(first) = rx.recv().await {
        // A lone message is written as it is; several are joined (an idle connection
        // keeps no buffer for it either way).
        let mut batch: Option<Vec<u8>> = None;
        while batch.as_ref().map_or(first.len(), Vec::len) < READ_STEP {
            match rx.try_recv() {
                Ok(more) => batch
                    .get_or_insert_with(|| first.to_vec())
                    .extend_from_slice(&more),
                Err(_) => break,
            }
        }
        // The queue has room again: a reader waiting for it may go on while this is
        // written.
        taken.notify_one();
        let bytes: &[u8] = batch.as_deref().unwrap_or(&first);
        let written = tokio::time::timeout(WRITE_DEADLINE, async {
            writer.write_all(bytes).await?;
            writer.flush().await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            // A peer gone without closing, or not reading: common, so counted and
            // not logged.
            background::count(Task::TcpWrite);
            // Closed before `_wake` is dropped and wakes the reader, so it sees the
            // writer gone (the queue is only dropped after the wake-up).
            rx.close();
            return;
        }
    }
    let _ = tokio::time::timeout(CLOSE_DEADLINE, writer.shutdown()).await;
}

/// One connection's loop: reads, frames, answers keep-alives and hands each message to
/// its lane, until the peer closes, a limit closes it, or shutdown.
async fn connection<S>(
    stream: S,
    link: Link,
    limits: &TcpLimits,
    mut unfinished: Unfinished,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Link {
        peer,
        kind,
        transports,
        inbound,
        lanes,
    } = link;
    let (mut reader, writer) = tokio::io::split(stream);
    let unfinished_caps = limits.unfinished_caps();
    let (tx, rx) = mpsc::channel::<Arc<[u8]>>(TCP_QUEUE);
    let pong = tx.clone();
    let id = transports.open(peer, tx);
    let flow = Flow::stream(kind, peer, id);
    let taken = Arc::new(Notify::new());
    let mut write = tokio::spawn(write_queued(writer, rx, taken.clone()));
    let in_flight = limits.in_flight.max(1);
    let share = Arc::new(Share {
        slots: Semaphore::new(in_flight),
        spoiled: std::sync::atomic::AtomicBool::new(false),
        spoiled_now: Notify::new(),
    });
    let opened = Instant::now();
    // Idleness is measured from the last complete message, never from the last byte: a
    // peer dripping bytes keeps nothing open. A registered flow's keep-alives (RFC 5626
    // CRLF pings) also count, for its long timeout only.
    let mut last_message: Option<Instant> = None;
    let mut last_ping = opened;
    let mut registered = false;
    // CR and LF bytes seen since the last message: every four are one ping.
    let mut crlf_run = 0usize;
    let mut ban_check = tokio::time::interval(limits.ban_check);
    ban_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max_message = inbound.max_message(TransportKind::Tcp);
    // The framing buffer, read into directly: it grows while a message needs it and is
    // given back whenever it holds nothing (an idle connection keeps no buffer).
    let mut buf: Vec<u8> = Vec::new();
    // Whether the last read filled all it was offered: the peer is sending faster than
    // a small read takes.
    let mut busy = false;
    'read: loop {
        // Keep-alive CRLFs between messages are skipped (RFC 5626 §3.5.1 pings), and
        // each double CRLF is answered with one CRLF. A full queue drops the pong: the
        // peer is not reading anyway.
        let skip = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        if skip > 0 {
            last_ping = Instant::now();
            crlf_run += skip;
            while crlf_run >= PING {
                crlf_run -= PING;
                // Counted, and for a source with no live registration counted toward
                // its flood limit: a ping flood is silenced (no pong), then banned.
                match inbound.keepalive(peer.ip()) {
                    Admission::Admit => {
                        let _ = pong.try_send(Arc::from(PONG));
                    }
                    Admission::Silenced => {}
                    Admission::Banned => break 'read,
                }
            }
        }
        buf.drain(..skip);
        if share.spoiled() {
            break 'read;
        }
        match sip::msg::frame_len(&buf, max_message) {
            Ok(Some(n)) => {
                crlf_run = 0;
                // A source banned while connected is cut off at its next message; a
                // silenced one loses the message.
                match inbound.admit_on_connection(peer.ip()) {
                    Admission::Admit => {}
                    Admission::Banned => break 'read,
                    Admission::Silenced => {
                        buf.drain(..n);
                        continue;
                    }
                }
                last_message = Some(Instant::now());
                // The next message, if bytes of it came along, starts its own clock.
                unfinished.held = None;
                let bytes: Vec<u8> = buf.drain(..n).collect();
                // Room in the writer's queue for the answers of every message in flight
                // first: while the peer reads its answers slowly, the reader waits (and
                // reads nothing more), so no answer is dropped at a full queue.
                while pong.capacity() < ROOM {
                    if pong.is_closed() {
                        break 'read;
                    }
                    // A ban or a spoiled stream ends the wait as it ends a read.
                    tokio::select! {
                        _ = taken.notified() => {}
                        _ = share.spoiled_now.notified() => break 'read,
                        _ = ban_check.tick() => {
                            if inbound.banned(peer.ip()) {
                                inbound.connection(ConnectionEnd::Banned);
                                break 'read;
                            }
                        }
                        _ = shutdown.changed() => break 'read,
                    }
                }
                // A writer that gave up (its peer not reading) dropped its queue, which
                // so has room: the peer is cut, not read on with its answers dropped.
                if pong.is_closed() {
                    break 'read;
                }
                // A slot of this connection's share then: at its bound, the reader
                // waits (and reads nothing more) until an earlier message is handled.
                let slot = tokio::select! {
                    s = share.slots.acquire() => s,
                    _ = shutdown.changed() => break 'read,
                };
                match slot {
                    Ok(s) => s.forget(),
                    Err(_) => break 'read,
                }
                let job = Job {
                    bytes,
                    flow,
                    share: share.clone(),
                };
                let lane = lanes.pick(id, &job.bytes);
                let sent = tokio::select! {
                    r = lane.send(job) => r.is_ok(),
                    _ = shutdown.changed() => false,
                };
                if !sent {
                    break 'read;
                }
                continue;
            }
            Ok(None) => {
                if !buf.is_empty() {
                    crlf_run = 0;
                }
            }
            // Over the limit: answered 513 if its head can be read, and closed (what
            // follows is the rest of its body).
            Err(sip::msg::ParseError::TooLarge) => {
                if inbound.admit_on_connection(peer.ip()) == Admission::Admit {
                    inbound.oversized(&buf, flow);
                }
                break 'read;
            }
            // No Content-Length, or garbage: the stream cannot be re-synchronised.
            Err(_) => {
                inbound.unframed(peer.ip());
                break 'read;
            }
        }
        // Part of a message is held: it takes a place in the unfinished-request table
        // (closed over the cap) and must be whole within its deadline.
        if !unfinished.holding(peer.ip(), !buf.is_empty(), &unfinished_caps) {
            inbound.connection(ConnectionEnd::Unfinished);
            break 'read;
        }
        let idle = match last_message {
            None => opened + limits.first_message,
            Some(t) if registered => t.max(last_ping) + limits.idle_registered,
            Some(t) => t + limits.idle,
        };
        let finish = unfinished.deadline(limits.message);
        let deadline = finish.map_or(idle, |f| f.min(idle));
        if buf.is_empty() {
            // Nothing held: the buffer goes back, and the next read gets a small one
            // unless the peer is busy.
            buf = Vec::new();
        }
        let step = if busy { READ_STEP } else { READ_FIRST };
        if buf.capacity() - buf.len() < step / 4 {
            buf.reserve(step);
        }
        let offered = buf.capacity() - buf.len();
        tokio::select! {
            r = tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => break 'read,
                Ok(Ok(n)) => busy = n >= offered,
                Err(_) => {
                    if finish.is_some_and(|f| f <= Instant::now()) {
                        inbound.connection(ConnectionEnd::Unfinished);
                        break 'read;
                    }
                    // The short idle ran out: a source with a live registration keeps
                    // its flow for the long one.
                    if last_message.is_some() && !registered && inbound.registered_from(peer.ip()) {
                        registered = true;
                        continue;
                    }
                    inbound.connection(ConnectionEnd::TimedOut);
                    break 'read;
                }
            },
            _ = share.spoiled_now.notified() => break 'read,
            _ = ban_check.tick() => {
                if inbound.banned(peer.ip()) {
                    inbound.connection(ConnectionEnd::Banned);
                    break 'read;
                }
            }
            _ = shutdown.changed() => break 'read,
        }
    }
    drop(buf);
    // The messages still being handled finish first (briefly), so their answers are
    // written and the bindings they make are let go with the connection below.
    let _ = tokio::time::timeout(DRAIN_DEADLINE, async {
        let n = u32::try_from(in_flight).unwrap_or(u32::MAX);
        share.slots.acquire_many(n).await.map(|p| p.forget())
    })
    .await;
    // The registry entry goes next, so nothing more is queued; what is queued is still
    // written (within its deadline) before the connection closes. The bindings made on
    // it stop being reached until their phone registers again.
    transports.close(id);
    inbound.closed(flow);
    drop(pong);
    // A banned source's connection, and every connection at shutdown, gets only the
    // close's deadline to write what is queued: a peer that stopped reading holds
    // neither a banned connection nor the server's exit for a write deadline.
    let last = if inbound.banned(peer.ip()) || *shutdown.borrow() {
        CLOSE_DEADLINE
    } else {
        WRITE_DEADLINE + CLOSE_DEADLINE
    };
    match tokio::time::timeout(last, &mut write).await {
        Ok(done) => {
            background::checked(Task::TcpWrite, "a TCP connection's writer", done);
        }
        Err(_) => {
            background::count(Task::TcpWrite);
            write.abort();
        }
    }
}

/// Binds UDP and TCP on the same address. With port 0, the UDP socket picks the port and
/// TCP takes the same one (retrying with a new port if TCP finds it taken).
async fn bind_pair(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let udp = bind_udp(addr)?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("cannot bind TCP next to UDP")))
}

/// A UDP socket with a 4 MiB receive buffer (Kamailio's loss-free rate rose ~40% with
/// it on these machines; bursts of REGISTERs otherwise overflow the default buffer).
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let what = "setting the UDP socket's 4 MiB buffers";
    background::checked(Task::SocketSetup, what, s.set_recv_buffer_size(4 << 20));
    background::checked(Task::SocketSetup, what, s.set_send_buffer_size(4 << 20));
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Has the kernel drop datagrams from `sources` before they reach the socket: a classic
/// BPF socket filter that loads the IPv4 source address and compares it with each
/// source in turn (two instructions each). A banned flood then costs no wake-up, no
/// system call and no copy. An empty list removes the filter. IPv4 sockets only.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_kernel_drop(socket: &UdpSocket, sources: &[std::net::Ipv4Addr]) -> std::io::Result<()> {
    use socket2::{SockFilter, SockRef};
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    /// SKF_NET_OFF + 12: the source address in the IPv4 header.
    const IPV4_SOURCE: u32 = 0xFFF0_0000 + 12;
    let sock = SockRef::from(socket);
    if sources.is_empty() {
        // Nothing attached yet (ENOENT) is not an error worth reporting.
        return match sock.detach_filter() {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    if !socket.local_addr()?.is_ipv4() || sources.len() > crate::guard::KERNEL_DROP_MAX {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let mut prog = Vec::with_capacity(2 + 2 * sources.len());
    prog.push(SockFilter::new(LD_W_ABS, 0, 0, IPV4_SOURCE));
    for ip in sources {
        // Equal: fall through to "drop"; else skip it.
        prog.push(SockFilter::new(JEQ_K, 0, 1, u32::from(*ip)));
        prog.push(SockFilter::new(RET_K, 0, 0, 0));
    }
    prog.push(SockFilter::new(RET_K, 0, 0, u32::MAX));
    sock.attach_filter(&prog)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_kernel_drop(_socket: &UdpSocket, _sources: &[std::net::Ipv4Addr]) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// What arrives on `rx` after one datagram from each sender, in order.
    async fn arrivals(rx: &UdpSocket, senders: &[&std::net::UdpSocket]) -> Vec<SocketAddr> {
        let to = rx.local_addr().expect("addr");
        for s in senders {
            s.send_to(b"x", to).expect("send");
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while let Ok(Ok((_, from))) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv_from(&mut buf)).await
        {
            got.push(from);
        }
        got
    }

    #[tokio::test]
    async fn the_kernel_filter_drops_exactly_the_listed_sources() {
        let rx = bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let banned = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind");
        let other = std::net::UdpSocket::bind("127.0.0.3:0").expect("bind");
        let listed = [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(127, 0, 0, 2)];
        set_kernel_drop(&rx, &listed).expect("attach");
        let got = arrivals(&rx, &[&banned, &other]).await;
        assert_eq!(got, vec![other.local_addr().expect("addr")]);
        // An empty list lifts the filter.
        set_kernel_drop(&rx, &[]).expect("detach");
        assert_eq!(arrivals(&rx, &[&banned]).await.len(), 1);
        // More than the kernel takes is refused, not truncated silently.
        let too_many = vec![Ipv4Addr::new(192, 0, 2, 1); crate::guard::KERNEL_DROP_MAX + 1];
        assert!(set_kernel_drop(&rx, &too_many).is_err());
        let v6 = bind_udp("[::1]:0".parse().expect("addr"));
        if let Ok(v6) = v6 {
            assert!(
                set_kernel_drop(&v6, &listed).is_err(),
                "IPv4 offsets on an IPv6 socket"
            );
        }
    }

    #[tokio::test]
    async fn the_internal_socket_reads_only_live_nodes_datagrams() {
        let (transports, _tcp) = Transports::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let at = transports
            .bind_internal("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind internal");
        let node = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let stranger = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind");
        let nodes = Arc::new(crate::hop::Targets::default());
        nodes.replace_nodes([(node.local_addr().expect("addr"), "a".to_owned())]);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let read = Arc::new(Mutex::new(Vec::<(Vec<u8>, Flow)>::new()));
        let sink = read.clone();
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(serve_internal(
            transports.clone(),
            nodes.clone(),
            metrics.clone(),
            Arc::new(move |bytes: &[u8], flow: Flow| {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((bytes.to_vec(), flow));
            }),
            stop,
        ));
        stranger.send_to(b"forged", at).expect("send");
        node.send_to(b"hop", at).expect("send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while (read.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
            || metrics.hops_refused[0].load(Ordering::Relaxed) == 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            *read.lock().unwrap_or_else(|p| p.into_inner()),
            vec![(b"hop".to_vec(), Flow::hop(node.local_addr().expect("addr")))],
            "only the node's datagram is read"
        );
        assert_eq!(metrics.hops_refused[0].load(Ordering::Relaxed), 1);
        // No longer a live node: its datagrams are dropped too.
        nodes.replace_nodes([]);
        node.send_to(b"late", at).expect("send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metrics.hops_refused[0].load(Ordering::Relaxed) < 2
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(metrics.hops_refused[0].load(Ordering::Relaxed), 2);
        assert_eq!(read.lock().unwrap_or_else(|p| p.into_inner()).len(), 1);
        let _ = stop_tx.send(true);
        task.await.expect("join");
    }
}

#[cfg(test)]
mod lane_tests {
    use super::*;

    /// At the bound a newcomer is refused while every handshake is younger than
    /// HANDSHAKE_YIELDS_AFTER, and takes the oldest one's place (which is told) once
    /// that one has waited so long; a place given back is free again.
    #[tokio::test]
    async fn a_full_bound_gives_the_oldest_stalled_place_to_a_newcomer() {
        let bound = HandshakeBound::new(2);
        let t0 = Instant::now();
        let first = bound.take(t0).expect("free");
        let second = bound.take(t0 + Duration::from_millis(300)).expect("free");
        let early = t0 + HANDSHAKE_YIELDS_AFTER - Duration::from_millis(1);
        assert!(
            bound.take(early).is_none(),
            "both younger than the wait: refused"
        );
        let third = bound
            .take(t0 + HANDSHAKE_YIELDS_AFTER)
            .expect("the oldest gives way");
        // The first was told; the second was not.
        tokio::time::timeout(Duration::from_secs(1), first.yielded.notified())
            .await
            .expect("the oldest is told");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.yielded.notified())
                .await
                .is_err(),
            "the second keeps its place"
        );
        // Dropping the told one frees nothing more (its place is the third's already).
        drop(first);
        let at = t0 + HANDSHAKE_YIELDS_AFTER + Duration::from_millis(100);
        assert!(
            bound.take(at).is_none(),
            "second (0.8 s) and third are young"
        );
        drop(third);
        assert!(bound.take(at).is_some(), "a place given back is free");
        drop(second);
    }

    #[test]
    fn the_call_id_is_found_in_its_long_and_compact_forms_in_any_case() {
        let long =
            b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\nCALL-id :  abc@h \r\nCSeq: 1 OPTIONS\r\n\r\n";
        assert_eq!(call_id(long).as_deref(), Some(&b"abc@h"[..]));
        let compact = b"SIP/2.0 200 OK\r\nv: x\r\ni:def\r\n\r\nbody i: nope\r\n";
        assert_eq!(call_id(compact).as_deref(), Some(&b"def"[..]));
        // Only the head is looked at, and the start line is never a header.
        let none = b"i: x SIP/2.0\r\nVia: y\r\n\r\nCall-ID: in-the-body\r\n";
        assert_eq!(call_id(none), None);
        assert_eq!(call_id(b""), None);
        assert_eq!(call_id(b"\r\n\r\n"), None);
    }

    /// The lane pick reads a folded Call-ID as the parse does (and a continuation line
    /// that looks like `i: ...` is no header), so one call keeps to one lane.
    #[test]
    fn the_call_id_is_read_as_the_parse_reads_it() {
        let cases: &[&[u8]] = &[
            b"OPTIONS sip:a SIP/2.0\r\nCall-ID: abc\r\n\t@h \r\n x\r\nl: 0\r\n\r\n",
            b"OPTIONS sip:a SIP/2.0\r\nCall-ID:\r\n abc\r\nl: 0\r\n\r\n",
            b"OPTIONS sip:a SIP/2.0\r\nSubject: s\r\n i: fake\r\ni: real\r\nl: 0\r\n\r\n",
            b"OPTIONS sip:a SIP/2.0\nCall-ID: lf\n  only\nl: 0\n\n",
        ];
        for c in cases {
            let parsed = sip::msg::parse(c).expect("parses");
            let parsed = parsed.header(sip::msg::Name::CallId).expect("call-id");
            assert_eq!(
                call_id(c).as_deref(),
                Some(parsed.as_bytes()),
                "{}",
                String::from_utf8_lossy(c)
            );
        }
    }

    #[tokio::test]
    async fn one_calls_messages_take_one_lane_and_other_calls_spread() {
        let lanes = Lanes {
            queues: (0..4).map(|_| mpsc::channel::<Job>(1).0).collect(),
            hasher: std::hash::RandomState::new(),
        };
        let msg = |c: &str, n: u32| {
            format!("OPTIONS sip:a SIP/2.0\r\nCall-ID: {c}\r\nCSeq: {n} OPTIONS\r\n\r\n")
                .into_bytes()
        };
        let conn = ConnId(7);
        let lane_of = |m: &[u8]| {
            let picked = lanes.pick(conn, m);
            lanes.queues.iter().position(|q| std::ptr::eq(q, picked))
        };
        let first = lane_of(&msg("call-1", 1));
        for n in 2..50 {
            assert_eq!(lane_of(&msg("call-1", n)), first, "CSeq {n} moved lane");
        }
        let used: std::collections::HashSet<Option<usize>> = (0..64)
            .map(|i| lane_of(&msg(&format!("c{i}"), 1)))
            .collect();
        assert!(used.len() > 1, "64 calls all took one of four lanes");
    }
}
