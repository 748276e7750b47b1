//! The dial plan: what kind of call a number is, and what each class of service may
//! call. Pure rules; the running server keeps the counts and applies the decisions.
//!
//! Classification has two steps, because the number that matters is the one that leaves:
//!
//! 1. [`DialPlan::dialled`] looks at the dialled text: an emergency number (always
//!    allowed, whatever the class) or an extension stays what it is; anything else is
//!    routed.
//! 2. After the route's strip/prepend rewrite, [`DialPlan::leaving`] turns the number that
//!    will leave into E.164 ([`DialPlan::to_e164`]) and classifies *that*
//!    ([`DialPlan::destination`]): local, national, international, or high-cost. A number
//!    that does not map to E.164 is refused.
//!
//! [`DialPlan::classify_routed`] does both for the runtime; [`DialPlan::classify`] is the
//! same for a number that leaves exactly as dialled. Class of service and every fraud
//! limit are decided on the result, so a rewrite cannot move a call past them.
//!
//! What maps to E.164 (see [`DialPlan::to_e164`]): `+CC...`; the international prefix
//! then `CC...`; the national prefix then a national number; where the plan has no
//! national prefix (closed numbering plans: Italy, Denmark, ...), a national number as
//! dialled; in the NANP, a ten-digit number without prefix (ten-digit local dialling);
//! and a subscriber number without any prefix only when the plan names its `area_code`
//! (local dialling). Letters, `*`/`#` service codes, unassigned country codes and numbers
//! too long or too short for E.164 do not map.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::e164::{self, E164, NotE164};
use crate::high_cost;
use crate::nanp;

pub use crate::destination::Destination;
pub use crate::fraud::{
    Breach, EmergencyBreach, EmergencyLimits, FraudLimits, InvalidLimits, Usage,
};

/// The longest dialled number accepted (E.164 allows 15 digits, plus prefixes).
pub const MAX_DIALLED: usize = 24;

/// What an extension may call. Ordered: each class allows what the ones before it do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassOfService {
    /// Other extensions (and emergency numbers) only.
    Internal,
    /// Also numbers in the home area.
    Local,
    /// Also numbers in the home country (for the NANP: the plan's `nanp_regions`).
    National,
    /// Also numbers abroad, except high-cost destinations.
    International,
    /// Also high-cost destinations (premium rate, fraud hot-list countries, satellite).
    /// Never a default: an administrator grants it to one extension at a time.
    Unrestricted,
}

impl ClassOfService {
    pub const ALL: [ClassOfService; 5] = [
        ClassOfService::Internal,
        ClassOfService::Local,
        ClassOfService::National,
        ClassOfService::International,
        ClassOfService::Unrestricted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClassOfService::Internal => "internal",
            ClassOfService::Local => "local",
            ClassOfService::National => "national",
            ClassOfService::International => "international",
            ClassOfService::Unrestricted => "unrestricted",
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
            CallClass::Emergency | CallClass::Internal => true,
            CallClass::Invalid => false,
            CallClass::Local => self.reaches(Destination::Local),
            CallClass::National => self.reaches(Destination::National),
            CallClass::International => self.reaches(Destination::International),
            CallClass::HighCost => self.reaches(Destination::HighCost),
        }
    }

    /// Whether a number that leaves as `destination` is allowed.
    pub fn reaches(self, destination: Destination) -> bool {
        let needed = match destination {
            Destination::Local => ClassOfService::Local,
            Destination::National => ClassOfService::National,
            Destination::International => ClassOfService::International,
            Destination::HighCost => ClassOfService::Unrestricted,
        };
        self >= needed
    }
}

impl fmt::Display for ClassOfService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a call is: the dialled text's kind for emergency and internal calls, the
/// destination of the number that leaves for everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallClass {
    Internal,
    Emergency,
    Local,
    National,
    International,
    HighCost,
    /// Not a number sipward can route (letters, empty, too long, does not map to E.164).
    Invalid,
}

impl CallClass {
    /// Calls that leave the PBX (and count against the fraud limits).
    pub fn is_external(self) -> bool {
        self.destination().is_some()
    }

    /// The destination of an external call.
    pub fn destination(self) -> Option<Destination> {
        match self {
            CallClass::Local => Some(Destination::Local),
            CallClass::National => Some(Destination::National),
            CallClass::International => Some(Destination::International),
            CallClass::HighCost => Some(Destination::HighCost),
            CallClass::Internal | CallClass::Emergency | CallClass::Invalid => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallClass::Internal => "internal",
            CallClass::Emergency => "emergency",
            CallClass::Local => "local",
            CallClass::National => "national",
            CallClass::International => "international",
            CallClass::HighCost => "high_cost",
            CallClass::Invalid => "invalid",
        }
    }
}

