//! The registrar's bindings (RFC 3261 §10.3): per extension, several contacts, each with
//! its Call-ID, CSeq, expiry and the flow the REGISTER came on. That flow, not the
//! Contact's host and port (which a phone writes as it likes), is where sipward reaches
//! the phone: calls, NOTIFYs and OPTIONS go there and nowhere else. Kept in memory for
//! speed; changed extensions are marked dirty and written behind to the store, from
//! which they are loaded at start, so registrations survive a restart. All time is
//! passed in (epoch seconds), so the state machine is tested without sleeping.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;

use serde::Deserialize;
use store::bindings::BindingRow;

use crate::flow::Flow;
pub use crate::flow::TransportKind;

/// Registration intervals and limits (the `[registrar]` table of the config file).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    /// Shorter non-zero intervals are refused with 423 and `Min-Expires`.
    pub min_expires: u32,
    /// Longer intervals are shortened to this.
    pub max_expires: u32,
    /// Used when the request names no interval.
    pub default_expires: u32,
    /// Contacts per extension.
    pub max_contacts: usize,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_contacts: 10,
        }
    }
}

impl RegistrarConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.min_expires == 0 || self.min_expires > self.max_expires {
            return Err(
                "registrar.min_expires must be at least 1 and at most registrar.max_expires".into(),
            );
        }
        if !(self.min_expires..=self.max_expires).contains(&self.default_expires) {
            return Err(
                "registrar.default_expires must lie between min_expires and max_expires".into(),
            );
        }
        if !(1..=100).contains(&self.max_contacts) {
            return Err("registrar.max_contacts must be between 1 and 100".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub contact: String,
    pub call_id: String,
    pub cseq: u32,
    pub expires_at: i64,
    /// Where the REGISTER came from: how the phone is reached.
    pub flow: Flow,
}

/// The Contact part of a REGISTER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contacts {
    /// No Contact header: a query.
    None,
    /// `Contact: *` (only valid with `Expires: 0`).
    Star,
    /// Contact URIs with their `expires` parameter, if any.
    List(Vec<(String, Option<u32>)>),
}

#[derive(Clone, Debug)]
pub struct RegisterRequest {
    pub call_id: String,
    pub cseq: u32,
    pub contacts: Contacts,
    pub expires_header: Option<u32>,
    /// The flow the REGISTER came on.
    pub flow: Flow,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// 400: `*` with a non-zero expiry or with other contacts.
    BadStar,
    /// 423 Interval Too Brief, with `Min-Expires`.
    IntervalTooBrief { min: u32 },
    /// 500: a request older than (or equal to) the binding's last CSeq for the same Call-ID.
    OutOfOrder,
    /// 403: more contacts than allowed.
    TooManyContacts,
}

/// A current binding as the 200 OK lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    pub contact: String,
    pub expires_in: u32,
}

#[derive(Debug, Default)]
struct State {
    by_number: HashMap<String, Vec<Binding>>,
    dirty: HashSet<String>,
}

#[derive(Debug)]
pub struct Registrar {
    cfg: RegistrarConfig,
    state: Mutex<State>,
}

