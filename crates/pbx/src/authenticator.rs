//! Digest authentication for the registrar (RFC 3261 §22, RFC 7616/8760).
//!
//! Enumeration resistance: an unknown auth ID, a wrong password and a wrong realm take
//! the same path, do the same hashing (a dummy HA1 is derived for every request, used
//! when the user is unknown) and end in the same challenge built by the same code.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sip::digest::{self, Algorithm, ResponseInput};
use sip::header::auth::{self, DigestCredentials};
use sip::msg::{Message, Name, StartLine};
use sip::nonce::{NcCheck, NcTracker, NonceCheck, NonceKey};

use crate::directory::{Account, Directory};
use crate::metrics::{Challenged, Metrics};

/// Settings of the authenticator.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub realm: String,
    pub nonce_max_age_secs: u64,
    /// How many nonces' `nc` counters are remembered (bounded memory).
    pub nc_capacity: usize,
    /// The algorithms challenged with, in order of preference (1 or 2 entries). Many
    /// deployed clients answer only the first challenge and know only MD5 (SIPp 3.6), and
    /// some abort on any challenge they do not know (baresip 1.0 / libre 1.x): MD5 first
    /// by default, and `["MD5"]` for such fleets. Only offered algorithms are accepted.
    pub algorithms: Vec<Algorithm>,
}

#[derive(Debug)]
pub struct Authenticator {
    cfg: AuthConfig,
    nonces: NonceKey,
    opaque: String,
    dummy_key: [u8; 32],
    nc: Mutex<NcTracker>,
    /// Where each new challenge is counted by the check that failed.
    metrics: Arc<Metrics>,
}

/// The result of checking a request's credentials.
#[derive(Debug)]
pub enum Outcome {
    Authenticated(Arc<Account>),
    /// Authenticated with the account's previous password, inside its grace window
    /// and from an address its phones were registered from.
    Grace(Arc<Account>),
    /// Answer 401 with a fresh challenge; `stale` when the nonce merely expired.
    /// `failed` names the auth ID when the request answered a valid nonce issued to this
    /// very source and was still wrong: the only failures the guard counts, since a
    /// spoofed source address never received our nonce.
    Challenge {
        stale: bool,
        failed: Option<String>,
    },
}

impl Authenticator {
    /// `nonce_key` and `dummy_key` come from the OS CSPRNG (through the caller).
    pub fn new(
        cfg: AuthConfig,
        nonce_key: [u8; 32],
        dummy_key: [u8; 32],
        metrics: Arc<Metrics>,
    ) -> Self {
        let nonces = NonceKey::new(nonce_key);
        let opaque = nonces.opaque();
        let nc = Mutex::new(NcTracker::new(cfg.nc_capacity, cfg.nonce_max_age_secs));
        Self {
            cfg,
            nonces,
            opaque,
            dummy_key,
            nc,
            metrics,
        }
    }

