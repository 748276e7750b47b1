//! Voicemail rules with no IO: the mailbox lockout (how wrong PINs lock a box, and how
//! repeated locks escalate), when a PIN is too weak to keep, the per-extension
//! voicemail settings' ranges, what a login and a PIN change answer, and the menu
//! ([`menu`], a sans-IO state machine). `accounts::voicemail` re-exports the types the
//! call side uses and does the IO behind them.
//!
//! Why the lockout is per mailbox and persisted: PIN guessing limited only per call
//! (Asterisk `maxlogins`, FreeSWITCH `max-login-attempts`) lets an attacker redial, and
//! limited per source lets a botnet rotate addresses. The state lives in the database
//! (the caller stores [`LockState`]), so neither a redial nor a restart resets it.

pub mod menu;

use serde::Serialize;

use crate::Secret;
use crate::fields::InvalidField;
use crate::pin;

/// A mailbox's counted failures and lock, as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockState {
    /// Wrong PINs counted (a leaky bucket, see [`Lockout::after_failure`]).
    pub failures: u32,
    /// When the count last leaked, or began (Unix seconds; 0: none).
    pub window_start: i64,
    /// The box refuses every PIN until then (Unix seconds; 0: not locked).
    pub locked_until: i64,
    /// How many locks in a row, each beginning within `repeat_window_secs` of the end
    /// of the one before.
    pub lock_level: u32,
    /// When the last lock began (Unix seconds; 0: never).
    pub last_locked_at: i64,
}

/// The lockout rules: `failures` wrong PINs within `window_secs` lock the box for
/// `lock_secs`; from the `repeat_locks`th lock in a row (each beginning within
/// `repeat_window_secs` of the end of the last) for `repeat_lock_secs`. The same shape as the
/// guard's ban escalation (`guard.repeat_bans`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lockout {
    pub failures: u32,
    pub window_secs: i64,
    pub lock_secs: i64,
    pub repeat_locks: u32,
    pub repeat_window_secs: i64,
    /// A day, not the guard's week: anyone who knows a box number can lock it, so a
    /// longer lock would hand a caller a way to shut a colleague's box for days. The
    /// owner calling from a phone registered to the box is never locked out (the lock
    /// guards the PIN, and that login uses none).
    pub repeat_lock_secs: i64,
}

impl Default for Lockout {
    /// Five wrong PINs in 15 minutes lock the box for an hour; the third lock within a
    /// day of the one before lasts a day. A guesser who sets the lock off gets five
    /// tries an hour at first and five a day after; one who never does, one try per 15
    /// minutes (the count leaks), against a million six-digit PINs.
    fn default() -> Self {
        Self {
            failures: 5,
            window_secs: 900,
            lock_secs: 3600,
            repeat_locks: 3,
            repeat_window_secs: 86_400,
            repeat_lock_secs: 86_400,
        }
    }
}

impl Lockout {
    /// Whether the box refuses every PIN at `now`, the right one included.
    pub fn is_locked(&self, s: &LockState, now: i64) -> bool {
        now < s.locked_until
    }

    /// The state after a wrong PIN at `now`. A wrong PIN while locked changes nothing
    /// (the lock neither grows nor ends; the guard still counts the source). The count
    /// is a leaky bucket: one failure leaks out per `window_secs` since the last leak
    /// (`window_start`), and the `failures`th one counted locks the box. So five wrong
    /// PINs within 15 minutes lock it, and so do five spread around the edge of any
    /// 15 minutes (a window that restarted at its end let a guesser type four per
    /// window for ever); a guesser who never fills the bucket gets one try per window
    /// after the first four (96 a day with the defaults), the guard's per-source count
    /// besides.
    pub fn after_failure(&self, s: &LockState, now: i64) -> LockState {
        if self.is_locked(s, now) {
            return *s;
        }
        let mut next = *s;
        if s.failures == 0 {
            next.window_start = now;
        } else {
            let elapsed = now.saturating_sub(s.window_start).max(0);
            let leaked = elapsed.checked_div(self.window_secs).unwrap_or(i64::MAX);
            if leaked > 0 {
                let left = u32::try_from(leaked).map_or(0, |n| s.failures.saturating_sub(n));
                next.failures = left;
                next.window_start = if left == 0 {
                    now
                } else {
                    s.window_start
                        .saturating_add(leaked.saturating_mul(self.window_secs))
                };
            }
        }
        next.failures = next.failures.saturating_add(1);
        if next.failures >= self.failures {
            // Measured from the end of the last lock, so that a long lock is not
            // followed by a short one for whoever simply waited it out.
            let level = if s.lock_level > 0
                && now.saturating_sub(s.locked_until) <= self.repeat_window_secs
            {
                s.lock_level.saturating_add(1)
            } else {
                1
            };
            next.lock_level = level;
            next.last_locked_at = now;
            next.locked_until = now.saturating_add(self.lock_length(level));
            next.failures = 0;
            next.window_start = 0;
        }
        next
    }

