//! The running SIP server as the console sees it: one narrow handle, implemented by
//! `pbx` and handed to the console by the binary, so that the console never depends on
//! the runtime. Everything else the console shows (registrations, calls, bans and their
//! lifting, suspensions) it reads from the database, the source of truth shared by every
//! node: what this handle offers is only what exists in this process's memory.

use std::net::IpAddr;

/// What counting a refused provisioning request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// Counted; the source is answered as before.
    Counted,
    /// Over the probe limit from an address where a phone is registered or recently
    /// logged in: provisioning is refused from it for a while, SIP is untouched (a
    /// provisioning probe proves no source address, and must never silence a phone).
    Limited,
    /// Over the probe limit from anywhere else: banned, SIP included.
    Banned,
}

/// What the console may ask of the server running in the same process.
pub trait RunningServer: Send + Sync + std::fmt::Debug {
    /// Whether `source` may be answered at all: false while it is banned (and not
    /// allow-listed). The console asks before it does any work for a request.
    fn admits(&self, source: IpAddr) -> bool;

    /// Whether the provisioning server answers `source`: not while it is banned, nor
    /// while it is over the provisioning probe limit.
    fn provisioning_admits(&self, source: IpAddr, now: i64) -> bool;

    /// A provisioning request from `source` failed (wrong login, a nonce that is stale
    /// or not ours, a replayed login): it is counted against the source, on the
    /// provisioning scale (see [`ProbeVerdict`]).
    fn provisioning_refused(&self, source: IpAddr, now: i64) -> ProbeVerdict;

    /// A provisioning file was served to an authenticated phone (counted).
    fn provisioning_served(&self);

    /// An authenticated phone asked for a file sipward does not serve (answered 404,
    /// counted apart, never as a probe).
    fn provisioning_not_served(&self);

    /// `/metrics`: the Prometheus text exposition of the server's counters.
    fn metrics_text(&self) -> String;

    /// The auth IDs with the most failed authentications from sources they never
    /// logged in from, within the guard's account window, most first (at most `limit`).
    fn targeted_accounts(&self, now: i64, limit: usize) -> Vec<(String, u32)>;
}
