//! Counters the server exposes on `/metrics` (Prometheus text). No label ever holds an
//! address or a user name.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The reasons of `sipward_egress_denied_total{reason}`: a fixed set (the egress
/// rule's denials), never an address or a user.
pub const EGRESS_DENIALS: [&str; 14] = [
    "no_server_transaction",
    "answered",
    "malformed",
    "no_client_transaction",
    "not_a_registration",
    "not_a_trunk",
    "not_a_provider",
    "no_dialog",
    "dialog_ended",
    "not_from_a_party",
    "not_to_the_other_party",
    "wrong_method",
    "sips_over_clear",
    "not_a_hop",
];

/// The reasons of `sipward_rtp_dropped_total{reason}` (`crate::rtp::RtpDrop`).
pub const RTP_DROPS: [&str; 3] = ["wrong_source", "malformed", "unexpected_payload"];

/// The reasons of `sipward_responses_dropped_total{reason}`.
pub const RESPONSES_DROPPED: [&str; 5] = [
    "not_a_response",
    "no_branch",
    "no_cseq",
    "no_transaction",
    "wrong_source",
];

/// The reasons of `sipward_hops_refused_total{reason}` (issue 21): a datagram on the
/// internal address from anything but a live node's published address, then
/// [`crate::hop::Refused`]'s labels.
pub const HOPS_REFUSED: [&str; 6] = [
    "not_a_node",
    "malformed",
    "stale",
    "bad_mac",
    "replayed",
    "full",
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub parse_errors: AtomicU64,
    pub bad_requests: AtomicU64,
    pub unanswerable: AtomicU64,
    pub retransmissions: AtomicU64,
    pub register_ok: AtomicU64,
    pub register_challenged: AtomicU64,
    pub register_refused: AtomicU64,
    pub auth_failures: AtomicU64,
    pub options: AtomicU64,
    pub other_methods: AtomicU64,
    pub bindings: AtomicU64,
    pub directory_accounts: AtomicU64,
    pub dropped_banned: AtomicU64,
    pub bans: AtomicU64,
    /// Bans imposed, by [`policy::ban::Reason`] (indexed by its discriminant).
    pub bans_by_reason: [AtomicU64; policy::ban::Reason::ALL.len()],
    pub silenced: AtomicU64,
    /// Packets from a gateway's address over its own limit (`guard.gateway_requests`).
    pub gateway_limited: AtomicU64,
    /// Messages over the size limit answered 513, and dropped (no answer possible).
    pub too_large_answered: AtomicU64,
    pub too_large_dropped: AtomicU64,
    /// Requests answered 416 (a Request-URI neither sip: nor sips:).
    pub unsupported_scheme: AtomicU64,
    /// Bans a signal without proof would have imposed on a source with standing.
    pub bans_withheld: AtomicU64,
    pub refused_credentials: AtomicU64,
    pub accounts_protected: AtomicU64,
    pub ip_uri_dropped: AtomicU64,
    /// SIP TCP connections closed at accept: over a per-source, per-prefix or total cap.
    pub tcp_refused: AtomicU64,
    /// SIP TCP connections closed for missing the first-message deadline or idling.
    pub tcp_timeouts: AtomicU64,
    /// SIP TCP connections closed because their source was banned while connected.
    pub tcp_banned_closed: AtomicU64,
    /// SIP TCP connections closed holding an unfinished request over the per-source or
    /// per-prefix cap, or past the deadline to finish it.
    pub tcp_unfinished_closed: AtomicU64,
    /// TLS handshakes that failed (old protocol versions, weak suites, not TLS at all).
    pub tls_handshake_failed: AtomicU64,
    /// TLS connections cut because their handshake missed its deadline (half-open).
    pub tls_handshake_timeouts: AtomicU64,
    /// TLS connections closed at accept, before any cryptography, because the
    /// listener's handshakes in flight were at their bound.
    pub tls_handshakes_refused: AtomicU64,
    /// TLS handshakes cut because, the bound being full, a newer one took the place of
    /// this one after it had waited a second (a client that stalled mid-handshake).
    pub tls_handshakes_yielded: AtomicU64,
    /// TLS handshakes begun (each counted toward its source's flood limit: each costs
    /// the server a key exchange and a signature).
    pub tls_handshakes: AtomicU64,
    /// RFC 5626 double-CRLF keep-alive pings received on SIP connections.
    pub keepalive_pings: AtomicU64,
    /// Seconds until the TLS certificate in force expires (negative once expired);
    /// only shown while `tls_enabled`.
    pub tls_cert_expiry: std::sync::atomic::AtomicI64,
    pub tls_enabled: std::sync::atomic::AtomicBool,
    /// This node's name (`sipward_node_info{node}`): set once when the server binds, so
    /// the series of several nodes sharing a database can be told apart. A validated
    /// `policy::node::NodeName`, never an address.
    pub node: std::sync::OnceLock<String>,
    /// Times the SIP TCP accept loop waited after an accept error (fd exhaustion).
    pub accept_backoff: AtomicU64,
    pub kernel_drop_sources: AtomicU64,
    pub allowed_networks: AtomicU64,
    /// Change notifications from the database (PostgreSQL), and reconnects of the
    /// listener (after each, everything was reloaded).
    pub store_hints: AtomicU64,
    /// Whether this node holds each single-instance job now (indexed like
    /// `store::jobs::Job::ALL`).
    pub job_holder: [std::sync::atomic::AtomicBool; store::jobs::Job::ALL.len()],
    pub store_reconnects: AtomicU64,
    /// When (Unix seconds) the store's versions were last read and everything they
    /// moved reloaded: `time() - this` is how far this node may lag behind.
    pub store_versions_seen_at: std::sync::atomic::AtomicI64,
    /// Extensions whose bindings wait for the write-behind (sampled each second, before
    /// the write), and of those, how many have a `200` waiting for the group commit.
    pub write_behind_backlog: AtomicU64,
    pub write_behind_waiting: AtomicU64,
    /// Every bounded table's size, sampled each second by the server
    /// (`sipward_table_entries{table}`): what the soak suite holds flat.
    pub tables: std::sync::Mutex<Vec<(&'static str, u64)>>,
    pub notify_sent: AtomicU64,
    pub notify_answered: AtomicU64,
    pub notify_unanswered: AtomicU64,
    pub grace_logins: AtomicU64,
    pub mail_sent: AtomicU64,
    pub mail_deferred: AtomicU64,
    pub mail_failed: AtomicU64,
    pub provisioning_served: AtomicU64,
    pub provisioning_refused: AtomicU64,
    pub provisioning_limited: AtomicU64,
    pub provisioning_not_served: AtomicU64,
    pub invite_challenged: AtomicU64,
    pub calls_forbidden: AtomicU64,
    pub outbound_suspensions: AtomicU64,
    pub calls_ended_lease_lapsed: AtomicU64,
    pub resyncs_dropped: AtomicU64,
    pub emergency_calls: AtomicU64,
    pub calls_unrouted: AtomicU64,
    pub calls_proxied: AtomicU64,
    pub calls_trunk: AtomicU64,
    pub calls_inbound: AtomicU64,
    pub relayed: AtomicU64,
    /// Messages the egress rule refused, by reason (indexed like [`EGRESS_DENIALS`]).
    pub egress_denied: [AtomicU64; EGRESS_DENIALS.len()],
    /// Responses that reached no client transaction, by reason (indexed like
    /// [`RESPONSES_DROPPED`]).
    pub responses_dropped: [AtomicU64; RESPONSES_DROPPED.len()],
    /// Hops refused, by reason (indexed like [`HOPS_REFUSED`]).
    pub hops_refused: [AtomicU64; HOPS_REFUSED.len()],
    /// Hops sent that got no final answer (the branch's INVITE timed out): the other
    /// node is dead or its internal socket unreachable, and UDP says nothing of it.
    pub hops_unanswered: AtomicU64,
    pub emergency_refused: AtomicU64,
    pub calls_ended_max_duration: AtomicU64,
    pub calls_ended_revoked: AtomicU64,
    pub trunk_legs_cancelled: AtomicU64,
    pub late_answers_ended: AtomicU64,
    pub transfers_refused: AtomicU64,
    pub auto_answer_removed: AtomicU64,
    /// Digest answers that did not authenticate, by [`Challenged`] (its discriminant):
    /// which check failed, so a 401 nobody expected can be told apart after the fact.
    pub challenged_by_reason: [AtomicU64; Challenged::ALL.len()],
    /// RTP packets dropped, by reason (indexed like [`RTP_DROPS`]).
    pub rtp_dropped: [AtomicU64; RTP_DROPS.len()],
    /// RTP port pairs refused: the range exhausted (0), the source's share held (1).
    pub rtp_ports_refused: [AtomicU64; 2],
    /// RTP port pairs held by calls now (gauge).
    pub rtp_ports_in_use: AtomicU64,
    /// Calls the voicemail took, refused (no answerable offer, no port, no box), and
    /// messages it filed.
    pub voicemail_calls: AtomicU64,
    pub voicemail_refused: AtomicU64,
    pub voicemail_messages: AtomicU64,
    /// DTMF digits the voicemail received (RFC 4733 or SIP INFO).
    pub voicemail_digits: AtomicU64,
    /// Retrieval calls the voicemail answered (`*97`, `*98`), and their refused logins
    /// (a wrong PIN, a locked or unknown box: one count each).
    pub voicemail_retrievals: AtomicU64,
    pub voicemail_logins_refused: AtomicU64,
    /// Voicemail callers sent to the configured operator (`0`, a REFER).
    pub voicemail_operator_refers: AtomicU64,
}

/// Why the authenticator answered credentials with a new challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenged {
    /// No Digest credentials for our realm that parse, or an algorithm not offered.
    Malformed,
    /// A nonce not issued by this process to this source (or altered, or from the future).
    NonceInvalid,
    /// A nonce of ours past its lifetime (answered with `stale=true`).
    NonceStale,
    /// The credentials name another realm, lack `qop=auth`, or were computed for
    /// another Request-URI (`uri=`).
    WrongParameters,
    UnknownUser,
    /// The response does not verify against the account's HA1 (a wrong password).
    WrongResponse,
    /// Right response, but its `nc` was used before with this nonce (a replay).
    NcReplay,
    /// Right response, but the bounded replay table had let the nonce's record go: a
    /// new nonce (`stale=true`), not the client's doing.
    NcForgotten,
}

