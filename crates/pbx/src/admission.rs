//! Admission of outbound calls in the running server: each extension's class of service, fraud
//! limits and suspension (a snapshot reloaded with the directory), the transfer grants,
//! and the decision for each authenticated INVITE. The decision is taken on the class of
//! the number that leaves (after the route's rewrite, in E.164: the endpoint classifies
//! with `policy::dialplan`); this keeps the state.
//!
//! The fraud limits' counts live in the store (`store::fraud`), not here: attempts per
//! minute and international calls per day are counters moved by one conditional
//! statement each, and every external call holds a lease while it counts (renewed by
//! [`Ledger::tend`], lapsing when this node dies). So the limits are exact whether one
//! node uses the database or several do, with one implementation for both.
//!
//! A node that stalls (paused, cut off from the database) past its leases' expiry may
//! find them lapsed, and their places taken by other nodes' calls: the renewal never
//! revives one. It takes each lapsed lease again under its cap, in the same conditional
//! statement as a new call, and a call whose lease cannot be taken again is returned to
//! the server to be ended ([`Lapsed`]), so no call goes on uncounted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use accounts::class_of_service::Line;
use policy::dialplan::{Breach, CallClass, ClassOfService, Destination, DialPlan};
use policy::fraud::FraudLimits;
use store::fraud::{self as ledger, Counter, Lease};
use store::outbound::CallingRow;

/// The answer to an authenticated caller's INVITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on to routing.
    Allow(CallClass),
    /// `403`: the class of service does not allow this call, the number is invalid, or
    /// the extension's outbound calling is suspended.
    Forbidden,
    /// `403`, and this attempt broke a limit: the extension is suspended from now on.
    Suspend(Breach),
}

/// What admission can say without the store, and what it must ask it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Decided(Decision),
    /// An external call by an extension that is not suspended: its counts are taken in
    /// the store ([`Outbound::count`]) before it is decided.
    Count(Counting),
}

/// An external call attempt waiting for its counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counting {
    /// The account charged.
    pub number: String,
    pub class: CallClass,
    /// Whether the class of service allows the call (a forbidden attempt still counts).
    allowed: bool,
    limits: FraudLimits,
}

impl Counting {
    /// The concurrent cap the call is admitted under (its lease is taken again under
    /// it if it lapses).
    pub fn cap(&self) -> Option<u32> {
        Some(self.limits.concurrent_external)
    }
}

/// What the store's counts came to: the decision, and the lease an admitted call holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub decision: Decision,
    pub lease: Option<String>,
}

/// How long a call's lease holds without renewal: a node that dies frees its calls'
/// places within this.
pub const LEASE_SECS: i64 = 30;
/// How often a node renews the leases of its calls (well within [`LEASE_SECS`]).
pub const RENEW_EVERY_SECS: i64 = 10;
/// Leases one node remembers: twice the trunk calls `b2bua::MAX_CALLS` lets up at once
/// (`server` holds the two to it at compile time). A lease not remembered is never
/// renewed, and lapses.
pub const MAX_HELD: usize = 32_768;

/// How long a transfer grant waits for the transferee's INVITE.
pub const GRANT_LIFETIME: i64 = 60;
/// Transfer grants at once.
pub const MAX_GRANTS: usize = 4096;

/// A transfer (REFER) or redirect (3xx) to a target outside that the referrer's class
/// allowed: the call the transferee places to it is the referrer's, held to the
/// referrer's class and counted against the referrer's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    transferee: String,
    target: String,
    referrer: String,
    until: i64,
}

/// A lease this node holds: the account charged, and the concurrent cap its call was
/// admitted under (`None` for calls never refused, such as emergency calls), which a
/// lease that lapsed is taken again under.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    account: String,
    cap: Option<u32>,
}

/// A call whose lease lapsed and could not be taken again under its cap: the server
/// ends it (it would otherwise go on uncounted, past the limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lapsed {
    pub lease: String,
    pub account: String,
}

