//! Admission of outbound calls in the running server: each extension's class of service, fraud
//! limits and suspension (a snapshot reloaded with the directory), the attempt counts,
//! the transfer grants, and the decision for each authenticated INVITE. The decision is
//! taken on the class of the number that leaves (after the route's rewrite, in E.164:
//! the endpoint classifies with `policy::dialplan`); this keeps the state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use accounts::class_of_service::Line;
use policy::dialplan::{Breach, CallClass, ClassOfService, Destination, DialPlan, Usage};
use store::outbound::CallingRow;

use crate::guard::Windows;

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

const MINUTE: i64 = 60;
const DAY: i64 = 86_400;

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

/// The outbound state of the server.
#[derive(Debug)]
pub struct Outbound {
    /// Replaced whole on a config reload (SIGHUP); calls in progress keep theirs.
    plan: RwLock<Arc<DialPlan>>,
    lines: RwLock<Arc<HashMap<String, Line>>>,
    attempts: Mutex<Windows<String>>,
    international: Mutex<Windows<String>>,
    /// Suspended here and not yet seen back from the store.
    suspended_now: Mutex<HashSet<String>>,
    grants: Mutex<VecDeque<Grant>>,
}

impl Outbound {
    /// The sizes of the admission tables, for `/metrics`.
    pub fn table_sizes(&self) -> [(&'static str, usize); 6] {
        let windows = |w: &Mutex<Windows<String>>| {
            let w = w.lock().unwrap_or_else(|p| p.into_inner());
            (w.len(), w.queued())
        };
        let (attempts, attempts_queue) = windows(&self.attempts);
        let (international, international_queue) = windows(&self.international);
        [
            ("admission_attempts", attempts),
            ("admission_attempts_queue", attempts_queue),
            ("admission_international", international),
            ("admission_international_queue", international_queue),
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
        ]
    }

    pub fn new(plan: DialPlan) -> Self {
        Self {
            plan: RwLock::new(Arc::new(plan)),
            lines: RwLock::new(Arc::new(HashMap::new())),
            attempts: Mutex::new(Windows::default()),
            international: Mutex::new(Windows::default()),
            suspended_now: Mutex::new(HashSet::new()),
            grants: Mutex::new(VecDeque::new()),
        }
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
    /// referrer of a transfer): the class of the number that leaves, as the dial plan
    /// gives it after the route's rewrite.
    pub fn decide(
        &self,
        number: &str,
        class: CallClass,
        active_external: impl FnOnce() -> u32,
        now: i64,
    ) -> Decision {
        let Some(line) = self
            .lines
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(number)
            .copied()
        else {
            return Decision::Forbidden;
        };
        if class == CallClass::Emergency {
            return Decision::Allow(class);
        }
        if !class.is_external() {
            return if line.class.allows(class) {
                Decision::Allow(class)
            } else {
                Decision::Forbidden
            };
        }
        let suspended = line.suspended
            || self
                .suspended_now
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(number);
        if suspended {
            return Decision::Forbidden;
        }
        // Every external attempt counts, also one the class of service forbids: an
        // intruder trying numbers abroad on a national extension is suspended (and the
        // administrator told) as fast as one who succeeds.
        let key = number.to_owned();
        let l = line.limits;
        let attempts = self
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(&key, now, MINUTE, l.attempts_per_minute.saturating_add(1));
        let allowed = line.class.allows(class);
        let international =
            if class.destination().is_some_and(Destination::counts_per_day) && allowed {
                self.international
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(&key, now, DAY, l.international_per_day.saturating_add(1))
            } else {
                0
            };
        let usage = Usage {
            active_external: active_external(),
            attempts_last_minute: attempts,
            international_today: international,
        };
        let breach = match class.destination().and_then(|d| l.check(d, usage)) {
            Some(b @ Breach::AttemptsPerMinute { .. }) => Some(b),
            _ if !allowed => return Decision::Forbidden,
            other => other,
        };
        match breach {
            None => Decision::Allow(class),
            Some(breach) => {
                self.suspended_now
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key);
                Decision::Suspend(breach)
            }
        }
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

    /// The old signature: classify as dialled, then decide.
    fn decide(
        o: &Outbound,
        number: &str,
        dialled: &str,
        is_extension: impl Fn(&str) -> bool,
        active: impl FnOnce() -> u32,
        now: i64,
    ) -> Decision {
        let class = o.plan().classify(dialled, is_extension);
        o.decide(number, class, active, now)
    }

    fn outbound() -> Outbound {
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

    #[test]
    fn a_new_dial_plan_classifies_the_next_call() {
        let o = outbound();
        let ext = |n: &str| ["888", "1001", "1002", "1003"].contains(&n);
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, || 0, 0),
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

    #[test]
    fn the_fax_extension_cannot_call_abroad_by_default() {
        let o = outbound();
        let ext = |n: &str| ["888", "1001", "1002", "1003"].contains(&n);
        assert_eq!(
            decide(&o, "888", "00252612345678", ext, || 0, 0),
            Decision::Forbidden
        );
        assert_eq!(
            decide(&o, "888", "0301234567", ext, || 0, 0),
            Decision::Allow(CallClass::National)
        );
        assert_eq!(
            decide(&o, "1002", "00442079460000", ext, || 0, 0),
            Decision::Allow(CallClass::International)
        );
        assert_eq!(
            decide(&o, "1002", "00252612345678", ext, || 0, 0),
            Decision::Forbidden,
            "Somalia is a high-cost destination: international is not enough"
        );
        assert_eq!(
            decide(&o, "1003", "0301234567", ext, || 0, 0),
            Decision::Forbidden
        );
        assert_eq!(
            decide(&o, "1003", "1001", ext, || 0, 0),
            Decision::Allow(CallClass::Internal)
        );
        assert_eq!(
            decide(&o, "1003", "112", ext, || 0, 0),
            Decision::Allow(CallClass::Emergency)
        );
        assert_eq!(
            decide(&o, "9999", "1001", ext, || 0, 0),
            Decision::Forbidden,
            "unknown caller"
        );
    }

    #[test]
    fn the_sixth_attempt_in_a_minute_suspends_until_resumed() {
        let o = outbound();
        let ext = |n: &str| n == "1001";
        for i in 0..5 {
            assert_eq!(
                decide(&o, "1001", "0301234567", ext, || 0, 100 + i),
                Decision::Allow(CallClass::National)
            );
        }
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, || 0, 105),
            Decision::Suspend(Breach::AttemptsPerMinute { limit: 5 })
        );
        // Suspended at once, before the store knows; internal and emergency calls go on.
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, || 0, 500),
            Decision::Forbidden
        );
        assert_eq!(
            decide(&o, "1001", "1001", ext, || 0, 500),
            Decision::Allow(CallClass::Internal)
        );
        assert_eq!(
            decide(&o, "1001", "112", ext, || 0, 500),
            Decision::Allow(CallClass::Emergency)
        );
        // A reload before the store has it keeps it; then the store records it...
        o.replace(&[row("1001", "user", None)]);
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, || 0, 550),
            Decision::Forbidden
        );
        let mut suspended = row("1001", "user", None);
        suspended.outbound.suspended_at = 105;
        o.replace(&[suspended]);
        o.persisted("1001");
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, || 0, 600),
            Decision::Forbidden
        );
        // ...and `ext resume` clears it there.
        o.replace(&[row("1001", "user", None)]);
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, || 0, 700),
            Decision::Allow(CallClass::National)
        );
    }

    #[test]
    fn users_without_a_stored_row_get_the_user_defaults() {
        let o = outbound();
        o.replace_with_users(
            &[row("888", "fax", Some("internal"))],
            ["1001", "888"].into_iter(),
        );
        let ext = |_: &str| false;
        assert_eq!(
            decide(&o, "1001", "0301234567", ext, || 0, 0),
            Decision::Allow(CallClass::National)
        );
        assert_eq!(
            decide(&o, "888", "0301234567", ext, || 0, 0),
            Decision::Forbidden,
            "stored row wins"
        );
        assert_eq!(
            decide(&o, "1002", "0301234567", ext, || 0, 0),
            Decision::Forbidden,
            "unknown"
        );
    }

    #[test]
    fn forbidden_attempts_count_too() {
        let o = outbound();
        let ext = |_: &str| false;
        for i in 0..5 {
            assert_eq!(
                decide(&o, "888", "00252612345678", ext, || 0, i),
                Decision::Forbidden
            );
        }
        assert_eq!(
            decide(&o, "888", "00252612345678", ext, || 0, 5),
            Decision::Suspend(Breach::AttemptsPerMinute { limit: 5 })
        );
        assert_eq!(
            decide(&o, "888", "0301234567", ext, || 0, 6),
            Decision::Forbidden,
            "suspended"
        );
    }

    #[test]
    fn a_grant_is_used_once_by_its_transferee_for_its_target() {
        let o = outbound();
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

    #[test]
    fn concurrent_calls_and_international_per_day() {
        let o = outbound();
        let ext = |_: &str| false;
        assert_eq!(
            decide(&o, "1002", "0301234567", ext, || 2, 0),
            Decision::Suspend(Breach::ConcurrentExternal { limit: 2 })
        );
        let o = outbound();
        for i in 0..10 {
            // One a minute: the per-minute limit stays quiet.
            assert_eq!(
                decide(&o, "1002", "0044207946", ext, || 0, i * 61),
                Decision::Allow(CallClass::International)
            );
        }
        assert_eq!(
            decide(&o, "1002", "0044207946", ext, || 0, 700),
            Decision::Suspend(Breach::InternationalPerDay { limit: 10 })
        );
    }
}
