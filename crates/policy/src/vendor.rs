//! Known gateway vendors and their factory default logins, from the shipped data file
//! `data/gateway-defaults.toml` (each entry names its source).

use std::sync::OnceLock;

use serde::Deserialize;

use crate::fields::InvalidField;

const DATA: &str = include_str!("../data/gateway-defaults.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    vendor: Vec<Vendor>,
}

/// A gateway vendor and the logins its devices ship with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vendor {
    pub id: String,
    pub name: String,
    pub logins: Vec<Login>,
    pub source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user: String,
    pub password: String,
}

/// All known vendors, sorted by id.
pub fn vendors() -> &'static [Vendor] {
    static VENDORS: OnceLock<Vec<Vendor>> = OnceLock::new();
    VENDORS.get_or_init(|| {
        // The file is compiled in and checked by a unit test; a parse failure here would be
        // a build defect, so fall back to "no vendors" rather than panicking at run time.
        toml::from_str::<File>(DATA)
            .map(|f| f.vendor)
            .unwrap_or_default()
    })
}

/// Looks a vendor up by id, ignoring case; unknown ids are an input error that lists the known ones.
pub fn find(id: &str) -> Result<&'static Vendor, InvalidField> {
    vendors()
        .iter()
        .find(|v| v.id.eq_ignore_ascii_case(id))
        .ok_or_else(|| InvalidField {
            field: "vendor",
            reason: format!(
                "{:?} is not a known vendor; use one of: {}",
                id.chars().take(40).collect::<String>(),
                vendors()
                    .iter()
                    .map(|v| v.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

impl Vendor {
    /// The factory login whose password this is, if any, preferring the login whose user
    /// is also the auth ID. The password alone is enough: every scanner's dictionary pairs
    /// a vendor's default password with any user name.
    pub fn matching_default(&self, auth_id: &str, password: &str) -> Option<&Login> {
        let mut hits = self
            .logins
            .iter()
            .filter(|l| !l.password.is_empty() && l.password == password);
        let first = hits.clone().next();
        hits.find(|l| l.user == auth_id).or(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_file_parses_sorted_and_sourced() {
        let file: File = toml::from_str(DATA).expect("gateway-defaults.toml parses");
        assert!(file.vendor.len() >= 10);
        let ids: Vec<&str> = file.vendor.iter().map(|v| v.id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(ids, sorted, "sorted and unique");
        for v in &file.vendor {
            assert!(!v.source.is_empty(), "{} has a source", v.id);
        }
        assert_eq!(vendors().len(), file.vendor.len());
    }

    #[test]
    fn lookups() {
        assert_eq!(find("Grandstream").expect("known").id, "grandstream");
        let err = find("acme").expect_err("unknown");
        assert!(err.reason.contains("patton"), "{err}");
    }

    #[test]
    fn default_logins_match() {
        let gs = find("grandstream").expect("known");
        assert!(gs.matching_default("4001", "admin").is_some());
        assert!(gs.matching_default("user", "123").is_some());
        assert!(
            gs.matching_default("admin", "Admin").is_none(),
            "case-sensitive"
        );
        assert!(gs.matching_default("gw1", "x7Tq9LmW2pRz").is_none());
        let patton = find("patton").expect("known");
        assert!(
            patton
                .matching_default("administrator", "anything")
                .is_none(),
            "empty default never matches a set password"
        );
        assert!(
            find("generic")
                .expect("known")
                .matching_default("admin", "admin")
                .is_none()
        );
    }
}