impl From<Destination> for CallClass {
    fn from(d: Destination) -> Self {
        match d {
            Destination::Local => CallClass::Local,
            Destination::National => CallClass::National,
            Destination::International => CallClass::International,
            Destination::HighCost => CallClass::HighCost,
        }
    }
}

/// The first step: what the dialled text is, before any route rewrites it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialled {
    /// One of the plan's emergency numbers: always allowed, never rewritten into a class.
    Emergency,
    /// An extension here.
    Internal,
    /// Anything else: route it, then classify the number that leaves.
    Outside,
    /// Empty or longer than [`MAX_DIALLED`].
    Invalid,
}

/// A number that will leave, in E.164, and where it leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Leaving {
    pub number: E164,
    pub destination: Destination,
    /// For a high-cost destination, the table entry that made it one (name, kind,
    /// sources): what an alert or a refusal should say.
    pub high_cost: Option<&'static high_cost::Entry>,
}

/// What each class of service may do besides calling: `[dialplan.classes.NAME]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassSettings {
    /// The longest an answered trunk call may last before sipward ends it (seconds).
    /// Revenue-share fraud keeps answered calls up for hours; a cap bounds the bill.
    pub max_call_seconds: u32,
    /// The longest a trunk call may ring before sipward gives it up (seconds). A trunk
    /// leg that rings is no longer bound by Timer B; an attacker who controls the called
    /// number could otherwise keep it ringing, uncounted, for as long as it likes.
    pub max_ring_seconds: u32,
    /// Whether auto-answer hints (`Call-Info: ...;answer-after`, `Alert-Info` auto-answer)
    /// may pass from an extension of this class to another extension. Off: a low-class
    /// extension could otherwise make a higher-class phone answer by itself and then
    /// transfer it outside.
    pub intercom: bool,
}

/// Two hours: long enough for any conference call, short enough to bound a fraud bill.
pub const DEFAULT_MAX_CALL_SECONDS: u32 = 7_200;
/// The accepted range of `max_call_seconds`: a minute to a day.
pub const MAX_CALL_SECONDS_RANGE: std::ops::RangeInclusive<u32> = 60..=86_400;
/// Three minutes: RFC 3261 §16.6's Timer C, the usual ring-no-answer time of a PBX.
pub const DEFAULT_MAX_RING_SECONDS: u32 = 180;
/// The accepted range of `max_ring_seconds`: ten seconds to ten minutes.
pub const MAX_RING_SECONDS_RANGE: std::ops::RangeInclusive<u32> = 10..=600;

impl Default for ClassSettings {
    fn default() -> Self {
        Self {
            max_call_seconds: DEFAULT_MAX_CALL_SECONDS,
            max_ring_seconds: DEFAULT_MAX_RING_SECONDS,
            intercom: false,
        }
    }
}

/// `[dialplan.classes]`: the settings of each class of service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassTable {
    pub internal: ClassSettings,
    pub local: ClassSettings,
    pub national: ClassSettings,
    pub international: ClassSettings,
    pub unrestricted: ClassSettings,
}

impl ClassTable {
    pub fn get(&self, class: ClassOfService) -> &ClassSettings {
        match class {
            ClassOfService::Internal => &self.internal,
            ClassOfService::Local => &self.local,
            ClassOfService::National => &self.national,
            ClassOfService::International => &self.international,
            ClassOfService::Unrestricted => &self.unrestricted,
        }
    }
}

/// A `[dialplan]` setting out of range. Each message is one sentence naming the range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPlan {
    #[error(
        "dialplan.country_code must be an assigned E.164 country code of 1 to 3 digits, without + (for example 1, 44, 49)"
    )]
    CountryCode,
    #[error(
        "dialplan.international_prefix must be 1 to 4 digits (00 in most of the world, 011 in the NANP)"
    )]
    InternationalPrefix,
    #[error(
        "dialplan.national_prefix must be empty or 1 to 2 digits that do not start with the international prefix"
    )]
    NationalPrefix,
    #[error(
        "dialplan.area_code must be empty or 1 to 5 digits without the national prefix (3 digits in the NANP)"
    )]
    AreaCode,
    #[error("dialplan.emergency_numbers must hold 1 to 16 numbers of 1 to 6 digits each")]
    EmergencyNumbers,
    #[error(
        "dialplan.nanp_regions must name 1 to 30 NANP regions by ISO code (US, CA, PR, JM, ...)"
    )]
    NanpRegions,
    #[error(
        "dialplan.default_user_class and dialplan.default_fax_class must be internal, local, national or international: unrestricted is never a default"
    )]
    UnrestrictedDefault,
    #[error(
        "dialplan.classes.{class}.max_call_seconds must be between 60 and 86400 (a minute to a day)"
    )]
    MaxCallSeconds { class: ClassOfService },
    #[error(
        "dialplan.classes.{class}.max_ring_seconds must be between 10 and 600 (ten seconds to ten minutes)"
    )]
    MaxRingSeconds { class: ClassOfService },
    #[error(transparent)]
    Limits(#[from] InvalidLimits),
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
    /// The home area code, without the national prefix (`30` for Berlin, `212` for
    /// Manhattan). Numbers in it are *local*, and a subscriber number dialled without any
    /// prefix is taken to be in it. Empty (the default): no local dialling, and such
    /// numbers are refused.
    pub area_code: String,
    /// With country code 1: the NANP regions (ISO codes) whose numbers are national.
    /// Every other +1 number (Canada from the US, the Caribbean, ...) is international.
    pub nanp_regions: Vec<String>,
    /// Numbers that always go out, whatever the class of service, and alert the
    /// administrator. Matched on the dialled text, before anything else.
    pub emergency_numbers: Vec<String>,
    /// Class of service of new user extensions and of fax extensions.
    pub default_user_class: ClassOfService,
    pub default_fax_class: ClassOfService,
    /// Fraud limits for every extension (each can be lowered or raised per extension).
    pub limits: FraudLimits,
    /// How many emergency calls may be up at once.
    pub emergency: EmergencyLimits,
    /// What each class of service may do besides calling.
    pub classes: ClassTable,
}