/// This node's side of the fraud limits in the store: the names of the leases its
/// calls hold, which it renews and releases.
#[derive(Debug)]
pub struct Ledger {
    store: store::Store,
    node: String,
    /// Random per process: a restarted node's lease names never meet its old ones.
    boot: u64,
    next: AtomicU64,
    /// Leases taken for calls of this node, by name.
    held: Mutex<HashMap<String, Held>>,
}

impl Ledger {
    pub fn new(store: store::Store, node: &policy::node::NodeName, boot: u64) -> Self {
        Self {
            store,
            node: node.to_string(),
            boot,
            next: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new lease name, unique across nodes and restarts.
    pub fn name(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}/{:016x}/{n}", self.node, self.boot)
    }

    /// Remembers a lease taken for a call that is now up (`b2bua` lists it among the
    /// live ones). Called only after the call started, so [`Ledger::ended`] never takes
    /// a lease for ended before its call begins. `cap`: the concurrent limit the call
    /// was admitted under ([`Counting::cap`]; `None` for a call never refused).
    pub fn hold(&self, lease: String, account: String, cap: Option<u32>) {
        let mut held = self.held();
        if held.len() < MAX_HELD {
            held.insert(lease, Held { account, cap });
        }
    }

    /// The leases held whose calls no longer count (not in `live`), forgotten here. The
    /// live set is read under the lock, so a lease held after its call started is
    /// always in it.
    fn ended(&self, live: impl FnOnce() -> HashSet<String>) -> Vec<String> {
        let mut held = self.held();
        let live = live();
        let ended: Vec<String> = held
            .keys()
            .filter(|l| !live.contains(*l))
            .cloned()
            .collect();
        for l in &ended {
            held.remove(l);
        }
        ended
    }

    /// How many leases this node holds.
    pub fn held_count(&self) -> usize {
        self.held().len()
    }

    /// Releases the leases of calls that ended and, when `renew`, moves the rest
    /// [`LEASE_SECS`] past `now`; with `prune`, also deletes what lapsed anywhere.
    /// The server runs it every second (renewing every [`RENEW_EVERY_SECS`]).
    ///
    /// A lease found lapsed at the renewal (this node stalled past its expiry) is not
    /// revived: it is taken again under its cap, like a new call's, and when the cap is
    /// full (other nodes' calls took the place) it is forgotten here and returned: the
    /// server ends its call.
    pub async fn tend(
        &self,
        live: impl FnOnce() -> HashSet<String>,
        now: i64,
        renew: bool,
        prune: bool,
    ) -> store::Result<Vec<Lapsed>> {
        let ended = self.ended(live);
        let mut conn = self.store.conn().await?;
        if !ended.is_empty() {
            ledger::release_leases(&mut conn, &ended).await?;
        }
        let mut lost = Vec::new();
        if renew {
            let held: Vec<String> = self.held().keys().cloned().collect();
            let lapsed = ledger::renew_leases(&mut conn, &held, now, now + LEASE_SECS).await?;
            drop(conn);
            for lease in lapsed {
                let Some(h) = self.held().get(&lease).cloned() else {
                    continue;
                };
                if !self.retake(&lease, &h, now).await? {
                    self.held().remove(&lease);
                    lost.push(Lapsed {
                        lease,
                        account: h.account,
                    });
                }
            }
            conn = self.store.conn().await?;
        }
        if prune {
            ledger::prune(&mut conn, now).await?;
        }
        Ok(lost)
    }

    /// Takes a lapsed lease again under its cap (one conditional statement behind the
    /// account's gate row, as admission takes a new one).
    async fn retake(&self, lease: &str, h: &Held, now: i64) -> store::Result<bool> {
        let mut tx = self.store.begin().await?;
        let taken = ledger::take_lease(
            &mut tx,
            &Lease {
                lease,
                account: &h.account,
                node: &self.node,
                expires_at: now + LEASE_SECS,
            },
            now,
            h.cap,
        )
        .await?;
        tx.commit().await?;
        Ok(taken)
    }

    /// Takes a lease with no cap for a call that is never refused but counts (an
    /// emergency call), and holds it.
    pub async fn take_uncapped(
        &self,
        lease: String,
        account: String,
        now: i64,
    ) -> store::Result<()> {
        let mut tx = self.store.begin().await?;
        ledger::take_lease(
            &mut tx,
            &Lease {
                lease: &lease,
                account: &account,
                node: &self.node,
                expires_at: now + LEASE_SECS,
            },
            now,
            None,
        )
        .await?;
        tx.commit().await?;
        self.hold(lease, account, None);
        Ok(())
    }
}

/// The outbound state of the server.
#[derive(Debug)]
pub struct Outbound {
    /// Replaced whole on a config reload (SIGHUP); calls in progress keep theirs.
    plan: RwLock<Arc<DialPlan>>,
    lines: RwLock<Arc<HashMap<String, Line>>>,
    /// Suspended here and not yet seen back from the store.
    suspended_now: Mutex<HashSet<String>>,
    grants: Mutex<VecDeque<Grant>>,
    /// The counts in the store; without one, no external call is admitted.
    ledger: std::sync::OnceLock<Arc<Ledger>>,
}

impl Outbound {
    /// The sizes of the admission tables, for `/metrics`.
    pub fn table_sizes(&self) -> [(&'static str, usize); 3] {
        [
            (
                "admission_suspended_now",
                self.suspended_now
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len(),
            ),
            (
                "transfer_grants",
                self.grants.lock().unwrap_or_else(|p| p.into_inner()).len(),
            ),
            (
                "admission_leases_held",
                self.ledger.get().map_or(0, |l| l.held_count()),
            ),
        ]
    }

    pub fn new(plan: DialPlan) -> Self {
        Self {
            plan: RwLock::new(Arc::new(plan)),
            lines: RwLock::new(Arc::new(HashMap::new())),
            suspended_now: Mutex::new(HashSet::new()),
            grants: Mutex::new(VecDeque::new()),
            ledger: std::sync::OnceLock::new(),
        }
    }

    /// Gives admission the store's counts (once, when the server binds).
    pub fn attach(&self, ledger: Arc<Ledger>) {
        let _ = self.ledger.set(ledger);
    }

    /// The store's counts, when attached.
    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.ledger.get()
    }

