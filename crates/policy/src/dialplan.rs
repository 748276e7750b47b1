//! The dial plan: what kind of call a dialled number is (internal, emergency, local,
//! national, international), what each class of service may call, and the fraud limits
//! every extension's outbound calling is held to. Pure rules; the running server keeps
//! the counts and applies the decisions.

use serde::{Deserialize, Serialize};

/// What an extension may call. Ordered: each class allows what the ones before it do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassOfService {
    /// Other extensions (and emergency numbers) only.
    Internal,
    /// Also numbers in the home area (no national prefix).
    Local,
    /// Also numbers in the home country.
    National,
    /// Also numbers abroad.
    International,
}

impl ClassOfService {
    pub const ALL: [ClassOfService; 4] = [
        ClassOfService::Internal,
        ClassOfService::Local,
        ClassOfService::National,
        ClassOfService::International,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClassOfService::Internal => "internal",
            ClassOfService::Local => "local",
            ClassOfService::National => "national",
            ClassOfService::International => "international",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether a call of `class` is allowed. Emergency calls always are; invalid
    /// numbers never.
    pub fn allows(self, class: CallClass) -> bool {
        match class {
            CallClass::Emergency => true,
            CallClass::Invalid => false,
            CallClass::Internal => true,
            CallClass::Local => self >= ClassOfService::Local,
            CallClass::National => self >= ClassOfService::National,
            CallClass::International => self >= ClassOfService::International,
        }
    }
}

/// What a dialled number is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallClass {
    Internal,
    Emergency,
    Local,
    National,
    International,
    /// Not a number sipward can route (letters, empty, too long).
    Invalid,
}

impl CallClass {
    /// Calls that leave the PBX (and count against the fraud limits).
    pub fn is_external(self) -> bool {
        matches!(
            self,
            CallClass::Local | CallClass::National | CallClass::International
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallClass::Internal => "internal",
            CallClass::Emergency => "emergency",
            CallClass::Local => "local",
            CallClass::National => "national",
            CallClass::International => "international",
            CallClass::Invalid => "invalid",
        }
    }
}

/// `[dialplan]` in the config file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialPlan {
    /// The home country's calling code, without `+` (for example `49`, `1`, `44`).
    pub country_code: String,
    /// What is dialled before a country code (`00` in most of the world, `011` in NANP).
    pub international_prefix: String,
    /// What is dialled before an area code (`0` in most of Europe, `1` in NANP; empty
    /// where there is none).
    pub national_prefix: String,
    /// Numbers that always go out, whatever the class of service, and alert the
    /// administrator.
    pub emergency_numbers: Vec<String>,
    /// Class of service of new user extensions and of fax extensions.
    pub default_user_class: ClassOfService,
    pub default_fax_class: ClassOfService,
    /// Fraud limits for every extension (each can be lowered or raised per extension).
    pub limits: FraudLimits,
}

impl Default for DialPlan {
    fn default() -> Self {
        Self {
            country_code: "1".into(),
            international_prefix: "011".into(),
            national_prefix: "1".into(),
            emergency_numbers: vec!["911".into(), "112".into()],
            default_user_class: ClassOfService::National,
            default_fax_class: ClassOfService::National,
            limits: FraudLimits::default(),
        }
    }
}

