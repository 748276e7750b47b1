//! Open connections counted per source address and per network prefix, so that one
//! address, or one network of many addresses, cannot hold every place of a listener
//! (issue #17). Shared by the SIP TCP transport and the HTTP listener.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

/// The caps a connection from one address counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaceCaps {
    /// Open connections per address.
    pub per_source: u32,
    /// Open connections per network prefix.
    pub per_prefix: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

impl PlaceCaps {
    /// The keys a connection from `ip` counts under, each with its cap: the address,
    /// and its prefix when that is wider.
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

/// The open connections per address and prefix (bounded by the caps: an entry exists
/// only while one of its connections is open).
#[derive(Clone, Debug, Default)]
pub struct Places(Arc<Mutex<HashMap<IpNet, u32>>>);

/// A connection's place; given back when dropped.
#[derive(Debug)]
pub struct Place {
    table: Places,
    keys: Vec<IpNet>,
}

impl Places {
    /// Takes a place for a connection from `ip`, or None when the address or its
    /// prefix is at its cap.
    pub fn take(&self, ip: IpAddr, caps: &PlaceCaps) -> Option<Place> {
        let keys = caps.keys(ip);
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if keys
            .iter()
            .any(|(k, cap)| t.get(k).copied().unwrap_or(0) >= *cap)
        {
            return None;
        }
        for (k, _) in &keys {
            *t.entry(*k).or_default() += 1;
        }
        Some(Place {
            table: self.clone(),
            keys: keys.into_iter().map(|(k, _)| k).collect(),
        })
    }

    /// The addresses and prefixes that hold open connections now.
    pub fn counted(&self) -> Vec<IpNet> {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.keys().copied().collect()
    }

    /// A place that counts against nothing (an exempt source: a trusted proxy, an
    /// allow-listed network).
    pub fn exempt(&self) -> Place {
        Place {
            table: self.clone(),
            keys: Vec::new(),
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
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
