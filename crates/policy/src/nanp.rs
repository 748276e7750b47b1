//! The countries and territories of the North American Numbering Plan, which all share
//! country code +1: which one an area code belongs to, from the compiled-in
//! `data/nanp.toml`. This is what keeps `+1 876 ...` (Jamaica) from passing as a national
//! call in the United States.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

const DATA: &str = include_str!("../data/nanp.toml");

/// The region every area code not listed in the data file belongs to.
pub const UNITED_STATES: &str = "US";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    toll_free: Vec<String>,
    #[allow(dead_code)] // the data file's citation, checked by its test
    toll_free_source: String,
    region: Vec<Region>,
}

/// A NANP country or territory other than the United States.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// ISO 3166-1 alpha-2 code, as `dialplan.nanp_regions` names it.
    pub id: String,
    pub name: String,
    pub area_codes: Vec<String>,
    pub source: String,
}

/// Where a NANP area code leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// Toll-free (8YY): reachable from the whole NANP, national wherever the plan is.
    TollFree,
    /// A region, by its ISO code (`US` for every area code not listed elsewhere).
    Region(&'static str),
}

struct Table {
    regions: Vec<Region>,
    by_code: HashMap<String, usize>,
    toll_free: Vec<String>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        // Compiled in and checked by a unit test. Were it unreadable, every +1 number
        // would count as the United States': the high-cost table still catches the
        // Caribbean fraud codes, and the test keeps this from shipping.
        let file = toml::from_str::<File>(DATA).unwrap_or(File {
            toll_free: Vec::new(),
            toll_free_source: String::new(),
            region: Vec::new(),
        });
        let by_code = file
            .region
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.area_codes.iter().map(move |c| (c.clone(), i)))
            .collect();
        Table {
            regions: file.region,
            by_code,
            toll_free: file.toll_free,
        }
    })
}

/// Every NANP region other than the United States.
pub fn regions() -> &'static [Region] {
    &table().regions
}

/// Whether `id` names a NANP region (`US` included), ignoring case.
pub fn is_region(id: &str) -> bool {
    id.eq_ignore_ascii_case(UNITED_STATES)
        || regions().iter().any(|r| r.id.eq_ignore_ascii_case(id))
}

/// The region (or toll-free service) an area code belongs to.
pub fn area(area_code: &str) -> Area {
    let t = table();
    if t.toll_free.iter().any(|c| c == area_code) {
        return Area::TollFree;
    }
    match t.by_code.get(area_code) {
        Some(&i) => Area::Region(t.regions[i].id.as_str()),
        None => Area::Region(UNITED_STATES),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_file_parses_sorted_unique_and_sourced() {
        let file: File = toml::from_str(DATA).expect("nanp.toml parses");
        assert!(!file.toll_free_source.is_empty());
        let ids: Vec<&str> = file.region.iter().map(|r| r.id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(ids, sorted, "sorted and unique");
        let mut seen = std::collections::HashSet::new();
        for code in file
            .region
            .iter()
            .flat_map(|r| r.area_codes.iter())
            .chain(&file.toll_free)
        {
            let b = code.as_bytes();
            assert!(
                b.len() == 3 && b.iter().all(u8::is_ascii_digit) && (b'2'..=b'9').contains(&b[0]),
                "{code}"
            );
            assert!(seen.insert(code.clone()), "{code} listed twice");
        }
        for r in &file.region {
            assert!(!r.source.is_empty() && !r.name.is_empty(), "{}", r.id);
            assert!(r.id.len() == 2 && r.id != UNITED_STATES, "{}", r.id);
        }
        assert_eq!(regions().len(), file.region.len());
    }

    #[test]
    fn area_codes_lead_to_their_regions() {
        assert_eq!(area("212"), Area::Region("US"));
        assert_eq!(area("415"), Area::Region("US"));
        assert_eq!(area("416"), Area::Region("CA"));
        assert_eq!(area("604"), Area::Region("CA"));
        assert_eq!(area("876"), Area::Region("JM"));
        assert_eq!(area("658"), Area::Region("JM"));
        assert_eq!(area("809"), Area::Region("DO"));
        assert_eq!(area("787"), Area::Region("PR"));
        for caribbean in [
            "284", "473", "649", "664", "758", "767", "784", "868", "869", "242", "246", "264",
            "268", "345", "441", "721", "829", "849",
        ] {
            assert!(
                !matches!(area(caribbean), Area::Region("US") | Area::TollFree),
                "{caribbean}"
            );
        }
        assert_eq!(area("800"), Area::TollFree);
        assert_eq!(area("833"), Area::TollFree);
        assert_eq!(
            area("900"),
            Area::Region("US"),
            "premium is in the high-cost table"
        );
        assert!(is_region("us") && is_region("CA") && is_region("jm"));
        assert!(!is_region("MX") && !is_region(""));
    }
}