/// The longest dialled number accepted (E.164 allows 15 digits, plus prefixes).
pub const MAX_DIALLED: usize = 24;

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl DialPlan {
    pub fn validate(&self) -> Result<(), String> {
        if !digits(&self.country_code) || self.country_code.len() > 3 {
            return Err("dialplan.country_code must be 1 to 3 digits".into());
        }
        if !digits(&self.international_prefix) || self.international_prefix.len() > 4 {
            return Err("dialplan.international_prefix must be 1 to 4 digits".into());
        }
        if !(self.national_prefix.is_empty() || digits(&self.national_prefix))
            || self.national_prefix.len() > 2
        {
            return Err("dialplan.national_prefix must be empty or 1 to 2 digits".into());
        }
        if self.national_prefix.starts_with(&self.international_prefix)
            && !self.national_prefix.is_empty()
        {
            return Err(
                "dialplan.national_prefix must not start with the international prefix".into(),
            );
        }
        if let Some(e) = self
            .emergency_numbers
            .iter()
            .find(|e| !digits(e) || e.len() > 6)
        {
            return Err(format!(
                "dialplan.emergency_numbers: {e:?} must be 1 to 6 digits"
            ));
        }
        self.limits.validate()
    }

    /// Classifies a dialled number (the Request-URI's user part). `is_extension` says
    /// whether it names an extension here. Visual separators are not accepted: phones
    /// send digits, `+` and `*`/`#` codes.
    pub fn classify(&self, dialled: &str, is_extension: impl Fn(&str) -> bool) -> CallClass {
        if dialled.is_empty() || dialled.len() > MAX_DIALLED {
            return CallClass::Invalid;
        }
        if self.emergency_numbers.iter().any(|e| e == dialled) {
            return CallClass::Emergency;
        }
        if is_extension(dialled) {
            return CallClass::Internal;
        }
        let abroad = |rest: &str| {
            if !digits(rest) {
                CallClass::Invalid
            } else if rest.starts_with(&self.country_code) {
                CallClass::National
            } else {
                CallClass::International
            }
        };
        if let Some(rest) = dialled.strip_prefix('+') {
            return abroad(rest);
        }
        if let Some(rest) = dialled.strip_prefix(self.international_prefix.as_str()) {
            return abroad(rest);
        }
        if !digits(dialled) {
            return CallClass::Invalid;
        }
        if !self.national_prefix.is_empty() && dialled.starts_with(&self.national_prefix) {
            return CallClass::National;
        }
        CallClass::Local
    }
}

/// Limits on an extension's external calls; breaking one suspends its outbound calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FraudLimits {
    /// External calls up at the same time.
    pub concurrent_external: u32,
    /// External call attempts within a minute.
    pub attempts_per_minute: u32,
    /// International calls per day (where the class of service allows them).
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
                format!("more than {limit} international calls within a day")
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
    /// International calls within the last day, this one included when it is one.
    pub international_today: u32,
}