impl Default for DialPlan {
    fn default() -> Self {
        Self {
            country_code: "1".into(),
            international_prefix: "011".into(),
            national_prefix: "1".into(),
            area_code: String::new(),
            nanp_regions: vec![nanp::UNITED_STATES.into()],
            emergency_numbers: vec!["911".into(), "112".into()],
            default_user_class: ClassOfService::National,
            default_fax_class: ClassOfService::National,
            limits: FraudLimits::default(),
            emergency: EmergencyLimits::default(),
            classes: ClassTable::default(),
        }
    }
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The NANP's country code, which needs its own rules (shared by 25 countries).
const NANP: &str = "1";

impl DialPlan {
    /// Refuses settings out of range, with one sentence naming the range.
    pub fn validate(&self) -> Result<(), InvalidPlan> {
        let cc = &self.country_code;
        if !digits(cc) || e164::country_code_len(cc) != Some(cc.len()) {
            return Err(InvalidPlan::CountryCode);
        }
        if !digits(&self.international_prefix) || self.international_prefix.len() > 4 {
            return Err(InvalidPlan::InternationalPrefix);
        }
        let nat = &self.national_prefix;
        if !(nat.is_empty() || digits(nat))
            || nat.len() > 2
            || (!nat.is_empty() && nat.starts_with(&self.international_prefix))
        {
            return Err(InvalidPlan::NationalPrefix);
        }
        let area = &self.area_code;
        let area_ok = area.is_empty()
            || (digits(area)
                && area.len() <= 5
                && (nat.is_empty() || !area.starts_with(nat.as_str()))
                && (cc != NANP
                    || (area.len() == 3
                        && e164::E164::from_digits(&format!("1{area}5550100")).is_ok())));
        if !area_ok {
            return Err(InvalidPlan::AreaCode);
        }
        if self.emergency_numbers.is_empty()
            || self.emergency_numbers.len() > 16
            || self
                .emergency_numbers
                .iter()
                .any(|e| !digits(e) || e.len() > 6)
        {
            return Err(InvalidPlan::EmergencyNumbers);
        }
        if self.nanp_regions.is_empty()
            || self.nanp_regions.len() > 30
            || !self.nanp_regions.iter().all(|r| nanp::is_region(r))
        {
            return Err(InvalidPlan::NanpRegions);
        }
        if self.default_user_class == ClassOfService::Unrestricted
            || self.default_fax_class == ClassOfService::Unrestricted
        {
            return Err(InvalidPlan::UnrestrictedDefault);
        }
        for class in ClassOfService::ALL {
            if !MAX_CALL_SECONDS_RANGE.contains(&self.classes.get(class).max_call_seconds) {
                return Err(InvalidPlan::MaxCallSeconds { class });
            }
            if !MAX_RING_SECONDS_RANGE.contains(&self.classes.get(class).max_ring_seconds) {
                return Err(InvalidPlan::MaxRingSeconds { class });
            }
        }
        self.limits.validate()?;
        self.emergency.validate()?;
        Ok(())
    }

    /// Step one: what the dialled text (the Request-URI's user part) is. `is_extension`
    /// says whether it names an extension here. Emergency numbers are matched first, on
    /// the text exactly as dialled, so no extension or route can shadow them.
    pub fn dialled(&self, dialled: &str, is_extension: impl Fn(&str) -> bool) -> Dialled {
        if dialled.is_empty() || dialled.len() > MAX_DIALLED {
            return Dialled::Invalid;
        }
        if self.emergency_numbers.iter().any(|e| e == dialled) {
            return Dialled::Emergency;
        }
        if is_extension(dialled) {
            return Dialled::Internal;
        }
        Dialled::Outside
    }

