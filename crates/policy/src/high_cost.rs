//! High-cost destinations: premium-rate ranges, the countries and NANP areas most used
//! for international revenue share fraud, and satellite codes, from the compiled-in
//! `data/high-cost.toml` (every entry cites its sources). A number that leaves to one of
//! them is of class [`crate::dialplan::Destination::HighCost`], which no class of service
//! below `unrestricted` may call.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::e164::E164;

const DATA: &str = include_str!("../data/high-cost.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    sources: BTreeMap<String, String>,
    destination: Vec<RawEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    prefix: String,
    name: String,
    kind: Kind,
    sources: Vec<String>,
}

/// Why a destination costs more than a call should.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regulator's premium-rate range: the called party is paid. Applies at home too.
    Premium,
    /// A destination favoured by revenue-share fraud. Applies only abroad.
    Irsf,
    /// A satellite or global network code.
    Satellite,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Premium => "premium-rate range",
            Kind::Irsf => "revenue-share fraud destination",
            Kind::Satellite => "satellite network",
        }
    }
}

/// One high-cost destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// E.164 prefix, `+` then digits and `X` (any digit).
    pub prefix: String,
    pub name: String,
    pub kind: Kind,
    /// The cited sources, in full.
    pub sources: Vec<String>,
}

impl Entry {
    /// Whether `digits` (an E.164 number without `+`) starts with this prefix.
    fn matches(&self, digits: &[u8]) -> bool {
        let p = self.prefix.as_bytes().get(1..).unwrap_or_default();
        p.len() <= digits.len() && p.iter().zip(digits).all(|(p, d)| *p == b'X' || p == d)
    }
}

fn load(file: File) -> Vec<Entry> {
    let sources = file.sources;
    file.destination
        .into_iter()
        .map(|e| Entry {
            sources: e
                .sources
                .iter()
                .map(|k| sources.get(k).cloned().unwrap_or_else(|| k.clone()))
                .collect(),
            prefix: e.prefix,
            name: e.name,
            kind: e.kind,
        })
        .collect()
}

/// Every high-cost destination, sorted by prefix.
pub fn entries() -> &'static [Entry] {
    static ENTRIES: OnceLock<Vec<Entry>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        // Compiled in and checked by a unit test; a parse failure would be a build
        // defect, caught before release by that test.
        toml::from_str::<File>(DATA).map(load).unwrap_or_default()
    })
}

/// The high-cost destination `number` reaches, if any. `abroad` says whether the number
/// is outside the dial plan's home country: fraud hot-list countries count only then
/// (an installation in Latvia calls Latvia nationally), premium-rate ranges and
/// satellite codes always. The longest matching prefix wins.
pub fn find(number: &E164, abroad: bool) -> Option<&'static Entry> {
    let digits = number.digits().as_bytes();
    entries()
        .iter()
        .filter(|e| abroad || e.kind != Kind::Irsf)
        .filter(|e| e.matches(digits))
        .max_by_key(|e| e.prefix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> E164 {
        E164::parse(s).expect(s)
    }

    #[test]
    fn the_data_file_parses_sorted_and_sourced() {
        let file: File = toml::from_str(DATA).expect("high-cost.toml parses");
        let prefixes: Vec<&str> = file.destination.iter().map(|e| e.prefix.as_str()).collect();
        let mut sorted = prefixes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(prefixes, sorted, "sorted and unique");
        for e in &file.destination {
            let p = e.prefix.as_bytes();
            assert!(
                p.len() >= 2
                    && p[0] == b'+'
                    && p[1..].iter().all(|b| b.is_ascii_digit() || *b == b'X'),
                "{}",
                e.prefix
            );
            // The prefix starts with an assigned country code.
            let digits: String = e.prefix[1..].replace('X', "5");
            assert!(
                crate::e164::country_code_len(&digits).is_some(),
                "{}",
                e.prefix
            );
            assert!(!e.sources.is_empty(), "{} cites a source", e.prefix);
            for s in &e.sources {
                assert!(
                    file.sources.contains_key(s),
                    "{}: unknown source {s}",
                    e.prefix
                );
            }
            assert!(!e.name.is_empty());
        }
        for (key, text) in &file.sources {
            assert!(text.len() > 20, "{key}");
            assert!(
                file.destination.iter().any(|e| e.sources.contains(key)),
                "{key} is cited"
            );
        }
        assert_eq!(entries().len(), file.destination.len());
    }

    #[test]
    fn listed_destinations_are_found() {
        let cases = [
            ("+18765550123", "Jamaica", Kind::Irsf),
            ("+18095550123", "Dominican Republic", Kind::Irsf),
            ("+14735550123", "Grenada", Kind::Irsf),
            ("+19005550123", "NANP premium rate (900)", Kind::Premium),
            (
                "+12129765555",
                "NANP pay-per-call exchange (976)",
                Kind::Premium,
            ),
            ("+252612345678", "Somalia", Kind::Irsf),
            ("+5372345678", "Cuba", Kind::Irsf),
            ("+37167123456", "Latvia", Kind::Irsf),
            (
                "+449098790000",
                "United Kingdom premium rate (09)",
                Kind::Premium,
            ),
            (
                "+499001234567",
                "Germany premium rate (0900)",
                Kind::Premium,
            ),
            (
                "+491371234567",
                "Germany mass-calling (0137)",
                Kind::Premium,
            ),
            ("+33899123456", "France premium rate (089)", Kind::Premium),
            (
                "+61190012345",
                "Australia premium rate (1900)",
                Kind::Premium,
            ),
            (
                "+881612345678",
                "Global Mobile Satellite System",
                Kind::Satellite,
            ),
            (
                "+979123456789",
                "International Premium Rate Service",
                Kind::Premium,
            ),
        ];
        for (number, name, kind) in cases {
            let e = find(&n(number), true).unwrap_or_else(|| panic!("{number} is high-cost"));
            assert_eq!((e.name.as_str(), e.kind), (name, kind), "{number}");
            assert!(!e.sources.is_empty() && e.sources[0].len() > 20);
        }
    }

    #[test]
    fn ordinary_destinations_are_not_high_cost() {
        for number in [
            "+12125551234",
            "+14165551234",
            "+18005551234",
            "+12129755555",
            "+442079460000",
            "+447700900123",
            "+49301234567",
            "+33142685300",
            "+390612345678",
            "+61212345678",
            "+81312345678",
        ] {
            assert_eq!(find(&n(number), true), None, "{number}");
        }
    }

    #[test]
    fn fraud_countries_count_only_abroad_but_premium_ranges_always() {
        assert!(find(&n("+37167123456"), true).is_some());
        assert_eq!(find(&n("+37167123456"), false), None, "Latvia from Latvia");
        assert_eq!(
            find(&n("+18765550123"), false),
            None,
            "Jamaica from Jamaica"
        );
        assert!(
            find(&n("+499001234567"), false).is_some(),
            "0900 from Germany"
        );
        assert!(find(&n("+19005550123"), false).is_some(), "900 from the US");
    }
}
