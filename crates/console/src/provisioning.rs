//! Phone provisioning over HTTP: `GET /prov/<install secret>/<file>`, each phone's files
//! behind its own HTTP Digest login (RFC 7616; user = the phone's MAC, password generated
//! per phone and rotated whenever its SIP credentials change).
//!
//! The checks, in order, each costing the same whatever file or MAC is asked for:
//!
//! 1. A banned source, or a phone's address over the probe limit, gets 403 before any
//!    work.
//! 2. No login: a challenge, never counted (a phone's first request carries none, and
//!    every file gets the same answer, so there is nothing to learn).
//! 3. The nonce, before anything is looked up: one that is not ours, or stale, is
//!    counted as a probe and challenged again.
//! 4. The login is looked up by its user (the MAC) with the same work whether a phone
//!    has it (a stand-in secret otherwise), and its digest verified; the previous login
//!    a grace window keeps is accepted only from the window's sources.
//! 5. `nc` must move forward on its nonce: a replayed Authorization is refused and
//!    counted.
//! 6. An authenticated phone gets its own files, and 404 for any other name: the files
//!    vendors' boot sequences ask for that sipward does not serve (Poly's `sip.ld`,
//!    `-phone.cfg`, `-web.cfg`, `-directory.xml`, common files) are never probes.
//!
//! The source is the real client ([`crate::client`]): behind a trusted reverse proxy,
//! the phone, not the proxy. Failed logins count against their source: a stranger is
//! banned at the threshold, an address where a phone is registered or logged in only
//! loses provisioning for a while (see [`ProbeVerdict`]).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use accounts::Registry;
use accounts::running::{ProbeVerdict, RunningServer};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use policy::Secret;
use policy::clock::Clock;
use sip::digest::{self, Algorithm, ResponseInput};
use sip::header::auth::{self, DigestCredentials};
use sip::nonce::{NcCheck, NcTracker, NonceCheck, NonceKey};

use crate::client::ClientIp;

/// The Digest realm of the provisioning server.
pub const REALM: &str = accounts::provisioning::REALM;
const NONCE_MAX_AGE: u64 = 300;
/// Nonces whose `nc` is remembered at once (bounded like every table).
const NC_CAPACITY: usize = 65_536;

/// What the provisioning routes need.
#[derive(Clone)]
pub struct Provisioning {
    pub registry: Registry,
    /// The SIP server's guard and counters: a probe here is counted there.
    pub server: Arc<dyn RunningServer>,
    /// The per-install path segment.
    pub path: Arc<Secret>,
    pub nonces: Arc<NonceKey>,
    /// The highest `nc` accepted per nonce: a captured Authorization is not served twice.
    nc: Arc<Mutex<NcTracker>>,
    /// The one clock (the binary's; tests could move a `ManualClock`).
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Provisioning([redacted])")
    }
}

fn plain(code: StatusCode, text: &'static str) -> Response {
    (code, [(header::CACHE_CONTROL, "no-store")], text).into_response()
}

impl Provisioning {
    pub fn new(
        registry: Registry,
        server: Arc<dyn RunningServer>,
        path: Secret,
        nonces: NonceKey,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            registry,
            server,
            path: Arc::new(path),
            nonces: Arc::new(nonces),
            nc: Arc::new(Mutex::new(NcTracker::new(NC_CAPACITY, NONCE_MAX_AGE))),
            clock,
        }
    }

    fn challenge(&self, ip: IpAddr, stale: bool) -> Response {
        let now = u64::try_from(self.clock.now()).unwrap_or(0);
        let nonce = self.nonces.issue(now, ip, REALM);
        let opaque = self.nonces.opaque();
        let mut r = plain(StatusCode::UNAUTHORIZED, "authentication required\n");
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let c = auth::challenge(REALM, &nonce, &opaque, alg, stale);
            if let Ok(v) = HeaderValue::from_str(&c) {
                r.headers_mut().append(header::WWW_AUTHENTICATE, v);
            }
        }
        r
    }

    /// Counts a failed request and answers like a wrong login (a stale challenge for a
    /// stale nonce), or 403 once the source is over the limit.
    fn probe(&self, ip: IpAddr, stale: bool) -> Response {
        match self.server.provisioning_refused(ip, self.clock.now()) {
            ProbeVerdict::Counted => self.challenge(ip, stale),
            ProbeVerdict::Limited | ProbeVerdict::Banned => {
                plain(StatusCode::FORBIDDEN, "forbidden\n")
            }
        }
    }

    /// Judges `nc` for the nonce with this serial (fresh only if higher than any
    /// accepted before).
    fn nc_check(&self, serial: u64, nc: u32, now: u64) -> NcCheck {
        self.nc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accept(serial, nc, now)
    }
}

