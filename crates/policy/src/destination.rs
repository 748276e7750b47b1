//! Where a number that leaves leads, seen from the dial plan's home: the classes that
//! classes of service and fraud limits are decided on. Below both the dial plan, which
//! classifies numbers into them, and the fraud limits, which count them.

use serde::Serialize;

/// Where an E.164 number leads, seen from the dial plan's home. Ordered by cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// In the plan's `area_code`.
    Local,
    /// Elsewhere in the home country (for the NANP: the plan's `nanp_regions`, and
    /// toll-free numbers).
    National,
    /// Abroad, NANP countries other than the home regions included.
    International,
    /// A high-cost destination ([`crate::high_cost`]), at home or abroad.
    HighCost,
}

impl Destination {
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Local => "local",
            Destination::National => "national",
            Destination::International => "international",
            Destination::HighCost => "high_cost",
        }
    }

    /// What an administrator reads: "an international number".
    pub fn describe(self) -> &'static str {
        match self {
            Destination::Local => "a local number",
            Destination::National => "a national number",
            Destination::International => "an international number",
            Destination::HighCost => "a high-cost destination",
        }
    }

    /// Calls that count against the per-day limit (`international_per_day`): numbers
    /// abroad and high-cost destinations, which is where toll fraud makes its money.
    pub fn counts_per_day(self) -> bool {
        self >= Destination::International
    }
}
