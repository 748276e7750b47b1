//! The HTTP listener of `sipward serve` (console, API, `/metrics`, provisioning): it
//! accepts connections under limits no single source can exhaust. Each address, and
//! each network prefix (`guard.ipv6_prefix`, `guard.ipv4_prefix`), may hold only so many
//! open connections, which also bounds its unfinished requests (HTTP/1.1 serves one
//! request at a time per connection); a request's head must arrive within a deadline,
//! which is also how long a connection may sit idle between requests; and the total is
//! capped. Trusted reverse proxies carry many clients and are exempt from the
//! per-source caps, not from the total. A refused connection is closed at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower_service::Service;

use policy::places::{Place, PlaceCaps, Places};

use crate::entry::{Counters, LocalAddr};

/// Open HTTP connections at most, from everyone together.
pub const MAX_CONNECTIONS: usize = 4096;

/// What the listener enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections per address.
    pub per_source: u32,
    /// Open connections per network prefix.
    pub per_prefix: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// A request head within this; also the idle limit between requests.
    pub header_timeout: Duration,
    /// Exempt from the per-source caps.
    pub trusted_proxies: Vec<IpNet>,
}

impl Limits {
    fn caps(&self) -> PlaceCaps {
        PlaceCaps {
            per_source: self.per_source,
            per_prefix: self.per_prefix,
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
        }
    }

    /// A place for a connection from `ip` (trusted proxies count against nothing).
    fn place(&self, places: &Places, ip: IpAddr) -> Option<Place> {
        if self.trusted_proxies.iter().any(|n| n.contains(&ip)) {
            return Some(places.exempt());
        }
        places.take(ip, &self.caps())
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the requests in
/// progress finish. Each request carries `ConnectInfo<SocketAddr>` (the peer) and
/// [`LocalAddr`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    counters: Arc<Counters>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let places = Places::default();
    let total = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(_) => {
                // Out of file descriptors (or a connection reset before accept): wait
                // for connections to close instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let (Ok(permit), Some(slot)) = (
            total.clone().try_acquire_owned(),
            limits.place(&places, peer.ip()),
        ) else {
            counters.connections_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let local = stream.local_addr().ok();
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let header_timeout = limits.header_timeout;
        tasks.spawn(async move {
            let _held = (permit, slot);
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                if let Some(l) = local {
                    req.extensions_mut().insert(LocalAddr(l));
                }
                let mut app = app.clone();
                async move { app.call(req.map(axum::body::Body::new)).await }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            per_source: 2,
            per_prefix: 3,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            header_timeout: Duration::from_secs(1),
            trusted_proxies: vec!["10.0.0.5/32".parse().expect("net")],
        }
    }

    #[test]
    fn sources_and_prefixes_hold_only_their_share_of_connections() {
        let (t, l) = (Places::default(), limits());
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let a = l.place(&t, ip("192.0.2.1"));
        let b = l.place(&t, ip("192.0.2.1"));
        assert!(a.is_some() && b.is_some());
        assert!(
            l.place(&t, ip("192.0.2.1")).is_none(),
            "the third from one address"
        );
        assert!(
            l.place(&t, ip("192.0.2.2")).is_some(),
            "IPv4 counts per address"
        );
        drop(a);
        assert!(
            l.place(&t, ip("192.0.2.1")).is_some(),
            "a closed one frees its place"
        );
        // IPv6: three addresses of one /64 fill it.
        let held: Vec<_> = (1..=3)
            .map(|i| l.place(&t, ip(&format!("2001:db8:1:2::{i}"))))
            .collect();
        assert!(held.iter().all(Option::is_some));
        assert!(
            l.place(&t, ip("2001:db8:1:2::99")).is_none(),
            "the /64 is full"
        );
        assert!(l.place(&t, ip("2001:db8:1:3::1")).is_some());
        // The trusted proxy carries many clients.
        let proxy: Vec<_> = (0..10).map(|_| l.place(&t, ip("10.0.0.5"))).collect();
        assert!(proxy.iter().all(Option::is_some));
        drop(held);
        drop(proxy);
        drop(b);
        let left = t.counted();
        assert!(
            left.iter().all(|k| k.addr() == ip("192.0.2.1")
                || k.addr() == ip("192.0.2.2")
                || k.addr() == ip("2001:db8:1:3::")),
            "{left:?}"
        );
    }
}