    /// Turns a number as it will leave (after the route's rewrite: digits, or `+digits`)
    /// into E.164, or says why it does not map. In order:
    ///
    /// - `+` then digits: already international;
    /// - the international prefix, then country code and number;
    /// - the national prefix, then a national number (home country code added);
    /// - without any prefix: where the plan has no national prefix, a national number;
    ///   in the NANP, ten digits are area code and number; otherwise a subscriber number
    ///   in the plan's `area_code`, refused when the plan names none.
    ///
    /// Visual separators are not accepted: phones send digits, `+` and `*`/`#` codes, and
    /// `*`/`#` codes never leave.
    pub fn to_e164(&self, number: &str) -> Result<E164, NotE164> {
        if number.is_empty() {
            return Err(NotE164::Empty);
        }
        if number.len() > MAX_DIALLED {
            return Err(NotE164::TooLong);
        }
        if number.starts_with('+') {
            return E164::parse(number);
        }
        if !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(e164::non_digit_reason(number));
        }
        if let Some(rest) = number.strip_prefix(self.international_prefix.as_str()) {
            return E164::from_digits(rest);
        }
        let national = |nsn: &str| E164::from_digits(&format!("{}{nsn}", self.country_code));
        let nat = self.national_prefix.as_str();
        if !nat.is_empty() {
            if let Some(rest) = number.strip_prefix(nat) {
                return national(rest);
            }
        } else {
            return national(number);
        }
        if self.country_code == NANP && number.len() == e164::NANP_NATIONAL_DIGITS {
            return national(number);
        }
        if self.area_code.is_empty() {
            return Err(NotE164::NoLocalDialling);
        }
        national(&format!("{}{number}", self.area_code))
    }

    /// Where an E.164 number leads from this plan's home: high-cost destinations first
    /// (premium-rate ranges and satellite codes anywhere, fraud hot-list countries when
    /// abroad), then international for any other country, and for the NANP any region
    /// not in `nanp_regions`; then local within `area_code`, national otherwise.
    pub fn destination(&self, number: &E164) -> Destination {
        self.place(number).0
    }

    fn place(&self, number: &E164) -> (Destination, Option<&'static high_cost::Entry>) {
        let home = self.is_home(number);
        if let Some(entry) = high_cost::find(number, !home) {
            return (Destination::HighCost, Some(entry));
        }
        let destination = if !home {
            Destination::International
        } else if !self.area_code.is_empty() && number.national().starts_with(&self.area_code) {
            Destination::Local
        } else {
            Destination::National
        };
        (destination, None)
    }

    /// Whether `number` is in the home country: same country code and, in the NANP, an
    /// area code of one of the home regions (or toll-free).
    fn is_home(&self, number: &E164) -> bool {
        if number.country_code() != self.country_code {
            return false;
        }
        match number.nanp_area_code().map(nanp::area) {
            None | Some(nanp::Area::TollFree) => true,
            Some(nanp::Area::Region(region)) => self
                .nanp_regions
                .iter()
                .any(|r| r.eq_ignore_ascii_case(region)),
        }
    }

    /// Step two: the number that will leave (after the route's rewrite), in E.164 and
    /// classified. An error means the call must be refused.
    pub fn leaving(&self, number: &str) -> Result<Leaving, NotE164> {
        let number = self.to_e164(number)?;
        let (destination, high_cost) = self.place(&number);
        Ok(Leaving {
            number,
            destination,
            high_cost,
        })
    }

    /// The class of a routed call: emergency and internal calls by the dialled text,
    /// every other call by `leaving`, the number the route will send. This is the class
    /// the runtime holds to the caller's class of service and limits.
    pub fn classify_routed(
        &self,
        dialled: &str,
        leaving: &str,
        is_extension: impl Fn(&str) -> bool,
    ) -> CallClass {
        match self.dialled(dialled, is_extension) {
            Dialled::Emergency => CallClass::Emergency,
            Dialled::Internal => CallClass::Internal,
            Dialled::Invalid => CallClass::Invalid,
            Dialled::Outside => self
                .leaving(leaving)
                .map_or(CallClass::Invalid, |l| l.destination.into()),
        }
    }

    /// The class of a call whose number leaves exactly as dialled (no rewrite). Where a
    /// route rewrites the number, classify with [`DialPlan::classify_routed`] instead:
    /// the rewritten number is the one that is billed.
    pub fn classify(&self, dialled: &str, is_extension: impl Fn(&str) -> bool) -> CallClass {
        self.classify_routed(dialled, dialled, is_extension)
    }

    /// How long a trunk call of an extension of class `caller` may ring. Emergency calls
    /// too: a call that nobody answers in that time will not be answered.
    pub fn max_ring_duration(&self, caller: ClassOfService) -> Duration {
        Duration::from_secs(u64::from(self.classes.get(caller).max_ring_seconds))
    }