    /// Nonces whose `nc` is tracked now (a table bounded by `nc_capacity`), for `/metrics`.
    pub fn nc_tracked(&self) -> usize {
        self.nc.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Counts a new challenge by the check that failed (one relaxed increment whatever
    /// the reason: the work stays the same for every outcome).
    fn challenged(&self, why: Challenged) {
        Metrics::inc(&self.metrics.challenged_by_reason[why as usize]);
    }

    /// The two `WWW-Authenticate` values for a 401 (RFC 8760: one per algorithm, in
    /// order of preference), both with the same fresh nonce.
    pub fn challenges(&self, source: IpAddr, now_secs: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonces.issue(now_secs, source, &self.cfg.realm);
        self.cfg
            .algorithms
            .iter()
            .map(|alg| auth::challenge(&self.cfg.realm, &nonce, &self.opaque, *alg, stale))
            .collect()
    }

    /// A stand-in HA1 for a user name, so unknown users cost what known ones cost.
    fn dummy_ha1(&self, username: &str, alg: Algorithm) -> String {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.dummy_key)
            .unwrap_or_else(|_| unreachable_hmac());
        m.update(username.as_bytes());
        let bytes = m.finalize().into_bytes();
        match alg {
            Algorithm::Md5 => hex::encode(&bytes[..16]),
            Algorithm::Sha256 => hex::encode(bytes),
        }
    }

    pub fn verify(
        &self,
        dir: &Directory,
        req: &Message<'_>,
        method: &str,
        source: IpAddr,
        now_secs: u64,
    ) -> Outcome {
        self.verify_header(dir, req, Name::Authorization, method, source, now_secs)
    }

    /// [`Authenticator::verify`] with the credentials from `header` (`Proxy-Authorization`
    /// for requests sipward challenges with 407).
    pub fn verify_header(
        &self,
        dir: &Directory,
        req: &Message<'_>,
        header: Name,
        method: &str,
        source: IpAddr,
        now_secs: u64,
    ) -> Outcome {
        // Prefer the credentials for our realm when a client sends several.
        let mut chosen: Option<DigestCredentials<'_>> = None;
        for value in req.headers_named(header) {
            if let Ok(c) = DigestCredentials::parse(value) {
                let ours = c.realm == self.cfg.realm;
                if chosen.is_none() || ours {
                    chosen = Some(c);
                }
                if ours {
                    break;
                }
            }
        }
        let Some(c) = chosen else {
            self.challenged(Challenged::Malformed);
            return Outcome::Challenge {
                stale: false,
                failed: None,
            };
        };
        let Some(alg) = c.algorithm().filter(|a| self.cfg.algorithms.contains(a)) else {
            self.challenged(Challenged::Malformed);
            return Outcome::Challenge {
                stale: false,
                failed: None,
            };
        };

        let nonce = self.nonces.check(
            &c.nonce,
            now_secs,
            source,
            &self.cfg.realm,
            self.cfg.nonce_max_age_secs,
        );
        let qop_auth = match (&c.qop, &c.nc_raw, &c.cnonce) {
            (Some(q), Some(nc), Some(cnonce)) if q.eq_ignore_ascii_case("auth") => {
                Some((nc.as_ref(), cnonce.as_ref()))
            }
            _ => None,
        };
        // The same work whatever the outcome: look up, open (an account's HA1s on its
        // first use; while some are unopened, a dummy pair for an unknown user and for
        // an account opened before), derive the dummy, hash. An account whose HA1s do
        // not open is an unknown user.
        let account = dir.account(&c.username).cloned();
        let tried = account.as_ref().is_some_and(|a| a.ha1s_tried());
        let opened = account.as_ref().and_then(|a| a.ha1s());
        if account.is_none() || tried {
            dir.as_unknown(&c.username);
        }
        let known = opened.is_some();
        let dummy = self.dummy_ha1(&c.username, alg);
        let ha1 = match (opened, alg) {
            (Some(h), Algorithm::Md5) => h.md5.expose(),
            (Some(h), Algorithm::Sha256) => h.sha256.expose(),
            (None, _) => dummy.as_str(),
        };
        let input = ResponseInput {
            method,
            uri: &c.uri,
            nonce: &c.nonce,
            qop_auth,
        };
        let mut response_ok = digest::verify_response(alg, ha1, &input, &c.response);
        // After Re-Generate the old password still works, but only from where the
        // phones were (the grace window); everywhere else it is dead.
        let mut old = false;
        if !response_ok
            && let Some(g) = account
                .as_ref()
                .filter(|_| known)
                .and_then(|a| a.grace.as_ref())
            && g.applies(source, i64::try_from(now_secs).unwrap_or(i64::MAX))
            && let Some(old_ha1s) = g.ha1s()
        {
            let old_ha1 = match alg {
                Algorithm::Md5 => old_ha1s.md5.expose(),
                Algorithm::Sha256 => old_ha1s.sha256.expose(),
            };
            old = digest::verify_response(alg, old_ha1, &input, &c.response);
            response_ok = old;
        }
        let realm_ok = c.realm == self.cfg.realm;
        // The digest covers `uri=`, not the Request-URI: without this check a response
        // computed for one request (a call to an extension) would authorise another (a
        // call abroad). RFC 3261 §22.4, RFC 7616 §3.4.6. A mismatch takes the wrong
        // password's path: same work, same answer, counted as a failure.
        let uri_ok = matches!(req.start, StartLine::Request { uri, .. } if *c.uri == *uri);
        let nonce_ok = matches!(nonce, NonceCheck::Valid { .. });
        let ok = response_ok & realm_ok & uri_ok & nonce_ok & qop_auth.is_some() & known;
        match (ok, account.filter(|_| known), c.nc, nonce) {
            (true, Some(a), Some(nc), NonceCheck::Valid { salt, .. }) => {
                let serial = self.nonces.serial(salt);
                let seen = self
                    .nc
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .accept(serial, nc, now_secs);
                match seen {
                    NcCheck::Fresh if old => Outcome::Grace(a),
                    NcCheck::Fresh => Outcome::Authenticated(a),
                    NcCheck::Replayed => {
                        self.challenged(Challenged::NcReplay);
                        Outcome::Challenge {
                            stale: false,
                            failed: Some(c.username.to_string()),
                        }
                    }
                    // The nonce's replay record is gone: a new nonce, and nothing
                    // counted against the source (it is not the client's doing).
                    NcCheck::Forgotten => {
                        self.challenged(Challenged::NcForgotten);
                        Outcome::Challenge {
                            stale: true,
                            failed: None,
                        }
                    }
                }
            }
            (_, account, _, _) => {
                self.challenged(match nonce {
                    NonceCheck::Invalid => Challenged::NonceInvalid,
                    NonceCheck::Stale => Challenged::NonceStale,
                    NonceCheck::Valid { .. } if !realm_ok || !uri_ok || qop_auth.is_none() => {
                        Challenged::WrongParameters
                    }
                    NonceCheck::Valid { .. } if account.is_none() => Challenged::UnknownUser,
                    NonceCheck::Valid { .. } => Challenged::WrongResponse,
                });
                Outcome::Challenge {
                    stale: nonce == NonceCheck::Stale,
                    failed: nonce_ok.then(|| c.username.to_string()),
                }
            }
        }
    }
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    panic!("HMAC-SHA256 accepts keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounts::credentials::{Credential, GraceCredential};
    use sip::digest::{expected_response, ha1};

    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const NOW: u64 = 1_795_894_105;

    fn setup(algorithms: &[Algorithm]) -> (Authenticator, Directory) {
        let cfg = AuthConfig {
            realm: "sipward".into(),
            nonce_max_age_secs: 300,
            nc_capacity: 100,
            algorithms: algorithms.to_vec(),
        };
        let a = Authenticator::new(cfg, [1; 32], [2; 32], Arc::new(Metrics::default()));
        let d = Directory::from_rows(
            vec![Credential {
                kind: "ext",
                number: "1001".into(),
                auth_id: "alice1001".into(),
                sip_id: None,
                ha1s: accounts::credentials::Ha1s::opened(
                    policy::Secret::new(ha1(
                        Algorithm::Md5,
                        "alice1001",
                        "sipward",
                        "Zq8xLmTr4wPyK7vB2",
                    )),
                    policy::Secret::new(ha1(
                        Algorithm::Sha256,
                        "alice1001",
                        "sipward",
                        "Zq8xLmTr4wPyK7vB2",
                    )),
                ),
                password_score: 4,
                credential_generation: 1,
            }],
            "sipward",
            3,
        );
        (a, d)
    }

    fn nonce_of(challenge: &str) -> String {
        challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("nonce")
            .to_owned()
    }

    /// An Authorization header as SIPp 3.6 writes it (no spaces, unquoted qop and nc).
    fn authorization(
        user: &str,
        realm: &str,
        password: &str,
        nonce: &str,
        nc: &str,
        alg: Algorithm,
    ) -> String {
        let uri = "sip:127.0.0.1:54686";
        let h = ha1(alg, user, realm, password);
        let input = ResponseInput {
            method: "REGISTER",
            uri,
            nonce,
            qop_auth: Some((nc, "6b8b4567")),
        };
        let response = expected_response(alg, &h, &input);
        format!(
            "Digest username=\"{user}\",realm=\"{realm}\",cnonce=\"6b8b4567\",nc={nc},qop=auth,uri=\"{uri}\",nonce=\"{nonce}\",response=\"{response}\",algorithm={}",
            alg.token()
        )
    }

    fn verify(a: &Authenticator, d: &Directory, auth: &str, now: u64) -> Outcome {
        let text = format!(
            "REGISTER sip:127.0.0.1:54686 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:16062;branch=z9hG4bK-1\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n"
        );
        let m = sip::msg::parse(text.as_bytes()).expect("parses");
        a.verify(d, &m, "REGISTER", SRC, now)
    }

    #[test]
    fn a_correct_response_authenticates_with_either_algorithm() {
        let (a, d) = setup(&[Algorithm::Md5, Algorithm::Sha256]);
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let nonce = nonce_of(&a.challenges(SRC, NOW, false)[0]);
            let h = authorization(
                "alice1001",
                "sipward",
                "Zq8xLmTr4wPyK7vB2",
                &nonce,
                "00000001",
                alg,
            );
            match verify(&a, &d, &h, NOW + 1) {
                Outcome::Authenticated(acc) => assert_eq!(acc.number, "1001"),
                other => panic!("{alg:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn challenge_order_follows_the_setting() {
        let (both, d) = setup(&[Algorithm::Md5, Algorithm::Sha256]);
        let c = both.challenges(SRC, NOW, false);
        assert_eq!(c.len(), 2);
        assert!(c[0].contains("algorithm=MD5") && c[1].contains("algorithm=SHA-256"));
        let (sha_first, _) = setup(&[Algorithm::Sha256, Algorithm::Md5]);
        assert!(
            sha_first.challenges(SRC, NOW, true)[0]
                .contains("algorithm=SHA-256, qop=\"auth\", stale=true")
        );
        // MD5 only: one challenge, and a SHA-256 answer is refused even if correct.
        let (md5_only, _) = setup(&[Algorithm::Md5]);
        let c = md5_only.challenges(SRC, NOW, false);
        assert_eq!(c.len(), 1);
        let nonce = nonce_of(&c[0]);
        let sha = authorization(
            "alice1001",
            "sipward",
            "Zq8xLmTr4wPyK7vB2",
            &nonce,
            "00000001",
            Algorithm::Sha256,
        );
        assert!(matches!(
            verify(&md5_only, &d, &sha, NOW),
            Outcome::Challenge { .. }
        ));
        let md5 = authorization(
            "alice1001",
            "sipward",
            "Zq8xLmTr4wPyK7vB2",
            &nonce,
            "00000001",
            Algorithm::Md5,
        );
        assert!(matches!(
            verify(&md5_only, &d, &md5, NOW),
            Outcome::Authenticated(_)
        ));
    }

    #[test]
    fn replay_expiry_and_failures() {
        let (a, d) = setup(&[Algorithm::Md5, Algorithm::Sha256]);
        let nonce = nonce_of(&a.challenges(SRC, NOW, false)[0]);
        let good = authorization(
            "alice1001",
            "sipward",
            "Zq8xLmTr4wPyK7vB2",
            &nonce,
            "00000001",
            Algorithm::Md5,
        );
        assert!(matches!(
            verify(&a, &d, &good, NOW),
            Outcome::Authenticated(_)
        ));
        assert!(
            matches!(
                verify(&a, &d, &good, NOW),
                Outcome::Challenge { stale: false, .. }
            ),
            "same nc replayed"
        );
        let next = authorization(
            "alice1001",
            "sipward",
            "Zq8xLmTr4wPyK7vB2",
            &nonce,
            "00000002",
            Algorithm::Md5,
        );
        assert!(
            matches!(verify(&a, &d, &next, NOW), Outcome::Authenticated(_)),
            "next nc on the same nonce"
        );
        let late = authorization(
            "alice1001",
            "sipward",
            "Zq8xLmTr4wPyK7vB2",
            &nonce,
            "00000003",
            Algorithm::Md5,
        );
        assert!(
            matches!(
                verify(&a, &d, &late, NOW + 301),
                Outcome::Challenge { stale: true, .. }
            ),
            "expired nonce"
        );
        let forged = authorization(
            "alice1001",
            "sipward",
            "wrong",
            &"0".repeat(64),
            "00000001",
            Algorithm::Md5,
        );
        assert!(
            matches!(
                verify(&a, &d, &forged, NOW),
                Outcome::Challenge { failed: None, .. }
            ),
            "a nonce we never issued does not count"
        );
        let wrong = authorization(
            "alice1001",
            "sipward",
            "wrong",
            &nonce,
            "00000004",
            Algorithm::Md5,
        );
        assert!(
            matches!(
                verify(&a, &d, &wrong, NOW),
                Outcome::Challenge {
                    stale: false,
                    failed: Some(_)
                }
            ),
            "a wrong password answering our nonce counts"
        );
        let no_qop = good.replace(",nc=00000001,qop=auth", "");
        assert!(
            matches!(
                verify(&a, &d, &no_qop, NOW),
                Outcome::Challenge { stale: false, .. }
            ),
            "qop=auth is required"
        );
        let stranger = authorization(
            "mallory",
            "sipward",
            "Zq8xLmTr4wPyK7vB2",
            &nonce,
            "00000005",
            Algorithm::Md5,
        );
        assert!(matches!(
            verify(&a, &d, &stranger, NOW),
            Outcome::Challenge { .. }
        ));
        assert!(matches!(
            verify(&a, &d, "Basic YWxpY2U6eA==", NOW),
            Outcome::Challenge { .. }
        ));

        // Each new challenge is counted by the check that failed: a 401 nobody expected
        // can be explained from /metrics afterwards.
        let count = |why: Challenged| {
            a.metrics.challenged_by_reason[why as usize].load(std::sync::atomic::Ordering::Relaxed)
        };
        let counted: Vec<(&str, u64)> = Challenged::ALL
            .iter()
            .map(|w| (w.as_str(), count(*w)))
            .collect();
        assert_eq!(
            counted,
            [
                ("malformed", 1),
                ("nonce_invalid", 1),
                ("nonce_stale", 1),
                ("wrong_parameters", 1),
                ("unknown_user", 1),
                ("wrong_response", 1),
                ("nc_replay", 1),
                ("nc_forgotten", 0),
            ]
        );
        assert!(
            a.metrics
                .render()
                .contains("sipward_auth_challenged_total{reason=\"nc_replay\"} 1")
        );
    }

    #[test]
    fn a_digest_for_another_uri_fails_like_a_wrong_password() {
        let (a, d) = setup(&[Algorithm::Md5]);
        let nonce = nonce_of(&a.challenges(SRC, NOW, false)[0]);
        let good = authorization(
            "alice1001",
            "sipward",
            "Zq8xLmTr4wPyK7vB2",
            &nonce,
            "00000001",
            Algorithm::Md5,
        );
        // The same credentials on a request to another URI.
        let text = format!(
            "REGISTER sip:elsewhere.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:16062;branch=z9hG4bK-1\r\nAuthorization: {good}\r\nContent-Length: 0\r\n\r\n"
        );
        let m = sip::msg::parse(text.as_bytes()).expect("parses");
        match a.verify(&d, &m, "REGISTER", SRC, NOW) {
            Outcome::Challenge {
                stale: false,
                failed: Some(user),
            } => assert_eq!(user, "alice1001", "counted as a failure"),
            other => panic!("{other:?}"),
        }
        // Control: on its own Request-URI the same nonce and nc still work.
        assert!(matches!(
            verify(&a, &d, &good, NOW),
            Outcome::Authenticated(_)
        ));
    }

    #[test]
    fn the_old_password_works_only_from_grace_sources_until_the_window_ends() {
        let (a, d) = setup(&[Algorithm::Md5]);
        let row = |pw: &str| Credential {
            kind: "ext",
            number: "1001".into(),
            auth_id: "alice1001".into(),
            sip_id: None,
            ha1s: accounts::credentials::Ha1s::opened(
                policy::Secret::new(ha1(Algorithm::Md5, "alice1001", "sipward", pw)),
                policy::Secret::new(ha1(Algorithm::Sha256, "alice1001", "sipward", pw)),
            ),
            password_score: 4,
            credential_generation: 2,
        };
        let old = "Zq8xLmTr4wPyK7vB2";
        let new = "Nq4Zt8LmXw2Kp7RbQ";
        let grace = GraceCredential {
            number: "1001".into(),
            auth_id: "alice1001".into(),
            ha1s: accounts::credentials::Ha1s::opened(
                policy::Secret::new(ha1(Algorithm::Md5, "alice1001", "sipward", old)),
                policy::Secret::new(ha1(Algorithm::Sha256, "alice1001", "sipward", old)),
            ),
            sources: "127.0.0.1,192.0.2.7".into(),
            expires_at: i64::try_from(NOW).expect("fits") + 100,
            generation: 1,
        };
        drop(d);
        let d = Directory::with_graces(vec![row(new)], vec![grace], "sipward", 3);
        let try_from = |src: IpAddr, pw: &str, nc: &str, now: u64| {
            let nonce = nonce_of(&a.challenges(src, now, false)[0]);
            let auth = authorization("alice1001", "sipward", pw, &nonce, nc, Algorithm::Md5);
            let text = format!(
                "REGISTER sip:127.0.0.1:54686 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:16062;branch=z9hG4bK-1\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n"
            );
            let m = sip::msg::parse(text.as_bytes()).expect("parses");
            a.verify(&d, &m, "REGISTER", src, now)
        };
        let other: IpAddr = "192.0.2.99".parse().expect("ip");
        assert!(matches!(
            try_from(SRC, old, "00000001", NOW),
            Outcome::Grace(_)
        ));
        assert!(
            matches!(
                try_from(other, old, "00000001", NOW),
                Outcome::Challenge { .. }
            ),
            "not a grace source"
        );
        assert!(
            matches!(
                try_from(SRC, old, "00000001", NOW + 100),
                Outcome::Challenge { .. }
            ),
            "expired"
        );
        assert!(matches!(
            try_from(other, new, "00000001", NOW),
            Outcome::Authenticated(_)
        ));
        // The new password ends the window (the endpoint does this on success).
        let acc = d.account("alice1001").expect("account");
        assert!(acc.grace.as_ref().expect("grace").end());
        assert!(
            matches!(
                try_from(SRC, old, "00000001", NOW),
                Outcome::Challenge { .. }
            ),
            "ended"
        );
    }

    #[test]
    fn a_captured_request_is_not_fresh_again_when_its_nonce_record_was_pushed_out() {
        // nc_capacity is 100 in `setup`: 150 logins with fresh nonces push the first out.
        let (a, d) = setup(&[Algorithm::Md5]);
        let nonce = nonce_of(&a.challenges(SRC, NOW, false)[0]);
        let captured = authorization(
            "alice1001",
            "sipward",
            "Zq8xLmTr4wPyK7vB2",
            &nonce,
            "00000001",
            Algorithm::Md5,
        );
        assert!(matches!(
            verify(&a, &d, &captured, NOW),
            Outcome::Authenticated(_)
        ));
        for i in 0..150 {
            let n = nonce_of(&a.challenges(SRC, NOW + 1, false)[0]);
            let h = authorization(
                "alice1001",
                "sipward",
                "Zq8xLmTr4wPyK7vB2",
                &n,
                "00000001",
                Algorithm::Md5,
            );
            assert!(
                matches!(verify(&a, &d, &h, NOW + 1), Outcome::Authenticated(_)),
                "login {i}"
            );
        }
        assert!(
            matches!(
                verify(&a, &d, &captured, NOW + 2),
                Outcome::Challenge {
                    stale: true,
                    failed: None
                }
            ),
            "replayed byte for byte: a new challenge, never accepted, not counted"
        );
    }
}