    /// The state after the right PIN while not locked: the count starts again (the
    /// escalation level stays, so the next lock within the repeat window is longer).
    pub fn after_success(&self, s: &LockState) -> LockState {
        LockState {
            failures: 0,
            window_start: 0,
            ..*s
        }
    }

    /// The length of the `level`th lock in a row.
    pub fn lock_length(&self, level: u32) -> i64 {
        if level >= self.repeat_locks {
            self.repeat_lock_secs
        } else {
            self.lock_secs
        }
    }
}

/// Why `pin` is too weak to keep for extension `number`, by the same rules as the
/// audit's PIN findings (`ext.pin_equals_number`, `ext.pin_too_short`,
/// `ext.pin_trivial`, `ext.pin_contains_number`); `None` when it passes them all. A
/// weak PIN must be changed at the first login, and a new PIN is held to this too.
pub fn pin_weakness(pin: &str, number: &str) -> Option<&'static str> {
    if pin == number {
        return Some("it is the extension number");
    }
    if pin.len() < MIN_PIN_DIGITS {
        return Some("it has fewer than 4 digits");
    }
    if let Some(why) = pin::trivial_reason(pin) {
        return Some(why);
    }
    if pin::contains_number(pin, number) {
        return Some("it contains the extension number");
    }
    None
}

/// How the caller proves they may open a box.
#[derive(Clone, Debug)]
pub enum Credential {
    /// The PIN as typed in DTMF digits.
    Pin(Secret),
    /// The call is digest-authenticated as the mailbox's own account and came on one of
    /// its registered flows. Pass it for nothing less (never for caller ID).
    AuthenticatedOwner,
}

/// The answer to a login. `Refused` is the same for a wrong PIN, a locked box and an
/// unknown box: the caller must not be able to tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "login", rename_all = "snake_case")]
pub enum Login {
    /// Open. With `must_change_pin`, the PIN is weak by the audit's rules: the menu asks
    /// for a new one before anything else.
    Granted { must_change_pin: bool },
    /// Not open. For a [`Credential::Pin`], one failure of the caller's source for the
    /// guard (see [`Login::counts_against_source`]).
    Refused,
}

impl Login {
    /// Whether this answer to a PIN login is one failed authentication of the caller's
    /// source, to be counted by the guard like a wrong SIP password from it: every
    /// refusal of a PIN, whether the PIN was wrong, the box locked or unknown (so one
    /// address trying many boxes is banned, not only each box locked).
    ///
    /// The source is the address the call's signalling proved (the flow its INVITE came
    /// on, answered to a nonce). A call that came in from a trunk or gateway shares that
    /// address with every outside caller: the guard must not count against it (allow
    /// listed trunk ranges are never banned); the per-box lockout still holds for those.
    /// An [`Credential::AuthenticatedOwner`] login never counts.
    pub fn counts_against_source(self, credential: &Credential) -> bool {
        self == Login::Refused && matches!(credential, Credential::Pin(_))
    }
}

/// The outcome of a PIN change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "pin", rename_all = "snake_case")]
pub enum PinChange {
    Changed,
    /// The new PIN was not taken: `reason` says why (too weak by the audit's rules, or
    /// not 1 to 12 digits). The old PIN still holds.
    Refused {
        reason: String,
    },
}

