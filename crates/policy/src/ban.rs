//! Ban decisions, pure: how many failures within which window earn a ban, and how long
//! it lasts (escalating for repeat offenders). The server counts; these rules decide.

use std::collections::VecDeque;

use serde::Deserialize;

/// The `[guard]` table of the config file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BanPolicy {
    /// Failed authentications (answering a nonce issued to that source) that earn a ban...
    pub auth_failures: u32,
    /// ...within this many seconds.
    pub auth_window_secs: i64,
    /// Length of a ban.
    pub ban_secs: i64,
    /// A source banned this many times...
    pub repeat_bans: u32,
    /// ...within this many seconds...
    pub repeat_window_secs: i64,
    /// ...is banned this long.
    pub repeat_ban_secs: i64,
    /// An address where an auth ID authenticated successfully stays trusted for that
    /// auth ID this long: its failures there (a phone with a stale password) do not
    /// count toward banning the address.
    pub trusted_secs: i64,
    /// Ban a source whose User-Agent names a known scanner, at its first request.
    pub ban_scanners: bool,
    /// Length of a scanner ban.
    pub scanner_ban_secs: i64,
}

impl Default for BanPolicy {
    fn default() -> Self {
        Self {
            auth_failures: 10,
            auth_window_secs: 600,
            ban_secs: 3600,
            repeat_bans: 3,
            repeat_window_secs: 86_400,
            repeat_ban_secs: 604_800,
            trusted_secs: 604_800,
            ban_scanners: true,
            scanner_ban_secs: 604_800,
        }
    }
}

impl BanPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.auth_failures) {
            return Err("guard.auth_failures must be between 1 and 10000".into());
        }
        let positive = [
            self.auth_window_secs,
            self.ban_secs,
            self.repeat_window_secs,
            self.trusted_secs,
            self.scanner_ban_secs,
            self.repeat_ban_secs,
        ];
        if positive.iter().any(|s| *s <= 0) || self.repeat_bans == 0 {
            return Err("guard durations and counts must be positive".into());
        }
        Ok(())
    }

    /// How many bans this source has had in the repeat window, counting the new one.
    pub fn ban_number(&self, previous: Option<(u32, i64)>, now: i64) -> u32 {
        match previous {
            Some((times, last)) if now - last <= self.repeat_window_secs => times.saturating_add(1),
            _ => 1,
        }
    }

    /// The length of the `n`th ban within the repeat window.
    pub fn ban_length(&self, n: u32) -> i64 {
        if n >= self.repeat_bans {
            self.repeat_ban_secs
        } else {
            self.ban_secs
        }
    }
}

/// Failure times of one source within the window.
#[derive(Clone, Debug, Default)]
pub struct FailureWindow {
    times: VecDeque<i64>,
}

impl FailureWindow {
    /// Records a failure at `now`; returns how many fall within the window.
    pub fn record(&mut self, now: i64, window_secs: i64) -> u32 {
        while self.times.front().is_some_and(|t| now - t >= window_secs) {
            self.times.pop_front();
        }
        self.times.push_back(now);
        u32::try_from(self.times.len()).unwrap_or(u32::MAX)
    }

    pub fn last(&self) -> Option<i64> {
        self.times.back().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_within_the_window_only() {
        let mut w = FailureWindow::default();
        for i in 0..9 {
            assert_eq!(w.record(i, 600), (i + 1) as u32);
        }
        assert_eq!(w.record(599, 600), 10, "the tenth within ten minutes");
        let mut slow = FailureWindow::default();
        for i in 0..20 {
            assert_eq!(
                slow.record(i * 700, 600),
                1,
                "one every 11.7 minutes never accumulates"
            );
        }
    }

    #[test]
    fn bans_escalate_for_repeat_offenders() {
        let p = BanPolicy::default();
        assert_eq!(p.ban_number(None, 0), 1);
        assert_eq!(p.ban_length(1), 3600);
        assert_eq!(p.ban_number(Some((1, 0)), 7200), 2);
        assert_eq!(p.ban_length(2), 3600);
        assert_eq!(p.ban_number(Some((2, 7200)), 14_400), 3);
        assert_eq!(
            p.ban_length(3),
            604_800,
            "the third ban in 24 h lasts a week"
        );
        assert_eq!(
            p.ban_number(Some((2, 0)), 86_401),
            1,
            "old bans are forgiven"
        );
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(BanPolicy::default().validate().is_ok());
        assert!(
            BanPolicy {
                auth_failures: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            BanPolicy {
                ban_secs: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
