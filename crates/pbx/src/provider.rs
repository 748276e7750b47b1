//! The registration client that keeps sipward registered at each VoIP provider
//! (RFC 3261 §10.2 as a UAC): a REGISTER in a non-INVITE client transaction of
//! `sip::transaction` (retransmission and Timer F come from it), a digest answer to one
//! 401/407, a refresh at half the granted time, backoff after a failure. Sent only to a
//! configured provider's registrar, under the egress rule's provider permit. Time is the
//! server's injected clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
            regs.entry(account.name.clone())
                .or_insert_with(|| Registration {
                    call_id: format!("{}@sipward", self.sig.token("reg-call-id")),
                    tag: self.sig.token("reg-tag"),
                    cseq: 0,
                    tx: None,
                    state: RegState::Idle,
                    answered: false,
                    due: now,
                    retry: RETRY_FIRST,
                    expires: REQUESTED_EXPIRES,
                    detail: "not registered yet".into(),
                    registered_until: 0,
                    changed: true,
                    account,
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
        let contact = our_uri(self.sig.bound, &flow, Some(&r.account.auth_id));
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

    fn failed(r: &mut Registration, detail: String, now: Instant) {
        r.state = RegState::Failed;
        r.detail = detail;
        r.tx = None;
        r.registered_until = 0;
        r.due = now + r.retry;
        r.retry = (r.retry * 2).min(RETRY_MAX);
        r.changed = true;
    }

    /// Registrations due now: new and refreshing REGISTERs.
    pub fn tick(&self, now: Instant) {
        let mut regs = self.lock();
        for r in regs.values_mut() {
            if r.tx.is_none() && now >= r.due {
                r.answered = false;
                if !self.send(r, None) {
                    Self::failed(r, "the REGISTER could not be sent".into(), now);
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
                let StartLine::Response { code, reason } = m.start else {
                    return;
                };
                let status = format!("{code} {}", clean_reason(reason));
                r.tx = None;
                match code {
                    200..=299 => {
                        let granted = granted_expires(m, &r.account.auth_id).unwrap_or(r.expires);
                        r.expires = granted.clamp(1, 86_400);
                        r.state = RegState::Registered;
                        r.detail = status;
                        r.registered_until = wall + i64::from(r.expires);
                        // Refresh at half the granted time (never more often than every 15 s).
                        r.due = now + Duration::from_secs(u64::from((r.expires / 2).max(15)));
                        r.retry = RETRY_FIRST;
                        r.changed = true;
                    }
                    401 | 407 => {
                        let (header, answer) = if code == 401 {
                            (Name::WwwAuthenticate, "Authorization")
                        } else {
                            (Name::ProxyAuthenticate, "Proxy-Authorization")
                        };
                        let challenge = m.header(header).and_then(|v| Challenge::parse(v).ok());
                        let stale = challenge.as_ref().is_some_and(|c| c.stale);
                        let Some(ch) = challenge.filter(|_| !r.answered || stale) else {
                            Self::failed(
                                r,
                                format!("{status}: the provider refused sipward's credentials"),
                                now,
                            );
                            return;
                        };
                        let uri = format!("sip:{}", r.account.domain);
                        let cnonce = self.sig.token("cnonce");
                        let Some(value) = ch.answer(
                            "REGISTER",
                            &uri,
                            &r.account.auth_id,
                            r.account.password.expose(),
                            &cnonce,
                        ) else {
                            Self::failed(
                                r,
                                format!(
                                    "{status}: the provider asks for a digest algorithm sipward does not speak"
                                ),
                                now,
                            );
                            return;
                        };
                        r.answered = true;
                        if !self.send(r, Some((answer, &value))) {
                            Self::failed(r, "the REGISTER could not be sent".into(), now);
                        }
                    }
                    423 => {
                        // Interval Too Brief: ask again with the provider's minimum.
                        let min = m
                            .other_header("Min-Expires")
                            .and_then(|v| v.trim().parse::<u32>().ok())
                            .filter(|v| (1..=86_400).contains(v));
                        match min {
                            Some(min) => {
                                r.expires = min;
                                r.due = now;
                            }
                            None => Self::failed(r, status, now),
                        }
                    }
                    _ => Self::failed(r, status, now),
                }
            }
            (Action::TimedOut | Action::TransportFailed, _) => {
                Self::failed(r, "no answer from the provider's registrar".into(), now);
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