pub async fn serve_file(
    State(p): State<Provisioning>,
    ClientIp(ip): ClientIp,
    Path((path, file)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let now = p.clock.now();
    if !p.server.provisioning_admits(ip, now) {
        return plain(StatusCode::FORBIDDEN, "forbidden\n");
    }
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| DigestCredentials::parse(v).ok());
    let Some(c) = creds else {
        // A phone's first request carries no login; every file gets this same answer.
        return p.challenge(ip, false);
    };
    let Some(alg) = c.algorithm() else {
        return p.probe(ip, false);
    };
    let now_u = u64::try_from(now).unwrap_or(0);
    // The nonce first, before any lookup: a stale or foreign one costs the same for
    // every file, and counts.
    let serial = match p.nonces.check(&c.nonce, now_u, ip, REALM, NONCE_MAX_AGE) {
        NonceCheck::Valid { salt, .. } => p.nonces.serial(salt),
        NonceCheck::Stale => return p.probe(ip, true),
        NonceCheck::Invalid => return p.probe(ip, false),
    };
    let qop_auth = match (&c.qop, &c.nc_raw, &c.cnonce) {
        (Some(q), Some(nc), Some(cnonce)) if q.eq_ignore_ascii_case("auth") => {
            Some((nc.as_ref(), cnonce.as_ref()))
        }
        _ => None,
    };
    // The same lookup and hashing whether or not a phone has this login.
    let login = match p.registry.provisioning_login(&c.username).await {
        Ok(l) => l,
        Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "error\n"),
    };
    let ha1 = digest::ha1(alg, &c.username, REALM, login.password.expose());
    let input = ResponseInput {
        method: "GET",
        uri: &c.uri,
        nonce: &c.nonce,
        qop_auth,
    };
    let current = digest::verify_response(alg, &ha1, &input, &c.response);
    // The previous login, from the grace window's sources only (the phone fetching the
    // file that brings its new login); elsewhere the same work on the current HA1.
    let grace_ha1 = login.grace.as_ref().and_then(|g| g.ha1_for(alg, ip, now));
    let previous = digest::verify_response(alg, grace_ha1.unwrap_or(&ha1), &input, &c.response)
        & grace_ha1.is_some();
    // The digest covers `uri=`: it must name this very request.
    let uri_ok = c.uri == uri.path() || uri.path_and_query().is_some_and(|pq| c.uri == pq.as_str());
    let ok = (current | previous)
        & uri_ok
        & p.path.ct_eq(&path)
        & (c.realm == REALM)
        & qop_auth.is_some();
    let (Some(phone), true) = (login.phone, ok) else {
        return p.probe(ip, false);
    };
    // A replayed Authorization (the same nonce and nc again) is refused; a nonce whose
    // record the bounded table let go gets a new challenge, never trust.
    match c.nc.map(|nc| p.nc_check(serial, nc, now_u)) {
        Some(NcCheck::Fresh) => {}
        Some(NcCheck::Forgotten) => return p.challenge(ip, true),
        Some(NcCheck::Replayed) | None => return p.probe(ip, false),
    }
    let Some(on_disk) = phone.path_of(&file) else {
        // A file of its vendor's boot sequence that sipward does not serve, or any
        // other name: the phone proved its login, so this is no probe.
        p.server.provisioning_not_served();
        return plain(StatusCode::NOT_FOUND, "not served here\n");
    };
    match tokio::fs::read(&on_disk).await {
        Ok(body) => {
            p.server.provisioning_served();
            // Where the current login fetched from: the only addresses its grace window
            // will accept it from once it is rotated. (Not for the previous login.)
            if current {
                let recorded = p.registry.record_fetch(&phone.number, ip).await;
                accounts::background::checked(
                    accounts::background::Task::Console,
                    "recording a provisioning fetch",
                    recorded,
                );
            }
            let ctype = if body.starts_with(b"<?xml") {
                "application/xml"
            } else {
                "text/plain; charset=utf-8"
            };
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, ctype),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                body,
            )
                .into_response()
        }
        // Known phone, file not written (no server configured, or not yet).
        Err(_) => plain(StatusCode::NOT_FOUND, "not provisioned yet\n"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use md5::{Digest, Md5};
    use policy::clock::ManualClock;
    use rand::SeedableRng;

    use super::*;

    const NOW: i64 = 1_700_000_000;

    /// The server side of probe counting: bans at the tenth failure.
    #[derive(Debug, Default)]
    struct Counter {
        refused: AtomicU32,
    }

    impl RunningServer for Counter {
        fn admits(&self, _: IpAddr) -> bool {
            self.refused.load(Ordering::Relaxed) < 10
        }
        fn provisioning_admits(&self, ip: IpAddr, _: i64) -> bool {
            self.admits(ip)
        }
        fn provisioning_refused(&self, _: IpAddr, _: i64) -> ProbeVerdict {
            if self.refused.fetch_add(1, Ordering::Relaxed) + 1 >= 10 {
                ProbeVerdict::Banned
            } else {
                ProbeVerdict::Counted
            }
        }
        fn provisioning_served(&self) {}
        fn provisioning_not_served(&self) {}
        fn metrics_text(&self) -> String {
            String::new()
        }
        fn targeted_accounts(&self, _: i64, _: usize) -> Vec<(String, u32)> {
            Vec::new()
        }
    }

    async fn setup() -> (
        tempfile::TempDir,
        Provisioning,
        Arc<Counter>,
        Arc<ManualClock>,
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        let clock = Arc::new(ManualClock::new(NOW, std::time::Instant::now()));
        let (registry, _) = Registry::open(
            &store::DataDir::new(dir.path().join("d")),
            accounts::Settings {
                realm: "sipward".into(),
                domain: None,
                policy: policy::PolicyConfig::default(),
                dialplan: Default::default(),
                admin_email: None,
                provisioning: Default::default(),
            },
            Box::new(rand::rngs::StdRng::seed_from_u64(3)),
            clock.clone(),
        )
        .await
        .expect("open");
        let counter = Arc::new(Counter::default());
        let p = Provisioning::new(
            registry,
            counter.clone(),
            Secret::new("install-path".to_owned()),
            NonceKey::new([9; 32]),
            clock.clone(),
        );
        (dir, p, counter, clock)
    }

    async fn get(p: &Provisioning, file: &str, auth: Option<&str>) -> Response {
        let mut headers = HeaderMap::new();
        if let Some(a) = auth {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(a).expect("h"));
        }
        let uri: Uri = format!("/prov/install-path/{file}").parse().expect("uri");
        serve_file(
            State(p.clone()),
            crate::client::ClientIp("127.0.0.5".parse().expect("addr")),
            Path(("install-path".to_owned(), file.to_owned())),
            uri,
            headers,
        )
        .await
    }

    fn nonce_of(r: &Response) -> String {
        let h = r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii");
        let i = h.find("nonce=\"").expect("nonce") + 7;
        h[i..i + h[i..].find('"').expect("end")].to_owned()
    }

    fn authorization(user: &str, nonce: &str, uri: &str) -> String {
        let hex = |s: String| hex::encode(Md5::digest(s.as_bytes()));
        let ha1 = hex(format!("{user}:{REALM}:guess"));
        let ha2 = hex(format!("GET:{uri}"));
        let response = hex(format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             qop=auth, nc=00000001, cnonce=\"c0ffee\", response=\"{response}\""
        )
    }

    #[tokio::test]
    async fn a_stale_nonce_is_counted_before_anything_is_looked_up() {
        let (_dir, p, counter, clock) = setup().await;
        // No login: challenged, never counted.
        let first = get(&p, "0015650000aa.cfg", None).await;
        assert_eq!(first.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(counter.refused.load(Ordering::Relaxed), 0);
        let nonce = nonce_of(&first);
        clock.advance(Duration::from_secs(NONCE_MAX_AGE + 1));
        // Forty probes for made-up MACs with that stale nonce: each is counted, and the
        // tenth bans.
        let mut codes = Vec::new();
        for i in 0..40 {
            let file = format!("00156500{i:04x}.cfg");
            let uri = format!("/prov/install-path/{file}");
            let r = get(&p, &file, Some(&authorization(&file[..12], &nonce, &uri))).await;
            if i == 0 {
                let h = r.headers()[header::WWW_AUTHENTICATE]
                    .to_str()
                    .expect("ascii");
                assert!(h.contains("stale=true"), "{h}");
            }
            codes.push(r.status().as_u16());
        }
        assert_eq!(&codes[..9], &[401; 9]);
        assert!(codes[9..].iter().all(|c| *c == 403), "{codes:?}");
        assert!(counter.refused.load(Ordering::Relaxed) >= 10);
    }
}
