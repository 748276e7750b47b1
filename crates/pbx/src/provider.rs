//! The registration client that keeps sipward registered at each VoIP provider
//! (RFC 3261 §10.2 as a UAC): a REGISTER in a non-INVITE client transaction of
//! `sip::transaction` (retransmission and Timer F come from it), a digest answer to one
//! 401/407, a refresh at half the granted time, backoff after a failure. Sent only to a
//! configured provider's registrar, under the egress rule's provider permit; answers
//! reach it only through the client transaction table, which matches them by branch
//! and by the address the REGISTER went to. Time is the server's injected clock.
//!
//! The registrar is not trusted: a digest answer gives away a function of the
//! provider password, so sipward answers only a challenge for the realm it pinned
//! (the first it learned), only with `qop=auth` (without it the challenger picks the
//! whole input and gets a precomputable MD5 of the password), preferring SHA-256
//! (RFC 8760); it answers at most [`STALE_MAX`] `stale=true` challenges in a row and
//! then backs off; and it believes a granted expiry only up to [`GRANTED_MAX`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sip::digest::Algorithm;
use sip::header::addr::NameAddr;
use sip::header::auth::Challenge;
use sip::header::split_list;
use sip::msg::{Message, Name, StartLine};
use sip::request::{Party, RequestBuilder, TopVia};
use sip::transaction::{Action, ResponseClass, TxId};
use store::trunks::ProviderStatusRow;

use crate::egress::{Delivery, Owner, Purpose};
use crate::flow::{Flow, our_uri};
use crate::proxy::clean_reason;
use crate::signalling::Signalling;
use crate::trunk::ProviderAccount;

/// What sipward asks a provider for.
const REQUESTED_EXPIRES: u32 = 3600;
/// The longest expiry believed from a registrar, whatever it grants: sipward refreshes
/// at half of it at the latest, so a `200` claiming 136 years cannot silence it.
const GRANTED_MAX: u32 = 3600;
/// The shortest time between two refreshes, so that a tiny grant cannot make sipward
/// hammer the registrar.
const REFRESH_MIN: u32 = 15;
/// `stale=true` challenges answered in a row before the registration counts as failed
/// and backs off: a registrar that calls every answer stale is farming digests.
const STALE_MAX: u32 = 3;
/// The longest realm or reason shown in a status detail.
const DETAIL_MAX: usize = 64;
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegState {
    Idle,
    Registering,
    Registered,
    Failed,
}

#[derive(Debug)]
struct Registration {
    account: ProviderAccount,
    call_id: String,
    tag: String,
    cseq: u32,
    tx: Option<TxId>,
    state: RegState,
    /// A challenge was answered for the REGISTER in flight.
    answered: bool,
    /// `stale=true` challenges answered since this REGISTER cycle began.
    stale_answered: u32,
    /// The realm sipward answers challenges for: the first one it learned, pinned for
    /// the life of this registration (a changed account starts a new one).
    realm: Option<String>,
    due: Instant,
    retry: Duration,
    expires: u32,
    detail: String,
    registered_until: i64,
    changed: bool,
}

/// Every provider registration.
#[derive(Debug)]
pub struct ProviderRegistrations {
    sig: Arc<Signalling>,
    regs: Mutex<HashMap<String, Registration>>,
}

/// The expiry the registrar granted our contact: the Contact's `expires` parameter for
/// our user, else the Expires header.
fn granted_expires(m: &Message<'_>, user: &str) -> Option<u32> {
    let from_contact = m
        .headers_named(Name::Contact)
        .flat_map(split_list)
        .filter_map(NameAddr::parse)
        .find(|a| sip::header::addr::SipUri::parse(a.uri).and_then(|u| u.user) == Some(user))
        .and_then(|a| a.param("expires").flatten())
        .and_then(|v| v.trim().parse().ok());
    from_contact.or_else(|| m.header(Name::Expires).and_then(|v| v.trim().parse().ok()))
}

/// What the client does after a final answer to its REGISTER.
#[derive(Debug)]
enum Step {
    /// Send the REGISTER again, answering this challenge in the named header.
    Answer(&'static str, Challenge),
    /// Nothing now: registered, failed (and backing off), or due again at `due`.
    Wait,
}

impl Registration {
    fn new(account: ProviderAccount, call_id: String, tag: String, now: Instant) -> Self {
        Registration {
            call_id,
            tag,
            cseq: 0,
            tx: None,
            state: RegState::Idle,
            answered: false,
            stale_answered: 0,
            realm: None,
            due: now,
            retry: RETRY_FIRST,
            expires: REQUESTED_EXPIRES,
            detail: "not registered yet".into(),
            registered_until: 0,
            changed: true,
            account,
        }
    }