    /// How long an answered trunk call of an extension of class `caller` may last.
    /// `None` for emergency calls: sipward never ends one.
    pub fn max_call_duration(&self, caller: ClassOfService, call: CallClass) -> Option<Duration> {
        (call != CallClass::Emergency)
            .then(|| Duration::from_secs(u64::from(self.classes.get(caller).max_call_seconds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn germany() -> DialPlan {
        DialPlan {
            country_code: "49".into(),
            international_prefix: "00".into(),
            national_prefix: "0".into(),
            emergency_numbers: vec!["112".into(), "110".into()],
            ..DialPlan::default()
        }
    }

    fn berlin() -> DialPlan {
        DialPlan {
            area_code: "30".into(),
            ..germany()
        }
    }

    fn manhattan() -> DialPlan {
        DialPlan {
            area_code: "212".into(),
            ..DialPlan::default()
        }
    }

    fn e164(plan: &DialPlan, n: &str) -> Result<String, NotE164> {
        plan.to_e164(n).map(|e| e.to_string())
    }

    fn class(plan: &DialPlan, n: &str) -> CallClass {
        plan.classify(n, |x| ["888", "1001"].contains(&x))
    }

    #[test]
    fn what_maps_to_e164() {
        let de = berlin();
        let ok = |n: &str, want: &str| assert_eq!(e164(&de, n).as_deref(), Ok(want), "{n}");
        ok("+442079460000", "+442079460000");
        ok("00442079460000", "+442079460000");
        ok("0049301234567", "+49301234567");
        ok("0301234567", "+49301234567");
        ok("5551234", "+49305551234");
        let us = manhattan();
        let ok = |n: &str, want: &str| assert_eq!(e164(&us, n).as_deref(), Ok(want), "{n}");
        ok("+12125551234", "+12125551234");
        ok("011442079460000", "+442079460000");
        ok("14155551234", "+14155551234");
        ok("4155551234", "+14155551234");
        ok("5551234", "+12125551234");
        // No national prefix (closed numbering plan): the national number as dialled.
        let it = DialPlan {
            country_code: "39".into(),
            international_prefix: "00".into(),
            national_prefix: String::new(),
            ..DialPlan::default()
        };
        assert_eq!(e164(&it, "0612345678").as_deref(), Ok("+390612345678"));
        assert_eq!(e164(&it, "00442079460000").as_deref(), Ok("+442079460000"));
    }

    #[test]
    fn what_does_not_map() {
        use NotE164::*;
        let us = DialPlan::default();
        let de = germany();
        let cases: [(&DialPlan, &str, NotE164); 14] = [
            (&us, "", Empty),
            (&us, "alice", NotDigits),
            (&us, "12ab", NotDigits),
            (&us, "+1212555x234", NotDigits),
            (&us, "*97", ServiceCode),
            (&us, "#31#5551234", ServiceCode),
            (&us, &"1".repeat(MAX_DIALLED + 1), TooLong),
            (&us, "0119912345678901234", TooLong),
            (&us, "011", TooShort),
            (&us, "011280123456", UnknownCountryCode),
            (&us, "5551234", NoLocalDialling),
            (&de, "5551234", NoLocalDialling),
            (&us, "1212555123", NotNanp),
            (&de, "00", TooShort),
        ];
        for (plan, n, want) in cases {
            assert_eq!(plan.to_e164(n), Err(want), "{n:?}");
        }
    }

    /// The numbers of the attack report (issue 14), under the default plan.
    #[test]
    fn the_reported_numbers_are_classified_by_what_leaves() {
        let p = DialPlan::default();
        // The README's `00.` route (strip 2, prepend +): dialled 00442079460000, it
        // leaves as +442079460000. As dialled it is not a number under a NANP plan at
        // all (it used to be classed local); what leaves is international.
        assert_eq!(class(&p, "00442079460000"), CallClass::Invalid);
        assert_eq!(
            p.classify_routed("00442079460000", "+442079460000", |_| false),
            CallClass::International
        );
        // Jamaica and NANP premium rate are not national.
        assert_eq!(class(&p, "+18765550123"), CallClass::HighCost);
        assert_eq!(class(&p, "18765550123"), CallClass::HighCost);
        assert_eq!(class(&p, "19005550123"), CallClass::HighCost);
        let l = p.leaving("+18765550123").expect("maps");
        assert_eq!(l.number.as_str(), "+18765550123");
        assert_eq!(l.high_cost.map(|e| e.name.as_str()), Some("Jamaica"));
        assert!(!ClassOfService::National.allows(class(&p, "+18765550123")));
        assert!(!ClassOfService::International.allows(class(&p, "19005550123")));
        assert!(ClassOfService::Unrestricted.allows(class(&p, "19005550123")));
    }

    #[test]
    fn the_default_plan() {
        let p = DialPlan::default();
        assert!(p.validate().is_ok());
        assert_eq!(class(&p, "911"), CallClass::Emergency);
        assert_eq!(class(&p, "112"), CallClass::Emergency);
        assert_eq!(class(&p, "1001"), CallClass::Internal);
        assert_eq!(class(&p, "12125551234"), CallClass::National);
        assert_eq!(class(&p, "+12125551234"), CallClass::National);
        assert_eq!(
            class(&p, "2125551234"),
            CallClass::National,
            "ten-digit dialling"
        );
        assert_eq!(class(&p, "18005551234"), CallClass::National, "toll-free");
        assert_eq!(class(&p, "011442079460000"), CallClass::International);
        assert_eq!(class(&p, "011252612345678"), CallClass::HighCost, "Somalia");
        assert_eq!(
            class(&p, "5551234"),
            CallClass::Invalid,
            "no area code: no local dialling"
        );
        assert_eq!(class(&p, "*97"), CallClass::Invalid);
        assert_eq!(class(&p, ""), CallClass::Invalid);
        assert_eq!(class(&p, &"1".repeat(MAX_DIALLED + 1)), CallClass::Invalid);
    }

    #[test]
    fn nanp_home_and_foreign() {
        let us = manhattan();
        let d = |p: &DialPlan, n: &str| p.leaving(n).map(|l| l.destination);
        assert_eq!(d(&us, "5551234"), Ok(Destination::Local));
        assert_eq!(d(&us, "12125551234"), Ok(Destination::Local));
        assert_eq!(d(&us, "14155551234"), Ok(Destination::National));
        assert_eq!(
            d(&us, "14165551234"),
            Ok(Destination::International),
            "Toronto"
        );
        assert_eq!(
            d(&us, "12425551234"),
            Ok(Destination::International),
            "Bahamas"
        );
        assert_eq!(
            d(&us, "17875551234"),
            Ok(Destination::International),
            "Puerto Rico"
        );
        for caribbean in [
            "876", "809", "284", "473", "649", "664", "767", "829", "849", "268",
        ] {
            assert_eq!(
                d(&us, &format!("1{caribbean}5550123")),
                Ok(Destination::HighCost),
                "{caribbean}"
            );
        }
        for caribbean in [
            "758", "784", "868", "869", "242", "246", "264", "345", "441", "721",
        ] {
            assert_eq!(
                d(&us, &format!("1{caribbean}5550123")),
                Ok(Destination::International),
                "{caribbean}"
            );
        }
        // Canada at home: the United States is abroad, Canada and toll-free are not.
        let ca = DialPlan {
            nanp_regions: vec!["CA".into()],
            area_code: "416".into(),
            ..DialPlan::default()
        };
        assert!(ca.validate().is_ok());
        assert_eq!(d(&ca, "5551234"), Ok(Destination::Local));
        assert_eq!(d(&ca, "16045551234"), Ok(Destination::National));
        assert_eq!(d(&ca, "12125551234"), Ok(Destination::International));
        assert_eq!(d(&ca, "18005551234"), Ok(Destination::National));
        assert_eq!(d(&ca, "19005551234"), Ok(Destination::HighCost));
        // Territories can be made national.
        let us_pr = DialPlan {
            nanp_regions: vec!["US".into(), "pr".into()],
            ..DialPlan::default()
        };
        assert_eq!(d(&us_pr, "17875551234"), Ok(Destination::National));
        // Jamaica at home: its numbers are national, its fraud entry does not apply.
        let jm = DialPlan {
            nanp_regions: vec!["JM".into()],
            ..DialPlan::default()
        };
        assert_eq!(d(&jm, "18765550123"), Ok(Destination::National));
        assert_eq!(d(&jm, "12125551234"), Ok(Destination::International));
    }

    #[test]
    fn european_plan() {
        let de = berlin();
        let d = |n: &str| de.leaving(n).map(|l| l.destination);
        assert_eq!(d("5551234"), Ok(Destination::Local));
        assert_eq!(d("0301234567"), Ok(Destination::Local));
        assert_eq!(d("0891234567"), Ok(Destination::National), "Munich");
        assert_eq!(d("+49891234567"), Ok(Destination::National));
        assert_eq!(d("00442079460000"), Ok(Destination::International));
        assert_eq!(d("+12125551234"), Ok(Destination::International));
        assert_eq!(d("09001234567"), Ok(Destination::HighCost), "0900 premium");
        assert_eq!(
            d("01371234567"),
            Ok(Destination::HighCost),
            "0137 mass calling"
        );
        assert_eq!(d("00449098790000"), Ok(Destination::HighCost), "UK 09");
        assert_eq!(d("0053712345678"), Ok(Destination::HighCost), "Cuba");
        assert_eq!(d("00252612345678"), Ok(Destination::HighCost), "Somalia");
        assert_eq!(d("00881612345678"), Ok(Destination::HighCost), "satellite");
        // A German plan without area code: nothing is local, prefix-less numbers refused.
        let de = germany();
        assert_eq!(
            de.leaving("0301234567").map(|l| l.destination),
            Ok(Destination::National)
        );
        assert_eq!(
            de.leaving("5551234").map(|l| l.destination),
            Err(NotE164::NoLocalDialling)
        );
        // Latvia at home: its numbers are national.
        let lv = DialPlan {
            country_code: "371".into(),
            international_prefix: "00".into(),
            national_prefix: String::new(),
            ..DialPlan::default()
        };
        assert!(lv.validate().is_ok());
        assert_eq!(
            lv.leaving("67123456").map(|l| l.destination),
            Ok(Destination::National)
        );
        assert_eq!(
            lv.leaving("0037067123456").map(|l| l.destination),
            Ok(Destination::HighCost)
        );
    }

    #[test]
    fn emergency_numbers_come_first_and_exactly_as_dialled() {
        let p = germany();
        // Even when an extension has the same number, and whatever a route would do.
        assert_eq!(p.classify("112", |_| true), CallClass::Emergency);
        assert_eq!(
            p.classify_routed("110", "+49110", |_| false),
            CallClass::Emergency
        );
        assert_eq!(p.dialled("112", |_| false), Dialled::Emergency);
        assert_eq!(p.dialled("0112", |_| false), Dialled::Outside);
        assert_eq!(p.dialled("1001", |n| n == "1001"), Dialled::Internal);
        assert_eq!(p.dialled("", |_| true), Dialled::Invalid);
    }

    #[test]
    fn classes_of_service_are_ordered() {
        use CallClass as C;
        use ClassOfService as S;
        let calls = [
            C::Internal,
            C::Emergency,
            C::Local,
            C::National,
            C::International,
            C::HighCost,
        ];
        let table = [
            (S::Internal, [true, true, false, false, false, false]),
            (S::Local, [true, true, true, false, false, false]),
            (S::National, [true, true, true, true, false, false]),
            (S::International, [true, true, true, true, true, false]),
            (S::Unrestricted, [true, true, true, true, true, true]),
        ];
        for (cos, want) in table {
            assert_eq!(calls.map(|c| cos.allows(c)), want, "{cos:?}");
            assert!(!cos.allows(C::Invalid));
        }
        assert_eq!(S::parse(" International "), Some(S::International));
        assert_eq!(S::parse("unrestricted"), Some(S::Unrestricted));
        assert_eq!(S::parse("world"), None);
        assert!(
            Destination::HighCost.counts_per_day() && Destination::International.counts_per_day()
        );
        assert!(!Destination::National.counts_per_day());
        assert_eq!(
            CallClass::HighCost.destination(),
            Some(Destination::HighCost)
        );
        assert_eq!(CallClass::Emergency.destination(), None);
        assert!(!CallClass::Invalid.is_external() && CallClass::Local.is_external());
    }

    #[test]
    fn answered_calls_have_a_maximum_duration_but_emergency_calls_do_not() {
        let mut p = germany();
        let two_hours = Some(Duration::from_secs(7_200));
        assert_eq!(
            p.max_call_duration(ClassOfService::National, CallClass::National),
            two_hours
        );
        assert_eq!(
            p.max_call_duration(ClassOfService::Unrestricted, CallClass::HighCost),
            two_hours
        );
        assert_eq!(
            p.max_call_duration(ClassOfService::Internal, CallClass::Emergency),
            None
        );
        p.classes.international.max_call_seconds = 600;
        assert_eq!(
            p.max_call_duration(ClassOfService::International, CallClass::International),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            p.max_call_duration(ClassOfService::National, CallClass::Local),
            two_hours
        );
        assert!(p.validate().is_ok());
        assert!(
            ClassOfService::ALL
                .iter()
                .all(|c| !DialPlan::default().classes.get(*c).intercom)
        );
    }

    #[test]
    fn the_config_section_parses_and_refuses_unknown_keys() {
        let p: DialPlan = toml::from_str(
            "country_code = \"44\"\ninternational_prefix = \"00\"\nnational_prefix = \"0\"\n\
             area_code = \"20\"\nemergency_numbers = [\"999\", \"112\"]\n\
             [classes.international]\nmax_call_seconds = 3600\nintercom = true\n\
             max_ring_seconds = 60\n\
             [emergency]\nper_extension = 2\ntotal = 4\n",
        )
        .expect("parses");
        assert!(p.validate().is_ok());
        assert_eq!(p.classes.international.max_call_seconds, 3600);
        assert_eq!(
            p.max_ring_duration(ClassOfService::International),
            Duration::from_secs(60)
        );
        assert_eq!(
            p.max_ring_duration(ClassOfService::National),
            Duration::from_secs(u64::from(DEFAULT_MAX_RING_SECONDS))
        );
        assert!(p.classes.international.intercom && !p.classes.national.intercom);
        assert_eq!(
            p.classes.national.max_call_seconds,
            DEFAULT_MAX_CALL_SECONDS
        );
        assert_eq!((p.emergency.per_extension, p.emergency.total), (2, 4));
        for bad in [
            "countrycode = \"44\"",
            "[classes.world]\nintercom = true",
            "[classes.national]\nmax_seconds = 60",
            "[emergency]\nper_ext = 1",
        ] {
            assert!(toml::from_str::<DialPlan>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_plans_are_refused_with_the_range() {
        let ok = germany();
        assert!(ok.validate().is_ok());
        assert!(berlin().validate().is_ok());
        assert!(manhattan().validate().is_ok());
        let with = |f: &dyn Fn(&mut DialPlan)| {
            let mut p = germany();
            f(&mut p);
            p
        };
        let cases: Vec<(DialPlan, &str)> = vec![
            (with(&|p| p.country_code = "+49".into()), "country_code"),
            (with(&|p| p.country_code = String::new()), "country_code"),
            (with(&|p| p.country_code = "28".into()), "country_code"),
            (with(&|p| p.country_code = "4930".into()), "country_code"),
            (
                with(&|p| p.international_prefix = String::new()),
                "international_prefix",
            ),
            (
                with(&|p| p.national_prefix = "00".into()),
                "national_prefix",
            ),
            (with(&|p| p.area_code = "030".into()), "area_code"),
            (with(&|p| p.area_code = "3a".into()), "area_code"),
            (with(&|p| p.area_code = "123456".into()), "area_code"),
            (
                with(&|p| p.emergency_numbers = vec!["11 2".into()]),
                "emergency_numbers",
            ),
            (with(&|p| p.emergency_numbers.clear()), "emergency_numbers"),
            (
                with(&|p| p.nanp_regions = vec!["MX".into()]),
                "nanp_regions",
            ),
            (with(&|p| p.nanp_regions.clear()), "nanp_regions"),
            (
                with(&|p| p.default_fax_class = ClassOfService::Unrestricted),
                "unrestricted",
            ),
            (
                with(&|p| p.default_user_class = ClassOfService::Unrestricted),
                "unrestricted",
            ),
            (
                with(&|p| p.classes.national.max_call_seconds = 59),
                "dialplan.classes.national.max_call_seconds must be between 60 and 86400",
            ),
            (
                with(&|p| p.classes.unrestricted.max_call_seconds = 86_401),
                "classes.unrestricted",
            ),
            (
                with(&|p| p.classes.local.max_ring_seconds = 9),
                "dialplan.classes.local.max_ring_seconds must be between 10 and 600",
            ),
            (
                with(&|p| p.classes.internal.max_ring_seconds = 601),
                "classes.internal.max_ring_seconds",
            ),
            (
                with(&|p| p.limits.attempts_per_minute = 0),
                "dialplan.limits.attempts_per_minute must be between 1 and 10000",
            ),
            (
                with(&|p| p.limits.concurrent_external = 1001),
                "concurrent_external must be between 1 and 1000",
            ),
            (
                with(&|p| p.emergency.per_extension = 0),
                "per_extension must be between 1 and",
            ),
            (with(&|p| p.emergency.total = 0), "emergency.total"),
        ];
        for (bad, says) in cases {
            let err = bad.validate().expect_err(says);
            assert!(err.to_string().contains(says), "{err} should say {says}");
        }
        let nanp_area = DialPlan {
            area_code: "21".into(),
            ..DialPlan::default()
        };
        assert_eq!(nanp_area.validate(), Err(InvalidPlan::AreaCode));
        let n11 = DialPlan {
            area_code: "411".into(),
            ..DialPlan::default()
        };
        assert_eq!(n11.validate(), Err(InvalidPlan::AreaCode));
    }

    proptest! {
        #[test]
        fn no_input_panics_the_classifier(s in "\\PC{0,30}") {
            for plan in [DialPlan::default(), berlin(), manhattan()] {
                let _ = plan.classify(&s, |_| false);
                let _ = plan.classify_routed(&s, &s, |_| false);
                if let Ok(l) = plan.leaving(&s) {
                    prop_assert!(l.number.digits().len() <= e164::MAX_DIGITS);
                    prop_assert_eq!(l.high_cost.is_some(), l.destination == Destination::HighCost);
                }
            }
        }

        #[test]
        fn digit_strings_map_consistently(s in "[+]?[0-9]{0,26}") {
            let plan = berlin();
            match plan.to_e164(&s) {
                Ok(n) => {
                    // The international form maps to itself.
                    prop_assert_eq!(plan.to_e164(n.as_str()), Ok(n.clone()));
                    prop_assert_eq!(plan.classify(n.as_str(), |_| false), plan.classify_routed("x", n.as_str(), |_| false));
                }
                Err(_) => prop_assert_eq!(plan.classify(&s, |_| false), CallClass::Invalid),
            }
        }
    }
}