impl FraudLimits {
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrent_external == 0
            || self.attempts_per_minute == 0
            || self.international_per_day == 0
        {
            return Err(
                "dialplan.limits must be positive (lower a class of service to forbid calls)"
                    .into(),
            );
        }
        if self.concurrent_external > 1000
            || self.attempts_per_minute > 10_000
            || self.international_per_day > 100_000
        {
            return Err("dialplan.limits are implausibly high".into());
        }
        Ok(())
    }

    /// The limit an external attempt breaks, if any. Emergency calls are never checked.
    pub fn check(&self, class: CallClass, u: Usage) -> Option<Breach> {
        if !class.is_external() {
            return None;
        }
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
        if class == CallClass::International && u.international_today > self.international_per_day {
            return Some(Breach::InternationalPerDay {
                limit: self.international_per_day,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn germany() -> DialPlan {
        DialPlan {
            country_code: "49".into(),
            international_prefix: "00".into(),
            national_prefix: "0".into(),
            emergency_numbers: vec!["112".into(), "110".into()],
            ..DialPlan::default()
        }
    }

    #[test]
    fn numbers_are_classified() {
        let p = germany();
        let ext = |n: &str| ["888", "1001"].contains(&n);
        let c = |n: &str| p.classify(n, ext);
        assert_eq!(c("1001"), CallClass::Internal);
        assert_eq!(c("888"), CallClass::Internal);
        assert_eq!(c("112"), CallClass::Emergency);
        assert_eq!(c("110"), CallClass::Emergency);
        assert_eq!(c("5551234"), CallClass::Local);
        assert_eq!(c("0301234567"), CallClass::National);
        assert_eq!(c("0049301234567"), CallClass::National, "own country code");
        assert_eq!(c("+49301234567"), CallClass::National);
        assert_eq!(c("00252612345678"), CallClass::International, "Somalia");
        assert_eq!(c("+882123456"), CallClass::International);
        assert_eq!(c("00"), CallClass::Invalid);
        assert_eq!(c("+"), CallClass::Invalid);
        assert_eq!(c(""), CallClass::Invalid);
        assert_eq!(c("alice"), CallClass::Invalid);
        assert_eq!(c("*97x"), CallClass::Invalid);
        assert_eq!(c(&"1".repeat(MAX_DIALLED + 1)), CallClass::Invalid);
    }

    #[test]
    fn nanp_defaults() {
        let p = DialPlan::default();
        let c = |n: &str| p.classify(n, |_| false);
        assert_eq!(c("911"), CallClass::Emergency);
        assert_eq!(c("5551234"), CallClass::Local);
        assert_eq!(c("12125551234"), CallClass::National);
        assert_eq!(c("01144207946"), CallClass::International);
        assert_eq!(c("+12125551234"), CallClass::National);
    }

    #[test]
    fn classes_of_service_are_ordered() {
        use CallClass as C;
        use ClassOfService as S;
        let table = [
            (S::Internal, [true, true, false, false, false]),
            (S::Local, [true, true, true, false, false]),
            (S::National, [true, true, true, true, false]),
            (S::International, [true, true, true, true, true]),
        ];
        for (cos, want) in table {
            let got = [
                C::Internal,
                C::Emergency,
                C::Local,
                C::National,
                C::International,
            ]
            .map(|c| cos.allows(c));
            assert_eq!(got, want, "{cos:?}");
            assert!(!cos.allows(C::Invalid));
        }
        assert_eq!(S::parse(" International "), Some(S::International));
        assert_eq!(S::parse("world"), None);
    }

    #[test]
    fn limits_break_at_the_attempt_after_the_limit() {
        let l = FraudLimits::default();
        let u = |active, minute, day| Usage {
            active_external: active,
            attempts_last_minute: minute,
            international_today: day,
        };
        assert_eq!(l.check(CallClass::National, u(0, 5, 0)), None);
        assert_eq!(
            l.check(CallClass::National, u(0, 6, 0)),
            Some(Breach::AttemptsPerMinute { limit: 5 })
        );
        assert_eq!(l.check(CallClass::National, u(1, 2, 0)), None);
        assert_eq!(
            l.check(CallClass::Local, u(2, 2, 0)),
            Some(Breach::ConcurrentExternal { limit: 2 })
        );
        assert_eq!(l.check(CallClass::International, u(0, 1, 10)), None);
        assert_eq!(
            l.check(CallClass::International, u(0, 1, 11)),
            Some(Breach::InternationalPerDay { limit: 10 })
        );
        // Internal and emergency calls are never limited.
        assert_eq!(l.check(CallClass::Emergency, u(50, 50, 50)), None);
        assert_eq!(l.check(CallClass::Internal, u(50, 50, 50)), None);
        assert_eq!(
            Breach::AttemptsPerMinute { limit: 5 }.id(),
            "fraud.attempts_per_minute"
        );
    }

    #[test]
    fn bad_plans_are_refused() {
        let ok = germany();
        assert!(ok.validate().is_ok());
        for bad in [
            DialPlan {
                country_code: "+49".into(),
                ..germany()
            },
            DialPlan {
                country_code: "".into(),
                ..germany()
            },
            DialPlan {
                international_prefix: "".into(),
                ..germany()
            },
            DialPlan {
                national_prefix: "00".into(),
                ..germany()
            },
            DialPlan {
                emergency_numbers: vec!["11 2".into()],
                ..germany()
            },
            DialPlan {
                limits: FraudLimits {
                    attempts_per_minute: 0,
                    ..FraudLimits::default()
                },
                ..germany()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
