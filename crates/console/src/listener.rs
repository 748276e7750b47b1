//! The HTTP listener of `sipward serve` (console, API, `/metrics`, provisioning): it
//! accepts connections under limits no single source can exhaust. Each address, and
//! each network prefix (`guard.ipv6_prefix`, `guard.ipv4_prefix`), may hold only so many
//! open connections, which also bounds its unfinished requests (HTTP/1.1 serves one
//! request at a time per connection); a request's head must arrive within a deadline,
//! which is also how long a connection may sit idle between requests; and the total is
//! capped. Trusted reverse proxies carry many clients and are exempt from the
//! per-source caps, not from the total. A refused connection is closed at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
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
    /// The keys a connection from `ip` counts under, each with its cap.
    fn keys(&self, ip: IpAddr) -> Vec<(IpNet, u32)> {
        let host = IpNet::from(ip);
        let len = match ip {
            IpAddr::V4(_) => self.ipv4_prefix,
            IpAddr::V6(_) => self.ipv6_prefix,
        };
        let mut keys = vec![(host, self.per_source)];
        if let Ok(p) = IpNet::new(ip, len).map(|n| n.trunc())
            && p != host
        {
            keys.push((p, self.per_prefix));
        }
        keys
    }
}

type Table = Arc<Mutex<HashMap<IpNet, u32>>>;

/// A connection's place in the per-source table; given back when dropped.
struct Slot {
    table: Table,
    keys: Vec<IpNet>,
}

impl Slot {
    fn take(table: &Table, ip: IpAddr, limits: &Limits) -> Option<Slot> {
        if limits.trusted_proxies.iter().any(|n| n.contains(&ip)) {
            return Some(Slot {
                table: table.clone(),
                keys: Vec::new(),
            });
        }
        let keys = limits.keys(ip);
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        if keys
            .iter()
            .any(|(k, cap)| t.get(k).copied().unwrap_or(0) >= *cap)
        {
            return None;
        }
        for (k, _) in &keys {
            *t.entry(*k).or_default() += 1;
        }
        Some(Slot {
            table: table.clone(),
            keys: keys.into_iter().map(|(k, _)| k).collect(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = t.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    t.remove(k);
                }
            }
        }
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
    let table: Table = Arc::default();
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
            Slot::take(&table, peer.ip(), &limits),
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
        let (t, l) = (Table::default(), limits());
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let a = Slot::take(&t, ip("192.0.2.1"), &l);
        let b = Slot::take(&t, ip("192.0.2.1"), &l);
        assert!(a.is_some() && b.is_some());
        assert!(
            Slot::take(&t, ip("192.0.2.1"), &l).is_none(),
            "the third from one address"
        );
        assert!(
            Slot::take(&t, ip("192.0.2.2"), &l).is_some(),
            "IPv4 counts per address"
        );
        drop(a);
        assert!(
            Slot::take(&t, ip("192.0.2.1"), &l).is_some(),
            "a closed one frees its place"
        );
        // IPv6: three addresses of one /64 fill it.
        let held: Vec<_> = (1..=3)
            .map(|i| Slot::take(&t, ip(&format!("2001:db8:1:2::{i}")), &l))
            .collect();
        assert!(held.iter().all(Option::is_some));
        assert!(
            Slot::take(&t, ip("2001:db8:1:2::99"), &l).is_none(),
            "the /64 is full"
        );
        assert!(Slot::take(&t, ip("2001:db8:1:3::1"), &l).is_some());
        // The trusted proxy carries many clients.
        let proxy: Vec<_> = (0..10)
            .map(|_| Slot::take(&t, ip("10.0.0.5"), &l))
            .collect();
        assert!(proxy.iter().all(Option::is_some));
        drop(held);
        drop(proxy);
        drop(b);
        let left = t.lock().expect("lock");
        assert!(
            left.keys().all(|k| k.addr() == ip("192.0.2.1")
                || k.addr() == ip("192.0.2.2")
                || k.addr() == ip("2001:db8:1:3::")),
            "{left:?}"
        );
    }
}