/// Where a message is filed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Folder {
    New,
    Saved,
}

impl Folder {
    pub fn as_str(self) -> &'static str {
        match self {
            Folder::New => "new",
            Folder::Saved => "saved",
        }
    }
}

/// One message, without its audio.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MessageView {
    pub id: String,
    /// Unix seconds.
    pub received_at: i64,
    pub duration_ms: i64,
    /// The caller as the INVITE named them: display text only, never dialled.
    pub caller: String,
    pub folder: Folder,
}

/// The fewest digits a PIN may have (the audit's `ext.pin_too_short`).
pub const MIN_PIN_DIGITS: usize = 4;

/// Seconds an extension rings before voicemail answers when nothing is set.
pub const DEFAULT_AFTER_SECS: u32 = 20;
/// The longest ring before voicemail: past five minutes nobody is waiting any more.
pub const MAX_AFTER_SECS: u32 = 300;

/// `voicemail_after_secs`: how long a call rings before voicemail takes it, 0 to 300
/// seconds; 0 means the extension has no voicemail.
pub fn parse_after_secs(value: &str) -> Result<u32, InvalidField> {
    const FIELD: &str = "voicemail ring time";
    let v = value.trim();
    let reason = || {
        format!("it must be a whole number of seconds from 0 (no voicemail) to {MAX_AFTER_SECS}")
    };
    if v.is_empty() || v.len() > 3 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidField::new(FIELD, reason()));
    }
    match v.parse::<u32>() {
        Ok(n) if n <= MAX_AFTER_SECS => Ok(n),
        _ => Err(InvalidField::new(FIELD, reason())),
    }
}