    /// Marks the registration failed and schedules the next try (exponential backoff,
    /// bounded by [`RETRY_MAX`]).
    fn fail(&mut self, detail: String, now: Instant) {
        self.state = RegState::Failed;
        self.detail = detail;
        self.tx = None;
        self.registered_until = 0;
        self.due = now + self.retry;
        self.retry = (self.retry * 2).min(RETRY_MAX);
        self.changed = true;
    }

    /// A final response `code` (`m`) to the REGISTER in flight.
    fn on_final(&mut self, code: u16, m: &Message<'_>, now: Instant, wall: i64) -> Step {
        let reason = match m.start {
            StartLine::Response { reason, .. } => clean_reason(reason),
            StartLine::Request { .. } => String::new(),
        };
        let status = format!("{code} {reason}");
        self.tx = None;
        match code {
            200..=299 => {
                // A grant of 0 or one that is no number is no grant: keep what was asked.
                let granted = granted_expires(m, &self.account.auth_id)
                    .filter(|&g| g > 0)
                    .unwrap_or(self.expires);
                self.expires = granted.min(GRANTED_MAX);
                self.state = RegState::Registered;
                self.detail = status;
                self.registered_until = wall + i64::from(self.expires);
                self.due =
                    now + Duration::from_secs(u64::from((self.expires / 2).max(REFRESH_MIN)));
                self.retry = RETRY_FIRST;
                self.stale_answered = 0;
                self.changed = true;
                Step::Wait
            }
            401 | 407 => self.on_challenge(code, &status, m, now),
            423 => {
                // Interval Too Brief: ask again with the provider's minimum, once per
                // rise (a registrar repeating 423 cannot keep sipward in a loop).
                let min = m
                    .other_header("Min-Expires")
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .filter(|v| (1..=86_400).contains(v));
                match min {
                    Some(min) if min > self.expires => {
                        self.expires = min;
                        self.due = now;
                    }
                    _ => self.fail(status, now),
                }
                Step::Wait
            }
            _ => {
                self.fail(status, now);
                Step::Wait
            }
        }
    }

    /// A 401/407: the challenge sipward answers, if it answers any.
    fn on_challenge(&mut self, code: u16, status: &str, m: &Message<'_>, now: Instant) -> Step {
        let (header, answer) = if code == 401 {
            (Name::WwwAuthenticate, "Authorization")
        } else {
            (Name::ProxyAuthenticate, "Proxy-Authorization")
        };
        match self.choose(m, header) {
            Err(why) => {
                self.fail(format!("{status}: {why}; not answered"), now);
                Step::Wait
            }
            Ok(ch) => {
                if self.answered {
                    if !ch.stale {
                        self.fail(
                            format!("{status}: the provider refused sipward's credentials"),
                            now,
                        );
                        return Step::Wait;
                    }
                    if self.stale_answered >= STALE_MAX {
                        self.fail(
                            format!(
                                "{status}: {} stale challenges in a row; not answered, trying again later",
                                self.stale_answered + 1
                            ),
                            now,
                        );
                        return Step::Wait;
                    }
                    self.stale_answered += 1;
                }
                self.realm.get_or_insert_with(|| ch.realm.clone());
                self.answered = true;
                Step::Answer(answer, ch)
            }
        }
    }