    /// The dial plan calls are classified with.
    pub fn plan(&self) -> Arc<DialPlan> {
        self.plan.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a new dial plan in force. The lines keep the classes the old one gave them
    /// until `replace_with_users` runs again, which the reload does at once.
    pub fn set_plan(&self, plan: DialPlan) {
        *self.plan.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(plan);
    }

    /// An extension's class of service, and whether its outbound calling is suspended
    /// (None: no such extension).
    pub fn line(&self, number: &str) -> Option<(ClassOfService, bool)> {
        let line = self
            .lines
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(number)
            .copied()?;
        let suspended = line.suspended
            || self
                .suspended_now
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(number);
        Some((line.class, suspended))
    }

    /// Records that `referrer` allowed `transferee` to call `target` (a REFER or a 3xx
    /// whose target is outside): the next such call within [`GRANT_LIFETIME`] is the
    /// referrer's.
    pub fn grant(&self, transferee: &str, target: &str, referrer: &str, now: i64) {
        let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|x| x.until > now);
        if g.len() >= MAX_GRANTS {
            g.pop_front();
        }
        g.push_back(Grant {
            transferee: transferee.to_owned(),
            target: target.to_owned(),
            referrer: referrer.to_owned(),
            until: now + GRANT_LIFETIME,
        });
    }

    /// The referrer whose grant lets `transferee` call `target` now, consumed.
    pub fn take_grant(&self, transferee: &str, target: &str, now: i64) -> Option<String> {
        let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let i = g
            .iter()
            .position(|x| x.until > now && x.transferee == transferee && x.target == target)?;
        g.remove(i).map(|x| x.referrer)
    }

    /// Replaces the snapshot (on every directory reload).
    pub fn replace(&self, rows: &[CallingRow]) {
        self.replace_with_users(rows, std::iter::empty());
    }