/// `voicemail_mail`: `on` or `off` (also yes/no, true/false, 1/0).
pub fn parse_switch(field: &'static str, value: &str) -> Result<bool, InvalidField> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(InvalidField::new(field, "it must be \"on\" or \"off\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_700_000_000;

    fn fail_n(l: &Lockout, mut s: LockState, n: u32, start: i64, step: i64) -> LockState {
        for i in 0..n {
            s = l.after_failure(&s, start + i64::from(i) * step);
        }
        s
    }

    #[test]
    fn five_wrong_pins_in_fifteen_minutes_lock_for_an_hour() {
        let l = Lockout::default();
        let s = fail_n(&l, LockState::default(), 4, T, 60);
        assert!(!l.is_locked(&s, T + 240));
        assert_eq!(s.failures, 4);
        let s = l.after_failure(&s, T + 300);
        assert!(l.is_locked(&s, T + 300));
        assert!(l.is_locked(&s, T + 300 + 3599));
        assert!(!l.is_locked(&s, T + 300 + 3600));
        assert_eq!(s.lock_level, 1);
    }

    #[test]
    fn one_failure_leaks_out_per_window_and_no_more() {
        let l = Lockout::default();
        // One per window, for a day: each leaks out before the next comes.
        let s = fail_n(&l, LockState::default(), 96, T, 900);
        assert!(!l.is_locked(&s, T + 96 * 900));
        assert_eq!((s.lock_level, s.failures), (0, 1));
        // Four per window for ever (the hole of a window that restarted at its end):
        // one leaks per window, so the bucket fills in the second window.
        let mut s = LockState::default();
        let mut locked_in = None;
        for window in 0..8i64 {
            for i in 0..4 {
                s = l.after_failure(&s, T + window * 900 + i * 10);
                if locked_in.is_none() && l.is_locked(&s, T + window * 900 + i * 10) {
                    locked_in = Some(window);
                }
            }
        }
        assert_eq!(
            locked_in,
            Some(1),
            "four a window lock in the second window"
        );
        // One every 4 minutes: a failure leaks every 15, the fifth counted locks.
        let s = fail_n(&l, LockState::default(), 7, T, 240);
        assert!(l.is_locked(&s, T + 6 * 240));
        // Control: four, one a minute, and a fifth after the window: not locked.
        let s = fail_n(&l, LockState::default(), 4, T, 60);
        let s = l.after_failure(&s, T + 900);
        assert!(!l.is_locked(&s, T + 900));
        assert_eq!(s.failures, 4);
    }

    #[test]
    fn a_wrong_pin_while_locked_neither_extends_nor_ends_the_lock() {
        let l = Lockout::default();
        let s = fail_n(&l, LockState::default(), 5, T, 1);
        let later = fail_n(&l, s, 50, T + 10, 1);
        assert_eq!(later, s);
    }

    #[test]
    fn the_third_lock_within_a_day_lasts_a_day() {
        let l = Lockout::default();
        let mut s = LockState::default();
        let mut t = T;
        for level in 1..=4 {
            s = fail_n(&l, s, 5, t, 1);
            assert_eq!(s.lock_level, level);
            let expected = if level >= 3 { 86_400 } else { 3600 };
            assert_eq!(s.locked_until - s.last_locked_at, expected, "lock {level}");
            t = s.locked_until;
        }
        // A lock more than a day after the end of the last starts over.
        let s = fail_n(&l, s, 5, s.locked_until + 86_401, 1);
        assert_eq!(s.lock_level, 1);
        assert_eq!(s.locked_until - s.last_locked_at, 3600);
    }

    #[test]
    fn success_clears_the_count_but_not_the_level() {
        let l = Lockout::default();
        let s = fail_n(&l, LockState::default(), 5, T, 1);
        let s = l.after_success(&s);
        assert_eq!((s.failures, s.lock_level), (0, 1));
        let s = fail_n(&l, s, 4, s.locked_until, 1);
        let s = l.after_success(&s);
        assert_eq!(s.failures, 0);
    }

    #[test]
    fn weak_pins_follow_the_audit_rules() {
        for (pin, number) in [
            ("1001", "1001"),
            ("123", "1001"),
            ("0000", "1001"),
            ("1234", "1001"),
            ("2580", "1001"),
            ("910019", "1001"),
            ("551001", "1001"),
        ] {
            assert!(pin_weakness(pin, number).is_some(), "{pin}");
        }
        for (pin, number) in [("482913", "1001"), ("7305", "1001"), ("58213907", "22")] {
            assert_eq!(pin_weakness(pin, number), None, "{pin}");
        }
    }

    #[test]
    fn pin_weakness_agrees_with_the_audit() {
        use crate::PolicyConfig;
        use crate::audit::{Auditor, Context, ExtensionFacts};
        let policy = PolicyConfig::default();
        for pin in [
            "1001", "123", "0000", "1234", "2580", "910019", "482913", "7305", "12", "1", "19",
            "100110", "8642", "246810", "1199", "9988", "19870", "2001", "1985",
        ] {
            let mut a = Auditor::new(Context {
                policy: &policy,
                domain: None,
            });
            a.extension(&ExtensionFacts {
                number: "1001",
                auth_id: "k3x9m2p8q4",
                sip_id: None,
                name: "Ann Smith",
                email: None,
                password: "Xk29fLq8PzR4tW7yM3cB",
                password_score: None,
                pin,
            });
            let flagged = a.finish().iter().any(|f| f.field == "pin");
            assert_eq!(pin_weakness(pin, "1001").is_some(), flagged, "{pin}");
        }
    }

    #[test]
    fn only_a_refused_pin_counts_against_the_source() {
        let pin = Credential::Pin(Secret::new("1234"));
        assert!(Login::Refused.counts_against_source(&pin));
        assert!(!Login::Refused.counts_against_source(&Credential::AuthenticatedOwner));
        let granted = Login::Granted {
            must_change_pin: false,
        };
        assert!(!granted.counts_against_source(&pin));
    }

    #[test]
    fn ring_time_and_switch_parse() {
        assert_eq!(parse_after_secs("0"), Ok(0));
        assert_eq!(parse_after_secs(" 20 "), Ok(20));
        assert_eq!(parse_after_secs("300"), Ok(300));
        for bad in ["", "301", "-1", "20s", "9999", "1e3"] {
            assert!(parse_after_secs(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_switch("x", "ON"), Ok(true));
        assert_eq!(parse_switch("x", "no"), Ok(false));
        assert!(parse_switch("x", "maybe").is_err());
    }
}
