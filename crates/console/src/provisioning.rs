//! Phone provisioning over HTTP: `GET /prov/<install secret>/<file>`, each phone's files
//! behind its own HTTP Digest login (RFC 7616; user = the phone's MAC, password
//! generated per phone). A request for a file no phone has, for a wrong path, or with a
//! wrong login counts against its source in the guard, and a source probing MAC
//! addresses is banned like a SIP attacker (the same ban records). The source is the
//! real client ([`crate::client`]): behind a trusted reverse proxy, the phone, not the
//! proxy. Unknown files and
//! wrong logins get the same 401, so probing tells nothing about which MACs exist.

use std::net::IpAddr;
use std::sync::Arc;

use accounts::Registry;
use accounts::running::RunningServer;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use policy::Secret;
use policy::clock::Clock;
use sip::digest::{self, Algorithm, ResponseInput};
use sip::header::auth::{self, DigestCredentials};
use sip::nonce::{NonceCheck, NonceKey};

use crate::client::ClientIp;

/// The Digest realm of the provisioning server.
pub const REALM: &str = "sipward-provisioning";
const NONCE_MAX_AGE: u64 = 300;

/// What the provisioning routes need.
#[derive(Clone)]
pub struct Provisioning {
    pub registry: Registry,
    /// The SIP server's guard and counters: a probe here counts like a failed SIP login.
    pub server: Arc<dyn RunningServer>,
    /// The per-install path segment.
    pub path: Arc<Secret>,
    pub nonces: Arc<NonceKey>,
    /// Keys the stand-in HA1 for unknown files, so they cost what known ones cost.
    pub dummy_key: Arc<[u8; 32]>,
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

    /// Counts a probe and answers like a wrong login (or not at all once banned).
    fn probe(&self, ip: IpAddr) -> Response {
        if self.server.provisioning_refused(ip, self.clock.now()) {
            return plain(StatusCode::FORBIDDEN, "forbidden\n");
        }
        self.challenge(ip, false)
    }
}

pub async fn serve_file(
    State(p): State<Provisioning>,
    ClientIp(ip): ClientIp,
    Path((path, file)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if !p.server.admits(ip) {
        return plain(StatusCode::FORBIDDEN, "forbidden\n");
    }
    let phone = if p.path.ct_eq(&path) {
        match p.registry.provisioning_file(&file).await {
            Ok(f) => f,
            Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "error\n"),
        }
    } else {
        None
    };
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| DigestCredentials::parse(v).ok());
    let Some(c) = creds else {
        // A phone's first request carries no login: challenge it. Asking for a file
        // nobody has is a probe even without one.
        return match phone {
            Some(_) => p.challenge(ip, false),
            None => p.probe(ip),
        };
    };
    let Some(alg) = c.algorithm() else {
        return p.probe(ip);
    };
    let now = u64::try_from(p.clock.now()).unwrap_or(0);
    let nonce = p.nonces.check(&c.nonce, now, ip, REALM, NONCE_MAX_AGE);
    if nonce == NonceCheck::Stale {
        return p.challenge(ip, true);
    }
    let qop_auth = match (&c.qop, &c.nc_raw, &c.cnonce) {
        (Some(q), Some(nc), Some(cnonce)) if q.eq_ignore_ascii_case("auth") => {
            Some((nc.as_ref(), cnonce.as_ref()))
        }
        _ => None,
    };
    // The same hashing whether or not the file exists.
    let dummy = {
        use hmac::{Hmac, KeyInit, Mac};
        let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(p.dummy_key.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(c.username.as_bytes());
        let bytes = m.finalize().into_bytes();
        match alg {
            Algorithm::Md5 => hex::encode(&bytes[..16]),
            Algorithm::Sha256 => hex::encode(bytes),
        }
    };
    let ha1 = match &phone {
        Some(f) => digest::ha1(alg, &f.user, REALM, f.password.expose()),
        None => dummy,
    };
    let input = ResponseInput {
        method: "GET",
        uri: &c.uri,
        nonce: &c.nonce,
        qop_auth,
    };
    let response_ok = digest::verify_response(alg, &ha1, &input, &c.response);
    // The digest covers `uri=`: it must name this very request.
    let uri_ok = c.uri == uri.path() || uri.path_and_query().is_some_and(|pq| c.uri == pq.as_str());
    let ok = response_ok
        & uri_ok
        & (c.realm == REALM)
        & matches!(nonce, NonceCheck::Valid { .. })
        & qop_auth.is_some();
    let Some(f) = phone.filter(|f| ok && f.user == c.username) else {
        return p.probe(ip);
    };
    match tokio::fs::read(&f.path).await {
        Ok(body) => {
            p.server.provisioning_served();
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