    /// Replaces the snapshot: `rows` as stored (fax extensions, explicit settings), and
    /// every other extension in `users` with a user extension's defaults.
    pub fn replace_with_users<'a>(
        &self,
        rows: &[CallingRow],
        users: impl Iterator<Item = &'a str>,
    ) {
        let plan = self.plan();
        let default_user = Line::from_row(
            &CallingRow {
                kind: "user".into(),
                outbound: store::outbound::OutboundRow::default(),
            },
            &plan,
        );
        let mut lines: HashMap<String, Line> =
            users.map(|n| (n.to_owned(), default_user)).collect();
        lines.extend(
            rows.iter()
                .map(|r| (r.outbound.number.clone(), Line::from_row(r, &plan))),
        );
        *self.lines.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(lines);
    }

    /// The store has recorded the suspension of `number`: from now on the snapshot
    /// carries it (and `ext resume` can lift it).
    pub fn persisted(&self, number: &str) {
        self.suspended_now
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(number);
    }

    /// Decides a call of `class` from extension `number` (authenticated, or the
    /// referrer of a transfer) as far as it can without the store: the class of the
    /// number that leaves, as the dial plan gives it after the route's rewrite.
    pub fn decide(&self, number: &str, class: CallClass) -> Step {
        let Some(line) = self
            .lines
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(number)
            .copied()
        else {
            return Step::Decided(Decision::Forbidden);
        };
        if class == CallClass::Emergency {
            return Step::Decided(Decision::Allow(class));
        }
        if !class.is_external() {
            return Step::Decided(if line.class.allows(class) {
                Decision::Allow(class)
            } else {
                Decision::Forbidden
            });
        }
        let suspended = line.suspended
            || self
                .suspended_now
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(number);
        if suspended {
            return Step::Decided(Decision::Forbidden);
        }
        Step::Count(Counting {
            number: number.to_owned(),
            class,
            allowed: line.class.allows(class),
            limits: line.limits,
        })
    }

