//! Flows: where a message came from and how to reach that peer again (RFC 5626's
//! sense). A datagram flow is the peer's address and port; a stream flow is also the
//! one connection the peer opened, since sipward never opens connections to phones. A
//! registration remembers the flow it came on, and that flow, never the Contact a
//! phone writes, is how sipward reaches the phone.

use std::net::SocketAddr;

use sip::transaction::Reliability;

/// The transport a message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Udp,
    Tcp,
    /// TCP carrying TLS (RFC 3261 §26): the only transport a `sips:` URI is sent on.
    Tls,
    /// UDP on the internal hop socket (`[cluster] internal`, issue 21): between the
    /// nodes of one install only. A kind of its own, so that what goes to or comes from
    /// another node leaves from and is answered on the internal socket, and the egress
    /// rule can hold a hop to it (and nothing else to it). Never parsed from stored
    /// rows: no binding is ever a hop.
    Hop,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Hop => "hop",
        }
    }

    /// The token of a Via's sent-protocol (`SIP/2.0/UDP`).
    pub fn via_token(self) -> &'static str {
        match self {
            TransportKind::Udp | TransportKind::Hop => "UDP",
            TransportKind::Tcp => "TCP",
            TransportKind::Tls => "TLS",
        }
    }

    /// Whether the transport delivers reliably (no retransmissions, RFC 3261 §17).
    pub fn reliability(self) -> Reliability {
        match self {
            TransportKind::Udp | TransportKind::Hop => Reliability::Unreliable,
            TransportKind::Tcp | TransportKind::Tls => Reliability::Reliable,
        }
    }

    /// Whether the transport is a connection (a flow is then also its connection).
    pub fn is_stream(self) -> bool {
        !matches!(self, TransportKind::Udp | TransportKind::Hop)
    }

    /// The stored name back to a kind (`"udp"`, `"tcp"`, `"tls"`); None for anything else,
    /// `"hop"` included: a stored row never names the internal socket.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "udp" => Some(TransportKind::Udp),
            "tcp" => Some(TransportKind::Tcp),
            "tls" => Some(TransportKind::Tls),
            _ => None,
        }
    }
}

/// One accepted connection, for the life of the process (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

/// Where a message came from, and how to reach that peer again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: TransportKind,
    /// The peer's address and port.
    pub remote: SocketAddr,
    /// For a stream: the connection (None for a datagram flow, or a stream flow loaded
    /// from the store, whose connection did not survive the restart).
    pub conn: Option<ConnId>,
}

impl Flow {
    pub fn udp(remote: SocketAddr) -> Self {
        Self {
            transport: TransportKind::Udp,
            remote,
            conn: None,
        }
    }

    /// A flow to or from another node's internal hop address.
    pub fn hop(remote: SocketAddr) -> Self {
        Self {
            transport: TransportKind::Hop,
            remote,
            conn: None,
        }
    }

    pub fn tcp(remote: SocketAddr, conn: ConnId) -> Self {
        Self {
            transport: TransportKind::Tcp,
            remote,
            conn: Some(conn),
        }
    }

    /// A stream flow of `transport` on connection `conn`.
    pub fn stream(transport: TransportKind, remote: SocketAddr, conn: ConnId) -> Self {
        Self {
            transport,
            remote,
            conn: Some(conn),
        }
    }

    pub fn reliability(&self) -> Reliability {
        self.transport.reliability()
    }

    /// Whether sipward can write to this flow at all: a stream flow whose connection is
    /// gone (closed, or from before a restart) reaches nobody until the phone
    /// registers again on a new one.
    pub fn reachable(&self) -> bool {
        !self.transport.is_stream() || self.conn.is_some()
    }

    /// The same peer on the same transport (a stream flow only on the same
    /// connection): what "comes from a party's flow" means.
    pub fn same_peer(&self, other: &Flow) -> bool {
        self.transport == other.transport
            && self.remote == other.remote
            && (!self.transport.is_stream() || self.conn == other.conn)
    }
}

/// The local address a peer at `target` sees this host at, for sockets bound to
/// `bound` (an unspecified bound address is resolved through the routing table: a
/// connected UDP socket that sends nothing).
pub fn local_for(bound: SocketAddr, target: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let probe = std::net::UdpSocket::bind(match target {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    })
    .and_then(|s| {
        s.connect(target)?;
        s.local_addr()
    });
    match probe {
        Ok(a) => SocketAddr::new(a.ip(), bound.port()),
        Err(_) => bound,
    }
}

/// `sip:HOST:PORT` (with `;transport=tcp` or `;transport=tls` for a stream flow) as a
/// peer on `flow` reaches sipward: for Contact and Record-Route. `bound` is the address
/// the SIP sockets are bound to; a TLS flow names `tls_port`, the TLS listener's port.
pub fn our_uri(bound: SocketAddr, flow: &Flow, user: Option<&str>) -> String {
    let local = local_for(bound, flow.remote);
    let user = user.map(|u| format!("{u}@")).unwrap_or_default();
    match flow.transport {
        // A hop's URI names the internal address (`bound` is it, see
        // `Signalling::bound_for`), plain UDP as the other node reads it.
        TransportKind::Udp | TransportKind::Hop => format!("sip:{user}{local}"),
        TransportKind::Tcp => format!("sip:{user}{local};transport=tcp"),
        TransportKind::Tls => format!("sip:{user}{local};transport=tls"),
    }
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.transport.as_str(), self.remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_flow_is_its_connection() {
        let a: SocketAddr = "192.0.2.1:5060".parse().expect("addr");
        assert!(Flow::udp(a).same_peer(&Flow::udp(a)));
        assert!(!Flow::udp(a).same_peer(&Flow::tcp(a, ConnId(1))));
        assert!(Flow::tcp(a, ConnId(1)).same_peer(&Flow::tcp(a, ConnId(1))));
        assert!(!Flow::tcp(a, ConnId(1)).same_peer(&Flow::tcp(a, ConnId(2))));
        assert_eq!(Flow::tcp(a, ConnId(1)).reliability(), Reliability::Reliable);
    }

    #[test]
    fn a_hop_flow_is_udp_on_the_wire_but_never_a_stored_kind() {
        let a: SocketAddr = "10.0.0.1:5070".parse().expect("addr");
        let hop = Flow::hop(a);
        assert_eq!(hop.transport.via_token(), "UDP");
        assert_eq!(hop.reliability(), Reliability::Unreliable);
        assert!(hop.reachable());
        assert!(
            !hop.same_peer(&Flow::udp(a)),
            "the public socket is not the hop"
        );
        assert_eq!(TransportKind::parse(hop.transport.as_str()), None);
        assert_eq!(our_uri(a, &hop, Some("1001")), "sip:1001@10.0.0.1:5070");
    }
}
