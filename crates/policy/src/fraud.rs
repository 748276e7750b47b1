//! Fraud limits: how many external calls an extension may have up and start, how many
//! calls abroad a day, and how many emergency calls may hold the trunks at once. They
//! are decided on the [`Destination`] of the number that leaves, never on the dialled
//! text. Pure rules; the runtime keeps the counts.

use serde::{Deserialize, Serialize};

use crate::destination::Destination;

/// Limits on an extension's external calls; breaking one suspends its outbound calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FraudLimits {
    /// External calls up at the same time.
    pub concurrent_external: u32,
    /// External call attempts within a minute.
    pub attempts_per_minute: u32,
    /// Calls abroad and to high-cost destinations per day (where the class of service
    /// allows them).
    pub international_per_day: u32,
}

impl Default for FraudLimits {
    fn default() -> Self {
        Self {
            concurrent_external: 2,
            attempts_per_minute: 5,
            international_per_day: 10,
        }
    }
}

/// Which limit a call attempt broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Breach {
    ConcurrentExternal { limit: u32 },
    AttemptsPerMinute { limit: u32 },
    InternationalPerDay { limit: u32 },
}

impl Breach {
    pub fn id(self) -> &'static str {
        match self {
            Breach::ConcurrentExternal { .. } => "fraud.concurrent_external",
            Breach::AttemptsPerMinute { .. } => "fraud.attempts_per_minute",
            Breach::InternationalPerDay { .. } => "fraud.international_per_day",
        }
    }

    /// A sentence for the administrator.
    pub fn describe(self) -> String {
        match self {
            Breach::ConcurrentExternal { limit } => {
                format!("more than {limit} external calls at the same time")
            }
            Breach::AttemptsPerMinute { limit } => {
                format!("more than {limit} external call attempts within a minute")
            }
            Breach::InternationalPerDay { limit } => {
                format!("more than {limit} international or high-cost calls within a day")
            }
        }
    }
}

/// What an extension has done lately, counting the attempt being decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// External calls up now, not counting this one.
    pub active_external: u32,
    /// External attempts within the last minute, this one included.
    pub attempts_last_minute: u32,
    /// International and high-cost calls within the last day, this one included when
    /// it is one.
    pub international_today: u32,
}

/// A `[dialplan]` limit out of range (part of [`crate::dialplan::InvalidPlan`]). Each
/// message is one sentence naming the range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLimits {
    #[error("dialplan.limits.{field} must be between 1 and {max}")]
    Limit { field: &'static str, max: u32 },
    #[error("dialplan.emergency.per_extension must be between 1 and {max}")]
    EmergencyPerExtension { max: u32 },
    #[error("dialplan.emergency.total must be between dialplan.emergency.per_extension and {max}")]
    EmergencyTotal { max: u32 },
}

const MAX_CONCURRENT: u32 = 1_000;
const MAX_PER_MINUTE: u32 = 10_000;
const MAX_PER_DAY: u32 = 100_000;

impl FraudLimits {
    /// Each limit must be positive (a class of service forbids calls; a zero limit would
    /// suspend on the first one) and below an implausible height.
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        let check = |value: u32, field, max| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(InvalidLimits::Limit { field, max })
            }
        };
        check(
            self.concurrent_external,
            "concurrent_external",
            MAX_CONCURRENT,
        )?;
        check(
            self.attempts_per_minute,
            "attempts_per_minute",
            MAX_PER_MINUTE,
        )?;
        check(
            self.international_per_day,
            "international_per_day",
            MAX_PER_DAY,
        )
    }

    /// The limit an external call to `destination` breaks, if any. The destination is
    /// the E.164 number's, after the route's rewrite ([`crate::dialplan::DialPlan::leaving`]);
    /// internal and emergency calls have none and are never checked here.
    pub fn check(&self, destination: Destination, u: Usage) -> Option<Breach> {
        if u.attempts_last_minute > self.attempts_per_minute {
            return Some(Breach::AttemptsPerMinute {
                limit: self.attempts_per_minute,
            });
        }
        if u.active_external >= self.concurrent_external {
            return Some(Breach::ConcurrentExternal {
                limit: self.concurrent_external,
            });
        }
        if destination.counts_per_day() && u.international_today > self.international_per_day {
            return Some(Breach::InternationalPerDay {
                limit: self.international_per_day,
            });
        }
        None
    }
}

/// `[dialplan.emergency]`: emergency calls always go through, whatever the class of
/// service or suspension, but not without bound. A hijacked extension once held six
/// emergency calls on one trunk (issue 14): each occupies a trunk channel, and each
/// alerted the administrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmergencyLimits {
    /// Emergency calls one extension may have up at once.
    pub per_extension: u32,
    /// Emergency calls the whole PBX may have up at once.
    pub total: u32,
}

impl Default for EmergencyLimits {
    fn default() -> Self {
        Self {
            per_extension: 1,
            total: 10,
        }
    }
}