    /// Takes an external attempt's counts in the store, in one transaction, and decides
    /// it: every attempt counts against the attempts per minute, also one the class of
    /// service forbids (an intruder trying numbers abroad on a national extension is
    /// suspended as fast as one who succeeds); an allowed call then takes a lease
    /// against the concurrent limit and, abroad, counts against the day's. A breach
    /// suspends at once, here, before the store has the suspension. `live` lists the
    /// leases of this node's calls that still count: the others are released first.
    pub async fn count(
        &self,
        c: &Counting,
        live: impl FnOnce() -> HashSet<String>,
        now: i64,
    ) -> store::Result<Admitted> {
        let Some(ledger) = self.ledger.get() else {
            return Ok(Admitted {
                decision: Decision::Forbidden,
                lease: None,
            });
        };
        let ended = ledger.ended(live);
        let l = c.limits;
        let lease = ledger.name();
        let mut tx = ledger.store.begin().await?;
        if !ended.is_empty() {
            ledger::release_leases(&mut tx, &ended).await?;
        }
        let breach = 'counted: {
            let attempts = ledger::count(
                &mut tx,
                &c.number,
                Counter::AttemptsPerMinute,
                now,
                l.attempts_per_minute,
            )
            .await?;
            if attempts.is_none() {
                break 'counted Some(Breach::AttemptsPerMinute {
                    limit: l.attempts_per_minute,
                });
            }
            if !c.allowed {
                tx.commit().await?;
                return Ok(Admitted {
                    decision: Decision::Forbidden,
                    lease: None,
                });
            }
            let leased = Lease {
                lease: &lease,
                account: &c.number,
                node: &ledger.node,
                expires_at: now + LEASE_SECS,
            };
            if !ledger::take_lease(&mut tx, &leased, now, Some(l.concurrent_external)).await? {
                break 'counted Some(Breach::ConcurrentExternal {
                    limit: l.concurrent_external,
                });
            }
            if c.class
                .destination()
                .is_some_and(Destination::counts_per_day)
                && ledger::count(
                    &mut tx,
                    &c.number,
                    Counter::InternationalPerDay,
                    now,
                    l.international_per_day,
                )
                .await?
                .is_none()
            {
                ledger::release_leases(&mut tx, std::slice::from_ref(&lease)).await?;
                break 'counted Some(Breach::InternationalPerDay {
                    limit: l.international_per_day,
                });
            }
            None
        };
        tx.commit().await?;
        Ok(match breach {
            None => Admitted {
                decision: Decision::Allow(c.class),
                lease: Some(lease),
            },
            Some(breach) => {
                self.suspended_now
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(c.number.clone());
                Admitted {
                    decision: Decision::Suspend(breach),
                    lease: None,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::dialplan::Dialled;
    use store::outbound::OutboundRow;

    fn row(number: &str, kind: &str, class: Option<&str>) -> CallingRow {
        CallingRow {
            kind: kind.into(),
            outbound: OutboundRow {
                number: number.into(),
                class_of_service: class.map(str::to_owned),
                ..OutboundRow::default()
            },
        }
    }

    /// Classifies as dialled, then decides, with the store's counts; every call
    /// admitted before has ended.
    async fn decide(
        o: &Outbound,
        number: &str,
        dialled: &str,
        is_extension: impl Fn(&str) -> bool,
        now: i64,
    ) -> Decision {
        decide_with(o, number, dialled, is_extension, now, false).await
    }

    /// [`decide`], and every call admitted before is still up when `up`.
    async fn decide_with(
        o: &Outbound,
        number: &str,
        dialled: &str,
        is_extension: impl Fn(&str) -> bool,
        now: i64,
        up: bool,
    ) -> Decision {
        let class = o.plan().classify(dialled, is_extension);
        match o.decide(number, class) {
            Step::Decided(d) => d,
            Step::Count(c) => {
                let ledger = o.ledger().expect("attached");
                let live: HashSet<String> = if up {
                    ledger.held().keys().cloned().collect()
                } else {
                    HashSet::new()
                };
                let admitted = o.count(&c, || live, now).await.expect("store");
                if let Some(lease) = admitted.lease {
                    ledger.hold(lease, c.number.clone(), c.cap());
                }
                admitted.decision
            }
        }
    }

    /// Outbound with its ledger in a fresh store (kept alive by the returned dir).
    async fn outbound() -> (tempfile::TempDir, Outbound) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store::Store::open_sqlite(&dir.path().join("t.db"))
            .await
            .expect("store");
        let o = plain();
        o.attach(Arc::new(Ledger::new(
            store,
            &policy::node::NodeName::parse("a").expect("name"),
            1,
        )));
        (dir, o)
    }

    fn plain() -> Outbound {
        let o = Outbound::new(DialPlan {
            country_code: "49".into(),
            international_prefix: "00".into(),
            national_prefix: "0".into(),
            emergency_numbers: vec!["112".into()],
            ..DialPlan::default()
        });
        o.replace(&[
            row("888", "fax", None),
            row("1001", "user", None),
            row("1002", "user", Some("international")),
            row("1003", "user", Some("internal")),
        ]);
        o
    }

    #[tokio::test]
    async fn a_new_dial_plan_classifies_the_next_call() {
        let (_dir, o) = outbound().await;
        let ext = |n: &str| ["888", "1001", "1002", "1003"].contains(&n);
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, 0).await,
            Decision::Allow(CallClass::National)
        );
        // The same office moves to the UK: 0301234567 is now a UK national number,
        // and 112 is no longer the only emergency number.
        o.set_plan(DialPlan {
            country_code: "44".into(),
            international_prefix: "00".into(),
            national_prefix: "0".into(),
            emergency_numbers: vec!["999".into()],
            ..DialPlan::default()
        });
        assert_eq!(o.plan().country_code, "44");
        assert_eq!(o.plan().dialled("999", |_| false), Dialled::Emergency);
        assert_ne!(o.plan().dialled("112", |_| false), Dialled::Emergency);
    }

    #[tokio::test]
    async fn the_fax_extension_cannot_call_abroad_by_default() {
        let (_dir, o) = outbound().await;
        let ext = |n: &str| ["888", "1001", "1002", "1003"].contains(&n);
        assert_eq!(
            decide(&o, "888", "00252612345678", ext, 0).await,
            Decision::Forbidden
        );
        assert_eq!(
            decide(&o, "888", "0301234567", ext, 0).await,
            Decision::Allow(CallClass::National)
        );
        assert_eq!(
            decide(&o, "1002", "00442079460000", ext, 0).await,
            Decision::Allow(CallClass::International)
        );
        assert_eq!(
            decide(&o, "1002", "00252612345678", ext, 0).await,
            Decision::Forbidden,
            "Somalia is a high-cost destination: international is not enough"
        );
        assert_eq!(
            decide(&o, "1003", "0301234567", ext, 0).await,
            Decision::Forbidden
        );
        assert_eq!(
            decide(&o, "1003", "1001", ext, 0).await,
            Decision::Allow(CallClass::Internal)
        );
        assert_eq!(
            decide(&o, "1003", "112", ext, 0).await,
            Decision::Allow(CallClass::Emergency)
        );
        assert_eq!(
            decide(&o, "9999", "1001", ext, 0).await,
            Decision::Forbidden,
            "unknown caller"
        );
    }

    #[tokio::test]
    async fn the_sixth_attempt_in_a_minute_suspends_until_resumed() {
        let (_dir, o) = outbound().await;
        let ext = |n: &str| n == "1001";
        for i in 0..5 {
            assert_eq!(
                decide(&o, "1001", "0301234567", ext, 100 + i).await,
                Decision::Allow(CallClass::National)
            );
        }
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, 105).await,
            Decision::Suspend(Breach::AttemptsPerMinute { limit: 5 })
        );
        // Suspended at once, before the store knows; internal and emergency calls go on.
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, 500).await,
            Decision::Forbidden
        );
        assert_eq!(
            decide(&o, "1001", "1001", ext, 500).await,
            Decision::Allow(CallClass::Internal)
        );
        assert_eq!(
            decide(&o, "1001", "112", ext, 500).await,
            Decision::Allow(CallClass::Emergency)
        );
        // A reload before the store has it keeps it; then the store records it...
        o.replace(&[row("1001", "user", None)]);
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, 550).await,
            Decision::Forbidden
        );
        let mut suspended = row("1001", "user", None);
        suspended.outbound.suspended_at = 105;
        o.replace(&[suspended]);
        o.persisted("1001");
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, 600).await,
            Decision::Forbidden
        );
        // ...and `ext resume` clears it there.
        o.replace(&[row("1001", "user", None)]);
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, 700).await,
            Decision::Allow(CallClass::National)
        );
    }

    #[tokio::test]
    async fn users_without_a_stored_row_get_the_user_defaults() {
        let (_dir, o) = outbound().await;
        o.replace_with_users(
            &[row("888", "fax", Some("internal"))],
            ["1001", "888"].into_iter(),
        );
        let ext = |_: &str| false;
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, 0).await,
            Decision::Allow(CallClass::National)
        );
        assert_eq!(
            decide(&o, "888", "0301234567", ext, 0).await,
            Decision::Forbidden,
            "stored row wins"
        );
        assert_eq!(
            decide(&o, "1002", "0301234567", ext, 0).await,
            Decision::Forbidden,
            "unknown"
        );
    }

    #[tokio::test]
    async fn forbidden_attempts_count_too() {
        let (_dir, o) = outbound().await;
        let ext = |_: &str| false;
        for i in 0..5 {
            assert_eq!(
                decide(&o, "888", "00252612345678", ext, i).await,
                Decision::Forbidden
            );
        }
        assert_eq!(
            decide(&o, "888", "00252612345678", ext, 5).await,
            Decision::Suspend(Breach::AttemptsPerMinute { limit: 5 })
        );
        assert_eq!(
            decide(&o, "888", "0301234567", ext, 6).await,
            Decision::Forbidden,
            "suspended"
        );
    }

    #[tokio::test]
    async fn a_grant_is_used_once_by_its_transferee_for_its_target() {
        let (_dir, o) = outbound().await;
        o.grant("1002", "00442079460000", "1001", 100);
        assert_eq!(o.take_grant("1003", "00442079460000", 110), None);
        assert_eq!(o.take_grant("1002", "00442079460001", 110), None);
        assert_eq!(
            o.take_grant("1002", "00442079460000", 110).as_deref(),
            Some("1001")
        );
        assert_eq!(o.take_grant("1002", "00442079460000", 111), None, "once");
        o.grant("1002", "00442079460000", "1001", 100);
        assert_eq!(
            o.take_grant("1002", "00442079460000", 100 + GRANT_LIFETIME),
            None,
            "expired"
        );
        assert_eq!(o.line("1003"), Some((ClassOfService::Internal, false)));
        assert_eq!(o.line("9999"), None);
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_taken_again_under_the_cap_or_its_call_is_given_up() {
        // Two nodes on one database.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let node = |name: &str, boot: u64| {
            let path = path.clone();
            let name = name.to_owned();
            async move {
                let o = plain();
                let store = store::Store::open_sqlite(&path).await.expect("store");
                o.attach(Arc::new(Ledger::new(
                    store,
                    &policy::node::NodeName::parse(&name).expect("name"),
                    boot,
                )));
                o
            }
        };
        let a = node("a", 1).await;
        let b = node("b", 2).await;
        let ext = |_: &str| false;
        // a's two calls of 1002 (concurrent limit 2), up.
        for now in [0, 1] {
            assert_eq!(
                decide_with(&a, "1002", "0301234567", ext, now, true).await,
                Decision::Allow(CallClass::National)
            );
        }
        let ledger = a.ledger().expect("attached").clone();
        let live: HashSet<String> = ledger.held().keys().cloned().collect();
        // a stalls: its leases lapse (at 30 and 31), and b's call takes a place at 40.
        assert_eq!(
            decide_with(&b, "1002", "0301234567", ext, 40, true).await,
            Decision::Allow(CallClass::National)
        );
        // a resumes and renews at 41: nothing is revived; one lease is taken back
        // under the cap, the other call is returned to be ended.
        let given_up = ledger
            .tend(|| live.clone(), 41, true, false)
            .await
            .expect("tend");
        assert_eq!(given_up.len(), 1, "{given_up:?}");
        assert_eq!(given_up[0].account, "1002");
        assert!(live.contains(&given_up[0].lease));
        assert_eq!(ledger.held_count(), 1, "the call given up is forgotten");
        // The lease taken back renews like any other.
        let again = ledger
            .tend(|| live.clone(), 51, true, false)
            .await
            .expect("tend");
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(
            decide_with(&b, "1002", "0301234567", ext, 52, true).await,
            Decision::Suspend(Breach::ConcurrentExternal { limit: 2 }),
            "b's call and a's call taken back fill the limit"
        );
    }

    #[tokio::test]
    async fn concurrent_calls_and_international_per_day() {
        let (_dir, o) = outbound().await;
        let ext = |_: &str| false;
        for now in [0, 1] {
            assert_eq!(
                decide_with(&o, "1002", "0301234567", ext, now, true).await,
                Decision::Allow(CallClass::National)
            );
        }
        assert_eq!(
            decide_with(&o, "1002", "0301234567", ext, 2, true).await,
            Decision::Suspend(Breach::ConcurrentExternal { limit: 2 }),
            "a third call while two are up"
        );
        // Control: three calls, each ended before the next, pass.
        let (_dir, o) = outbound().await;
        for now in [0, 1, 2] {
            assert_eq!(
                decide(&o, "1002", "0301234567", ext, now).await,
                Decision::Allow(CallClass::National)
            );
        }
        let (_dir, o) = outbound().await;
        for i in 0..10 {
            // One a minute: the per-minute limit stays quiet.
            assert_eq!(
                decide(&o, "1002", "0044207946", ext, i * 61).await,
                Decision::Allow(CallClass::International)
            );
        }
        assert_eq!(
            decide(&o, "1002", "0044207946", ext, 700).await,
            Decision::Suspend(Breach::InternationalPerDay { limit: 10 })
        );
    }
}
