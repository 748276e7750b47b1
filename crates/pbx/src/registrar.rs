//! The registrar's bindings (RFC 3261 §10.3): per extension, several contacts, each with
//! its Call-ID, CSeq, expiry, the credential generation of the login that made it, and
//! the flow the REGISTER came on. That flow, not the Contact's host and port (which a
//! phone writes as it likes), is where sipward reaches the phone: calls, NOTIFYs and
//! OPTIONS go there and nowhere else. Kept in memory for speed and written to the
//! store, from which they are loaded at start, so registrations survive a restart. All
//! time is passed in (epoch seconds), so the state machine is tested without sleeping.
//!
//! Durability: a new or moved binding (a contact not bound before, or bound from
//! another flow or login) and a removal are written before their `200` is sent:
//! [`Registrar::register`] hands back a [`Durable`] ticket for the group commit that
//! will carry the change, and the answer waits for it. Refreshes of an unchanged
//! binding stay write-behind, and are written only once the stored expiry has used up
//! half its granted time: losing one in a crash costs nothing but an older expiry that
//! still outlives the phone's next refresh.
//!
//! Revocation: [`Registrar::reconcile`] drops every binding no credentials back any more
//! (the extension is gone, or its credentials changed and no grace window keeps it).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use serde::Deserialize;
use store::bindings::BindingRow;
use tokio::sync::{Notify, watch};

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

/// The longest registration interval a config may grant (a day).
pub const MAX_EXPIRES_CEILING: u32 = 86_400;

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
        // A binding lives in the running registrar until its own expiry when nothing
        // else drops it: a day is the longest a phone may go without proving it is
        // still there (phones refresh every hour or less).
        if self.max_expires > MAX_EXPIRES_CEILING {
            return Err(format!(
                "registrar.max_expires must be at most {MAX_EXPIRES_CEILING} seconds (a day): a longer binding outlives whatever dropped its credentials"
            ));
        }
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
    /// The credential generation of the login that made it.
    pub generation: i64,
    /// The expiry the store holds for it (0: not written yet). A refresh from the same
    /// place is written only once the stored expiry has used up half the granted time,
    /// so that a restart still finds the binding alive until the phone's next refresh
    /// without a write for every refresh.
    pub stored_until: i64,
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
    /// The credential generation of the login that authenticated it (see
    /// [`crate::directory::Account::generation`]).
    pub generation: i64,
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

/// What a REGISTER that was applied comes to.
#[derive(Debug)]
pub struct Registered {
    /// The bindings now current, for the 200.
    pub current: Vec<Current>,
    /// Present when the change must be in the store before the 200 goes out.
    pub durable: Option<Durable>,
}

/// A wait for the group commit that carries a change: the answer to the REGISTER that
/// made it is sent once [`Durable::wait`] returns true.
#[derive(Debug)]
pub struct Durable {
    batch: u64,
    committed: watch::Receiver<u64>,
}

impl Durable {
    /// Waits until the change is in the store: true then, false when the registrar
    /// stopped committing (shutdown) first.
    pub async fn wait(mut self) -> bool {
        let batch = self.batch;
        self.committed.wait_for(|c| *c >= batch).await.is_ok()
    }
}

/// Extensions changed since the last write, taken together as one batch (group commit).
#[derive(Debug, Default)]
pub struct Batch {
    /// Identifies the batch: [`Registrar::committed`] with this id releases the answers
    /// waiting for it (and for every earlier batch).
    pub id: u64,
    /// Each changed extension with its bindings as rows (an empty list removes them).
    pub rows: Vec<(String, Vec<BindingRow>)>,
}

#[derive(Debug, Default)]
struct State {
    by_number: HashMap<String, Vec<Binding>>,
    dirty: HashSet<String>,
    /// Extensions with a new, moved or removed binding that is not in the store yet, and
    /// the batch that will carry it: their answers wait (a refresh of one waits too).
    unwritten: HashMap<String, u64>,
    /// The batch now collecting changes (ids start at 1).
    batch: u64,
    /// How many bindings were made from each source address (their REGISTER answered
    /// a nonce sent there): the addresses the guard must never ban on a forged signal.
    sources: HashMap<IpAddr, u32>,
}