/// Which emergency limit a call would break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EmergencyBreach {
    PerExtension { limit: u32 },
    Total { limit: u32 },
}

impl EmergencyBreach {
    pub fn id(self) -> &'static str {
        match self {
            EmergencyBreach::PerExtension { .. } => "emergency.per_extension",
            EmergencyBreach::Total { .. } => "emergency.total",
        }
    }

    /// A sentence for the administrator.
    pub fn describe(self) -> String {
        match self {
            EmergencyBreach::PerExtension { limit } => {
                format!("more than {limit} emergency calls at once from one extension")
            }
            EmergencyBreach::Total { limit } => {
                format!("more than {limit} emergency calls at once on this PBX")
            }
        }
    }
}

const MAX_EMERGENCY_PER_EXTENSION: u32 = 10;
const MAX_EMERGENCY_TOTAL: u32 = 10_000;

impl EmergencyLimits {
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        if !(1..=MAX_EMERGENCY_PER_EXTENSION).contains(&self.per_extension) {
            return Err(InvalidLimits::EmergencyPerExtension {
                max: MAX_EMERGENCY_PER_EXTENSION,
            });
        }
        if !(self.per_extension..=MAX_EMERGENCY_TOTAL).contains(&self.total) {
            return Err(InvalidLimits::EmergencyTotal {
                max: MAX_EMERGENCY_TOTAL,
            });
        }
        Ok(())
    }

    /// The limit one more emergency call would break: `from_extension` and `total` are
    /// the emergency calls up now, not counting this one.
    pub fn check(&self, from_extension: u32, total: u32) -> Option<EmergencyBreach> {
        if from_extension >= self.per_extension {
            return Some(EmergencyBreach::PerExtension {
                limit: self.per_extension,
            });
        }
        if total >= self.total {
            return Some(EmergencyBreach::Total { limit: self.total });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(active: u32, minute: u32, day: u32) -> Usage {
        Usage {
            active_external: active,
            attempts_last_minute: minute,
            international_today: day,
        }
    }

    #[test]
    fn limits_break_at_the_attempt_after_the_limit() {
        let l = FraudLimits::default();
        use Destination as D;
        assert_eq!(l.check(D::National, u(0, 5, 0)), None);
        assert_eq!(
            l.check(D::National, u(0, 6, 0)),
            Some(Breach::AttemptsPerMinute { limit: 5 })
        );
        assert_eq!(l.check(D::National, u(1, 2, 0)), None);
        assert_eq!(
            l.check(D::Local, u(2, 2, 0)),
            Some(Breach::ConcurrentExternal { limit: 2 })
        );
        assert_eq!(l.check(D::International, u(0, 1, 10)), None);
        assert_eq!(
            l.check(D::International, u(0, 1, 11)),
            Some(Breach::InternationalPerDay { limit: 10 })
        );
        assert_eq!(
            l.check(D::HighCost, u(0, 1, 11)),
            Some(Breach::InternationalPerDay { limit: 10 }),
            "high-cost calls count per day too"
        );
        assert_eq!(
            l.check(D::National, u(0, 1, 50)),
            None,
            "national calls are not counted per day"
        );
        assert_eq!(
            Breach::AttemptsPerMinute { limit: 5 }.id(),
            "fraud.attempts_per_minute"
        );
        assert!(
            Breach::InternationalPerDay { limit: 3 }
                .describe()
                .contains("more than 3")
        );
    }

    #[test]
    fn limits_are_validated() {
        assert!(FraudLimits::default().validate().is_ok());
        for bad in [
            FraudLimits {
                concurrent_external: 0,
                ..FraudLimits::default()
            },
            FraudLimits {
                international_per_day: 100_001,
                ..FraudLimits::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_emergency_call_per_extension_and_a_global_cap() {
        let l = EmergencyLimits::default();
        assert_eq!((l.per_extension, l.total), (1, 10));
        assert!(l.validate().is_ok());
        assert_eq!(l.check(0, 0), None);
        assert_eq!(l.check(0, 9), None);
        assert_eq!(
            l.check(1, 1),
            Some(EmergencyBreach::PerExtension { limit: 1 }),
            "a second emergency call from the same extension"
        );
        assert_eq!(l.check(0, 10), Some(EmergencyBreach::Total { limit: 10 }));
        let two = EmergencyLimits {
            per_extension: 2,
            total: 3,
        };
        assert_eq!(two.check(1, 2), None);
        assert_eq!(
            two.check(2, 2),
            Some(EmergencyBreach::PerExtension { limit: 2 })
        );
        assert_eq!(EmergencyBreach::Total { limit: 3 }.id(), "emergency.total");
        for bad in [
            EmergencyLimits {
                per_extension: 0,
                total: 10,
            },
            EmergencyLimits {
                per_extension: 11,
                total: 20,
            },
            EmergencyLimits {
                per_extension: 3,
                total: 2,
            },
            EmergencyLimits {
                per_extension: 1,
                total: 10_001,
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