    /// The challenge of `m` (its `header`s) sipward may answer: for the pinned realm
    /// (or, before one is pinned, any), with `qop=auth`, in an algorithm sipward speaks,
    /// SHA-256 before MD5. Otherwise why none is answered.
    fn choose(&self, m: &Message<'_>, header: Name) -> Result<Challenge, String> {
        let offered: Vec<Challenge> = m
            .headers_named(header)
            .take(8)
            .filter_map(|v| Challenge::parse(v).ok())
            .collect();
        if offered.is_empty() {
            return Err("no Digest challenge sipward can read".into());
        }
        let in_realm: Vec<Challenge> = match &self.realm {
            Some(pinned) => offered.into_iter().filter(|c| c.realm == *pinned).collect(),
            None => offered,
        };
        if in_realm.is_empty() {
            let pinned = self.realm.as_deref().unwrap_or_default();
            return Err(format!(
                "a challenge for another realm than \"{}\"",
                clean_reason(pinned)
                    .chars()
                    .take(DETAIL_MAX)
                    .collect::<String>()
            ));
        }
        let with_qop: Vec<Challenge> = in_realm.into_iter().filter(|c| c.qop_auth).collect();
        if with_qop.is_empty() {
            return Err("a challenge without qop=auth (it would give away a precomputable digest of the password)".into());
        }
        let rank = |c: &Challenge| match c.algorithm {
            Some(Algorithm::Sha256) => 0,
            Some(Algorithm::Md5) => 1,
            None => 2,
        };
        with_qop
            .into_iter()
            .filter(|c| c.algorithm.is_some())
            .min_by_key(rank)
            .ok_or_else(|| "a digest algorithm sipward does not speak".into())
    }
}

impl ProviderRegistrations {
    pub fn new(sig: Arc<Signalling>) -> Self {
        Self {
            sig,
            regs: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Registration>> {
        self.regs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the providers loaded: new ones start at once, changed ones start
    /// again, removed ones stop.
    pub fn sync(&self, accounts: Vec<ProviderAccount>) {
        let now = self.sig.clock.instant();
        let mut regs = self.lock();
        let gone: Vec<(String, Option<TxId>)> = regs
            .iter()
            .filter(|(name, r)| !accounts.iter().any(|a| &a.name == *name && *a == r.account))
            .map(|(name, r)| (name.clone(), r.tx))
            .collect();
        for (name, tx) in gone {
            if let Some(tx) = tx {
                self.sig.egress.forget(tx);
            }
            regs.remove(&name);
        }
        for account in accounts {
            regs.entry(account.name.clone()).or_insert_with(|| {
                Registration::new(
                    account,
                    format!("{}@sipward", self.sig.token("reg-call-id")),
                    self.sig.token("reg-tag"),
                    now,
                )
            });
        }
    }

    /// Sends a REGISTER for `r` (with credentials when given).
    fn send(&self, r: &mut Registration, auth: Option<(&str, &str)>) -> bool {
        r.cseq += 1;
        let flow = Flow::udp(r.account.addr);
        let branch = self.sig.branch();
        let domain = &r.account.domain;
        let uri = format!("sip:{domain}");
        let aor = format!("sip:{}@{domain}", r.account.auth_id);
        let contact = our_uri(self.sig.bound_for(&flow), &flow, Some(&r.account.auth_id));
        let expires = r.expires.to_string();
        let mut b = RequestBuilder::new("REGISTER", &uri)
            .via(TopVia::new("UDP", self.sig.local(&flow), &branch))
            .from(Party::new(&aor).tag(&r.tag))
            .to(Party::new(&aor))
            .call_id(&r.call_id)
            .cseq(r.cseq)
            .contact(&contact)
            .header("Expires", &expires)
            .header("User-Agent", "sipward");
        if let Some((name, value)) = auth {
            b = b.header(name, value);
        }
        let Ok(bytes) = b.build() else {
            return false;
        };
        match self
            .sig
            .egress
            .start(bytes, flow, Purpose::Provider, Owner::Provider)
        {
            Ok(tx) => {
                r.tx = Some(tx);
                if r.state != RegState::Registered {
                    r.state = RegState::Registering;
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Registrations due now: new and refreshing REGISTERs.
    pub fn tick(&self, now: Instant) {
        let mut regs = self.lock();
        for r in regs.values_mut() {
            if r.tx.is_none() && now >= r.due {
                r.answered = false;
                r.stale_answered = 0;
                if !self.send(r, None) {
                    r.fail("the REGISTER could not be sent".into(), now);
                }
            }
        }
    }

    /// An output of one of our REGISTER transactions.
    pub fn on_delivery(&self, d: &Delivery, m: Option<&Message<'_>>) {
        let now = self.sig.clock.instant();
        let wall = self.sig.clock.now();
        let mut regs = self.lock();
        let Some(r) = regs.values_mut().find(|r| r.tx == Some(d.tx)) else {
            return;
        };
        match (&d.action, m) {
            (Action::Deliver(ResponseClass::Provisional), _) => {}
            (Action::Deliver(_), Some(m)) => {
                let StartLine::Response { code, .. } = m.start else {
                    return;
                };
                if let Step::Answer(header, ch) = r.on_final(code, m, now, wall) {
                    let uri = format!("sip:{}", r.account.domain);
                    let cnonce = self.sig.token("cnonce");
                    let value = ch.answer(
                        "REGISTER",
                        &uri,
                        &r.account.auth_id,
                        r.account.password.expose(),
                        &cnonce,
                    );
                    let sent = value.is_some_and(|v| self.send(r, Some((header, &v))));
                    if !sent {
                        r.fail("the REGISTER could not be sent".into(), now);
                    }
                }
            }
            (Action::TimedOut | Action::TransportFailed, _) => {
                r.fail("no answer from the provider's registrar".into(), now);
            }
            _ => {}
        }
    }

    /// Registration states that changed since the last call (for the store).
    pub fn take_status(&self, wall_now: i64) -> Vec<ProviderStatusRow> {
        let mut regs = self.lock();
        regs.iter_mut()
            .filter_map(|(name, r)| std::mem::take(&mut r.changed).then_some((name, r)))
            .map(|(name, r)| ProviderStatusRow {
                name: name.clone(),
                state: match r.state {
                    RegState::Idle | RegState::Registering => "registering",
                    RegState::Registered => "registered",
                    RegState::Failed => "failed",
                }
                .into(),
                detail: r.detail.clone(),
                registered_until: r.registered_until,
                updated_at: wall_now,
            })
            .collect()
    }

    /// Whether the provider's registration is up (for tests and the console).
    pub fn registered(&self, name: &str) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|r| r.state == RegState::Registered)
    }
}

#[cfg(test)]
mod tests {
    //! The client against a hostile registrar: crafted final responses fed to the
    //! state machine, on an instant the test chooses.
    use super::*;
    use policy::secret::Secret;

    fn reg(now: Instant) -> Registration {
        let account = ProviderAccount {
            name: "carrier".into(),
            addr: "192.0.2.8:5060".parse().expect("addr"),
            domain: "sip.carrier.example".into(),
            auth_id: "acct-77".into(),
            password: Secret::new("Pv9-secret"),
        };
        Registration::new(account, "c1@sipward".into(), "t1".into(), now)
    }

    fn response(code: u16, headers: &[&str]) -> Vec<u8> {
        let mut t = format!(
            "SIP/2.0 {code} Whatever\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\nFrom: <sip:acct-77@sip.carrier.example>;tag=t1\r\nTo: <sip:acct-77@sip.carrier.example>;tag=r\r\nCall-ID: c1@sipward\r\nCSeq: 1 REGISTER\r\n"
        );
        for h in headers {
            t.push_str(h);
            t.push_str("\r\n");
        }
        t.push_str("Content-Length: 0\r\n\r\n");
        t.into_bytes()
    }

    fn feed(r: &mut Registration, bytes: &[u8], now: Instant) -> Step {
        let m = sip::msg::parse(bytes).expect("parses");
        let StartLine::Response { code, .. } = m.start else {
            panic!("a response");
        };
        r.on_final(code, &m, now, 1_000)
    }

    const GOOD: &str =
        "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"n1\", qop=\"auth\", algorithm=MD5";

    #[test]
    fn the_first_realm_is_pinned_and_another_is_not_answered() {
        let now = Instant::now();
        let mut r = reg(now);
        assert!(
            matches!(feed(&mut r, &response(401, &[GOOD]), now), Step::Answer("Authorization", c) if c.realm == "carrier")
        );
        assert_eq!(r.realm.as_deref(), Some("carrier"));
        // Registered, then a new cycle is challenged for another realm.
        assert!(matches!(
            feed(&mut r, &response(200, &["Expires: 600"]), now),
            Step::Wait
        ));
        r.answered = false;
        let other = "WWW-Authenticate: Digest realm=\"evil\", nonce=\"n2\", qop=\"auth\"";
        assert!(matches!(
            feed(&mut r, &response(401, &[other]), now),
            Step::Wait
        ));
        assert_eq!(r.state, RegState::Failed);
        assert!(r.detail.contains("another realm"), "{}", r.detail);
        assert_eq!(r.realm.as_deref(), Some("carrier"), "the pin holds");
        // Offered next to the pinned one, the pinned realm is answered.
        r.answered = false;
        let both = response(401, &[other, GOOD]);
        assert!(matches!(feed(&mut r, &both, now), Step::Answer(_, c) if c.realm == "carrier"));
    }

    #[test]
    fn a_challenge_without_qop_is_not_answered() {
        let now = Instant::now();
        let mut r = reg(now);
        for bare in [
            "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"n1\"",
            "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"n1\", algorithm=SHA-256",
            "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"n1\", qop=\"auth-int\"",
        ] {
            r.answered = false;
            assert!(
                matches!(feed(&mut r, &response(401, &[bare]), now), Step::Wait),
                "{bare}"
            );
            assert_eq!(r.state, RegState::Failed);
            assert!(r.detail.contains("without qop=auth"), "{}", r.detail);
            assert_eq!(r.realm, None, "nothing learned from a refused challenge");
        }
        // A 407 is treated alike.
        r.answered = false;
        let proxy = response(
            407,
            &["Proxy-Authenticate: Digest realm=\"carrier\", nonce=\"n1\""],
        );
        assert!(matches!(feed(&mut r, &proxy, now), Step::Wait));
    }

    #[test]
    fn sha256_is_preferred_when_both_are_offered() {
        let now = Instant::now();
        let mut r = reg(now);
        let sha = "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"n1\", qop=\"auth\", algorithm=SHA-256";
        for order in [[GOOD, sha], [sha, GOOD]] {
            r.answered = false;
            let step = feed(&mut r, &response(401, &order), now);
            assert!(matches!(step, Step::Answer(_, c) if c.algorithm == Some(Algorithm::Sha256)));
        }
        // MD5 with qop is still answered when it is all there is.
        r.answered = false;
        let step = feed(&mut r, &response(401, &[GOOD]), now);
        assert!(matches!(step, Step::Answer(_, c) if c.algorithm == Some(Algorithm::Md5)));
    }

    #[test]
    fn stale_challenges_are_answered_at_most_stale_max_times_then_back_off() {
        let now = Instant::now();
        let mut r = reg(now);
        let stale =
            "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"s\", qop=\"auth\", stale=true";
        assert!(matches!(
            feed(&mut r, &response(401, &[GOOD]), now),
            Step::Answer(..)
        ));
        let mut answered = 0;
        for _ in 0..20 {
            match feed(&mut r, &response(401, &[stale]), now) {
                Step::Answer(..) => answered += 1,
                Step::Wait => break,
            }
        }
        assert_eq!(answered, STALE_MAX);
        assert_eq!(r.state, RegState::Failed);
        assert!(r.detail.contains("stale"), "{}", r.detail);
        assert_eq!(r.due, now + RETRY_FIRST);
        // Each failure doubles the wait, up to the bound.
        let mut waits = Vec::new();
        for _ in 0..8 {
            r.answered = false;
            r.stale_answered = 0;
            let before = r.retry;
            r.fail("again".into(), now);
            waits.push(before);
            assert_eq!(r.due, now + before);
        }
        assert_eq!(waits[0], RETRY_FIRST * 2);
        assert_eq!(waits[1], RETRY_FIRST * 4);
        assert_eq!(*waits.last().expect("waits"), RETRY_MAX);
        // A non-stale challenge after an answer is a refusal.
        let mut r = reg(now);
        assert!(matches!(
            feed(&mut r, &response(401, &[GOOD]), now),
            Step::Answer(..)
        ));
        assert!(matches!(
            feed(&mut r, &response(401, &[GOOD]), now),
            Step::Wait
        ));
        assert!(r.detail.contains("refused"), "{}", r.detail);
    }

    #[test]
    fn a_granted_expiry_is_clamped_and_refreshed_before_it_runs_out() {
        let now = Instant::now();
        for (grant, held) in [
            ("Expires: 4294967295", GRANTED_MAX),
            ("Expires: 99999999999999", REQUESTED_EXPIRES),
            ("Expires: 0", REQUESTED_EXPIRES),
            ("Expires: soon", REQUESTED_EXPIRES),
            (
                "Contact: <sip:acct-77@192.0.2.1>;expires=4294967295",
                GRANTED_MAX,
            ),
            ("Expires: 120", 120),
        ] {
            let mut r = reg(now);
            assert!(matches!(
                feed(&mut r, &response(200, &[grant]), now),
                Step::Wait
            ));
            assert_eq!(r.state, RegState::Registered, "{grant}");
            assert_eq!(r.expires, held, "{grant}");
            assert_eq!(r.registered_until, 1_000 + i64::from(held), "{grant}");
            assert_eq!(
                r.due,
                now + Duration::from_secs(u64::from(held / 2)),
                "{grant}"
            );
        }
        // Without any expiry, the requested one.
        let mut r = reg(now);
        feed(&mut r, &response(200, &[]), now);
        assert_eq!(r.expires, REQUESTED_EXPIRES);
        // A tiny grant is refreshed no more often than every REFRESH_MIN.
        let mut r = reg(now);
        feed(&mut r, &response(200, &["Expires: 2"]), now);
        assert_eq!(r.due, now + Duration::from_secs(u64::from(REFRESH_MIN)));
    }

    #[test]
    fn a_repeated_423_cannot_loop() {
        let now = Instant::now();
        let mut r = reg(now);
        feed(&mut r, &response(423, &["Min-Expires: 7200"]), now);
        assert_eq!((r.expires, r.state), (7200, RegState::Idle));
        feed(&mut r, &response(423, &["Min-Expires: 7200"]), now);
        assert_eq!(r.state, RegState::Failed);
    }
}