impl Challenged {
    pub const ALL: [Challenged; 8] = [
        Challenged::Malformed,
        Challenged::NonceInvalid,
        Challenged::NonceStale,
        Challenged::WrongParameters,
        Challenged::UnknownUser,
        Challenged::WrongResponse,
        Challenged::NcReplay,
        Challenged::NcForgotten,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Challenged::Malformed => "malformed",
            Challenged::NonceInvalid => "nonce_invalid",
            Challenged::NonceStale => "nonce_stale",
            Challenged::WrongParameters => "wrong_parameters",
            Challenged::UnknownUser => "unknown_user",
            Challenged::WrongResponse => "wrong_response",
            Challenged::NcReplay => "nc_replay",
            Challenged::NcForgotten => "nc_forgotten",
        }
    }
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = String::new();
        let counters = [
            (
                "sipward_sip_requests_total",
                "SIP requests received",
                get(&self.requests),
            ),
            (
                "sipward_sip_parse_errors_total",
                "datagrams or stream messages that did not parse",
                get(&self.parse_errors),
            ),
            (
                "sipward_sip_bad_requests_total",
                "requests answered 400",
                get(&self.bad_requests),
            ),
            (
                "sipward_sip_unanswerable_total",
                "requests dropped before the transaction table because no answer to them can be built (more than 70 Via lines)",
                get(&self.unanswerable),
            ),
            (
                "sipward_sip_retransmissions_total",
                "retransmitted requests absorbed or re-answered",
                get(&self.retransmissions),
            ),
            (
                "sipward_register_ok_total",
                "REGISTER requests accepted",
                get(&self.register_ok),
            ),
            (
                "sipward_register_challenged_total",
                "REGISTER requests answered 401",
                get(&self.register_challenged),
            ),
            (
                "sipward_auth_failures_total",
                "digest answers that did not verify (wrong password, or right credentials refused by the guard)",
                get(&self.auth_failures),
            ),
            (
                "sipward_register_refused_total",
                "authenticated REGISTER requests refused (403, 423, 400, 500)",
                get(&self.register_refused),
            ),
            (
                "sipward_options_total",
                "OPTIONS requests answered",
                get(&self.options),
            ),
            (
                "sipward_other_methods_total",
                "requests answered 405 or 501",
                get(&self.other_methods),
            ),
            (
                "sipward_dropped_banned_total",
                "packets and stream messages from banned sources, dropped unread",
                get(&self.dropped_banned),
            ),
            (
                "sipward_dropped_silenced_total",
                "packets from sources over the silence rate, dropped unread",
                get(&self.silenced),
            ),
            (
                "sipward_dropped_gateway_limit_total",
                "packets from a gateway's address over its limit (guard.gateway_requests), dropped unread; gateways are never banned",
                get(&self.gateway_limited),
            ),
            (
                "sipward_too_large_answered_total",
                "messages over the size limit ([sip] max_message_udp / max_message_tcp), answered 513",
                get(&self.too_large_answered),
            ),
            (
                "sipward_too_large_dropped_total",
                "messages over the size limit that could not be answered (no readable head), dropped",
                get(&self.too_large_dropped),
            ),
            (
                "sipward_unsupported_scheme_total",
                "requests answered 416: a Request-URI scheme other than sip or sips",
                get(&self.unsupported_scheme),
            ),
            (
                "sipward_bans_withheld_total",
                "bans not imposed: the signal did not prove its source address, and the source has standing (authenticated or registered)",
                get(&self.bans_withheld),
            ),
            (
                "sipward_refused_credentials_total",
                "right credentials refused: a weak password or an account under guessing, from an untrusted source",
                get(&self.refused_credentials),
            ),
            (
                "sipward_accounts_protected_total",
                "times an account was closed to untrusted sources after distributed guessing",
                get(&self.accounts_protected),
            ),
            (
                "sipward_tcp_connections_refused_total",
                "SIP TCP connections closed at accept (per-source, per-prefix or total cap)",
                get(&self.tcp_refused),
            ),
            (
                "sipward_tcp_connections_timed_out_total",
                "SIP TCP connections closed: no complete message by the deadline, or idle",
                get(&self.tcp_timeouts),
            ),
            (
                "sipward_tcp_connections_banned_total",
                "open SIP TCP connections closed because their source was banned",
                get(&self.tcp_banned_closed),
            ),
            (
                "sipward_tcp_connections_unfinished_total",
                "SIP TCP connections closed holding an unfinished request: over the per-source or per-prefix cap, or not finished in time",
                get(&self.tcp_unfinished_closed),
            ),
            (
                "sipward_tls_handshakes_failed_total",
                "SIP TLS connections whose handshake failed (protocol version or cipher suite refused, not TLS)",
                get(&self.tls_handshake_failed),
            ),
            (
                "sipward_tls_handshakes_timed_out_total",
                "SIP TLS connections cut because the handshake missed its deadline",
                get(&self.tls_handshake_timeouts),
            ),
            (
                "sipward_tls_handshakes_refused_total",
                "SIP TLS connections closed at accept, before any cryptography: handshakes in flight at their bound",
                get(&self.tls_handshakes_refused),
            ),
            (
                "sipward_tls_handshakes_yielded_total",
                "SIP TLS handshakes cut at the bound after a second in flight, their place given to a newer one",
                get(&self.tls_handshakes_yielded),
            ),
            (
                "sipward_tls_handshakes_total",
                "SIP TLS handshakes begun (each counts toward its source's flood limit)",
                get(&self.tls_handshakes),
            ),
            (
                "sipward_keepalive_pings_total",
                "RFC 5626 double-CRLF keep-alive pings received on SIP TCP and TLS connections",
                get(&self.keepalive_pings),
            ),
            (
                "sipward_accept_backoff_total",
                "times the SIP TCP accept loop backed off after an accept error (file descriptors exhausted)",
                get(&self.accept_backoff),
            ),
            (
                "sipward_dropped_ip_uri_total",
                "requests addressed to a bare IP, dropped (guard.refuse_ip_request_uri)",
                get(&self.ip_uri_dropped),
            ),
            (
                "sipward_notify_sent_total",
                "check-sync NOTIFYs sent to registered phones",
                get(&self.notify_sent),
            ),
            (
                "sipward_notify_answered_total",
                "check-sync NOTIFYs answered with a final response",
                get(&self.notify_answered),
            ),
            (
                "sipward_notify_unanswered_total",
                "check-sync NOTIFYs given up after 32 s",
                get(&self.notify_unanswered),
            ),
            (
                "sipward_grace_logins_total",
                "registrations with an old password during its grace window",
                get(&self.grace_logins),
            ),
            (
                "sipward_mail_sent_total",
                "welcome mails the SMTP server accepted",
                get(&self.mail_sent),
            ),
            (
                "sipward_mail_deferred_total",
                "welcome mail attempts that will be retried",
                get(&self.mail_deferred),
            ),
            (
                "sipward_mail_failed_total",
                "welcome mails given up",
                get(&self.mail_failed),
            ),
            (
                "sipward_provisioning_served_total",
                "provisioning files served to an authenticated phone",
                get(&self.provisioning_served),
            ),
            (
                "sipward_provisioning_refused_total",
                "provisioning requests refused and counted as probes (wrong login, stale or unknown nonce, replay)",
                get(&self.provisioning_refused),
            ),
            (
                "sipward_provisioning_limited_total",
                "sources where a phone is registered that went over the provisioning probe limit (provisioning refused for a while, SIP untouched)",
                get(&self.provisioning_limited),
            ),
            (
                "sipward_provisioning_not_served_total",
                "files an authenticated phone asked for that sipward does not serve (answered 404, not counted as probes)",
                get(&self.provisioning_not_served),
            ),
            (
                "sipward_invite_challenged_total",
                "INVITEs answered 407 (every caller authenticates before the number is looked at)",
                get(&self.invite_challenged),
            ),
            (
                "sipward_calls_forbidden_total",
                "authenticated INVITEs refused 403: class of service, invalid number or suspended",
                get(&self.calls_forbidden),
            ),
            (
                "sipward_outbound_suspensions_total",
                "extensions suspended for breaking a fraud limit",
                get(&self.outbound_suspensions),
            ),
            (
                "sipward_resyncs_dropped_total",
                "re-fetch requests dropped: no live registration of the extension on any node",
                get(&self.resyncs_dropped),
            ),
            (
                "sipward_calls_ended_lease_lapsed_total",
                "external calls ended because their lease on the concurrent limit lapsed and the limit was full",
                get(&self.calls_ended_lease_lapsed),
            ),
            (
                "sipward_emergency_calls_total",
                "calls to emergency numbers",
                get(&self.emergency_calls),
            ),
            (
                "sipward_calls_unrouted_total",
                "admitted INVITEs not routed: callee not registered (480), no route (404), trunk without an address (503)",
                get(&self.calls_unrouted),
            ),
            (
                "sipward_voicemail_calls_total",
                "calls the voicemail answered itself (no registered phone)",
                get(&self.voicemail_calls),
            ),
            (
                "sipward_voicemail_refused_total",
                "calls the voicemail could not take: no answerable offer (488), no RTP port (503), no box (480)",
                get(&self.voicemail_refused),
            ),
            (
                "sipward_voicemail_messages_total",
                "voicemail messages recorded and filed",
                get(&self.voicemail_messages),
            ),
            (
                "sipward_voicemail_digits_total",
                "DTMF digits the voicemail received (RFC 4733 events or SIP INFO)",
                get(&self.voicemail_digits),
            ),
            (
                "sipward_voicemail_retrievals_total",
                "calls to the voicemail menu (*97 own box, *98 any box) it answered",
                get(&self.voicemail_retrievals),
            ),
            (
                "sipward_voicemail_logins_refused_total",
                "voicemail logins refused: wrong PIN, locked or unknown box (answered alike)",
                get(&self.voicemail_logins_refused),
            ),
            (
                "sipward_voicemail_operator_refers_total",
                "voicemail callers referred to the configured operator extension (0)",
                get(&self.voicemail_operator_refers),
            ),
            (
                "sipward_calls_proxied_total",
                "INVITEs forked to a registered extension",
                get(&self.calls_proxied),
            ),
            (
                "sipward_calls_trunk_total",
                "external and emergency calls placed to a gateway or provider",
                get(&self.calls_trunk),
            ),
            (
                "sipward_calls_inbound_total",
                "calls from a trunk put through to an extension by DID",
                get(&self.calls_inbound),
            ),
            (
                "sipward_hops_unanswered_total",
                "calls hopped to another node that got no final answer from it (the node dead, or its internal socket unreachable)",
                get(&self.hops_unanswered),
            ),
            (
                "sipward_relayed_total",
                "in-dialog requests relayed between the parties of a dialog (ACK, BYE, re-INVITE, ...)",
                get(&self.relayed),
            ),
            (
                "sipward_emergency_refused_total",
                "emergency calls refused by the emergency limits (per extension, total)",
                get(&self.emergency_refused),
            ),
            (
                "sipward_calls_ended_max_duration_total",
                "answered trunk calls ended by sipward at their class's maximum duration",
                get(&self.calls_ended_max_duration),
            ),
            (
                "sipward_calls_ended_revoked_total",
                "calls ended by sipward because an extension's credentials were revoked (removal, new password, Re-Generate)",
                get(&self.calls_ended_revoked),
            ),
            (
                "sipward_trunk_legs_cancelled_total",
                "trunk legs CANCELled: the caller gave up, hung up early, or the ring time ran out",
                get(&self.trunk_legs_cancelled),
            ),
            (
                "sipward_late_answers_ended_total",
                "2xx answers that came after the call was given up, ACKed and ended with BYE",
                get(&self.late_answers_ended),
            ),
            (
                "sipward_transfers_refused_total",
                "REFERs and 3xx redirects to targets the referrer's class may not call",
                get(&self.transfers_refused),
            ),
            (
                "sipward_auto_answer_removed_total",
                "calls between extensions whose auto-answer hints were removed",
                get(&self.auto_answer_removed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = write!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            );
        }
        let name = "sipward_bans_total";
        let _ = write!(
            s,
            "# HELP {name} bans imposed, by reason\n# TYPE {name} counter\n"
        );
        for r in policy::ban::Reason::ALL {
            let v = get(&self.bans_by_reason[r as usize]);
            let _ = writeln!(s, "{name}{{reason=\"{}\"}} {v}", r.as_str());
        }
        let name = "sipward_egress_denied_total";
        let _ = write!(
            s,
            "# HELP {name} messages the egress rule refused to send, by reason\n# TYPE {name} counter\n"
        );
        for (i, label) in EGRESS_DENIALS.iter().enumerate() {
            let _ = writeln!(
                s,
                "{name}{{reason=\"{label}\"}} {}",
                get(&self.egress_denied[i])
            );
        }
        let name = "sipward_hops_refused_total";
        let _ = write!(
            s,
            "# HELP {name} internal hops refused unread or unchecked, by reason\n# TYPE {name} counter\n"
        );
        for (i, label) in HOPS_REFUSED.iter().enumerate() {
            let _ = writeln!(
                s,
                "{name}{{reason=\"{label}\"}} {}",
                get(&self.hops_refused[i])
            );
        }
        let name = "sipward_responses_dropped_total";
        let _ = write!(
            s,
            "# HELP {name} responses that reached no client transaction, dropped, by reason\n# TYPE {name} counter\n"
        );
        for (i, label) in RESPONSES_DROPPED.iter().enumerate() {
            let _ = writeln!(
                s,
                "{name}{{reason=\"{label}\"}} {}",
                get(&self.responses_dropped[i])
            );
        }
        let name = "sipward_auth_challenged_total";
        let _ = write!(
            s,
            "# HELP {name} digest credentials answered with a new challenge, by the check that failed\n# TYPE {name} counter\n"
        );
        for r in Challenged::ALL {
            let v = get(&self.challenged_by_reason[r as usize]);
            let _ = writeln!(s, "{name}{{reason=\"{}\"}} {v}", r.as_str());
        }
        let name = "sipward_rtp_dropped_total";
        let _ = write!(
            s,
            "# HELP {name} RTP packets dropped by the RTP guard or the parser, by reason\n# TYPE {name} counter\n"
        );
        for (i, label) in RTP_DROPS.iter().enumerate() {
            let _ = writeln!(
                s,
                "{name}{{reason=\"{label}\"}} {}",
                get(&self.rtp_dropped[i])
            );
        }
        let name = "sipward_rtp_ports_refused_total";
        let _ = write!(
            s,
            "# HELP {name} calls refused an RTP port pair (503), by reason\n# TYPE {name} counter\n"
        );
        for (i, label) in ["exhausted", "per_source"].iter().enumerate() {
            let _ = writeln!(
                s,
                "{name}{{reason=\"{label}\"}} {}",
                get(&self.rtp_ports_refused[i])
            );
        }
        let name = "sipward_background_errors_total";
        let _ = write!(
            s,
            "# HELP {name} failures of work no request waits for (store writes, reloads, sends), by task\n# TYPE {name} counter\n"
        );
        for (task, v) in accounts::background::counts() {
            let _ = writeln!(s, "{name}{{task=\"{}\"}} {v}", task.as_str());
        }
        let gauges = [
            (
                "sipward_bindings",
                "current registrar bindings",
                get(&self.bindings),
            ),
            (
                "sipward_directory_accounts",
                "accounts that can authenticate",
                get(&self.directory_accounts),
            ),
            ("sipward_bans", "sources banned now", get(&self.bans)),
            (
                "sipward_kernel_drop_sources",
                "banned IPv4 sources the kernel's socket filter drops before sipward sees them",
                get(&self.kernel_drop_sources),
            ),
            (
                "sipward_rtp_ports_in_use",
                "RTP port pairs held by calls sipward answers itself",
                get(&self.rtp_ports_in_use),
            ),
            (
                "sipward_allowed_networks",
                "allow-listed networks in force (never banned, never flood-limited)",
                get(&self.allowed_networks),
            ),
        ];
        let store = [
            (
                "sipward_store_hints_total",
                "change notifications received from the database (PostgreSQL)",
                get(&self.store_hints),
                "counter",
            ),
            (
                "sipward_store_listener_reconnects_total",
                "times the database's notification listener reconnected (each followed by a full reload)",
                get(&self.store_reconnects),
                "counter",
            ),
        ];
        for (name, help, v, kind) in store {
            let _ = write!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        }
        let name = "sipward_job_holder";
        let _ = write!(
            s,
            "# HELP {name} 1 when this node runs the single-instance job now (one node at a time on a shared database)\n# TYPE {name} gauge\n"
        );
        for (job, held) in store::jobs::Job::ALL.iter().zip(&self.job_holder) {
            let _ = writeln!(
                s,
                "{name}{{job=\"{}\"}} {}",
                job.as_str(),
                u8::from(held.load(Ordering::Relaxed))
            );
        }
        let name = "sipward_store_versions_seen_at_seconds";
        let _ = write!(
            s,
            "# HELP {name} when this node last read the store's versions and reloaded what moved (Unix time; now minus this is its lag)\n# TYPE {name} gauge\n{name} {}\n",
            self.store_versions_seen_at.load(Ordering::Relaxed)
        );
        let backlog = [
            (
                "sipward_write_behind_backlog",
                "extensions whose bindings wait for the write-behind, sampled each second before the write",
                get(&self.write_behind_backlog),
            ),
            (
                "sipward_write_behind_waiting",
                "of those, extensions whose 200 waits for the group commit",
                get(&self.write_behind_waiting),
            ),
        ];
        for (name, help, v) in gauges.into_iter().chain(backlog) {
            let _ = write!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
        }
        if self.tls_enabled.load(Ordering::Relaxed) {
            let name = "sipward_tls_cert_expiry_seconds";
            let v = self.tls_cert_expiry.load(Ordering::Relaxed);
            let _ = write!(
                s,
                "# HELP {name} seconds until the SIP TLS certificate in force expires\n# TYPE {name} gauge\n{name} {v}\n"
            );
        }
        if let Some(node) = self.node.get() {
            let name = "sipward_node_info";
            let _ = write!(
                s,
                "# HELP {name} this node's name (always 1)\n# TYPE {name} gauge\n{name}{{node=\"{node}\"}} 1\n"
            );
        }
        let name = "sipward_table_entries";
        let _ = write!(
            s,
            "# HELP {name} entries in each bounded table, sampled each second\n# TYPE {name} gauge\n"
        );
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        for (table, v) in tables.iter() {
            let _ = writeln!(s, "{name}{{table=\"{table}\"}} {v}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounts::background::{self, Task};

    #[test]
    fn background_errors_are_rendered_for_every_task_and_move_when_counted() {
        let m = Metrics::default();
        let line = |text: &str, task: &str| -> u64 {
            let prefix = format!("sipward_background_errors_total{{task=\"{task}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no line for {task}:\n{text}"))
        };
        let before = m.render();
        for t in Task::ALL {
            line(&before, t.as_str());
        }
        background::count(Task::Cleanup);
        let after = m.render();
        assert!(line(&after, "cleanup") > line(&before, "cleanup"));
    }

    #[test]
    fn the_node_is_named_once_it_is_known() {
        let m = Metrics::default();
        assert!(!m.render().contains("sipward_node_info"));
        let _ = m.node.set("pbx-a".into());
        assert!(
            m.render()
                .contains("# TYPE sipward_node_info gauge\nsipward_node_info{node=\"pbx-a\"} 1\n")
        );
    }
}
