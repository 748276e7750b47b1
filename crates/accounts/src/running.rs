//! The running SIP server as the console sees it: one narrow handle, implemented by
//! `pbx` and handed to the console by the binary, so that the console never depends on
//! the runtime. Everything else the console shows (registrations, calls, bans and their
//! lifting, suspensions) it reads from the database, the source of truth shared by every
//! node: what this handle offers is only what exists in this process's memory.

use std::net::IpAddr;

/// What the console may ask of the server running in the same process.
pub trait RunningServer: Send + Sync + std::fmt::Debug {
    /// Whether `source` may be answered at all: false while it is banned (and not
    /// allow-listed). The console asks before it does any work for a request.
    fn admits(&self, source: IpAddr) -> bool;

    /// A provisioning request from `source` was refused (no or wrong login, a file no
    /// phone has): it is counted, against the source like a failed SIP login. Returns
    /// whether the source is now banned.
    fn provisioning_refused(&self, source: IpAddr, now: i64) -> bool;

    /// A provisioning file was served to an authenticated phone (counted).
    fn provisioning_served(&self);

    /// `/metrics`: the Prometheus text exposition of the server's counters.
    fn metrics_text(&self) -> String;
}