impl State {
    fn count_sources(&mut self, list: &[Binding], add: bool) {
        for b in list {
            let ip = b.flow.remote.ip();
            if add {
                *self.sources.entry(ip).or_default() += 1;
            } else if let Some(n) = self.sources.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.sources.remove(&ip);
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct Registrar {
    cfg: RegistrarConfig,
    state: Mutex<State>,
    /// The highest batch in the store; answers waiting for a batch watch it.
    committed: watch::Sender<u64>,
    /// Woken when a change waits for its write, so the writer starts a group commit.
    urgent: Notify,
}

impl Registrar {
    pub fn new(cfg: RegistrarConfig) -> Self {
        Self {
            cfg,
            state: Mutex::new(State {
                batch: 1,
                ..State::default()
            }),
            committed: watch::Sender::new(0),
            urgent: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a REGISTER for `number` at time `now` and returns the bindings now current,
    /// with a [`Durable`] ticket when the change must be written before the answer.
    /// Nothing changes unless the whole request is valid.
    pub fn register(
        &self,
        number: &str,
        req: &RegisterRequest,
        now: i64,
    ) -> Result<Registered, RegisterError> {
        let mut st = self.lock();
        let existing = st.by_number.get(number).cloned().unwrap_or_default();
        let mut next: Vec<Binding> = existing
            .iter()
            .filter(|b| b.expires_at > now)
            .cloned()
            .collect();
        let mut changed = next.len() != existing.len();
        // A change the store must hold before the answer: a binding added, moved (other
        // source, transport or login) or removed.
        let mut must_write = false;
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
                must_write |= !next.is_empty();
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
                            must_write = true;
                        }
                        (None, 0) => {}
                        (pos, e) => {
                            let b = Binding {
                                contact: uri.clone(),
                                call_id: req.call_id.clone(),
                                cseq: req.cseq,
                                expires_at: now + i64::from(e),
                                flow: req.flow,
                                generation: req.generation,
                                stored_until: 0,
                            };
                            let same_place = pos.is_some_and(|i| {
                                let o = &next[i];
                                // What the store keeps: a TCP phone on a new
                                // connection is reached on it at once, but the
                                // stored row does not change.
                                o.flow.remote == b.flow.remote
                                    && o.flow.transport == b.flow.transport
                                    && o.generation == b.generation
                            });
                            must_write |= !same_place;
                            let b = Binding {
                                stored_until: pos
                                    .filter(|_| same_place)
                                    .map_or(0, |i| next[i].stored_until),
                                ..b
                            };
                            match pos {
                                Some(i) => next[i] = b,
                                None => next.push(b),
                            }
                        }
                    }
                    changed = true;
                }
                // Over the cap, bindings whose connection is gone give way first,
                // oldest first: nothing can reach them (a stream flow is only ever
                // reached on its own connection), and a phone that reconnects for each
                // registration (a new port, so a new Contact) would otherwise fill its
                // contacts with dead ones and be refused until they expire, an hour on.
                while next.len() > self.cfg.max_contacts {
                    let dead = next
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| b.flow.transport.is_stream() && b.flow.conn.is_none())
                        .min_by_key(|(_, b)| b.expires_at)
                        .map(|(i, _)| i);
                    let Some(i) = dead else {
                        return Err(RegisterError::TooManyContacts);
                    };
                    next.remove(i);
                    must_write = true;
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
        // A refresh of an extension whose earlier change is not written yet waits for
        // that write too: its 200 must not claim more than the store holds.
        let waits = must_write || st.unwritten.contains_key(number);
        if changed {
            // A refresh from the same place (the common case on this hot path) moves no
            // source: only recount when contacts or sources moved.
            let same_places = existing.len() == next.len()
                && existing
                    .iter()
                    .zip(&next)
                    .all(|(a, b)| a.contact == b.contact && a.flow.remote == b.flow.remote);
            if !same_places {
                st.count_sources(&existing, false);
                st.count_sources(&next, true);
            }
            // Written behind: a change, an expired binding gone, or a stored expiry that
            // has used up half its time; a refresh of a recently stored binding is not.
            let lapsing = next
                .iter()
                .any(|b| b.stored_until.saturating_sub(now).saturating_mul(2) < b.expires_at - now);
            let write = must_write || lapsing || next.len() != existing.len();
            if next.is_empty() {
                st.by_number.remove(number);
            } else {
                st.by_number.insert(number.to_owned(), next);
            }
            if write {
                st.dirty.insert(number.to_owned());
            }
        }
        let durable = if waits {
            let batch = st.batch;
            st.unwritten.insert(number.to_owned(), batch);
            st.dirty.insert(number.to_owned());
            drop(st);
            self.urgent.notify_one();
            Some(Durable {
                batch,
                committed: self.committed.subscribe(),
            })
        } else {
            None
        };
        Ok(Registered { current, durable })
    }

    /// Resolves when a change waits for its write (at once if one has since the last
    /// call): the writer then gathers a batch and commits it.
    pub async fn urgent(&self) {
        self.urgent.notified().await;
    }

    /// Drops the bindings `backed` says no credentials back any more (called with the
    /// number and the binding); returns the numbers that lost bindings. Their removal is
    /// written like any other change.
    pub fn reconcile(&self, backed: impl Fn(&str, &Binding) -> bool) -> Vec<String> {
        let mut st = self.lock();
        let mut touched = Vec::new();
        let mut gone = Vec::new();
        for (number, list) in st.by_number.iter_mut() {
            let before = list.len();
            gone.extend(list.iter().filter(|b| !backed(number, b)).cloned());
            list.retain(|b| backed(number, b));
            if list.len() != before {
                touched.push(number.clone());
            }
        }
        if touched.is_empty() {
            return touched;
        }
        st.by_number.retain(|_, l| !l.is_empty());
        st.count_sources(&gone, false);
        st.dirty.extend(touched.iter().cloned());
        touched.sort();
        touched
    }

    /// Drops expired bindings; returns how many.
    pub fn sweep(&self, now: i64) -> usize {
        let mut st = self.lock();
        let mut removed = 0;
        let mut emptied = Vec::new();
        let mut touched = Vec::new();
        let mut gone = Vec::new();
        for (number, list) in st.by_number.iter_mut() {
            let before = list.len();
            gone.extend(list.iter().filter(|b| b.expires_at <= now).cloned());
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
        st.count_sources(&gone, false);
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
            // A stream flow whose connection is gone reaches nobody: it is skipped until
            // the phone registers again on a new connection.
            for b in live.into_iter().filter(|b| b.flow.reachable()) {
                if !out.iter().any(|(_, f)| f.same_peer(&b.flow)) {
                    out.push((b.contact.clone(), b.flow));
                }
            }
        }
        out
    }

    /// A connection closed: the bindings made on it are unreachable until their phone
    /// registers again (they stay, with their expiry, so the phone's next refresh on a
    /// new connection is a move, and the store keeps its row).
    pub fn connection_closed(&self, conn: crate::flow::ConnId) {
        let mut st = self.lock();
        for list in st.by_number.values_mut() {
            for b in list.iter_mut().filter(|b| b.flow.conn == Some(conn)) {
                b.flow.conn = None;
            }
        }
    }

    /// Whether a current binding was registered from this source address.
    pub fn registered_from(&self, ip: IpAddr) -> bool {
        self.lock().sources.contains_key(&ip)
    }

    /// The write-behind backlog: extensions whose bindings changed and are not written
    /// yet, and how many of them have an answer waiting for the write.
    pub fn backlog(&self) -> (usize, usize) {
        let st = self.lock();
        (st.dirty.len(), st.unwritten.len())
    }

    /// The sizes of the registrar's tables, for `/metrics`.
    pub fn table_sizes(&self) -> [(&'static str, usize); 2] {
        let st = self.lock();
        [
            ("registered_extensions", st.by_number.len()),
            ("registration_sources", st.sources.len()),
        ]
    }

    pub fn binding_count(&self) -> usize {
        self.lock().by_number.values().map(Vec::len).sum()
    }

    /// Takes the extensions changed since the last call, with their bindings as rows,
    /// as one batch; the next changes go into the next batch.
    pub fn take_dirty(&self) -> Batch {
        let mut st = self.lock();
        let id = st.batch;
        st.batch += 1;
        let dirty: Vec<String> = st.dirty.drain().collect();
        let rows = dirty
            .into_iter()
            .map(|n| {
                let rows = match st.by_number.get_mut(&n) {
                    Some(l) => l
                        .iter_mut()
                        .map(|b| {
                            // Optimistic: a failed write marks the extension dirty again.
                            b.stored_until = b.expires_at;
                            to_row(&n, b)
                        })
                        .collect(),
                    None => Vec::new(),
                };
                (n, rows)
            })
            .collect();
        Batch { id, rows }
    }

    /// The batch `id` (and every one before it) is in the store: the answers waiting
    /// for it go out.
    pub fn committed(&self, id: u64) {
        let mut st = self.lock();
        st.unwritten.retain(|_, b| *b > id);
        drop(st);
        self.committed.send_if_modified(|c| {
            let moved = id > *c;
            *c = (*c).max(id);
            moved
        });
    }

    /// A batch could not be written: its extensions go into the batch now collecting
    /// (answers waiting for them wait on, until a later batch carries them).
    pub fn mark_dirty(&self, numbers: impl IntoIterator<Item = String>) {
        let mut st = self.lock();
        let batch = st.batch;
        for n in numbers {
            if let Some(b) = st.unwritten.get_mut(&n) {
                *b = batch;
            }
            st.dirty.insert(n);
        }
        let waiting = !st.unwritten.is_empty();
        drop(st);
        if waiting {
            self.urgent.notify_one();
        }
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
            let transport = TransportKind::parse(&r.transport).unwrap_or(TransportKind::Udp);
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
                generation: r.generation,
                stored_until: r.expires_at,
            };
            st.count_sources(std::slice::from_ref(&b), true);
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
        generation: b.generation,
    }
}

impl crate::guard::Registrations for Registrar {
    fn live_from(&self, ip: IpAddr) -> bool {
        self.registered_from(ip)
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
            generation: 1,
        }
    }

    /// The bindings a REGISTER leaves current (the durability ticket dropped).
    fn reg(
        r: &Registrar,
        number: &str,
        req: &RegisterRequest,
        now: i64,
    ) -> Result<Vec<Current>, RegisterError> {
        r.register(number, req, now).map(|x| x.current)
    }

    fn list(items: &[(&str, Option<u32>)]) -> Contacts {
        Contacts::List(items.iter().map(|(u, e)| (u.to_string(), *e)).collect())
    }

    #[test]
    fn register_refresh_query_and_remove() {
        let r = Registrar::new(RegistrarConfig::default());
        let cur = reg(
            &r,
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
        let cur = reg(
            &r,
            "1001",
            &req("c2", 1, list(&[("sip:b@h", Some(300))]), None),
            1010,
        )
        .expect("ok");
        assert_eq!(cur.len(), 2);
        // A query lists both without changing anything.
        let q = reg(&r, "1001", &req("c3", 1, Contacts::None, None), 1020).expect("query");
        assert_eq!(
            q.iter().map(|c| c.expires_in).collect::<Vec<_>>(),
            vec![100, 290]
        );
        // Refresh with a higher CSeq; out-of-order CSeq is refused.
        assert_eq!(
            reg(
                &r,
                "1001",
                &req("c1", 1, list(&[("sip:a@h", None)]), Some(120)),
                1030
            ),
            Err(RegisterError::OutOfOrder)
        );
        reg(
            &r,
            "1001",
            &req("c1", 2, list(&[("sip:a@h", None)]), Some(120)),
            1030,
        )
        .expect("refresh");
        // Expires 0 removes one binding.
        let cur = reg(
            &r,
            "1001",
            &req("c2", 2, list(&[("sip:b@h", Some(0))]), None),
            1040,
        )
        .expect("remove");
        assert_eq!(cur.len(), 1);
        // Star removes all.
        let cur = reg(&r, "1001", &req("c9", 1, Contacts::Star, Some(0)), 1050).expect("star");
        assert!(cur.is_empty());
        assert_eq!(r.binding_count(), 0);
    }

    #[test]
    fn a_closed_connection_leaves_its_bindings_unreachable_until_the_phone_registers_again() {
        use crate::flow::ConnId;
        let r = Registrar::new(RegistrarConfig::default());
        let peer = "127.0.0.1:40000".parse().expect("addr");
        let mut on_tls = req("a", 1, list(&[("sip:a@h;transport=tls", None)]), None);
        on_tls.flow = Flow::stream(TransportKind::Tls, peer, ConnId(1));
        reg(&r, "1001", &on_tls, 0).expect("register");
        assert_eq!(r.flows("1001", 1).len(), 1);
        r.connection_closed(ConnId(2));
        assert_eq!(
            r.flows("1001", 1).len(),
            1,
            "another connection's close changes nothing"
        );
        r.connection_closed(ConnId(1));
        assert!(r.flows("1001", 1).is_empty(), "nobody to fork a call to");
        assert!(
            !r.has_flow("1001", &on_tls.flow, 1),
            "nor to send a NOTIFY to"
        );
        assert_eq!(r.binding_count(), 1, "the binding stays, with its expiry");
        let mut again = on_tls.clone();
        again.cseq = 2;
        again.flow = Flow::stream(TransportKind::Tls, peer, ConnId(3));
        reg(&r, "1001", &again, 2).expect("register again");
        assert_eq!(
            r.flows("1001", 3),
            vec![("sip:a@h;transport=tls".to_owned(), again.flow)]
        );
    }

    #[test]
    fn at_the_contact_cap_a_binding_whose_connection_closed_gives_way() {
        use crate::flow::ConnId;
        let cfg = RegistrarConfig {
            max_contacts: 2,
            ..Default::default()
        };
        let r = Registrar::new(cfg);
        let on = |call: &str, contact: &str, conn: u64| {
            let mut q = req(call, 1, list(&[(contact, None)]), None);
            q.flow = Flow::stream(
                TransportKind::Tls,
                format!("127.0.0.1:{}", 40_000 + conn)
                    .parse()
                    .expect("addr"),
                ConnId(conn),
            );
            q
        };
        reg(&r, "1001", &on("a", "sip:a@h:1", 1), 0).expect("first");
        reg(&r, "1001", &on("b", "sip:a@h:2", 2), 10).expect("second");
        // Control: with both connections open, a third contact is over the cap.
        assert_eq!(
            reg(&r, "1001", &on("c", "sip:a@h:3", 3), 20),
            Err(RegisterError::TooManyContacts)
        );
        // The first connection closes: its binding, unreachable, gives way to the third.
        r.connection_closed(ConnId(1));
        let cur = reg(&r, "1001", &on("c", "sip:a@h:3", 3), 30).expect("room made");
        let contacts: Vec<&str> = cur.iter().map(|c| c.contact.as_str()).collect();
        assert_eq!(contacts, vec!["sip:a@h:2", "sip:a@h:3"]);
        // A live binding never gives way: with both open again, the cap holds.
        assert_eq!(
            reg(&r, "1001", &on("d", "sip:a@h:4", 4), 40),
            Err(RegisterError::TooManyContacts)
        );
        assert_eq!(r.binding_count(), 2);
    }

    #[test]
    fn a_contact_listed_twice_is_one_binding() {
        let r = Registrar::new(RegistrarConfig::default());
        let twice = list(&[("sip:a@h", Some(120)), ("sip:a@h", Some(300))]);
        let cur = reg(&r, "1001", &req("c", 1, twice, None), 0).expect("ok");
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
            reg(
                &r,
                "1001",
                &req("c", 1, list(&[("sip:a@h", None)]), Some(30)),
                0
            ),
            Err(RegisterError::IntervalTooBrief { min: 60 })
        );
        assert_eq!(r.binding_count(), 0, "nothing changed");
        let cur = reg(
            &r,
            "1001",
            &req("c", 2, list(&[("sip:a@h", None)]), Some(999_999)),
            0,
        )
        .expect("clamped");
        assert_eq!(cur[0].expires_in, 3600);
        let cur = reg(
            &r,
            "1001",
            &req("d", 1, list(&[("sip:b@h", None)]), None),
            0,
        )
        .expect("default");
        assert_eq!(cur[1].expires_in, 3600);
        assert_eq!(
            reg(
                &r,
                "1001",
                &req("e", 1, list(&[("sip:c@h", None)]), None),
                0
            ),
            Err(RegisterError::TooManyContacts)
        );
        assert_eq!(
            reg(&r, "1001", &req("f", 1, Contacts::Star, Some(60)), 0),
            Err(RegisterError::BadStar)
        );
        assert_eq!(
            reg(&r, "1001", &req("f", 1, Contacts::Star, None), 0),
            Err(RegisterError::BadStar)
        );
        assert_eq!(r.binding_count(), 2);
    }

    #[test]
    fn expiry_and_write_behind() {
        let r = Registrar::new(RegistrarConfig::default());
        reg(
            &r,
            "1001",
            &req("c", 1, list(&[("sip:a@h", Some(60))]), None),
            0,
        )
        .expect("ok");
        reg(
            &r,
            "1002",
            &req("c", 1, list(&[("sip:b@h", Some(600))]), None),
            0,
        )
        .expect("ok");
        let dirty = r.take_dirty();
        assert_eq!(dirty.rows.len(), 2);
        assert!(r.take_dirty().rows.is_empty(), "taken");
        assert_eq!(r.sweep(59), 0);
        assert_eq!(r.sweep(60), 1, "expires exactly on time");
        assert!(r.bindings("1001", 60).is_empty());
        let dirty = r.take_dirty();
        assert_eq!(
            dirty.rows,
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
        assert!(
            !r.registered_from(phone.remote.ip()),
            "the old source is forgotten"
        );
        assert!(r.registered_from(moved.flow.remote.ip()));
        // Expired.
        assert!(!r.has_flow("1001", &moved.flow, 60));
        assert_eq!(r.sweep(100), 1);
        assert!(r.flows("1001", 100).is_empty());
        assert!(!r.registered_from(moved.flow.remote.ip()), "swept");
    }

    /// Whether a ticket's wait is over right now.
    fn released(d: &Durable) -> bool {
        *d.committed.borrow() >= d.batch
    }

    #[test]
    fn new_moved_and_removed_bindings_wait_for_their_write_refreshes_do_not() {
        let r = Registrar::new(RegistrarConfig::default());
        let new = r
            .register("1001", &req("a", 1, list(&[("sip:a@h", None)]), None), 0)
            .expect("new");
        let ticket = new.durable.expect("a new binding waits for its write");
        assert!(!released(&ticket));
        // A refresh before the write waits for it too.
        let early = r
            .register("1001", &req("a", 2, list(&[("sip:a@h", None)]), None), 1)
            .expect("refresh");
        let early = early.durable.expect("not written yet: it waits as well");
        let batch = r.take_dirty();
        assert_eq!(batch.rows.len(), 1);
        assert!(!released(&ticket), "taken is not written");
        r.committed(batch.id);
        assert!(released(&ticket) && released(&early));

        // Written: a refresh from the same place is answered at once (write-behind).
        let refresh = r
            .register("1001", &req("a", 3, list(&[("sip:a@h", None)]), None), 2)
            .expect("refresh");
        assert!(refresh.durable.is_none());
        // From another source, over another transport or with another login: moved.
        let mut moved = req("a", 4, list(&[("sip:a@h", None)]), None);
        moved.flow = Flow::udp("127.0.0.9:5062".parse().expect("addr"));
        assert!(
            r.register("1001", &moved, 3)
                .expect("moved")
                .durable
                .is_some()
        );
        let mut tcp = req("a", 5, list(&[("sip:a@h", None)]), None);
        tcp.flow.transport = TransportKind::Tcp;
        assert!(r.register("1001", &tcp, 3).expect("tcp").durable.is_some());
        let mut relogin = tcp.clone();
        relogin.cseq = 6;
        relogin.generation = 2;
        let relogin = r.register("1001", &relogin, 3).expect("new login");
        let last = relogin.durable.expect("a new login's binding waits");
        let b = r.take_dirty();
        r.committed(b.id);
        assert!(released(&last));
        // A removal waits too.
        let gone = r
            .register("1001", &req("z", 1, Contacts::Star, Some(0)), 4)
            .expect("remove");
        assert!(gone.durable.is_some());
    }

    #[test]
    fn a_refresh_is_written_only_once_the_stored_expiry_has_used_half_its_time() {
        let r = Registrar::new(RegistrarConfig::default());
        let q = |cseq| req("a", cseq, list(&[("sip:a@h", Some(600))]), None);
        // The writer: takes the batch and reports it in the store.
        let write = |r: &Registrar| {
            let b = r.take_dirty();
            r.committed(b.id);
            b.rows
        };
        reg(&r, "1001", &q(1), 0).expect("new");
        assert_eq!(write(&r).len(), 1, "a new binding is written");
        reg(&r, "1001", &q(2), 100).expect("refresh");
        assert!(
            write(&r).is_empty(),
            "stored until 600, granted until 700: not yet"
        );
        reg(&r, "1001", &q(3), 301).expect("refresh");
        let rows = write(&r);
        assert_eq!(rows.len(), 1, "stored until 600 at 301: half is used up");
        assert_eq!(rows[0].1[0].expires_at, 901);
        // Control: a refresh from elsewhere is a move, written at once.
        let mut moved = q(4);
        moved.flow = Flow::udp("127.0.0.9:5062".parse().expect("addr"));
        reg(&r, "1001", &moved, 302).expect("moved");
        assert_eq!(write(&r).len(), 1);
    }

    #[test]
    fn a_failed_write_keeps_its_answers_waiting_for_the_batch_that_carries_it() {
        let r = Registrar::new(RegistrarConfig::default());
        let t = r
            .register("1001", &req("a", 1, list(&[("sip:a@h", None)]), None), 0)
            .expect("new")
            .durable
            .expect("waits");
        let failed = r.take_dirty();
        r.mark_dirty(failed.rows.into_iter().map(|(n, _)| n));
        // Nothing else changed; the retry is a later batch.
        let retry = r.take_dirty();
        assert_eq!(retry.rows.len(), 1, "retried");
        assert!(retry.id > failed.id);
        assert!(!released(&t));
        r.committed(retry.id);
        assert!(released(&t));
        // A refresh after the retry's write is write-behind again.
        let refresh = r
            .register("1001", &req("a", 2, list(&[("sip:a@h", None)]), None), 1)
            .expect("refresh");
        assert!(refresh.durable.is_none());
    }

    #[tokio::test]
    async fn a_ticket_resolves_on_commit_and_fails_when_the_registrar_is_gone() {
        let r = Registrar::new(RegistrarConfig::default());
        let t = r
            .register("1001", &req("a", 1, list(&[("sip:a@h", None)]), None), 0)
            .expect("new")
            .durable
            .expect("waits");
        let b = r.take_dirty();
        r.committed(b.id);
        assert!(t.wait().await);
        let t = r
            .register("1002", &req("b", 1, list(&[("sip:b@h", None)]), None), 0)
            .expect("new")
            .durable
            .expect("waits");
        drop(r);
        assert!(!t.wait().await, "never written: never answered 200");
    }

    #[test]
    fn reconcile_drops_bindings_no_credentials_back() {
        let r = Registrar::new(RegistrarConfig::default());
        for (n, generation) in [("1001", 1), ("1002", 1), ("1003", 1)] {
            let mut q = req(n, 1, list(&[(&format!("sip:{n}@10.0.0.1"), None)]), None);
            q.generation = generation;
            reg(&r, n, &q, 0).expect("register");
        }
        let _ = r.take_dirty();
        assert!(r.registered_from("127.0.0.1".parse().expect("ip")));
        // 1002's credentials changed (generation 2), 1003 was removed.
        let dropped = r.reconcile(|n, b| match n {
            "1001" => b.generation == 1,
            "1002" => b.generation == 2,
            _ => false,
        });
        assert_eq!(dropped, vec!["1002".to_string(), "1003".to_string()]);
        assert_eq!(r.binding_count(), 1);
        assert!(r.bindings("1002", 0).is_empty() && r.bindings("1003", 0).is_empty());
        let written: Vec<String> = r.take_dirty().rows.into_iter().map(|(n, _)| n).collect();
        assert_eq!(written.len(), 2, "the removals are written: {written:?}");
        assert!(r.reconcile(|_, _| true).is_empty(), "control: nothing else");
    }
}
