//! Security events: one JSON object per line on stderr (`{"event":"ban",...}`), a
//! stable interface that operators feed to fail2ban-like tools and SIEMs.
//!
//! They travel as `tracing` events of their own target, so every crate emits them the
//! same way, and the binary writes each one's JSON as it is, one line, whatever the log
//! format and filter: a log setting can never change or silence them.

/// The `tracing` target of security events. The binary's subscriber writes events of
/// this target verbatim and keeps them out of the ordinary log.
pub const TARGET: &str = "sipward::event";

/// Emits one security event (a JSON object with an `"event"` field).
pub fn emit(event: &serde_json::Value) {
    tracing::info!(target: TARGET, "{event}");
}