impl Registrar {
    pub fn new(cfg: RegistrarConfig) -> Self {
        Self {
            cfg,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a REGISTER for `number` at time `now` and returns the bindings now current.
    /// Nothing changes unless the whole request is valid.
    pub fn register(
        &self,
        number: &str,
        req: &RegisterRequest,
        now: i64,
    ) -> Result<Vec<Current>, RegisterError> {
        let mut st = self.lock();
        let existing = st.by_number.get(number).cloned().unwrap_or_default();
        let mut next: Vec<Binding> = existing
            .iter()
            .filter(|b| b.expires_at > now)
            .cloned()
            .collect();
        let mut changed = next.len() != existing.len();
        match &req.contacts {
            Contacts::None => {}
            Contacts::Star => {
                if req.expires_header != Some(0) {
                    return Err(RegisterError::BadStar);
                }
                for b in &next {
                    if b.call_id == req.call_id && req.cseq <= b.cseq {
                        return Err(RegisterError::OutOfOrder);
                    }
                }
                changed |= !next.is_empty();
                next.clear();
            }
            Contacts::List(list) => {
                for (uri, param) in list {
                    let expires = param
                        .or(req.expires_header)
                        .unwrap_or(self.cfg.default_expires);
                    if expires != 0 && expires < self.cfg.min_expires {
                        return Err(RegisterError::IntervalTooBrief {
                            min: self.cfg.min_expires,
                        });
                    }
                    let expires = expires.min(self.cfg.max_expires);
                    let pos = next.iter().position(|b| b.contact == *uri);
                    // Ordering is judged against the binding as it was before this
                    // request (a contact listed twice must not collide with itself).
                    let before = existing
                        .iter()
                        .find(|b| b.contact == *uri && b.expires_at > now);
                    if before.is_some_and(|b| b.call_id == req.call_id && req.cseq <= b.cseq) {
                        return Err(RegisterError::OutOfOrder);
                    }
                    match (pos, expires) {
                        (Some(i), 0) => {
                            next.remove(i);
                        }
                        (None, 0) => {}
                        (pos, e) => {
                            let b = Binding {
                                contact: uri.clone(),
                                call_id: req.call_id.clone(),
                                cseq: req.cseq,
                                expires_at: now + i64::from(e),
                                flow: req.flow,
                            };
                            match pos {
                                Some(i) => next[i] = b,
                                None => next.push(b),
                            }
                        }
                    }
                    changed = true;
                }
                if next.len() > self.cfg.max_contacts {
                    return Err(RegisterError::TooManyContacts);
                }
            }
        }
        let current = next
            .iter()
            .map(|b| Current {
                contact: b.contact.clone(),
                expires_in: u32::try_from(b.expires_at - now).unwrap_or(0),
            })
            .collect();
        if changed {
            if next.is_empty() {
                st.by_number.remove(number);
            } else {
                st.by_number.insert(number.to_owned(), next);
            }
            st.dirty.insert(number.to_owned());
        }
        Ok(current)
    }

    /// Drops expired bindings; returns how many.
    pub fn sweep(&self, now: i64) -> usize {
        let mut st = self.lock();
        let mut removed = 0;
        let mut emptied = Vec::new();
        let mut touched = Vec::new();
        for (number, list) in st.by_number.iter_mut() {
            let before = list.len();
            list.retain(|b| b.expires_at > now);
            if list.len() != before {
                removed += before - list.len();
                touched.push(number.clone());
                if list.is_empty() {
                    emptied.push(number.clone());
                }
            }
        }
        for n in emptied {
            st.by_number.remove(&n);
        }
        st.dirty.extend(touched);
        removed
    }

    /// The current bindings of one extension.
    pub fn bindings(&self, number: &str, now: i64) -> Vec<Binding> {
        self.lock()
            .by_number
            .get(number)
            .map(|l| l.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default()
    }

    /// Whether a current binding of `number` came on `flow`: what the egress rule asks
    /// before anything is sent to a phone.
    pub fn has_flow(&self, number: &str, flow: &Flow, now: i64) -> bool {
        self.lock().by_number.get(number).is_some_and(|l| {
            l.iter()
                .any(|b| b.expires_at > now && b.flow.same_peer(flow))
        })
    }

    /// The flows the current bindings of `number` came on, each once, newest binding
    /// first (where a call to the extension forks to).
    pub fn flows(&self, number: &str, now: i64) -> Vec<(String, Flow)> {
        let st = self.lock();
        let mut out: Vec<(String, Flow)> = Vec::new();
        if let Some(list) = st.by_number.get(number) {
            let mut live: Vec<&Binding> = list.iter().filter(|b| b.expires_at > now).collect();
            live.sort_by_key(|b| std::cmp::Reverse(b.expires_at));
            for b in live {
                if !out.iter().any(|(_, f)| f.same_peer(&b.flow)) {
                    out.push((b.contact.clone(), b.flow));
                }
            }
        }
        out
    }

    pub fn binding_count(&self) -> usize {
        self.lock().by_number.values().map(Vec::len).sum()
    }

    /// Takes the extensions changed since the last call, with their bindings as rows.
    pub fn take_dirty(&self) -> Vec<(String, Vec<BindingRow>)> {
        let mut st = self.lock();
        let dirty: Vec<String> = st.dirty.drain().collect();
        dirty
            .into_iter()
            .map(|n| {
                let rows = st
                    .by_number
                    .get(&n)
                    .map(|l| l.iter().map(|b| to_row(&n, b)).collect())
                    .unwrap_or_default();
                (n, rows)
            })
            .collect()
    }

    /// Marks extensions dirty again (a write-behind that failed will be retried).
    pub fn mark_dirty(&self, numbers: impl IntoIterator<Item = String>) {
        self.lock().dirty.extend(numbers);
    }

    /// Loads persisted bindings at start (rows that do not parse are skipped).
    pub fn load(&self, rows: Vec<BindingRow>) -> usize {
        let mut st = self.lock();
        let mut n = 0;
        for r in rows {
            let (Ok(source), Ok(cseq)) = (r.source.parse::<SocketAddr>(), u32::try_from(r.cseq))
            else {
                continue;
            };
            // A stream's connection did not survive the restart: such a phone is
            // reached again once it registers again on a new one.
            let transport = if r.transport == "tcp" {
                TransportKind::Tcp
            } else {
                TransportKind::Udp
            };
            let b = Binding {
                contact: r.contact,
                call_id: r.call_id,
                cseq,
                expires_at: r.expires_at,
                flow: Flow {
                    transport,
                    remote: source,
                    conn: None,
                },
            };
            st.by_number.entry(r.number).or_default().push(b);
            n += 1;
        }
        n
    }
}

fn to_row(number: &str, b: &Binding) -> BindingRow {
    BindingRow {
        number: number.to_owned(),
        contact: b.contact.clone(),
        call_id: b.call_id.clone(),
        cseq: i64::from(b.cseq),
        expires_at: b.expires_at,
        source: b.flow.remote.to_string(),
        transport: b.flow.transport.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(call_id: &str, cseq: u32, contacts: Contacts, expires: Option<u32>) -> RegisterRequest {
        RegisterRequest {
            call_id: call_id.into(),
            cseq,
            contacts,
            expires_header: expires,
            flow: Flow::udp("127.0.0.1:5062".parse().expect("addr")),
        }
    }

    fn list(items: &[(&str, Option<u32>)]) -> Contacts {
        Contacts::List(items.iter().map(|(u, e)| (u.to_string(), *e)).collect())
    }

    #[test]
    fn register_refresh_query_and_remove() {
        let r = Registrar::new(RegistrarConfig::default());
        let cur = r
            .register(
                "1001",
                &req("c1", 1, list(&[("sip:a@h", None)]), Some(120)),
                1000,
            )
            .expect("ok");
        assert_eq!(
            cur,
            vec![Current {
                contact: "sip:a@h".into(),
                expires_in: 120
            }]
        );
        // A second contact with its own expires parameter.
        let cur = r
            .register(
                "1001",
                &req("c2", 1, list(&[("sip:b@h", Some(300))]), None),
                1010,
            )
            .expect("ok");
        assert_eq!(cur.len(), 2);
        // A query lists both without changing anything.
        let q = r
            .register("1001", &req("c3", 1, Contacts::None, None), 1020)
            .expect("query");
        assert_eq!(
            q.iter().map(|c| c.expires_in).collect::<Vec<_>>(),
            vec![100, 290]
        );
        // Refresh with a higher CSeq; out-of-order CSeq is refused.
        assert_eq!(
            r.register(
                "1001",
                &req("c1", 1, list(&[("sip:a@h", None)]), Some(120)),
                1030
            ),
            Err(RegisterError::OutOfOrder)
        );
        r.register(
            "1001",
            &req("c1", 2, list(&[("sip:a@h", None)]), Some(120)),
            1030,
        )
        .expect("refresh");
        // Expires 0 removes one binding.
        let cur = r
            .register(
                "1001",
                &req("c2", 2, list(&[("sip:b@h", Some(0))]), None),
                1040,
            )
            .expect("remove");
        assert_eq!(cur.len(), 1);
        // Star removes all.
        let cur = r
            .register("1001", &req("c9", 1, Contacts::Star, Some(0)), 1050)
            .expect("star");
        assert!(cur.is_empty());
        assert_eq!(r.binding_count(), 0);
    }

    #[test]
    fn a_contact_listed_twice_is_one_binding() {
        let r = Registrar::new(RegistrarConfig::default());
        let twice = list(&[("sip:a@h", Some(120)), ("sip:a@h", Some(300))]);
        let cur = r
            .register("1001", &req("c", 1, twice, None), 0)
            .expect("ok");
        assert_eq!(
            cur,
            vec![Current {
                contact: "sip:a@h".into(),
                expires_in: 300
            }],
            "the last one wins"
        );
    }

    #[test]
    fn intervals_and_limits() {
        let cfg = RegistrarConfig {
            max_contacts: 2,
            ..Default::default()
        };
        let r = Registrar::new(cfg);
        assert_eq!(
            r.register(
                "1001",
                &req("c", 1, list(&[("sip:a@h", None)]), Some(30)),
                0
            ),
            Err(RegisterError::IntervalTooBrief { min: 60 })
        );
        assert_eq!(r.binding_count(), 0, "nothing changed");
        let cur = r
            .register(
                "1001",
                &req("c", 2, list(&[("sip:a@h", None)]), Some(999_999)),
                0,
            )
            .expect("clamped");
        assert_eq!(cur[0].expires_in, 3600);
        let cur = r
            .register("1001", &req("d", 1, list(&[("sip:b@h", None)]), None), 0)
            .expect("default");
        assert_eq!(cur[1].expires_in, 3600);
        assert_eq!(
            r.register("1001", &req("e", 1, list(&[("sip:c@h", None)]), None), 0),
            Err(RegisterError::TooManyContacts)
        );
        assert_eq!(
            r.register("1001", &req("f", 1, Contacts::Star, Some(60)), 0),
            Err(RegisterError::BadStar)
        );
        assert_eq!(
            r.register("1001", &req("f", 1, Contacts::Star, None), 0),
            Err(RegisterError::BadStar)
        );
        assert_eq!(r.binding_count(), 2);
    }

    #[test]
    fn expiry_and_write_behind() {
        let r = Registrar::new(RegistrarConfig::default());
        r.register(
            "1001",
            &req("c", 1, list(&[("sip:a@h", Some(60))]), None),
            0,
        )
        .expect("ok");
        r.register(
            "1002",
            &req("c", 1, list(&[("sip:b@h", Some(600))]), None),
            0,
        )
        .expect("ok");
        let dirty = r.take_dirty();
        assert_eq!(dirty.len(), 2);
        assert!(r.take_dirty().is_empty(), "taken");
        assert_eq!(r.sweep(59), 0);
        assert_eq!(r.sweep(60), 1, "expires exactly on time");
        assert!(r.bindings("1001", 60).is_empty());
        let dirty = r.take_dirty();
        assert_eq!(
            dirty,
            vec![("1001".to_string(), vec![])],
            "the removal is written behind too"
        );
        // Rows load back into a fresh registrar.
        let rows: Vec<BindingRow> = r
            .bindings("1002", 60)
            .iter()
            .map(|b| to_row("1002", b))
            .collect();
        let fresh = Registrar::new(RegistrarConfig::default());
        assert_eq!(fresh.load(rows), 1);
        assert_eq!(fresh.bindings("1002", 60).len(), 1);
    }

    #[test]
    fn config_validation() {
        assert!(RegistrarConfig::default().validate().is_ok());
        assert!(
            RegistrarConfig {
                min_expires: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            RegistrarConfig {
                default_expires: 10,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            RegistrarConfig {
                max_contacts: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn a_phone_is_reached_on_the_flow_it_registered_from_never_at_its_contact() {
        let r = Registrar::new(RegistrarConfig::default());
        let phone = Flow::udp("127.0.0.1:5062".parse().expect("addr"));
        let contact = Flow::udp("10.1.2.3:5060".parse().expect("addr"));
        assert!(!r.has_flow("1001", &phone, 0));
        r.register(
            "1001",
            &req("a", 1, list(&[("sip:1001@10.1.2.3:5060", Some(60))]), None),
            0,
        )
        .expect("register");
        assert!(r.has_flow("1001", &phone, 0), "the source");
        assert!(!r.has_flow("1001", &contact, 0), "never the Contact's host");
        assert!(!r.has_flow("1002", &phone, 0), "only for its own extension");
        assert_eq!(
            r.flows("1001", 0),
            vec![("sip:1001@10.1.2.3:5060".to_string(), phone)]
        );
        // Moved: the old flow is forgotten.
        let mut moved = req("a", 2, list(&[("sip:1001@10.1.2.3:5060", Some(60))]), None);
        moved.flow = Flow::udp("127.0.0.7:5062".parse().expect("addr"));
        r.register("1001", &moved, 0).expect("moved");
        assert!(!r.has_flow("1001", &phone, 0));
        assert!(r.has_flow("1001", &moved.flow, 0));
        // Expired.
        assert!(!r.has_flow("1001", &moved.flow, 60));
        assert_eq!(r.sweep(100), 1);
        assert!(r.flows("1001", 100).is_empty());
    }
}
